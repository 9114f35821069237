from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Plan(models.Model):
    """Resources one VE gets, how many VEs a user on this plan may have, and what its web console opens."""

    class ConsoleMode(models.TextChoices):
        ROOT = "root", "root shell"
        LOGIN = "login", "login prompt"

    name = models.CharField(max_length=64, unique=True)
    description = models.CharField(max_length=200, blank=True)
    ram_mb = models.PositiveIntegerField(
        "RAM (MB)", default=512, validators=[MinValueValidator(16)],
        help_text="Memory of each VE: at least 16, at most what the largest node has. There is no 0 for unlimited: "
                  "every VE always has a limit.")
    swap_mb = models.PositiveIntegerField("swap (MB)", default=0,
                                          help_text="Swap of each VE on top of its RAM; 0: no swap.")
    cpus = models.PositiveSmallIntegerField(
        "CPUs", default=1, validators=[MinValueValidator(1), MaxValueValidator(256)],
        help_text="CPUs each VE may use at once: at least 1, at most the CPUs of the largest node.")
    disk_gb = models.PositiveIntegerField("disk (GB)", default=5, validators=[MinValueValidator(1)],
                                          help_text="Disk of each VE: at least 1 (there is no 0 for unlimited).")
    nproc = models.PositiveIntegerField("process limit", default=512, validators=[MinValueValidator(16)],
                                        help_text="Processes and threads in each VE: at least 16.")
    max_ves = models.PositiveIntegerField(
        "VEs allowed", default=1,
        help_text="How many VEs a user on this plan may have; 0: none (they cannot create one; VEs they have "
                  "are kept).")
    console_mode = models.CharField(
        "web console", max_length=8, choices=ConsoleMode.choices, default=ConsoleMode.ROOT,
        help_text="What the console of a VE opens: a shell already logged in as root, or the VE's login prompt.",
    )
    max_snapshots = models.PositiveSmallIntegerField(
        "snapshots per VE", default=3, validators=[MaxValueValidator(100)],
        help_text="How many snapshots each VE may hold (0: none). A snapshot beyond it is refused.",
    )
    max_backups = models.PositiveSmallIntegerField(
        "backups kept per VE", default=3, validators=[MaxValueValidator(100)],
        help_text="How many backups are kept per VE (0: no backups); after a new one the oldest beyond it is removed.",
    )
    backup_daily = models.BooleanField(
        "daily backup", default=False, help_text="Back up each VE of this plan once a day, automatically.",
    )
    ipv4_addresses = models.PositiveSmallIntegerField(
        "IPv4 addresses per VE", default=1, validators=[MaxValueValidator(64)],
        help_text="IPv4 addresses each VE gets from its node's pool when it is created, and the most it may hold.")
    ipv6_addresses = models.PositiveSmallIntegerField(
        "IPv6 addresses per VE", default=0, validators=[MaxValueValidator(64)],
        help_text="IPv6 addresses each VE gets from its node's pool when it is created, and the most it may hold.")
    traffic_gb = models.PositiveIntegerField(
        "monthly traffic (GB)", default=0,
        help_text="Traffic (in plus out) each VE may use per calendar month; 0: unlimited.")
    traffic_over = models.CharField(
        "over the traffic quota", max_length=8, default="throttle",
        choices=[("throttle", "throttle"), ("suspend", "suspend")],
        help_text="What happens to a VE over its monthly traffic until the month ends: its rate is cut to the "
                  "throttle rate, or it is stopped and locked.")
    traffic_throttle_mbit = models.PositiveIntegerField(
        "throttle rate (Mbit/s)", default=1, validators=[MinValueValidator(1)],
        help_text="The rate a VE over its monthly traffic is cut to, in each direction.")
    owner = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.PROTECT, related_name="owned_plans",
        help_text="The reseller who made this plan and may give it to their customers; empty: the admins' plan.")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def limits(self) -> dict:
        """Return the per-VE limits of this plan, as stored on each VE."""
        return {
            "ram_mb": self.ram_mb,
            "swap_mb": self.swap_mb,
            "cpus": self.cpus,
            "disk_gb": self.disk_gb,
            "nproc": self.nproc,
        }
