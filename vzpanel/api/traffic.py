"""The API of a VE's monthly traffic (issue 15): this month against its plan's quota, and the past months."""

from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, viewsets
from rest_framework.response import Response

from vzpanel.traffic import services

from .schema import VEFromPath

CTID = OpenApiParameter("ctid", int, OpenApiParameter.PATH, description="the VE's id")


@extend_schema_field({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"})
class MonthField(serializers.Field):
    """A calendar month as "YYYY-MM"."""

    def to_representation(self, value):
        return f"{value:%Y-%m}"


class PastMonthSerializer(serializers.Serializer):
    month = MonthField(help_text="YYYY-MM (UTC)")
    bytes_in = serializers.IntegerField(help_text="received by the VE")
    bytes_out = serializers.IntegerField(help_text="sent by the VE")
    used_bytes = serializers.IntegerField(help_text="in plus out")
    quota_bytes = serializers.IntegerField(help_text="the plan's quota that month; 0: unlimited")
    action = serializers.ChoiceField(choices=["", "throttle", "suspend"], help_text="done when it went over")


@extend_schema_serializer(many=False)  # one object, though it is the viewset's "list"
class TrafficSerializer(serializers.Serializer):
    month = MonthField(help_text="this month, YYYY-MM (UTC)")
    bytes_in = serializers.IntegerField(help_text="received by the VE this month")
    bytes_out = serializers.IntegerField(help_text="sent by the VE this month")
    used_bytes = serializers.IntegerField(help_text="in plus out: what the quota counts")
    quota_bytes = serializers.IntegerField(help_text="the monthly quota of the owner's plan (1 GB = 10^9 bytes); "
                                                     "0: unlimited")
    percent = serializers.IntegerField(help_text="used of the quota, in whole percent (may pass 100); 0 without one")
    over_quota = serializers.ChoiceField(choices=["", "throttle", "suspend"],
                                         help_text="what happens over the quota; empty without one")
    throttle_mbit = serializers.IntegerField(allow_null=True, help_text="the throttled rate each way")
    state = serializers.ChoiceField(choices=["normal", "throttled", "locked"],
                                    help_text="throttled or locked until the month ends, or normal")
    until = serializers.DateField(allow_null=True, help_text="when a throttle or traffic lock ends")
    read_at = serializers.DateTimeField(allow_null=True, help_text="when the node's counters were last read")
    months = PastMonthSerializer(many=True, help_text=f"up to {services.PAST_MONTHS} past months, newest first")


class VETrafficViewSet(VEFromPath, viewsets.ViewSet):
    """A VE's traffic this month and before."""

    pagination_class = None

    @extend_schema(parameters=[CTID], responses={200: TrafficSerializer},
                   description="Show the VE's traffic this calendar month (UTC) against its plan's monthly quota, "
                               "what is in force over it, and the past months. Anyone who may see the VE.")
    def list(self, request, ctid=None):
        return Response(TrafficSerializer(services.summary(self.get_ve())).data)
