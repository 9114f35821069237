"""Read-only REST API of resellers: GET /api/customers/ and /api/resellers/ (each with its quota in use).

The same rule as the pages: a reseller sees its own customers and itself; admins see every reseller and every
reseller's customer; anyone else an empty list, and a 404 for any id. Changes go through the pages.
"""

from django.db.models import Count, Q
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, viewsets

from vzpanel.accounts.models import User
from vzpanel.api.schema import errors
from vzpanel.api.views import row_id

from . import services


class CustomerSerializer(serializers.ModelSerializer):
    plan = serializers.CharField(source="plan.name", default=None, help_text="the customer's plan (null: none)")
    reseller = serializers.CharField(source="reseller.username", help_text="the reseller it belongs to")
    ves = serializers.IntegerField(source="ve_count", help_text="its live VEs")

    class Meta:
        model = User
        fields = ["id", "username", "email", "first_name", "last_name", "is_active", "plan", "reseller", "ves",
                  "date_joined"]


class UsageSerializer(serializers.Serializer):
    name = serializers.ChoiceField(choices=["ves", "ram_mb", "disk_gb", "ipv4", "ipv6"])
    limit = serializers.IntegerField(help_text="the quota the admins set")
    used = serializers.IntegerField(help_text="what the customers' live VEs take, each by its plan")
    left = serializers.IntegerField(help_text="what is left (0 when over the quota)")


class ResellerSerializer(serializers.ModelSerializer):
    customers = serializers.IntegerField(source="customer_count")
    quota = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "email", "is_active", "customers", "quota"]

    @extend_schema_field(UsageSerializer(many=True))
    def get_quota(self, reseller) -> list[dict]:
        return UsageSerializer(services.usage_rows(reseller), many=True).data


def visible_customers(user):
    """Admins: every reseller's customer; a reseller: its own; anyone else: none."""
    if user.is_panel_admin:
        return User.objects.filter(reseller__isnull=False)
    if services.is_reseller(user):
        return services.customers_of(user)
    return User.objects.none()


def visible_resellers(user):
    """Admins: every reseller; a reseller: itself; anyone else: none."""
    if user.is_panel_admin:
        return User.objects.filter(role=User.Role.RESELLER)
    if services.is_reseller(user):
        return User.objects.filter(pk=user.pk)
    return User.objects.none()


class _ById(viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = r"\d+"
    what = "object"

    def get_object(self):
        found = self.get_queryset().filter(pk=row_id(self.kwargs["pk"], self.what)).first()
        if found is None:
            raise Http404(f"No such {self.what}.")
        return found


@extend_schema_view(
    list=extend_schema(responses={200: CustomerSerializer(many=True), **errors(404)},
                       description="List the customers you may see (a reseller: its own; admins: every reseller's; "
                                   "others: none), by user name, 50 a page."),
    retrieve=extend_schema(description="Show one customer you may see (a reseller: its own; admins: any "
                                       "reseller's)."),
)
class CustomerViewSet(_ById):
    """Resellers' customers: a reseller's own, or every reseller's for admins."""

    serializer_class = CustomerSerializer
    what = "customer"

    def get_queryset(self):
        return (visible_customers(self.request.user).select_related("plan", "reseller")
                .annotate(ve_count=Count("ves", filter=~Q(ves__status="destroyed"))).order_by("username", "pk"))


@extend_schema_view(
    list=extend_schema(responses={200: ResellerSerializer(many=True), **errors(404)},
                       description="List the resellers you may see (admins: all; a reseller: itself; others: none) "
                                   "with their quota: each resource's limit, what the customers' live VEs take by "
                                   "their plans, and what is left; 50 a page."),
    retrieve=extend_schema(description="Show one reseller you may see, with its quota in use."),
)
class ResellerViewSet(_ById):
    """Resellers and their quota in use."""

    serializer_class = ResellerSerializer
    what = "reseller"

    def get_queryset(self):
        return (visible_resellers(self.request.user)
                .annotate(customer_count=Count("customers", distinct=True)).order_by("username", "pk"))
