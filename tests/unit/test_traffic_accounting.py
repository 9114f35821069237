"""The arithmetic of traffic metering: deltas across counter resets, and calendar months in UTC."""

import datetime

import pytest

from vzpanel.traffic.accounting import (
    GB,
    Reading,
    delta,
    human_bytes,
    month_of,
    next_month,
    percent,
    quota_bytes,
    split_by_month,
)

UTC = datetime.UTC


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


# --- deltas --------------------------------------------------------------------------------------


def test_it_counts_the_growth_of_one_run_from_the_runs_own_counters():
    last = Reading(5000, 700, "boot-a-12", 1000, 200)
    now = Reading(9000, 900, "boot-a-12", 5000, 400)
    assert delta(last, now) == (4000, 200)


def test_a_first_reading_is_only_the_starting_point():
    assert delta(None, Reading(10**12, 10**12, "boot-a-12", 10**9, 10**9)) == (0, 0)


def test_a_restart_between_readings_counts_the_old_runs_tail_and_the_new_run_once():
    # Last read: 1000 in this run (totals 5000). The run went on to 1500 and ended (the engine kept it);
    # the new run has counted 300 so far. Totals now: 4000 of older runs + 1500 + 300.
    last = Reading(5000, 50, "boot-a-12", 1000, 10)
    now = Reading(5800, 90, "boot-a-13", 300, 30)
    assert delta(last, now) == (800, 40)  # 500 tail + 300 new: neither lost nor counted twice


def test_a_host_crash_that_lost_the_last_runs_counts_charges_only_the_new_run():
    # The engine's totals went back (the crashed run was never saved): never negative, the new run counts.
    last = Reading(5000, 500, "boot-a-12", 1000, 100)
    now = Reading(4300, 430, "boot-b-3", 300, 30)
    assert delta(last, now) == (300, 30)


def test_a_new_run_bigger_than_the_lost_one_is_still_counted_in_full():
    # Totals grew by less than the new run counted (the old run's 1000 vanished): the new run's own counters win.
    last = Reading(5000, 500, "boot-a-12", 1000, 100)
    now = Reading(6000, 600, "boot-b-3", 2000, 200)
    assert delta(last, now) == (2000, 200)


def test_totals_reset_to_zero_while_the_run_goes_on_do_not_matter():
    # Within one run, only the run's counters are used (the traffic directory was removed meanwhile).
    last = Reading(5000, 500, "boot-a-12", 1000, 100)
    now = Reading(1200, 120, "boot-a-12", 1200, 120)
    assert delta(last, now) == (200, 20)


def test_a_stopped_ve_counts_the_tail_of_its_last_run_and_then_nothing():
    running = Reading(5000, 500, "boot-a-12", 1000, 100)
    stopped = Reading(5400, 540, "", 0, 0)
    assert delta(running, stopped) == (400, 40)
    assert delta(stopped, stopped) == (0, 0)
    assert delta(stopped, Reading(5300, 500, "", 0, 0)) == (0, 0)  # went back while stopped: never negative


def test_deltas_are_never_negative_in_any_direction():
    last = Reading(100, 100, "r1", 100, 100)
    for now in (Reading(0, 0, "r1", 0, 0), Reading(0, 0, "r2", 0, 0), Reading(0, 0, "", 0, 0)):
        assert min(delta(last, now)) >= 0


def test_a_report_with_anything_but_counters_is_refused():
    assert Reading.from_report({"in": 1, "out": 2, "run": "b-1", "run_in": 1, "run_out": 2}) == Reading(1, 2, "b-1", 1, 2)
    for bad in ({"in": -1}, {"in": "5"}, {"in": True}, {"out": 1.5}, {"run": 5}, {"run": "x" * 81}, 5, None):
        with pytest.raises(ValueError):
            Reading.from_report(bad)


# --- months --------------------------------------------------------------------------------------


def test_the_month_is_the_utc_calendar_month():
    assert month_of(at(2026, 12, 31, 23, 59, 59)) == datetime.date(2026, 12, 1)
    assert month_of(at(2027, 1, 1, 0, 0, 0)) == datetime.date(2027, 1, 1)
    # 00:30 on January 1st in Berlin is still December in UTC
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    assert month_of(datetime.datetime(2027, 1, 1, 0, 30, tzinfo=berlin)) == datetime.date(2026, 12, 1)
    with pytest.raises(ValueError):
        month_of(datetime.datetime(2027, 1, 1))


def test_next_month_wraps_the_year():
    assert next_month(datetime.date(2026, 12, 1)) == datetime.date(2027, 1, 1)
    assert next_month(datetime.date(2027, 1, 1)) == datetime.date(2027, 2, 1)


def test_a_delta_within_one_month_goes_to_that_month():
    assert split_by_month(100, 7, at(2026, 12, 5), at(2026, 12, 6)) == [(datetime.date(2026, 12, 1), 100, 7)]
    assert split_by_month(100, 7, None, at(2026, 12, 6)) == [(datetime.date(2026, 12, 1), 100, 7)]


def test_a_delta_across_the_months_end_is_shared_by_time_and_adds_up():
    parts = split_by_month(1000, 11, at(2026, 12, 31, 23, 0), at(2027, 1, 1, 1, 0))
    assert parts == [(datetime.date(2026, 12, 1), 500, 5), (datetime.date(2027, 1, 1), 500, 6)]
    parts = split_by_month(10**12 + 1, 3, at(2026, 11, 15), at(2027, 2, 15))
    assert [p[0] for p in parts] == [datetime.date(2026, m, 1) for m in (11, 12)] + [
        datetime.date(2027, m, 1) for m in (1, 2)]
    assert sum(p[1] for p in parts) == 10**12 + 1 and sum(p[2] for p in parts) == 3
    assert all(p[1] >= 0 and p[2] >= 0 for p in parts)


def test_a_clock_going_back_charges_the_month_of_now():
    assert split_by_month(5, 5, at(2027, 1, 2), at(2026, 12, 31)) == [(datetime.date(2026, 12, 1), 5, 5)]


# --- quota and wording ---------------------------------------------------------------------------


def test_quota_is_decimal_gigabytes_and_zero_is_unlimited():
    assert quota_bytes(5) == 5 * GB == 5_000_000_000
    assert quota_bytes(0) == 0 and quota_bytes(None) == 0 and quota_bytes(-3) == 0
    assert percent(GB // 2, GB) == 50 and percent(3 * GB, GB) == 300 and percent(10, 0) == 0


def test_bytes_read_in_decimal_units():
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1500) == "1.5 kB"
    assert human_bytes(1_250_000_000) == "1.25 GB"
    assert human_bytes(10**9) == "1 GB"
    assert human_bytes(2_500 * 10**12) == "2,500 TB"
