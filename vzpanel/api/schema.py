"""The API's OpenAPI contract: one error body, the statuses every operation can answer, and input bounds."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

# The engine's VE id range (vzengine/validate.py CTID_MIN/CTID_MAX), copied because the panel must not
# import the engine: keep the two in step.
CTID_MIN = 100
CTID_MAX = 999_999_999
# Row ids (tasks, backups, courses) fit a signed 64-bit database integer; larger numbers are no id.
ID_MAX = 2**63 - 1
# Query-string values (search words, filters) are short: longer ones are refused before any query.
QUERY_VALUE_MAX = 200

ERROR_TEXT = {
    400: "The input is invalid; `errors` names each field and why (or the request was refused as it stands).",
    401: "Not signed in: send `Authorization: Token <key>` (or sign in for a session).",
    403: "Signed in, but not allowed (another role's operation, a plan limit, or a missing CSRF token).",
    404: "No such object, or not one you may see (outsiders learn nothing); or a page beyond the last.",
    409: "Refused in the object's current state (busy with a task, wrong status, already deleted); retry later.",
    429: "Too many requests: wait the seconds in `Retry-After`.",
}


class ErrorSerializer(serializers.Serializer):
    """The body of every 4xx answer of the API (vzpanel.api.views.exception_handler)."""

    detail = serializers.CharField(help_text="What is wrong, in one line.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="Only for invalid input: each field (dotted for items: `ctids.0`) and what is wrong with it; "
                  "`non_field_errors` for the input as a whole.")


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """Return extend_schema responses for these error statuses, each with the error body."""
    return {code: OpenApiResponse(ErrorSerializer, description=ERROR_TEXT[code]) for code in codes}


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema plus the statuses any API operation may answer.

    Every operation can answer 401 (no credentials), 403 (not allowed) and 429 (throttled, with Retry-After);
    one with an id in its path answers 404 for an id that is not there or not yours. Other statuses
    (400, 409) each operation declares itself with ``errors(...)``. Only a view's "list" is paginated.
    """

    def _get_paginator(self):
        # Custom actions returning many objects (a VE's snapshots, backups, tasks) are plain arrays.
        if getattr(self.view, "action", "list") != "list":
            return None
        return super()._get_paginator()

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        codes = [401, 403, 429]
        if "{" in self.path or (direction == "response" and self.method == "GET" and self._get_paginator()):
            codes.append(404)  # an id not there or not yours; a page beyond the last (or not a page)
        for code in codes:
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=ERROR_TEXT[code]), str(code), direction=direction)
        responses["429"]["headers"] = RETRY_AFTER
        return dict(sorted(responses.items()))


class VEFromPath:
    """For viewsets under /api/ves/<ctid>/: the VE the path names, if the user may see it (else a 404)."""

    def get_ve(self):
        from django.http import Http404

        from vzpanel.ves.access import get_ve_or_404

        ctid = str(self.kwargs.get("ctid", ""))
        if not (ctid.isdigit() and CTID_MIN <= int(ctid) <= CTID_MAX):
            raise Http404("No such VE.")
        return get_ve_or_404(self.request.user, ctid)
