"""Classroom settings, from the environment (read where used, so tests and benchmarks can set them).

VZPANEL_CLASS_PARALLEL   VEs a bulk job works on at once in the node agent (default 8)
(Students' SSH forwards take their ports and host name from vzpanel.nodes.sshforward.)
VZPANEL_IDLE_CPU         share of one CPU below which a VE counts as idle (default 0.02)
"""

import os

from vzpanel.nodes.sshforward import ssh_ports  # noqa: F401 - the classroom reads them here too


def parallel() -> int:
    return max(1, min(64, int(os.environ.get("VZPANEL_CLASS_PARALLEL", "8"))))


def idle_cpu() -> float:
    return float(os.environ.get("VZPANEL_IDLE_CPU", "0.02"))
