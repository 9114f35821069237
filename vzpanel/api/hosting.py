"""The API of hosting customers' networking and SSH keys: a VE's addresses and SSH line, reverse DNS, the
user's public keys. The same services (vzpanel.ves.hosting) and permission rule as the pages."""

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from vzpanel.accounts.models import SSHKey
from vzpanel.ves import hosting

from . import serializers as s
from .schema import VEFromPath, errors

ON_A_VE = "Anyone who may see the VE: its owner, an admin, the teacher of its owner or an assistant of their course."
CTID = OpenApiParameter("ctid", int, OpenApiParameter.PATH, description="the VE's id")


class AddressSerializer(serializers.Serializer):
    address = serializers.CharField()
    version = serializers.IntegerField()
    pool = serializers.CharField()
    kind = serializers.ChoiceField(choices=["public", "private"])
    gateway = serializers.CharField(allow_blank=True)
    reverse_dns = serializers.CharField(allow_blank=True)
    ssh_port = serializers.IntegerField(allow_null=True)


class AllowedSerializer(serializers.Serializer):
    ipv4 = serializers.IntegerField(allow_null=True)
    ipv6 = serializers.IntegerField(allow_null=True)


class PoolSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    network = serializers.CharField()
    version = serializers.IntegerField()
    kind = serializers.CharField()


class NetworkSerializer(serializers.Serializer):
    addresses = AddressSerializer(many=True)
    ssh_port = serializers.IntegerField(allow_null=True)
    ssh_command = serializers.CharField(allow_blank=True, help_text="ssh -p PORT root@HOST, ready to copy")
    allowed = AllowedSerializer(help_text="addresses per VE the owner's plan allows")
    pools = PoolSummarySerializer(many=True)
    password_login = serializers.BooleanField()


class AddressAddSerializer(serializers.Serializer):
    version = serializers.ChoiceField(choices=[4, 6], default=4)
    address = serializers.CharField(required=False, allow_blank=True, max_length=64,
                                    help_text="a free address of the node's pools; empty: the next free one")


class AddressRemoveSerializer(serializers.Serializer):
    address = serializers.CharField(max_length=64)


class ReverseDNSSerializer(serializers.Serializer):
    address = serializers.CharField(max_length=64)
    reverse_dns = serializers.CharField(max_length=253, allow_blank=True)


class SSHPushSerializer(serializers.Serializer):
    password_login = serializers.BooleanField(default=True)


class SSHKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = SSHKey
        fields = ["id", "name", "key", "fingerprint", "created_at"]
        read_only_fields = ["id", "fingerprint", "created_at"]
        extra_kwargs = {"name": {"max_length": 64}, "key": {"max_length": 16384}}


def ssh_command(request, port) -> str:
    from vzpanel.nodes.sshforward import ssh_host

    return f"ssh -p {port} root@{ssh_host(request)}" if port else ""


class VENetworkViewSet(VEFromPath, viewsets.ViewSet):
    """A VE's addresses, SSH line and keys; every change of the VE is a task (202 Accepted with the task)."""

    parser_classes = [JSONParser]
    pagination_class = None

    def validated(self, serializer_class):
        ser = serializer_class(data=self.request.data)
        ser.is_valid(raise_exception=True)
        return ser.validated_data

    def network(self, ve):
        net = hosting.network_of(ve)
        return {**net, "ssh_command": ssh_command(self.request, net["ssh_port"])}

    @extend_schema(parameters=[CTID], responses={200: NetworkSerializer, **errors(404)},
                   description=f"Show the VE's addresses, its SSH port forward and what its plan allows. {ON_A_VE}")
    def list(self, request, ctid=None):
        return Response(NetworkSerializer(self.network(self.get_ve())).data)

    @extend_schema(parameters=[CTID], request=AddressAddSerializer,
                   responses={202: s.TaskSerializer, **errors(400, 403, 404, 409)},
                   description="Give the VE one more address, live (a task): a named free one of its node's pools or "
                               "the next free one. 403 beyond the plan.")
    @action(detail=False, methods=["post"], url_path="addresses")
    def add_address(self, request, ctid=None):
        ve = self.get_ve()
        data = self.validated(AddressAddSerializer)
        task = hosting.add_address(request.user, ve, version=data["version"], address=data.get("address", ""),
                                   request=request)
        return Response(s.TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[CTID], request=AddressRemoveSerializer,
                   responses={202: s.TaskSerializer, **errors(400, 404, 409)},
                   description="Take an address off the VE, live (a task); it goes back to the pool.")
    @action(detail=False, methods=["post"], url_path="addresses/remove")
    def remove_address(self, request, ctid=None):
        ve = self.get_ve()
        data = self.validated(AddressRemoveSerializer)
        task = hosting.remove_address(request.user, ve, data["address"], request=request)
        return Response(s.TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[CTID], request=ReverseDNSSerializer,
                   responses={200: NetworkSerializer, **errors(400, 404)},
                   description="Set the reverse-DNS name of one of the VE's addresses (empty clears it).")
    @action(detail=False, methods=["post"], url_path="reverse-dns")
    def reverse_dns(self, request, ctid=None):
        ve = self.get_ve()
        data = self.validated(ReverseDNSSerializer)
        hosting.set_reverse_dns(request.user, ve, data["address"], data["reverse_dns"])
        return Response(NetworkSerializer(self.network(ve)).data)

    @extend_schema(parameters=[CTID], request=SSHPushSerializer,
                   responses={202: s.TaskSerializer, **errors(400, 404, 409)},
                   description="Put the owner's SSH keys into root's authorized_keys and switch password log-in over "
                               "SSH on or off (a task).")
    @action(detail=False, methods=["post"], url_path="ssh-keys")
    def push_keys(self, request, ctid=None):
        ve = self.get_ve()
        data = self.validated(SSHPushSerializer)
        task = hosting.push_keys(request.user, ve, password_login=data["password_login"], request=request)
        return Response(s.TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)


class SSHKeyViewSet(viewsets.ViewSet):
    """Your public SSH keys (new VEs get them in root's authorized_keys)."""

    parser_classes = [JSONParser]
    pagination_class = None
    lookup_value_regex = r"\d{1,12}"

    @extend_schema(responses={200: SSHKeySerializer(many=True)}, description="List your public SSH keys.")
    def list(self, request):
        return Response(SSHKeySerializer(request.user.ssh_keys.all(), many=True).data)

    @extend_schema(request=SSHKeySerializer, responses={201: SSHKeySerializer, **errors(400, 403)},
                   description="Add a public key: one line, ssh-ed25519, ecdsa-sha2-nistp* or ssh-rsa (2048 bits or "
                               "more), with an optional comment.")
    def create(self, request):
        ser = SSHKeySerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        key = hosting.add_key(request.user, ser.validated_data["name"], ser.validated_data["key"])
        return Response(SSHKeySerializer(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None, **errors(404)}, description="Delete one of your keys (VEs keep it until "
                                                                      "your keys are put into them again).")
    def destroy(self, request, pk=None):
        deleted, _ = request.user.ssh_keys.filter(pk=int(pk)).delete()
        if not deleted:
            raise Http404("No such key.")
        return Response(status=status.HTTP_204_NO_CONTENT)
