from django.contrib.auth import get_user_model
from rest_framework import serializers

from vzpanel.audit.models import AuditEntry
from vzpanel.nodes.models import Template
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE, Backup, Snapshot

from .schema import CTID_MAX, CTID_MIN

# Input bounds, so nothing unbounded reaches the database or the node agent. The services check the
# meaning (a free CTID, a template that exists); these check the size and the alphabet first.
HOSTNAME_RE = r"^[A-Za-z0-9.-]*$"
TEMPLATE_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SNAPSHOT_RE = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"
USERNAME_MAX = 150
PASSWORD_MAX = 128
BULK_MAX = 1000


def hostname_field(**kwargs):
    return serializers.RegexField(
        HOSTNAME_RE, max_length=253, error_messages={
            "invalid": "A host name is letters, digits, '-' and '.' only.",
            "max_length": "A host name is at most {max_length} characters."}, **kwargs)


def template_field(**kwargs):
    return serializers.RegexField(
        TEMPLATE_RE, max_length=64, error_messages={
            "invalid": "An OS template name is lower-case letters, digits, '.', '_' and '-' (64 at most)."},
        **kwargs)


def ctid_field(**kwargs):
    out_of_range = f"This CTID is out of range: a CTID is from {CTID_MIN} to {CTID_MAX}."
    return serializers.IntegerField(min_value=CTID_MIN, max_value=CTID_MAX, error_messages={
        "min_value": out_of_range, "max_value": out_of_range, "max_string_length": out_of_range}, **kwargs)


class UsernameField(serializers.SlugRelatedField):
    """A user named by user name; a name longer than any user name is refused before the lookup."""

    def __init__(self, **kwargs):
        super().__init__(slug_field="username", queryset=get_user_model().objects.all(), **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str) or len(data) > USERNAME_MAX:
            self.fail("invalid")
        return super().to_internal_value(data)


class VESerializer(serializers.ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    busy = serializers.BooleanField(read_only=True, default=False)
    status = serializers.SerializerMethodField(
        help_text='the VE\'s state; "unknown" while its node does not answer (status_why says why)')
    stored_status = serializers.CharField(source="status", read_only=True,
                                          help_text="the state the node last reported")
    status_why = serializers.SerializerMethodField(help_text='why the state is "unknown", else empty')

    class Meta:
        model = VE
        fields = ["ctid", "hostname", "status", "stored_status", "status_why", "ostemplate", "owner", "node",
                  "ip_addresses", "nproc", "limits", "usage", "usage_at", "busy", "created_at", "updated_at"]
        read_only_fields = fields

    @staticmethod
    def _marked(ve):
        if not hasattr(ve, "shown_status"):  # a list marks its whole page at once (one Redis round trip)
            from vzpanel.ves import nodestate

            nodestate.mark([ve])
        return ve

    def get_status(self, ve) -> str:
        return self._marked(ve).shown_status

    def get_status_why(self, ve) -> str:
        return self._marked(ve).unknown_why


class VECreateSerializer(serializers.Serializer):
    ostemplate = template_field(help_text="an OS template of the node (GET /api/templates/)")
    hostname = hostname_field(required=False, allow_blank=True, default="", help_text="default: ve<CTID>")
    root_password = serializers.CharField(required=False, allow_blank=True, default="", write_only=True,
                                          max_length=PASSWORD_MAX, style={"input_type": "password"},
                                          help_text="8 to 128 characters, no control characters; default: none")
    start = serializers.BooleanField(required=False, default=True)
    owner = UsernameField(required=False, allow_null=True, default=None, help_text="admins only; default: you")
    node = serializers.RegexField(r"^[a-z0-9][a-z0-9-]{0,62}$", required=False, allow_null=True, default=None,
                                  help_text="admins only; default: the node the placement policy picks",
                                  error_messages={"invalid": "A node name is lower-case letters, digits and "
                                                             "hyphens (63 at most)."})


class HostnameSerializer(serializers.Serializer):
    hostname = hostname_field()


class PasswordSerializer(serializers.Serializer):
    root_password = serializers.CharField(write_only=True, max_length=PASSWORD_MAX,
                                          style={"input_type": "password"},
                                          help_text="8 to 128 characters, no control characters")


class ReinstallSerializer(serializers.Serializer):
    ostemplate = serializers.RegexField(
        r"^([a-z0-9][a-z0-9._-]{0,63})?$", max_length=64, required=False, allow_blank=True, default="",
        help_text="default: the VE's own", error_messages={
            "invalid": "An OS template name is lower-case letters, digits, '.', '_' and '-' (64 at most)."})
    root_password = serializers.CharField(required=False, allow_blank=True, default="", write_only=True,
                                          max_length=PASSWORD_MAX, help_text="default: none")


class BulkSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["start", "stop"])
    ctids = serializers.ListField(child=ctid_field(), allow_empty=False, max_length=BULK_MAX,
                                  help_text=f"1 to {BULK_MAX} CTIDs; those you may not see are skipped")


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


class BulkResultSerializer(serializers.Serializer):
    tasks = TaskSerializer(many=True, help_text="the tasks started, one a VE")
    skipped = serializers.ListField(child=serializers.CharField(), help_text="why each other VE was not acted on")


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
    name = serializers.RegexField(
        SNAPSHOT_RE, max_length=64, required=False, allow_blank=True, default="",
        help_text="letters, digits, '.', '_', '-' (64 at most); default: the date and time",
        error_messages={"invalid": "This is not a valid snapshot name: use letters, digits, '.', '_' and '-', "
                                   "starting with a letter or digit.",
                        "max_length": "This is not a valid snapshot name: it is {max_length} characters at most."})
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                        help_text="one line")


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
    owner = UsernameField(required=False, allow_null=True, default=None,
                          help_text="admins only; default: the backup's VE's (former) owner")
    ctid = ctid_field(required=False, allow_null=True, default=None,
                      help_text="admins only; default: the next free CTID")
    hostname = hostname_field(required=False, allow_blank=True, default="",
                              help_text="default: ve<CTID> (under the backup's own CTID: its own)")
    start = serializers.BooleanField(required=False, default=True)
    beyond_plan = serializers.BooleanField(required=False, default=False,
                                           help_text="admins only: even if the owner's plan allows no more VEs")
