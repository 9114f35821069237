"""The alert rules as pure functions: an alert fires once per crossing and resolves once."""

from vzpanel.alerts import rules


def test_an_alert_fires_once_per_crossing_and_resolves_once():
    firing, said = False, []
    for condition in (False, True, True, True, False, False, True):
        act = rules.step(firing, condition)
        if act:
            said.append(act)
            firing = act == "fire"
    assert said == ["fire", "resolve", "fire"]


def test_memory_and_disk_are_over_at_their_thresholds_and_unknown_is_never_over():
    assert rules.over(90, 100, 90) == (True, 90.0)
    assert rules.over(89, 100, 90)[0] is False
    assert rules.over(None, 100, 90) == (False, None)
    assert rules.over(50, 0, 90) == (False, None)  # no limit: nothing to be near


def test_counters_grow_only_within_one_run():
    assert rules.grew(3, 4)
    assert not rules.grew(4, 4)
    assert not rules.grew(None, 7)  # the first pass after a start sets the baseline
    assert not rules.grew(9, 2)  # restarted at the VE's start: not a hit


def usage(**kw):
    return {"memory_bytes": 10, "memory_limit_bytes": 100, "disk_bytes": 1, "disk_limit_bytes": 100, **kw}


def test_conditions_of_a_ve():
    c = rules.conditions(usage(memory_bytes=95, oom_kills=2, memory_failcnt=5), {"oom": 1, "failcnt": 5},
                         "running", "running", False, 90, 90)
    assert c["memory"][0] and "95%" in c["memory"][1]
    assert c["oom"][0] and not c["failcnt"][0] and not c["disk"][0] and not c["stopped"][0]


def test_stopped_on_its_own_only_when_nobody_asked():
    assert rules.conditions({}, {}, "stopped", "running", False, 90, 90)["stopped"][0]
    assert not rules.conditions({}, {}, "stopped", "running", True, 90, 90)["stopped"][0]
    assert not rules.conditions({}, {}, "stopped", "stopped", False, 90, 90)["stopped"][0]
    assert rules.conditions({}, {"stopped_alone": True}, "stopped", "stopped", False, 90, 90)["stopped"][0]
