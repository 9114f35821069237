"""A plan's traffic fields on the plan form (vzpanel/plans): optional, bounded, errors in words."""

from django.core.validators import MaxValueValidator

# Left out of a post, a field keeps the plan's current value (the plan form's clean_<field>).
TRAFFIC_FIELDS = ("traffic_gb", "traffic_over", "traffic_throttle_mbit")
TRAFFIC_GB_MAX = 10_000_000  # 10 PB a month: beyond any real plan, within the database's integers
THROTTLE_MBIT_MAX = 100_000  # the engine's highest rate, 100 Gbit/s

TRAFFIC_MESSAGES = {
    "traffic_gb": {
        "invalid": "Give the monthly traffic as a whole number of GB, e.g. 500 (0: unlimited).",
        "min_value": "The monthly traffic cannot be negative: give a whole number of GB, or 0 for unlimited.",
        "max_value": f"At most {TRAFFIC_GB_MAX:,} GB a month; for no limit at all give 0.",
    },
    "traffic_over": {
        "invalid_choice": "Choose what happens over the quota: throttle (cut the speed) or suspend (stop and "
                          "lock the VE).",
    },
    "traffic_throttle_mbit": {
        "invalid": "Give the throttle rate as a whole number of Mbit/s, e.g. 1.",
        "min_value": "The throttle rate is at least 1 Mbit/s (a VE over its traffic is slowed, not cut off; "
                     "choose suspend for that).",
        "max_value": f"The throttle rate is at most {THROTTLE_MBIT_MAX:,} Mbit/s (100 Gbit/s).",
    },
}


def traffic_fields(fields) -> None:
    """Make a model form's traffic fields optional, bound them, and word their errors."""
    for name in TRAFFIC_FIELDS:
        fields[name].required = False
        fields[name].error_messages.update(TRAFFIC_MESSAGES[name])
    fields["traffic_gb"].validators.append(MaxValueValidator(TRAFFIC_GB_MAX))
    fields["traffic_throttle_mbit"].validators.append(MaxValueValidator(THROTTLE_MBIT_MAX))
