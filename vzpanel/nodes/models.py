import os

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q


def host_cpus() -> int:
    """The CPUs of the machine the panel runs on (a node that has not reported its own)."""
    return os.cpu_count() or 1


def host_ram_mb() -> int:
    """The memory of the machine the panel runs on, in MB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


class Node(models.Model):
    """A hardware node running vzengine and a node agent on queue `node:<name>`."""

    # The node agent's own rule (vzpanel.agent.protocol.NODE_RE): a name it refuses could never have an agent.
    # "templates" and "add" are the templates and Add node pages' paths under /nodes/ (join.RESERVED).
    name = models.CharField(
        max_length=63, unique=True,
        validators=[RegexValidator(r"^(?!(templates|add)$)[a-z0-9][a-z0-9-]{0,62}$",
                                   "Lower-case letters, digits and hyphens, starting with a letter or digit; "
                                   "not \"templates\" or \"add\".")],
    )
    description = models.CharField(max_length=200, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="last reconcile")
    # What the node has (its agent reports it); empty: not reported, the panel's own machine is assumed.
    cpus = models.PositiveSmallIntegerField("CPUs", null=True, blank=True, help_text="CPUs of the node")
    ram_mb = models.PositiveIntegerField("RAM (MB)", null=True, blank=True, help_text="memory of the node")
    maintenance = models.BooleanField(default=False, help_text="in maintenance: no new VEs are placed here")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def queue_name(self) -> str:
        return f"node:{self.name}"

    @classmethod
    def local(cls) -> "Node":
        """Return this host's node (VZPANEL_NODE), creating its row on first use."""
        node, _ = cls.objects.get_or_create(name=settings.VZPANEL_NODE)
        return node

    @property
    def cpu_count(self) -> int:
        return self.cpus or host_cpus()

    @property
    def memory_mb(self) -> int:
        return self.ram_mb or host_ram_mb()

    @classmethod
    def largest(cls) -> tuple[int, int]:
        """Return (CPUs, RAM in MB) of the biggest node: the most one VE can be given anywhere."""
        nodes = list(cls.objects.all()) or [cls(name="local")]
        return max(n.cpu_count for n in nodes), max(n.memory_mb for n in nodes)


class TemplateQuerySet(models.QuerySet):
    def usable_by(self, user) -> "TemplateQuerySet":
        """Return the templates user may see and build VEs from: the one template permission rule.

        Admins: every template. Anyone signed in: the public ones, those given to them, and the golden
        images of the courses they teach, assist or study in while the course is open (a course being
        archived or ended hides its images; a deleted course takes them with it).
        """
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.is_panel_admin:
            return self.all()
        rule = Q(visibility=Template.Visibility.EVERYONE) | Q(visibility=Template.Visibility.USER, owner=user)
        courses = Template._meta.get_field("course").related_model.objects.visible_to(user).open()
        rule |= Q(visibility=Template.Visibility.COURSE, course__in=courses)
        return self.filter(rule)

    def public(self) -> "TemplateQuerySet":
        """Return the templates everyone may use (for lists shown without a user)."""
        return self.filter(visibility=Template.Visibility.EVERYONE)


class Template(models.Model):
    """An OS template a node offers, as last reported by its engine, and who may build VEs from it."""

    class Visibility(models.TextChoices):
        EVERYONE = "everyone", "everyone"
        COURSE = "course", "the course's teacher, assistants and students"
        USER = "user", "its owner"
        ADMINS = "admins", "admins only"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="templates")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=200, blank=True)
    built = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="templates", help_text="who made it (a frozen VE's owner)")
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.EVERYONE,
                                  help_text="who may see it and build VEs from it")
    course = models.ForeignKey("classroom.Course", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="images", help_text="the course whose golden image it is")

    objects = TemplateQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["node", "name"], name="unique_template_per_node"),
            models.CheckConstraint(condition=~Q(visibility="course") | Q(course__isnull=False),
                                   name="course_template_has_course"),
        ]

    def __str__(self):
        return self.name

    @classmethod
    def for_course(cls, course, name: str, *, description: str = "", built: bool = True) -> "Template":
        """Record course's golden image `name` on its node: the course's, seen by its people only."""
        template, _ = cls.objects.update_or_create(
            node=course.node, name=name,
            defaults={"description": description[:200], "built": built, "owner_id": course.teacher_id,
                      "visibility": cls.Visibility.COURSE, "course": course})
        return template

    @classmethod
    def is_usable(cls, user, node, name: str) -> bool:
        """Whether user may build a VE on node from template name."""
        return cls.objects.usable_by(user).filter(node=node, name=name).exists()


class IPPool(models.Model):
    """A range of addresses a node gives its hosting VEs: public (routed as they are) or private (NAT out,
    an SSH port forward in). Its network must lie inside the node engine's IP_POOL / IP6_POOL (vz.conf)."""

    class Kind(models.TextChoices):
        PUBLIC = "public", "public (routed as they are)"
        PRIVATE = "private", "private (NAT outbound, SSH port forward inbound)"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="ip_pools")
    name = models.CharField(max_length=64)
    network = models.CharField(max_length=64, help_text="e.g. 192.0.2.0/26 or 2001:db8:1::/64")
    version = models.PositiveSmallIntegerField(editable=False, default=4)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.PUBLIC)
    gateway = models.CharField(max_length=64, blank=True, help_text="shown to customers; the host routes the VE")
    nameservers = models.CharField(max_length=200, blank=True, help_text="addresses separated by spaces")

    class Meta:
        ordering = ["node", "version", "name"]
        constraints = [models.UniqueConstraint(fields=["node", "name"], name="unique_pool_name_per_node")]

    def __str__(self):
        return f"{self.name} ({self.network})"

    def clean(self):
        from django.core.exceptions import ValidationError

        from vzpanel.nodes.pools import PoolError, clean_pool

        try:
            clean_pool(self)
        except PoolError as exc:
            raise ValidationError({exc.field: exc.message} if exc.field else exc.message) from None

    @property
    def nameserver_list(self) -> list[str]:
        return self.nameservers.split()


class IPAddress(models.Model):
    """An address of a pool given to a VE (the row goes when the VE is destroyed or the address removed)."""

    pool = models.ForeignKey(IPPool, on_delete=models.PROTECT, related_name="addresses")
    address = models.GenericIPAddressField(unique=True)
    ve = models.ForeignKey("ves.VE", on_delete=models.CASCADE, related_name="ip_rows")
    reverse_dns = models.CharField(max_length=253, blank=True)
    ssh_port = models.PositiveIntegerField(null=True, blank=True, unique=True,
                                           help_text="host port forwarded to port 22 (private pools)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pool__version", "id"]

    def __str__(self):
        return self.address
