"""The history's arithmetic: samples summed into 1-minute and 10-minute buckets, averages and peaks, which tier
a graph reads, and CPU rates across VE restarts (vzpanel/metrics/rollup.py, sampler.py). No Django, no root."""

import random

import pytest

from vzengine.sampling import Reading, rate
from vzpanel.metrics import rollup


def sample(cpu, mem, disk=1000, net_in=0, net_out=0, nproc=3):
    return rollup.sample_point({"cpu": cpu, "mem": mem, "disk": disk, "net_in": net_in, "net_out": net_out,
                                "nproc": nproc})


def test_it_averages_the_samples_of_a_minute_and_keeps_their_peak():
    t0 = 1_700_000_040  # a minute boundary
    points = [(7, t0 + 10 * i, sample(cpu=100 * i, mem=1000 + i)) for i in range(6)]
    buckets = rollup.fold(points, 60)
    assert list(buckets) == [(7, t0)]
    avg = rollup.mean(buckets[(7, t0)])
    assert avg["cpu"] == pytest.approx(250)  # (0+100+...+500)/6
    assert avg["cpu_max"] == 500
    assert avg["mem"] == pytest.approx(1002.5)
    assert avg["mem_max"] == 1005
    assert buckets[(7, t0)]["n"] == 6


def test_it_puts_each_sample_in_its_own_bucket_and_series():
    t0 = 1_700_000_400  # a ten-minute boundary
    points = [(1, t0 + 50, sample(10, 1)), (1, t0 + 60, sample(20, 1)), (2, t0 + 60, sample(30, 1)),
              (1, t0 + 599, sample(40, 1)), (1, t0 + 600, sample(50, 1))]
    minutes = rollup.fold(points, 60)
    assert sorted(minutes) == [(1, t0), (1, t0 + 60), (1, t0 + 540), (1, t0 + 600), (2, t0 + 60)]
    tens = rollup.fold(points, 600)
    assert sorted(tens) == [(1, t0), (1, t0 + 600), (2, t0)]
    assert rollup.mean(tens[(1, t0)])["cpu"] == pytest.approx((10 + 20 + 40) / 3)


def test_ten_minutes_from_minutes_equals_ten_minutes_from_samples():
    """The tiers may be fed in any grouping: merging minute buckets gives the 10-minute bucket of the samples."""
    rng = random.Random(4)
    t0 = 1_700_000_400
    points = [(3, t0 + 10 * i, sample(rng.randrange(2000), rng.randrange(1 << 30), net_in=rng.randrange(10**6)))
              for i in range(60) if rng.random() > 0.2]  # gaps, as when a VE stopped for a while
    direct = rollup.fold(points, 600)[(3, t0)]
    via = None
    for (_s, _ts), p in sorted(rollup.fold(points, 60).items()):
        via = p if via is None else rollup.merge(via, p)
    assert via == direct
    assert direct["n"] == len(points)


def test_a_backlog_added_later_lands_in_the_same_buckets():
    t0 = 1_700_000_400
    first = [(1, t0 + 10 * i, sample(100, 5)) for i in range(3)]
    late = [(1, t0 + 30 + 10 * i, sample(700, 9)) for i in range(3)]
    stored = rollup.fold(first, 60)[(1, t0)]
    added = rollup.merge(stored, rollup.fold(late, 60)[(1, t0)])
    assert added == rollup.fold(first + late, 60)[(1, t0)]
    assert rollup.mean(added)["cpu"] == pytest.approx(400)


def test_an_unknown_value_stays_unknown_instead_of_counting_as_zero():
    a, b = sample(100, 5, disk=None), sample(300, 7, disk=2000)
    merged = rollup.merge(a, b)
    assert merged["disk"] is None
    assert rollup.mean(merged)["cpu"] == 200


@pytest.mark.parametrize(("name", "tier", "step", "points"), [
    ("hour", "raw", 10, 360),
    ("day", "minute", 60, 1440),
    ("week", "tenmin", 600, 1008),
    ("month", "tenmin", 1800, 1440),
    ("year", "tenmin", 21600, 1460),
])
def test_each_range_reads_the_coarsest_tier_that_holds_it(name, tier, step, points):
    t, s = rollup.plan(name, 10)
    assert (t.name, s) == (tier, step)
    assert rollup.RANGES[name] // s == points
    assert t.keep >= rollup.RANGES[name]


def test_a_longer_sampling_interval_widens_the_hour_graph():
    assert rollup.plan("hour", 30)[1] == 60


def test_cpu_rate_from_two_readings_of_the_same_run():
    prev = Reading(at=100.0, cpu_run=5, cpu_ns=10_000_000_000)
    assert rate(110.0, prev, 5, 18_000_000_000, prev.cpu_run, prev.cpu_ns) == pytest.approx(8e8)  # 0.8 CPU


def test_cpu_rate_across_a_restart_counts_the_new_run_from_zero():
    """The VE restarted between two passes: its counter began again at 0 after the previous pass."""
    prev = Reading(at=100.0, cpu_run=5, cpu_ns=50_000_000_000)
    assert rate(110.0, prev, 6, 2_000_000_000, prev.cpu_run, prev.cpu_ns) == pytest.approx(2e8)
    stopped = Reading(at=100.0)  # the previous pass saw it stopped
    assert rate(110.0, stopped, 6, 3_000_000_000, stopped.cpu_run, stopped.cpu_ns) == pytest.approx(3e8)
    # the same cgroup but a counter that went down (reset): never a negative rate
    assert rate(110.0, prev, 5, 1_000_000_000, prev.cpu_run, prev.cpu_ns) == pytest.approx(1e8)


def test_no_rate_without_a_previous_reading():
    assert rate(110.0, None, 5, 10, None, None) is None
