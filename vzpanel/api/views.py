"""The REST API: the same services and permission rule as the pages."""

from django.db.models import Exists, OuterRef
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from vzpanel.audit.models import AuditEntry
from vzpanel.audit.views import AuditSearchForm, search
from vzpanel.nodes.models import Node
from vzpanel.tasks.models import Task
from vzpanel.tasks.views import TaskFilterForm
from vzpanel.ves import services
from vzpanel.ves.access import get_task_or_404, get_ve_or_404, visible_backups, visible_tasks, visible_ves
from vzpanel.ves.forms import VEFilterForm
from vzpanel.ves.models import Backup

from . import serializers as s


def exception_handler(exc, context):
    """Turn a refused request into a response saying why, like any DRF error."""
    if isinstance(exc, services.ServiceError):
        return Response({"detail": exc.message}, status=exc.status_code)
    return drf_exception_handler(exc, context)


def filtered(form_class, request, queryset):
    form = form_class(request.query_params)
    if not form.is_valid():
        raise ValidationError(form.errors)
    return form.apply(queryset)


def accepted(task) -> Response:
    return Response(s.TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED,
                    headers={"Location": f"/api/tasks/{task.pk}/"})


class IsPanelAdmin(permissions.BasePermission):
    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.user.is_panel_admin)


VE_FILTERS = [
    OpenApiParameter("q", str, description="CTID, host name, owner or address"),
    OpenApiParameter("status", str, enum=["creating", "running", "stopped", "missing"]),
    OpenApiParameter("owner", str, description="owner's user name"),
    OpenApiParameter("node", str),
    OpenApiParameter("sort", str, description="ctid, hostname, status, owner, node, created; prefix - to reverse"),
]


class VEViewSet(viewsets.ViewSet):
    """VEs you may see; every change is a task (202 Accepted with the task)."""

    lookup_field = "ctid"
    lookup_value_regex = r"\d+"

    def get_ve(self):
        return get_ve_or_404(self.request.user, self.kwargs["ctid"])

    @extend_schema(parameters=VE_FILTERS, responses=s.VESerializer(many=True))
    def list(self, request):
        ves = visible_ves(request.user).select_related("owner", "node").annotate(
            busy=Exists(Task.objects.filter(ve=OuterRef("pk"), status__in=Task.ACTIVE)))
        ves = filtered(VEFilterForm, request, ves)
        from rest_framework.pagination import PageNumberPagination

        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(ves, request, view=self)
        return paginator.get_paginated_response(s.VESerializer(page, many=True).data)

    @extend_schema(responses=s.VESerializer)
    def retrieve(self, request, ctid=None):
        ve = self.get_ve()
        ve.busy = ve.tasks.filter(status__in=Task.ACTIVE).exists()
        return Response(s.VESerializer(ve).data)

    @extend_schema(request=s.VECreateSerializer, responses={202: s.TaskSerializer})
    def create(self, request):
        data = self.validated(s.VECreateSerializer)
        return accepted(services.create_ve(request.user, request=request, **data))

    @extend_schema(parameters=[OpenApiParameter("delete_backups", bool, description="also delete the VE's backups "
                                                "(default: keep them; then only admins can reach them)")],
                   responses={202: s.TaskSerializer})
    def destroy(self, request, ctid=None):
        ve = self.get_ve()
        flag = request.query_params.get("delete_backups", "false").lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise ValidationError({"delete_backups": ["Use true or false."]})
        return accepted(services.request_action(request.user, ve, Task.Action.DESTROY, request=request,
                                                delete_backups=flag in ("true", "1", "yes")))

    # --- snapshots and backups (each change is a task; the lists are what the node agent last read) ---

    @extend_schema(methods=["GET"], responses=s.SnapshotSerializer(many=True),
                   description="The VE's snapshots, oldest first (as the node agent last read them).")
    @extend_schema(methods=["POST"], request=s.SnapshotCreateSerializer, responses={202: s.TaskSerializer},
                   description="Take a snapshot (the VE keeps running). Refused beyond the plan's snapshots per VE.")
    @action(detail=True, methods=["get", "post"])
    def snapshots(self, request, ctid=None):
        ve = self.get_ve()
        if request.method == "GET":
            return Response(s.SnapshotSerializer(ve.snapshots.all(), many=True).data)
        data = self.validated(s.SnapshotCreateSerializer)
        return accepted(services.request_action(request.user, ve, Task.Action.SNAPSHOT, request=request, **data))

    @extend_schema(request=None, responses={202: s.TaskSerializer},
                   parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH)],
                   description="Roll the VE's files back to the snapshot; a running VE is restarted.")
    @action(detail=True, methods=["post"], url_path=r"snapshots/(?P<name>[^/]+)/rollback")
    def snapshot_rollback(self, request, ctid=None, name=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.SNAPSHOT_ROLLBACK, request=request,
                                                name=name))

    @extend_schema(request=None, responses={202: s.TaskSerializer},
                   parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH)])
    @action(detail=True, methods=["delete"], url_path=r"snapshots/(?P<name>[^/]+)")
    def snapshot_delete(self, request, ctid=None, name=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.SNAPSHOT_DELETE, request=request,
                                                name=name))

    @extend_schema(methods=["GET"], responses=s.BackupSerializer(many=True),
                   description="The VE's backups, newest first.")
    @extend_schema(methods=["POST"], request=None, responses={202: s.TaskSerializer},
                   description="Back the VE up now (while it runs); the oldest beyond the plan's number is removed.")
    @action(detail=True, methods=["get", "post"])
    def backups(self, request, ctid=None):
        ve = self.get_ve()
        if request.method == "GET":
            return Response(s.BackupSerializer(ve.backups.kept(), many=True).data)
        return accepted(services.request_action(request.user, ve, Task.Action.BACKUP, request=request))

    @extend_schema(request=None, responses={202: s.TaskSerializer},
                   parameters=[OpenApiParameter("backup_id", int, OpenApiParameter.PATH)],
                   description="Restore the backup over this VE (its files and settings are replaced; a running "
                               "VE is restarted).")
    @action(detail=True, methods=["post"], url_path=r"backups/(?P<backup_id>[^/]+)/restore")
    def backup_restore(self, request, ctid=None, backup_id=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.RESTORE, request=request,
                                                backup=backup_id))

    @extend_schema(request=s.RestoreNewSerializer, responses={202: s.TaskSerializer},
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

    @extend_schema(request=None, responses={202: s.TaskSerializer},
                   parameters=[OpenApiParameter("backup_id", int, OpenApiParameter.PATH)])
    @action(detail=True, methods=["delete"], url_path=r"backups/(?P<backup_id>[^/]+)")
    def backup_delete(self, request, ctid=None, backup_id=None):
        ve = self.get_ve()
        return accepted(services.request_action(request.user, ve, Task.Action.BACKUP_DELETE, request=request,
                                                backup=backup_id))

    @extend_schema(request=None, responses={202: s.TaskSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, ctid=None):
        return self.act(Task.Action.START)

    @extend_schema(request=None, responses={202: s.TaskSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, ctid=None):
        return self.act(Task.Action.STOP)

    @extend_schema(request=None, responses={202: s.TaskSerializer})
    @action(detail=True, methods=["post"])
    def restart(self, request, ctid=None):
        return self.act(Task.Action.RESTART)

    @extend_schema(request=s.ReinstallSerializer, responses={202: s.TaskSerializer})
    @action(detail=True, methods=["post"])
    def reinstall(self, request, ctid=None):
        return self.act(Task.Action.REINSTALL, s.ReinstallSerializer)

    @extend_schema(request=s.PasswordSerializer, responses={202: s.TaskSerializer})
    @action(detail=True, methods=["post"], url_path="set-password")
    def set_password(self, request, ctid=None):
        return self.act(Task.Action.SET_PASSWORD, s.PasswordSerializer)

    @extend_schema(request=s.HostnameSerializer, responses={202: s.TaskSerializer})
    @action(detail=True, methods=["post"], url_path="set-hostname")
    def set_hostname(self, request, ctid=None):
        return self.act(Task.Action.SET_HOSTNAME, s.HostnameSerializer)

    @extend_schema(request=None, responses={202: s.TaskSerializer},
                   description="Admins: set the VE's limits to its owner's plan, live (a set_limits task). "
                               "403 for others who may see the VE; 404 for those who may not.")
    @action(detail=True, methods=["post"], url_path="apply-plan")
    def apply_plan(self, request, ctid=None):
        ve = self.get_ve()  # 404 first: outsiders learn nothing
        return accepted(services.apply_plan(request.user, ve, request=request))

    @extend_schema(responses=s.TaskSerializer(many=True))
    @action(detail=True, methods=["get"])
    def tasks(self, request, ctid=None):
        ve = self.get_ve()
        return Response(s.TaskSerializer(ve.tasks.select_related("user", "node")[:50], many=True).data)

    @extend_schema(request=s.BulkSerializer, responses={202: s.TaskSerializer(many=True)})
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

    lookup_value_regex = r"[^/]+"

    def check_admin(self):
        if not self.request.user.is_panel_admin:
            raise Http404("Not found.")  # like the page /ves/backups/

    @extend_schema(responses=s.BackupSerializer(many=True))
    def list(self, request):
        self.check_admin()
        backups = visible_backups(request.user).kept().filter(ve__status="destroyed").select_related("ve")
        return Response(s.BackupSerializer(backups, many=True).data)

    @extend_schema(request=s.RestoreNewSerializer, responses={202: s.TaskSerializer},
                   parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
                   description="Restore any backup (a destroyed VE's kept one, say) as a new VE; default owner: the "
                               "VE's former owner, within their plan unless beyond_plan.")
    @action(detail=True, methods=["post"], url_path="restore-new")
    def restore_new(self, request, pk=None):
        self.check_admin()
        try:
            backup = visible_backups(request.user).select_related("ve", "ve__owner").get(pk=int(pk))
        except (ValueError, TypeError, Backup.DoesNotExist):
            raise Http404("No such backup.") from None
        serializer = s.RestoreNewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        return accepted(services.restore_as_new(request.user, backup, request=request, **data))


class TaskViewSet(viewsets.ReadOnlyModelViewSet):
    """Tasks about VEs you may see."""

    serializer_class = s.TaskSerializer

    def get_queryset(self):
        tasks = visible_tasks(self.request.user).select_related("ve", "user", "node")
        if self.action == "list":
            tasks = filtered(TaskFilterForm, self.request, tasks)
        return tasks

    def get_object(self):
        return get_task_or_404(self.request.user, self.kwargs["pk"])

    @extend_schema(parameters=[OpenApiParameter("q", str), OpenApiParameter("status", str),
                               OpenApiParameter("action", str)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses=s.TaskSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        task = self.get_object()
        services.cancel_task(request.user, task, request=request)
        task.refresh_from_db()
        return Response(s.TaskSerializer(task).data)


class TemplateViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """OS templates a VE can be created from."""

    serializer_class = s.TemplateSerializer
    pagination_class = None

    def get_queryset(self):
        return Node.local().templates.select_related("node")


class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log (admins only)."""

    serializer_class = s.AuditEntrySerializer
    permission_classes = [IsPanelAdmin]

    @extend_schema(parameters=[OpenApiParameter("q", str), OpenApiParameter("action", str),
                               OpenApiParameter("result", str), OpenApiParameter("since", str),
                               OpenApiParameter("until", str)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_queryset(self):
        entries = AuditEntry.objects.all()
        if self.action == "list":
            form = AuditSearchForm(self.request.query_params)
            if not form.is_valid():
                raise ValidationError(form.errors)
            entries = search(entries, form.cleaned_data)
        return entries


