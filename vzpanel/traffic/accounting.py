"""The arithmetic of metering: deltas between two readings of a VE's counters, and calendar months (UTC).

Pure functions, no Django: the node reports, per VE, its traffic since it was made (the engine's totals,
which survive stops and reboots) and the counters of its network's current run (one veth's life, named by
boot id and interface index; they start at zero at every start, reboot inside the VE or resume).
The panel keeps the last reading and adds what happened since to the month. Either series alone can be
wrong after a mishap: the totals lose a run's last counts when the host dies before the engine saved them
(or start again at zero when the VE is restored over), and the run counters cannot see a run that ended
between two readings. So: within one run, the run's own counters (exact, whatever happened to the totals);
across runs, the totals' growth, but never less than what the new run alone counted. A delta is never
negative, and nothing is counted twice: a new run's counters began after the last reading.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

UTC = datetime.UTC
GB = 10**9  # a plan's traffic_gb is in decimal gigabytes, as hosting providers count traffic


@dataclass(frozen=True)
class Reading:
    """One VE's counters as its node reported them: bytes in (to the VE) and out (from it)."""

    total_in: int
    total_out: int
    run: str = ""  # the current run of its network; "" when it has none (stopped)
    run_in: int = 0
    run_out: int = 0

    @classmethod
    def from_report(cls, data: dict) -> Reading:
        """Read the agent's report for one VE; raise ValueError for anything but non-negative integers."""
        if not isinstance(data, dict):
            raise ValueError(f"bad traffic counters {data!r:.200}")
        values = [data.get(k, 0) for k in ("in", "out", "run_in", "run_out")]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"bad traffic counters {data!r:.200}")
        run = data.get("run") or ""
        if not isinstance(run, str) or len(run) > 80:
            raise ValueError(f"bad traffic run {run!r:.100}")
        return cls(values[0], values[1], run, values[2], values[3])


def delta(last: Reading | None, now: Reading) -> tuple[int, int]:
    """Bytes (in, out) between reading last and reading now; (0, 0) for a first reading."""
    if last is None:
        return 0, 0
    if now.run and now.run == last.run:
        return max(now.run_in - last.run_in, 0), max(now.run_out - last.run_out, 0)
    fresh_in, fresh_out = (now.run_in, now.run_out) if now.run else (0, 0)
    return (max(now.total_in - last.total_in, fresh_in, 0),
            max(now.total_out - last.total_out, fresh_out, 0))


def month_of(moment: datetime.datetime) -> datetime.date:
    """The first day of moment's calendar month in UTC."""
    if moment.tzinfo is None:
        raise ValueError("a moment without a time zone")
    d = moment.astimezone(UTC).date()
    return d.replace(day=1)


def next_month(month: datetime.date) -> datetime.date:
    """The first day of the month after month."""
    return datetime.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def month_start(month: datetime.date) -> datetime.datetime:
    """Midnight UTC of month's first day."""
    return datetime.datetime(month.year, month.month, 1, tzinfo=UTC)


def split_by_month(n_in: int, n_out: int, since: datetime.datetime | None,
                   now: datetime.datetime) -> list[tuple[datetime.date, int, int]]:
    """Share (n_in, n_out) bytes seen between since and now among the months of that span, by time.

    A reading that spans a month's end (the node was unreachable for a while) is not all charged to the new
    month. The shares add up to exactly n_in and n_out; the last month takes the remainder. Without since,
    or when since is not before now, everything goes to now's month.
    """
    last = month_of(now)
    if since is None or since >= now or month_of(since) == last:
        return [(last, n_in, n_out)]
    span = (now - since).total_seconds()
    out, given_in, given_out = [], 0, 0
    month = month_of(since)
    while month < last:
        end = month_start(next_month(month))
        part = (end - max(since, month_start(month))).total_seconds() / span
        share_in, share_out = int(n_in * part), int(n_out * part)
        out.append((month, share_in, share_out))
        given_in, given_out = given_in + share_in, given_out + share_out
        month = next_month(month)
    out.append((last, n_in - given_in, n_out - given_out))
    return out


def quota_bytes(traffic_gb: int | None) -> int:
    """A plan's monthly quota in bytes; 0: unlimited."""
    return max(int(traffic_gb or 0), 0) * GB


def percent(used: int, quota: int) -> int:
    """How much of quota used is, in whole percent (0 without a quota; may exceed 100)."""
    return used * 100 // quota if quota > 0 else 0


def human_bytes(n: int) -> str:
    """Bytes in decimal units, as the quota is given: 950 B, 12.3 MB, 1.05 GB, 2.5 TB."""
    if n < 1000:
        return f"{n} B"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    return f"{n} B"  # not reached
