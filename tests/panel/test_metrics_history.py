"""Usage history and graphs: a real VE sampled through the node agent, its memory and CPU as the engine counts
them, the 1-minute and 10-minute rollups, retention, who may read a graph, and the graphs drawn in Chromium."""

import contextlib
import re
import time

import pytest

from tests.panel.conftest import PASSWORD, make_user, make_ve, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def raw_points(series_id):
    from vzpanel.metrics.models import RawPoint

    return list(RawPoint.objects.filter(series_id=series_id).order_by("ts").values())


def as_triples(rows):
    from vzpanel.metrics import rollup

    return [(r["series_id"], r["ts"], {k: r[k] for k in rollup.COLUMNS}) for r in rows]


@contextlib.contextmanager
def cpu_priority(engine):
    """Give the test root's VEs ten times the usual CPU weight for a while: the machine is shared with other
    busy test runs, and against eight runnable processes a VE group of the default weight gets a fifth of a CPU."""
    from vzengine import cgroups

    rel = engine.layout.cgroup_parent()
    old = cgroups.read("cpu", rel, "cpu.shares")
    if old is None:
        yield
        return
    cgroups.write("cpu", rel, "cpu.shares", "10240")
    try:
        yield
    finally:
        cgroups.write("cpu", rel, "cpu.shares", old)


def collect_after(previous_ts, node, interval=1):
    """Run the job until it stores a pass in a slot after previous_ts (the agent skips a repeated slot)."""
    from vzpanel.metrics.jobs import collect

    def stored():
        out = collect(node.name, interval=interval, prune=False)
        assert "error" not in out, out
        return out if out["ts"] > previous_ts and not out["skipped"] else None

    return wait_for(stored, 30, "a sampling pass", interval=0.3)


@pytest.mark.root
def test_a_running_ve_is_sampled_as_the_engine_counts_it(node_agent, engine, new_ctid, owner, outsider, node,
                                                          client_for):
    from vzpanel.metrics import rollup
    from vzpanel.metrics.models import MinutePoint, Series, TenMinutePoint

    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"m{ctid}")
    engine.start(ctid, wait_boot=True)
    make_ve(owner, node, ctid)

    first = collect_after(0, node)  # the agent's first reading of this VE: no rate yet
    second = collect_after(first["ts"], node)
    series = Series.objects.get(ve__ctid=ctid)
    assert [p["ts"] for p in raw_points(series.pk)] == [second["ts"]]
    assert Series.objects.filter(node=node, ve__isnull=True).exists()  # the node's own series

    # Memory: what the engine reports for the VE, give or take what a tiny VE's page cache moves.
    answer = client_for(owner).get(f"/metrics/ves/{ctid}/?range=hour").json()
    shown = [v for v in answer["metrics"]["mem"] if v is not None]
    assert shown, answer
    engine_mem = engine.usage(ctid)["memory_bytes"]
    assert abs(shown[-1] - engine_mem) <= max(0.25 * engine_mem, 1 << 20), (shown[-1], engine_mem)
    assert answer["range"] == "hour" and answer["step"] == 10 and len(answer["t"]) == 360

    # CPU: two busy loops in the VE (it may use both CPUs of this machine): more than half a CPU, and what the
    # engine's own counter says over the same seconds.
    with cpu_priority(engine):
        engine.exec(ctid, "for i in 1 2; do setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & done")
        started = collect_after(second["ts"], node)
        before = engine.usage(ctid)["cpu_seconds"], time.monotonic()
        time.sleep(3)
        after = engine.usage(ctid)["cpu_seconds"], time.monotonic()
        busy = collect_after(started["ts"], node)
    busy_point = next(p for p in raw_points(series.pk) if p["ts"] == busy["ts"])
    counted = (after[0] - before[0]) / (after[1] - before[1])
    assert busy_point["cpu"] > 500, (busy_point, counted)  # milli-CPUs
    assert busy_point["cpu"] / 1000 == pytest.approx(counted, rel=0.35), (busy_point, counted)
    graph = client_for(owner).get(f"/metrics/ves/{ctid}/?range=hour").json()
    assert max(v for v in graph["metrics"]["cpu_max"] if v is not None) > 50  # percent of one CPU

    # A restart between two passes: the new run counts from zero, never negative or absurd.
    engine.stop(ctid, fast=True)
    engine.start(ctid)
    after = collect_after(busy["ts"], node)
    restarted = [p for p in raw_points(series.pk) if p["ts"] == after["ts"]]
    if restarted:
        assert 0 <= restarted[0]["cpu"] <= 2000 * 1.5, restarted

    # Rollups: every minute and ten-minute bucket holds exactly the sums of its raw samples.
    raw = as_triples(raw_points(series.pk))
    for model, width in ((MinutePoint, 60), (TenMinutePoint, 600)):
        stored = {(r["series_id"], r["ts"]): {k: r[k] for k in rollup.COLUMNS}
                  for r in model.objects.filter(series_id=series.pk).values()}
        assert stored == rollup.fold(raw, width)

    # Another customer learns nothing: 404, as for the VE page.
    assert client_for(outsider).get(f"/metrics/ves/{ctid}/?range=hour").status_code == 404
    assert client_for(outsider).get(f"/ves/{ctid}/").status_code == 404


def test_retention_drops_points_past_each_tier_and_series_of_destroyed_ves(owner, node):
    from vzpanel.metrics import store
    from vzpanel.metrics.models import MinutePoint, RawPoint, Series, TenMinutePoint
    from vzpanel.ves.models import VE

    ve = make_ve(owner, node, 150)
    series = Series.objects.create(node=node, ve=ve)
    now = 1_800_000_000
    ages = {"hour": 3600, "two days": 2 * 86400, "two weeks": 14 * 86400, "two years": 730 * 86400}
    store.store_points([(series.pk, now - age, {"cpu": 100, "mem": 1 << 20, "disk": 0, "net_in": 1, "net_out": 2,
                                                "nproc": 3}) for age in ages.values()])
    assert (RawPoint.objects.count(), MinutePoint.objects.count(), TenMinutePoint.objects.count()) == (4, 4, 4)

    removed = store.prune(node, now=now)
    assert removed == {"raw": 3, "minute": 2, "tenmin": 1}
    assert [p.ts for p in RawPoint.objects.all()] == [now - 3600]
    assert sorted(p.ts for p in MinutePoint.objects.all()) == [now - 2 * 86400 - (now - 2 * 86400) % 60,
                                                                 now - 3600 - (now - 3600) % 60]
    assert TenMinutePoint.objects.count() == 3

    VE.objects.filter(pk=ve.pk).update(status=VE.Status.DESTROYED)
    store.prune(node, now=now + 2 * 365 * 86400)
    assert not Series.objects.filter(pk=series.pk).exists()
    assert RawPoint.objects.count() + MinutePoint.objects.count() + TenMinutePoint.objects.count() == 0


def test_without_a_node_agent_a_pass_is_a_gap_not_a_failed_job(node):
    from vzpanel.metrics.jobs import collect
    from vzpanel.metrics.models import RawPoint, Series

    out = collect(node.name, interval=10, prune=False)
    assert out["stored"] == 0 and "agent is not running" in out["error"]
    assert not Series.objects.exists() and not RawPoint.objects.exists()


def test_who_may_read_which_graph(owner, outsider, admin, teacher, student, node, client_for, client):
    from vzpanel.classroom.models import Course, Membership

    ve = make_ve(owner, node, 160)
    student_ve = make_ve(student, node, 161)
    other_teacher = make_user("tina-other", "teacher")
    course = Course.objects.create(name="Linux 1", teacher=teacher, node=node)
    Membership.objects.create(course=course, user=student, role=Membership.Role.STUDENT, ve=student_ve)

    assert client_for(owner).get(f"/metrics/ves/{ve.ctid}/").status_code == 200
    assert client_for(admin).get(f"/metrics/ves/{ve.ctid}/?range=year").status_code == 200
    assert client_for(outsider).get(f"/metrics/ves/{ve.ctid}/").status_code == 404
    assert client_for(outsider).get("/metrics/ves/99999/").status_code == 404
    assert client.get(f"/metrics/ves/{ve.ctid}/").status_code == 302  # to the sign-in page

    assert client_for(admin).get(f"/metrics/nodes/{node.name}/?range=day").status_code == 200
    for user in (owner, teacher, student):
        assert client_for(user).get(f"/metrics/nodes/{node.name}/").status_code == 404

    assert client_for(teacher).get(f"/metrics/classes/{course.pk}/?range=week").status_code == 200
    per = client_for(teacher).get(f"/metrics/classes/{course.pk}/?by=ve&metric=mem").json()
    assert per["metric"] == "mem" and per["lines"] == []  # nothing sampled yet
    assert client_for(admin).get(f"/metrics/classes/{course.pk}/").status_code == 200
    for user in (other_teacher, student, outsider):
        assert client_for(user).get(f"/metrics/classes/{course.pk}/").status_code == 404
    assert client_for(teacher).get(f"/metrics/ves/{student_ve.ctid}/").status_code == 200

    # The pages carry the graphs for those who may read them: the VE page, the class page for its teacher.
    assert f'data-metrics-url="/metrics/ves/{ve.ctid}/"' in client_for(owner).get(f"/ves/{ve.ctid}/").text
    course_page = client_for(teacher).get(f"/classes/{course.pk}/").text
    assert f'data-metrics-url="/metrics/classes/{course.pk}/"' in course_page and "Per student: CPU" in course_page
    assert "data-metrics-url" not in client_for(student).get(f"/classes/{course.pk}/").text

    bad = client_for(owner).get(f"/metrics/ves/{ve.ctid}/?range=decade")
    assert bad.status_code == 400 and "range must be one of" in bad.json()["error"]
    assert client_for(teacher).get(f"/metrics/classes/{course.pk}/?metric=x").status_code == 400


def test_a_class_graph_sums_its_students_and_splits_them_per_student(teacher, node, client_for, plan):
    from vzpanel.classroom.models import Course, Membership
    from vzpanel.metrics import store
    from vzpanel.metrics.models import Series

    course = Course.objects.create(name="Linux 2", teacher=teacher, node=node)
    now = int(time.time())
    ts = now - now % 10 - 20
    for i, name in enumerate(("ann", "bob")):
        user = make_user(name, "student", plan=plan, teacher=teacher)
        ve = make_ve(user, node, 170 + i)
        Membership.objects.create(course=course, user=user, role=Membership.Role.STUDENT, ve=ve)
        series = Series.objects.create(node=node, ve=ve)
        store.store_points([(series.pk, ts, {"cpu": 250 * (i + 1), "mem": 1000 * (i + 1), "disk": 10, "net_in": 0,
                                             "net_out": 0, "nproc": 2})])
    together = client_for(teacher).get(f"/metrics/classes/{course.pk}/").json()
    i = together["t"].index(ts)
    assert together["metrics"]["cpu"][i] == 75.0  # 25 % + 50 % of a CPU
    assert together["metrics"]["mem"][i] == 3000
    per = client_for(teacher).get(f"/metrics/classes/{course.pk}/?by=ve&metric=cpu").json()
    assert [(line["label"], line["values"][i]) for line in per["lines"]] == [("ann", 25.0), ("bob", 50.0)]


@pytest.mark.browser
def test_the_ve_page_draws_its_graphs(live_panel, browser, owner, node):
    from playwright.sync_api import expect

    from vzpanel.metrics import store
    from vzpanel.metrics.models import Series

    ve = make_ve(owner, node, 180)
    series = Series.objects.create(node=node, ve=ve)
    now = int(time.time())
    store.store_points([(series.pk, now - now % 10 - 10 * k, {"cpu": 100 * k, "mem": (k + 1) << 20, "disk": 5 << 20,
                                                               "net_in": 1000 * k, "net_out": 10 * k, "nproc": 4})
                        for k in range(30)])
    page = browser.new_page()
    problems = []
    # Every console error counts.
    page.on("console", lambda msg: problems.append(f"{msg.text} ({msg.location.get('url')})")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{live_panel}/login/")
    page.get_by_label("Username").fill(owner.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"), timeout=30000)  # a shared, busy machine
    page.goto(f"{live_panel}/ves/{ve.ctid}/")
    graphs = page.locator("section.vz-graphs")
    expect(graphs.locator("figure[data-graph] canvas")).to_have_count(5, timeout=20000)
    expect(graphs.locator("[data-graphs-note]")).to_contain_text("One point per 10 s")
    # Live: a pass stored while the page is open shows up at its next poll (every 10 s).
    later = int(time.time()) + 10
    store.store_points([(series.pk, later - later % 10, {"cpu": 5, "mem": 1 << 20, "disk": 5 << 20, "net_in": 0,
                                                         "net_out": 0, "nproc": 77})])
    page.wait_for_function("document.querySelector('section.vz-graphs').vzGraphs.data.metrics.nproc.includes(77)",
                           timeout=30000)
    page.get_by_role("button", name="Day").click()
    expect(graphs.locator("[data-graphs-note]")).to_contain_text("One point per 1 min", timeout=20000)
    page.evaluate("document.documentElement.setAttribute('data-bs-theme', 'dark')")  # graphs follow the theme
    expect(graphs.locator("figure[data-graph] canvas")).to_have_count(5)
    assert problems == []
