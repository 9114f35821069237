"""The API of a VE's firewall (issue 15): read it, replace it (a task). Its owner and admins only."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from vzpanel.ves import firewall

from . import serializers as s
from .schema import VEFromPath, errors

CTID = OpenApiParameter("ctid", int, OpenApiParameter.PATH, description="the VE's id")


class FirewallSerializer(serializers.Serializer):
    policy = serializers.ChoiceField(choices=["accept", "drop"], help_text="for traffic no rule matches")
    rules = serializers.ListField(child=serializers.CharField(max_length=120), max_length=firewall.MAX_RULES,
                                  help_text="ACTION PROTO [PORT[-PORT]] [from SOURCE], e.g. 'accept tcp 22 from "
                                            "203.0.113.0/24'; first match decides")


class VEFirewallViewSet(VEFromPath, viewsets.ViewSet):
    """A VE's firewall, enforced on the host for what comes in to the VE."""

    parser_classes = [JSONParser]
    pagination_class = None

    def get_ve(self):
        ve = super().get_ve()
        firewall.check_access(self.request.user, ve)
        return ve

    @extend_schema(parameters=[CTID], responses={200: FirewallSerializer, **errors(403, 404)},
                   description="Show the VE's firewall as its node last reported it. Its owner and admins only.")
    def list(self, request, ctid=None):
        fw = firewall.current(self.get_ve())
        return Response({"policy": fw["policy"], "rules": fw["rules"]})

    @extend_schema(parameters=[CTID], request=FirewallSerializer,
                   responses={202: s.TaskSerializer, **errors(400, 403, 404, 409)},
                   description="Replace the VE's firewall (default policy and every rule), live: a task.")
    def create(self, request, ctid=None):
        ve = self.get_ve()
        ser = FirewallSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        task = firewall.set_firewall(request.user, ve, ser.validated_data["policy"], ser.validated_data["rules"],
                                     request=request)
        return Response(s.TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)
