from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class Node(models.Model):
    """A hardware node running vzengine and a node agent on queue `node:<name>`."""

    name = models.CharField(
        max_length=64, unique=True, validators=[RegexValidator(r"^[a-z0-9][a-z0-9_.-]*$")]
    )
    description = models.CharField(max_length=200, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="last reconcile")

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


class Template(models.Model):
    """An OS template a node offers, as last reported by its engine."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="templates")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=200, blank=True)
    built = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["node", "name"], name="unique_template_per_node")]

    def __str__(self):
        return self.name
