"""Read-only REST API of courses: GET /api/classes/ and /api/classes/<id>/ (register CourseViewSet as "classes").

The same visibility as the pages (vzpanel.classroom.access): admins see every course, a teacher their
own, assistants and students the courses they are in; any other id is a 404. Operators (admins, the
teacher, assistants) get every membership; a student only their own.
"""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, viewsets

from vzpanel.api.schema import errors

from .access import can_operate, visible_courses
from .models import Course, Membership


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    name = serializers.CharField()
    ve = serializers.SerializerMethodField()
    ve_status = serializers.SerializerMethodField()

    class Meta:
        model = Membership
        fields = ["id", "username", "name", "role", "group", "ve", "ve_status", "ssh_port", "asleep", "asleep_how",
                  "activity_at", "created_at"]

    def get_ve(self, m) -> int | None:
        ve = m.live_ve
        return ve.ctid if ve is not None else None

    def get_ve_status(self, m) -> str | None:
        ve = m.live_ve
        return ve.status if ve is not None else None


class CourseSerializer(serializers.ModelSerializer):
    teacher = serializers.CharField(source="teacher.username")
    plan = serializers.CharField(source="plan.name", default=None)
    node = serializers.CharField(source="node.name")
    state = serializers.CharField(source="state_label")
    students = serializers.SerializerMethodField()

    class Meta:
        model = Course
        fields = ["id", "name", "teacher", "node", "plan", "status", "state", "ends_on", "closed_at", "ended_at",
                  "ostemplate", "image_kind", "image_version", "ssh_access", "idle_minutes", "idle_action",
                  "max_ves", "max_ram_mb", "max_disk_gb", "created_at", "students"]

    def get_students(self, course) -> int:
        return course.memberships.filter(role=Membership.Role.STUDENT).count()


class CourseDetailSerializer(CourseSerializer):
    memberships = serializers.SerializerMethodField()

    class Meta(CourseSerializer.Meta):
        fields = [*CourseSerializer.Meta.fields, "memberships"]

    def get_memberships(self, course) -> list[dict]:
        user = self.context["request"].user
        rows = course.memberships.select_related("user", "ve")
        if not can_operate(user, course):
            rows = rows.filter(user=user)
        return MembershipSerializer(rows, many=True).data


@extend_schema_view(
    list=extend_schema(responses={200: CourseSerializer(many=True), **errors(404)},
                       description="List the courses you may see (admins: all; a teacher: their own; assistants "
                                   "and students: theirs), newest first, 50 a page."),
    retrieve=extend_schema(description="Show one course you may see, with its memberships (a student: only their "
                                       "own)."),
)
class CourseViewSet(viewsets.ReadOnlyModelViewSet):
    """Courses you may see; one course with its memberships (yours only, if you are a student)."""

    lookup_value_regex = r"\d+"

    def get_queryset(self):
        return visible_courses(self.request.user).select_related("teacher", "plan", "node").order_by("-created_at",
                                                                                                     "-id")

    def get_serializer_class(self):
        return CourseDetailSerializer if self.action == "retrieve" else CourseSerializer
