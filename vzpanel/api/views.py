"""The REST API: the same services and permission rule as the pages."""

from django.db.models import Exists, OuterRef
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from vzpanel.audit.models import AuditEntry
from vzpanel.audit.views import AuditSearchForm, search
from vzpanel.nodes.models import Template
from vzpanel.resellers import services as resellers
from vzpanel.tasks.models import Task
from vzpanel.tasks.views import TaskFilterForm
from vzpanel.ves import nodestate, services
from vzpanel.ves.access import get_task_or_404, visible_backups, visible_tasks, visible_ves
from vzpanel.ves.forms import VEFilterForm
from vzpanel.ves.models import Backup

from . import serializers as s
from .schema import ID_MAX, QUERY_VALUE_MAX, VEFromPath, errors


def flat_errors(data, prefix: str = "") -> dict[str, list[str]]:
    """Return DRF's nested validation errors as {field (dotted for items): [message, ...]}."""
    if isinstance(data, dict):
        out: dict[str, list[str]] = {}
        for key, value in data.items():
            out.update(flat_errors(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and any(isinstance(x, (dict, list)) for x in data):
        out = {}
        for i, value in enumerate(data):
            if value:
                out.update(flat_errors(value, f"{prefix}.{i}" if prefix else str(i)))
        return out
    messages = [str(x) for x in data] if isinstance(data, list) else [str(data)]
    return {prefix or "non_field_errors": messages}


def exception_handler(exc, context):
    """Answer a refused request with {"detail": why} (and "errors" per field for invalid input)."""
    if isinstance(exc, services.ServiceError):
        return Response({"detail": exc.message}, status=exc.status_code)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        fields = flat_errors(exc.detail)
        detail = "; ".join(msgs[0] if name == "non_field_errors" else f"{name}: {msgs[0]}"
                           for name, msgs in fields.items())
        response.data = {"detail": detail or "Invalid input.", "errors": fields}
    elif not (isinstance(response.data, dict) and set(response.data) == {"detail"}):
        response.data = {"detail": str(response.data)}
    return response


def checked_query(request) -> None:
    """Refuse query-string values too long or with control characters before any form or query sees them."""
    bad = {}
    for name, values in request.query_params.lists():
        for value in values:
            if len(value) > QUERY_VALUE_MAX:
                bad[name] = [f"At most {QUERY_VALUE_MAX} characters."]
            elif any(ord(c) < 32 or ord(c) == 127 for c in value):
                bad[name] = ["No control characters."]
    if bad:
        raise ValidationError(bad)


def filtered(form_class, request, queryset):
    checked_query(request)
    form = form_class(request.query_params)
    if not form.is_valid():
        raise ValidationError({name: list(msgs) for name, msgs in form.errors.items()})
    return form.apply(queryset)


def row_id(value, what: str) -> int:
    """Return a path id as int, or raise Http404 when it cannot be a row's id."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise Http404(f"No such {what}.") from None
    if not 1 <= n <= ID_MAX:
        raise Http404(f"No such {what}.")
    return n


def accepted(task) -> Response:
    return Response(s.TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED,
                    headers={"Location": f"/api/tasks/{task.pk}/"})


class NotFoundView(APIView):
    """Answer any path under /api/ that names no operation with a JSON 404 (not the site's HTML page)."""

    schema = None  # not an operation

    def not_found(self, request, *args, **kwargs):
        raise Http404("No such API path.")

    get = post = put = patch = delete = head = options = not_found


class IsPanelAdmin(permissions.BasePermission):
    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.user.is_panel_admin)


# Request bodies are JSON only: one documented media type, and no form or multipart parsing of odd bodies.
JSON_ONLY = [JSONParser]


def query(name, description, **kwargs) -> OpenApiParameter:
    return OpenApiParameter(name, str, description=f"{description} ({QUERY_VALUE_MAX} characters at most)",
                            **kwargs)


VE_FILTERS = [
    query("q", "CTID, host name, owner or address"),
    OpenApiParameter("status", str, enum=["creating", "running", "stopped", "missing"]),
    query("owner", "owner's user name"),
    query("node", "node name"),
    OpenApiParameter("sort", str, description="ctid, hostname, status, owner, node, created; prefix - to reverse"),
]
ON_A_VE = "Anyone who may see the VE: its owner, an admin, the teacher of its owner or an assistant of their course."
TASK = {202: s.TaskSerializer}
TASK_ERRORS = {**TASK, **errors(400, 409)}


class VEViewSet(VEFromPath, viewsets.ViewSet):
    """VEs you may see; every change is a task (202 Accepted with the task)."""

    parser_classes = JSON_ONLY

    lookup_field = "ctid"
    lookup_value_regex = r"\d+"
    pagination_class = PageNumberPagination

    @extend_schema(parameters=VE_FILTERS, responses={200: s.VESerializer(many=True), **errors(400, 404)},
                   description="List the VEs you may see (admins: all; a teacher: their students'; others: their "
                               "own), filtered and sorted, 50 a page; `busy` says a task is running on the VE.")
    def list(self, request):
        ves = visible_ves(request.user).select_related("owner", "node").annotate(
            busy=Exists(Task.objects.filter(ve=OuterRef("pk"), status__in=Task.ACTIVE)))
        ves = filtered(VEFilterForm, request, ves)
        paginator = self.pagination_class()
        page = nodestate.mark(paginator.paginate_queryset(ves, request, view=self))  # one Redis round trip
        return paginator.get_paginated_response(s.VESerializer(page, many=True).data)

    @extend_schema(responses=s.VESerializer, description=f"Show one VE. {ON_A_VE}")
    def retrieve(self, request, ctid=None):
        ve = self.get_ve()
        ve.busy = ve.tasks.filter(status__in=Task.ACTIVE).exists()
        return Response(s.VESerializer(ve).data)

    @extend_schema(request=s.VECreateSerializer, responses={**TASK_ERRORS, **errors(403)},
                   description="Create a VE (a create task): customers and students within their plan, admins for "
                               "anyone (`owner`). 403 beyond the plan.")
    def create(self, request):
        data = self.validated(s.VECreateSerializer)
        return accepted(services.create_ve(request.user, request=request, **data))

    @extend_schema(parameters=[OpenApiParameter("delete_backups", bool, description="also delete the VE's backups "
                                                "(default: keep them; then only admins can reach them)")],
                   responses=TASK_ERRORS, description=f"Destroy the VE (a destroy task). {ON_A_VE}")
    def destroy(self, request, ctid=None):
        ve = self.get_ve()
        flag = request.query_params.get("delete_backups", "false").lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise ValidationError({"delete_backups": ["Use true or false."]})
        return accepted(services.request_action(request.user, ve, Task.Action.DESTROY, request=request,
                                                delete_backups=flag in ("true", "1", "yes")))

    # --- snapshots and backups (each change is a task; the lists are what the node agent last read) ---

    @extend_schema(methods=["GET"], responses=s.SnapshotSerializer(many=True),
                   description=f"The VE's snapshots, oldest first (as the node agent last read them). {ON_A_VE}")
    @extend_schema(methods=["POST"], request=s.SnapshotCreateSerializer, responses={**TASK_ERRORS, **errors(403)},
                   description="Take a snapshot (the VE keeps running). 403 beyond the plan's snapshots per VE. "
                               f"{ON_A_VE}")
    @action(detail=True, methods=["get", "post"])
    def snapshots(self, request, ctid=None):
        ve = self.get_ve()
        if request.method == "GET":
            return Response(s.SnapshotSerializer(ve.snapshots.all(), many=True).data)
        data = self.validated(s.SnapshotCreateSerializer)
        return accepted(services.request_action(request.user, ve, Task.Action.SNAPSHOT, request=request, **data))

    @extend_schema(request=None, responses=TASK_ERRORS,
                   parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH)],
                   description=f"Roll the VE's files back to the snapshot; a running VE is restarted. {ON_A_VE}")
    @action(detail=True, methods=["post"], url_path=r"snapshots/(?P<name>[^/]+)/rollback")
    def snapshot_rollback(self, request, ctid=None, name=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.SNAPSHOT_ROLLBACK, request=request,
                                                name=name))

    @extend_schema(request=None, responses=TASK_ERRORS,
                   parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH)],
                   description=f"Delete the snapshot (a task). {ON_A_VE}")
    @action(detail=True, methods=["delete"], url_path=r"snapshots/(?P<name>[^/]+)")
    def snapshot_delete(self, request, ctid=None, name=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.SNAPSHOT_DELETE, request=request,
                                                name=name))

    @extend_schema(methods=["GET"], responses=s.BackupSerializer(many=True),
                   description=f"The VE's backups, newest first. {ON_A_VE}")
    @extend_schema(methods=["POST"], request=None, responses={**TASK_ERRORS, **errors(403)},
                   description="Back the VE up now (while it runs); the oldest beyond the plan's number is removed. "
                               f"403 when the plan includes no backups. {ON_A_VE}")
    @action(detail=True, methods=["get", "post"])
    def backups(self, request, ctid=None):
        ve = self.get_ve()
        if request.method == "GET":
            return Response(s.BackupSerializer(ve.backups.kept(), many=True).data)
        return accepted(services.request_action(request.user, ve, Task.Action.BACKUP, request=request))

    @extend_schema(request=None, responses=TASK_ERRORS,
                   parameters=[OpenApiParameter("backup_id", int, OpenApiParameter.PATH)],
                   description="Restore the backup over this VE (its files and settings are replaced; a running "
                               f"VE is restarted). {ON_A_VE}")
    @action(detail=True, methods=["post"], url_path=r"backups/(?P<backup_id>[^/]+)/restore")
    def backup_restore(self, request, ctid=None, backup_id=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.RESTORE, request=request,
                                                backup=backup_id))

    @extend_schema(request=s.RestoreNewSerializer, responses={**TASK_ERRORS, **errors(403)},
                   parameters=[OpenApiParameter("backup_id", int, OpenApiParameter.PATH)],
                   description="Restore the backup as a new VE (the task's VE; this VE is not touched): its own CTID, "
                               "host name, identity and addresses from the pool, the owner's plan limits. Admins: "
                               "any owner and CTID; the VE's owner: a VE of their own within their plan; others who "
                               "may see the VE: 403.")
    @action(detail=True, methods=["post"], url_path=r"backups/(?P<backup_id>[^/]+)/restore-new")
    def backup_restore_new(self, request, ctid=None, backup_id=None):
        ve = self.get_ve()
        backup = services.find_backup(request.user, ve, backup_id)
        data = self.validated(s.RestoreNewSerializer)
        return accepted(services.restore_as_new(request.user, backup, request=request, **data))

    @extend_schema(request=None, responses=TASK_ERRORS,
                   parameters=[OpenApiParameter("backup_id", int, OpenApiParameter.PATH)],
                   description=f"Delete the backup (a task). {ON_A_VE}")
    @action(detail=True, methods=["delete"], url_path=r"backups/(?P<backup_id>[^/]+)")
    def backup_delete(self, request, ctid=None, backup_id=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.BACKUP_DELETE, request=request,
                                                backup=backup_id))

    @extend_schema(request=None, responses=TASK_ERRORS, description=f"Start the VE (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"])
    def start(self, request, ctid=None):
        return self.act(Task.Action.START)

    @extend_schema(request=None, responses=TASK_ERRORS, description=f"Stop the VE (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"])
    def stop(self, request, ctid=None):
        return self.act(Task.Action.STOP)

    @extend_schema(request=None, responses=TASK_ERRORS, description=f"Restart the VE (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"])
    def restart(self, request, ctid=None):
        return self.act(Task.Action.RESTART)

    @extend_schema(request=None, responses=TASK_ERRORS,
                   description="Boot the VE into a rescue system with its own disk at /mnt, for a VE whose init no "
                               "longer starts; it keeps the VE's addresses and root's SSH keys (a task). "
                               f"{ON_A_VE}")
    @action(detail=True, methods=["post"])
    def rescue(self, request, ctid=None):
        return self.act("rescue")

    @extend_schema(request=None, responses=TASK_ERRORS,
                   description=f"Leave the rescue system and boot the VE normally (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"], url_path="rescue-leave")
    def rescue_leave(self, request, ctid=None):
        return self.act("rescue_leave")

    @extend_schema(request=s.ReinstallSerializer, responses=TASK_ERRORS,
                   description=f"Reinstall the VE from an OS template: its files are replaced (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"])
    def reinstall(self, request, ctid=None):
        return self.act(Task.Action.REINSTALL, s.ReinstallSerializer)

    @extend_schema(request=s.PasswordSerializer, responses=TASK_ERRORS,
                   description=f"Set the VE's root password (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"], url_path="set-password")
    def set_password(self, request, ctid=None):
        return self.act(Task.Action.SET_PASSWORD, s.PasswordSerializer)

    @extend_schema(request=s.HostnameSerializer, responses=TASK_ERRORS,
                   description=f"Change the VE's host name (a task). {ON_A_VE}")
    @action(detail=True, methods=["post"], url_path="set-hostname")
    def set_hostname(self, request, ctid=None):
        return self.act(Task.Action.SET_HOSTNAME, s.HostnameSerializer)

    @extend_schema(request=None, responses={**TASK_ERRORS, **errors(403)},
                   description="Admins: set the VE's limits to its owner's plan, live (a set_limits task). "
                               "403 for others who may see the VE; 404 for those who may not.")
    @action(detail=True, methods=["post"], url_path="apply-plan")
    def apply_plan(self, request, ctid=None):
        ve = self.get_ve()  # 404 first: outsiders learn nothing
        return accepted(services.apply_plan(request.user, ve, request=request))

    @extend_schema(responses=s.TaskSerializer(many=True),
                   description=f"The VE's last 50 tasks, newest first. {ON_A_VE}")
    @action(detail=True, methods=["get"])
    def tasks(self, request, ctid=None):
        ve = self.get_ve()
        return Response(s.TaskSerializer(ve.tasks.select_related("user", "node")[:50], many=True).data)

    @extend_schema(request=s.BulkSerializer, responses={202: s.BulkResultSerializer, **errors(400)},
                   description="Admins only (403 for others): start or stop many VEs at once, a task each; VEs "
                               "that cannot take the action now are listed in `skipped` with why.")
    @action(detail=False, methods=["post"], permission_classes=[IsPanelAdmin])
    def bulk(self, request):
        data = self.validated(s.BulkSerializer)
        ves = visible_ves(request.user).filter(ctid__in=data["ctids"]).select_related("node")
        tasks, skipped = services.bulk_action(request.user, ves, data["action"], request=request)
        return Response({"tasks": s.TaskSerializer(tasks, many=True).data, "skipped": skipped},
                        status=status.HTTP_202_ACCEPTED)

    def validated(self, serializer_class) -> dict:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def act(self, action_name, serializer_class=None):
        ve = self.get_ve()  # 404 before looking at the input: outsiders learn nothing
        params = self.validated(serializer_class) if serializer_class else {}
        params = {k: v for k, v in params.items() if v != ""}
        return accepted(services.request_action(self.request.user, ve, action_name, request=self.request, **params))


class BackupViewSet(viewsets.ViewSet):
    """Admins: the backups destroyed VEs left behind, to restore as a new VE (404 for everyone else)."""

    parser_classes = JSON_ONLY

    lookup_value_regex = r"[^/]+"

    def check_admin(self):
        if not self.request.user.is_panel_admin:
            raise Http404("Not found.")  # like the page /ves/backups/

    @extend_schema(responses={200: s.BackupSerializer(many=True), **errors(404)},
                   description="Admins only (404 for others): the kept backups of destroyed VEs.")
    def list(self, request):
        self.check_admin()
        backups = visible_backups(request.user).kept().filter(ve__status="destroyed").select_related("ve")
        return Response(s.BackupSerializer(backups, many=True).data)

    @extend_schema(request=s.RestoreNewSerializer, responses={**TASK_ERRORS, **errors(403)},
                   parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
                   description="Admins only (404 for others): restore any backup (a destroyed VE's kept one, say) "
                               "as a new VE; default owner: the VE's former owner, within their plan unless "
                               "beyond_plan.")
    @action(detail=True, methods=["post"], url_path="restore-new")
    def restore_new(self, request, pk=None):
        self.check_admin()
        try:
            backup = visible_backups(request.user).select_related("ve", "ve__owner").get(pk=row_id(pk, "backup"))
        except Backup.DoesNotExist:
            raise Http404("No such backup.") from None
        serializer = s.RestoreNewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        return accepted(services.restore_as_new(request.user, backup, request=request, **data))


@extend_schema_view(
    retrieve=extend_schema(description="Show one task: its progress, log and result. Anyone who may see its VE "
                                       "(the user who started it included)."),
)
class TaskViewSet(viewsets.ReadOnlyModelViewSet):
    """Tasks about VEs you may see."""

    parser_classes = JSON_ONLY

    serializer_class = s.TaskSerializer

    def get_queryset(self):
        tasks = visible_tasks(self.request.user).select_related("ve", "user", "node")
        if self.action == "list":
            tasks = filtered(TaskFilterForm, self.request, tasks)
        return tasks

    def get_object(self):
        return get_task_or_404(self.request.user, row_id(self.kwargs["pk"], "task"))

    @extend_schema(parameters=[query("q", "CTID, user or message"), query("status", "queued, running, ..."),
                               query("action", "create, start, ...")],
                   responses={200: s.TaskSerializer(many=True), **errors(400, 404)},
                   description="List the tasks about VEs you may see, newest first, 50 a page.")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses={200: s.TaskSerializer, **errors(409)},
                   description="Cancel a queued task (409 once it runs). Anyone who may see its VE.")
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        task = self.get_object()
        services.cancel_task(request.user, task, request=request)
        task.refresh_from_db()
        return Response(s.TaskSerializer(task).data)


@extend_schema_view(list=extend_schema(description="List the OS templates of every node, each with its node "
                                                    "(any signed-in user: those they may use)."))
class TemplateViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """OS templates a VE can be created from."""

    serializer_class = s.TemplateSerializer
    pagination_class = None

    def get_queryset(self):
        return (Template.objects.usable_by(self.request.user).select_related("node")
                .order_by("node__name", "name"))


class IsPanelAdminOrReseller(permissions.BasePermission):
    def has_permission(self, request, view):
        return IsPanelAdmin().has_permission(request, view) or resellers.is_reseller(request.user)


AUDIT_WHO = "Admins: every entry; resellers: their own, their customers' and their customers' VEs' (403 for others)"


@extend_schema_view(retrieve=extend_schema(description=f"One audit entry. {AUDIT_WHO}."))
class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log (admins; resellers their part of it)."""

    serializer_class = s.AuditEntrySerializer
    permission_classes = [IsPanelAdminOrReseller]

    def visible(self):
        user = self.request.user
        return AuditEntry.objects.all() if user.is_panel_admin else resellers.audit_entries(user)

    @extend_schema(parameters=[query("q", "user name, CTID, address or detail"), query("action", "e.g. ve.stop"),
                               query("result", "e.g. completed, denied"), query("since", "a date, YYYY-MM-DD"),
                               query("until", "a date, YYYY-MM-DD")],
                   responses={200: s.AuditEntrySerializer(many=True), **errors(400, 404)},
                   description=f"Search the audit log, newest first, 50 a page. {AUDIT_WHO}.")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_queryset(self):
        entries = self.visible()
        if self.action == "list":
            checked_query(self.request)
            form = AuditSearchForm(self.request.query_params)
            if not form.is_valid():
                raise ValidationError({name: list(msgs) for name, msgs in form.errors.items()})
            entries = search(entries, form.cleaned_data)
        return entries

    def get_object(self):
        entry = self.visible().filter(pk=row_id(self.kwargs["pk"], "audit entry")).first()
        if entry is None:
            raise Http404("No such audit entry.")
        self.check_object_permissions(self.request, entry)
        return entry


