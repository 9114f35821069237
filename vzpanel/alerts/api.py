from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers

from .models import Alert
from .services import visible_alerts


class AlertSerializer(serializers.ModelSerializer):
    ve = serializers.IntegerField(source="ve.ctid", allow_null=True, read_only=True)
    node = serializers.CharField(source="node.name", allow_null=True, read_only=True)
    firing = serializers.BooleanField(read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "kind", "ve", "node", "message", "since", "resolved_at", "firing"]


@extend_schema(description="Alerts of the VEs the caller may see (admins: every alert, node alerts too), newest "
                           "first; `?state=firing` for the open ones only.")
class AlertList(generics.ListAPIView):
    serializer_class = AlertSerializer

    def get_queryset(self):
        alerts = visible_alerts(self.request.user).select_related("ve", "node")
        if self.request.query_params.get("state") == "firing":
            alerts = alerts.filter(resolved_at__isnull=True)
        return alerts
