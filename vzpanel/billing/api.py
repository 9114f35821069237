"""The billing API under /api/v1/billing/: admin tokens (scope full) only; bodies are JSON, errors the API's."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from vzpanel.accounts.models import APIToken
from vzpanel.api.auth import APITokenAuthentication
from vzpanel.api.schema import errors
from vzpanel.api.views import JSON_ONLY

from . import services
from .services import Conflict

PASSWORD = {"min_length": 8, "max_length": 128, "write_only": True, "trim_whitespace": False}
REQUEST_ID = serializers.RegexField(r"^[A-Za-z0-9._:-]{1,100}$", required=False,
                                    help_text="your own key for this call: a repeat with it is a repeat, whatever "
                                              "came between (optional)")


class Strict(serializers.Serializer):
    """A body with no fields other than the documented ones (a typo is an error, not silently ignored)."""

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class BillingCustomerSerializer(Strict):
    email = serializers.EmailField(required=False, max_length=254)
    username = serializers.RegexField(r"^[A-Za-z0-9@.+_-]{1,150}$", required=False,
                                      help_text="an existing customer, or the new one's (default: from the e-mail)")
    first_name = serializers.CharField(required=False, max_length=150, allow_blank=True)
    last_name = serializers.CharField(required=False, max_length=150, allow_blank=True)
    password = serializers.CharField(required=False, **PASSWORD, help_text="a new customer's (default: generated, "
                                                                           "shown once)")

    def validate(self, attrs):
        if not attrs.get("email") and not attrs.get("username"):
            raise serializers.ValidationError("Name the customer by email or username.")
        return attrs


class BillingCreateSerializer(Strict):
    customer = BillingCustomerSerializer()
    plan = serializers.CharField(max_length=64)
    template = serializers.CharField(max_length=100)
    hostname = serializers.CharField(required=False, max_length=253, allow_blank=True)
    root_password = serializers.CharField(required=False, **PASSWORD)
    start = serializers.BooleanField(required=False, default=True)
    request_id = REQUEST_ID


class BillingSuspendSerializer(Strict):
    reason = serializers.CharField(required=False, max_length=150,
                                   help_text="shown to the customer when they try to start the VE (default "
                                             "non-payment)")
    request_id = REQUEST_ID

    def validate_reason(self, value):
        if not value.isprintable():
            raise serializers.ValidationError("One line without control characters.")
        return value


class BillingUnsuspendSerializer(Strict):
    request_id = REQUEST_ID


class BillingChangePlanSerializer(Strict):
    plan = serializers.CharField(max_length=64)
    request_id = REQUEST_ID


class BillingTerminateSerializer(Strict):
    delete_backups = serializers.BooleanField(required=False, default=True)
    request_id = REQUEST_ID


BODIES = {"create": BillingCreateSerializer, "suspend": BillingSuspendSerializer, "unsuspend": BillingUnsuspendSerializer,
          "change-plan": BillingChangePlanSerializer, "terminate": BillingTerminateSerializer}


class BillingCustomerAnswer(serializers.Serializer):
    username = serializers.CharField()
    email = serializers.CharField(allow_blank=True)


class BillingVEAnswer(serializers.Serializer):
    ctid = serializers.IntegerField()
    hostname = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    ostemplate = serializers.CharField()
    locked = serializers.CharField(allow_blank=True, help_text="why the VE is locked against its owner; empty: not")
    ip_addresses = serializers.ListField(child=serializers.CharField())
    limits = serializers.DictField()


class BillingAddressAnswer(serializers.Serializer):
    address = serializers.CharField()
    version = serializers.IntegerField()
    gateway = serializers.CharField(allow_null=True, allow_blank=True)
    ssh_port = serializers.IntegerField(allow_null=True, help_text="the host port forwarded to the VE's SSH")


class BillingTaskAnswer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    status = serializers.CharField()
    url = serializers.CharField(help_text="follow the task here (GET /api/tasks/<id>/)")


class BillingCredentialsAnswer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(help_text="the new customer's password: in the first answer only, never kept")


class BillingServiceAnswer(serializers.Serializer):
    """What every billing call answers (a repeat: the first answer again, without credentials)."""

    external_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["active", "suspended", "terminated"])
    plan = serializers.CharField()
    customer = BillingCustomerAnswer()
    ve = BillingVEAnswer(allow_null=True)
    addresses = BillingAddressAnswer(many=True)
    ssh_port = serializers.IntegerField(allow_null=True)
    task = BillingTaskAnswer(allow_null=True, help_text="the task this call queued (null: nothing to do on the node)")
    note = serializers.CharField(allow_blank=True)
    credentials = BillingCredentialsAnswer(required=False, help_text="create of a new customer, first answer only")


EXTERNAL_ID = OpenApiParameter("external_id", str, OpenApiParameter.PATH, pattern=services.EXTERNAL_ID_RE.pattern,
                              description="the billing system's id of the service (WHMCS: its service id)")


class BillingAdmin(permissions.BasePermission):
    """An admin's API token with scope full: the billing system's key, never a session or a customer's."""

    message = "Billing calls need an admin's API token with scope full."

    def has_permission(self, request, view):
        token = request.auth
        return bool(isinstance(token, APIToken) and token.scope == "full" and request.user.is_panel_admin)


class BillingView(APIView):
    authentication_classes = [APITokenAuthentication]
    permission_classes = [BillingAdmin]
    parser_classes = JSON_ONLY


class ServiceView(BillingView):
    @extend_schema(operation_id="billing_service", parameters=[EXTERNAL_ID], responses={200: BillingServiceAnswer, **errors(400)},
                   description="Billing (admin tokens, scope full): the service's current state: customer, VE, "
                               "addresses.")
    def get(self, request, external_id):
        return Response(services.show(external_id))


class CallView(BillingView):
    """A billing call: checks the body's shape, then services.run_call (idempotent by the external id)."""

    call = ""

    def post(self, request, external_id):
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise serializers.ValidationError({"non_field_errors": ["The body is a JSON object."]})
        serializer = BODIES[self.call](data=body)
        serializer.is_valid(raise_exception=True)
        data = {**serializer.validated_data}
        if "customer" in data:
            data["customer"] = dict(data["customer"])
        try:
            outcome = services.run_call(request.user, external_id, self.call, self.raw(body, data), request=request)
        except Conflict as exc:
            return Response({"detail": exc.message, "errors": exc.errors}, status=exc.status_code)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        return Response(outcome.answer, status=outcome.status_code, headers=headers)

    @staticmethod
    def raw(body: dict, data: dict) -> dict:
        """The body as sent (the key of a repeat), with the checked values the handlers use filled in."""
        merged = {**data, **body}
        if "customer" in data:
            merged["customer"] = {**data["customer"], **body["customer"]}
        return merged


SAME = " A repeat with the same body answers as the first time and changes nothing (docs/billing.md)."
DESCRIPTIONS = {
    "create": ("Billing (admin tokens, scope full): create the service: its customer (found by username or e-mail, "
               "or made, with a password shown in this answer only) and a VE on the plan. 201. The same external id "
               "with another body is a 409 naming what differs." + SAME),
    "suspend": ("Billing: suspend the service: its VE is locked against its owner (the reason is what they are "
                "told) and stopped." + SAME),
    "unsuspend": "Billing: lift the service's suspension (billing's lock only) and start its VE." + SAME,
    "change-plan": ("Billing: move the service to another plan: its VE's limits change live (a set_limits task). "
                    "409 while suspended." + SAME),
    "terminate": "Billing: destroy the service's VE (its backups too unless delete_backups is false)." + SAME,
}


def call_view(name: str):
    """The view of one call, with its own body and description in the OpenAPI schema."""
    code = 201 if name == "create" else 200

    class View(CallView):
        call = name

        @extend_schema(operation_id=f"billing_{name.replace('-', '_')}", request=BODIES[name], parameters=[EXTERNAL_ID],
                       responses={code: BillingServiceAnswer, **errors(400, 409)}, description=DESCRIPTIONS[name])
        def post(self, request, external_id):
            return super().post(request, external_id)

    View.__name__ = View.__qualname__ = f"Billing{name.title().replace('-', '')}View"
    return View.as_view()
