"""Usage history: one series per VE (and one per node), its points in three tables of falling resolution.

Each point holds *sums* over the samples it covers and their count ``n`` (plus the maxima of CPU and memory),
so a rollup bucket is updated by adding a new sample to it, without reading anything back, and the average
is ``sum / n`` when it is read (`rollup.py`). Values are integers (SQLite stores small ones in 1-3 bytes):

| column | unit |
| --- | --- |
| cpu, cpu_max | milli-CPUs (1000 = one CPU busy the whole time) |
| mem, mem_max, disk | bytes |
| net_in, net_out | bytes per second |
| nproc | processes and threads |

The key is (series, ts), ts the bucket's start in Unix seconds; nothing else is indexed.
"""

from django.db import models


class Series(models.Model):
    """The history of one VE (``ve`` set) or of a node itself (``ve`` empty)."""

    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="metric_series")
    ve = models.ForeignKey("ves.VE", on_delete=models.CASCADE, null=True, blank=True, related_name="metric_series")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "ve"], name="metrics_one_series_per_ve"),
            models.UniqueConstraint(fields=["node"], condition=models.Q(ve__isnull=True),
                                    name="metrics_one_series_per_node"),
        ]

    def __str__(self):
        return f"{self.node.name}/{self.ve.ctid if self.ve_id else 'node'}"


class PointBase(models.Model):
    pk = models.CompositePrimaryKey("series_id", "ts")
    series_id = models.IntegerField()
    ts = models.BigIntegerField()
    n = models.IntegerField(default=1)
    cpu = models.BigIntegerField(null=True)
    cpu_max = models.BigIntegerField(null=True)
    mem = models.BigIntegerField(null=True)
    mem_max = models.BigIntegerField(null=True)
    disk = models.BigIntegerField(null=True)
    net_in = models.BigIntegerField(null=True)
    net_out = models.BigIntegerField(null=True)
    nproc = models.BigIntegerField(null=True)

    class Meta:
        abstract = True


class RawPoint(PointBase):
    """One sample per interval (10 s), kept a day."""

    class Meta:
        db_table = "metrics_raw"


class MinutePoint(PointBase):
    """One-minute buckets, kept a week."""

    class Meta:
        db_table = "metrics_minute"


class TenMinutePoint(PointBase):
    """Ten-minute buckets, kept a year."""

    class Meta:
        db_table = "metrics_tenmin"
