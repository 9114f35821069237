from django.contrib.auth import get_user_model
from rest_framework import serializers

from vzpanel.audit.models import AuditEntry
from vzpanel.nodes.models import Template
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE, Backup, Snapshot


class VESerializer(serializers.ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    busy = serializers.BooleanField(read_only=True, default=False)

    class Meta:
        model = VE
        fields = ["ctid", "hostname", "status", "ostemplate", "owner", "node", "ip_addresses", "nproc",
                  "limits", "usage", "usage_at", "busy", "created_at", "updated_at"]
        read_only_fields = fields


class VECreateSerializer(serializers.Serializer):
    ostemplate = serializers.CharField(max_length=100)
    hostname = serializers.CharField(max_length=253, required=False, allow_blank=True, default="")
    root_password = serializers.CharField(required=False, allow_blank=True, default="", write_only=True,
                                          style={"input_type": "password"})
    start = serializers.BooleanField(required=False, default=True)
    owner = serializers.SlugRelatedField(slug_field="username", queryset=get_user_model().objects.all(),
                                         required=False, allow_null=True, default=None,
                                         help_text="admins only; default: you")


class HostnameSerializer(serializers.Serializer):
    hostname = serializers.CharField(max_length=253)


class PasswordSerializer(serializers.Serializer):
    root_password = serializers.CharField(write_only=True, style={"input_type": "password"})


class ReinstallSerializer(serializers.Serializer):
    ostemplate = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    root_password = serializers.CharField(required=False, allow_blank=True, default="", write_only=True)


class BulkSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["start", "stop"])
    ctids = serializers.ListField(child=serializers.IntegerField(), allow_empty=False, max_length=5000)


class TaskSerializer(serializers.ModelSerializer):
    ve = serializers.SerializerMethodField()
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = ["id", "url", "ve", "node", "action", "params", "user", "status", "progress", "message", "log",
                  "result", "error", "error_ref", "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    def get_ve(self, task) -> int | None:
        return task.ve.ctid if task.ve_id else None

    def get_url(self, task) -> str:
        return f"/api/tasks/{task.pk}/"


class TemplateSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Template
        fields = ["name", "description", "built", "node"]


class AuditEntrySerializer(serializers.ModelSerializer):
    task = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "username", "action", "ctid", "ip", "result", "detail", "task"]


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["name", "description", "created_at", "ve_state", "size_bytes", "exclusive_bytes"]
        read_only_fields = fields


class SnapshotCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                 help_text="letters, digits, '.', '_', '-' (64 at most); default: the date and time")
    description = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class BackupSerializer(serializers.ModelSerializer):
    ve = serializers.IntegerField(source="ctid", read_only=True)
    file = serializers.CharField(source="file_name", read_only=True)
    verified = serializers.SerializerMethodField()

    class Meta:
        model = Backup
        fields = ["id", "ve", "file", "created_at", "size_bytes", "files", "data_bytes", "sha256", "verified",
                  "verified_at", "automatic"]
        read_only_fields = fields

    def get_verified(self, backup) -> bool:
        return backup.verified_at is not None


class RestoreNewSerializer(serializers.Serializer):
    owner = serializers.SlugRelatedField(slug_field="username", queryset=get_user_model().objects.all(),
                                         required=False, allow_null=True, default=None,
                                         help_text="admins only; default: the backup's VE's (former) owner")
    ctid = serializers.IntegerField(required=False, allow_null=True, default=None,
                                    help_text="admins only; default: the next free CTID")
    hostname = serializers.CharField(max_length=253, required=False, allow_blank=True, default="",
                                     help_text="default: ve<CTID> (under the backup's own CTID: its own)")
    start = serializers.BooleanField(required=False, default=True)
    beyond_plan = serializers.BooleanField(required=False, default=False,
                                           help_text="admins only: even if the owner's plan allows no more VEs")
