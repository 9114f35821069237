#!/usr/bin/env python3
"""Benchmark classrooms: a class of 30 and of 100 from a roster to running VEs, and a reset of all of them,
against the engine's own create+start and snapshot-switch (and reinstall) for the same count in the same run.

Everything runs in a private state dir with its own Redis, SQLite database, engine root (btrfs pool) and
task worker (`manage.py rqworker`) and node agent (`python -m vzpanel.agent`), stopped by pid and removed at the end. As root, from the repository root:

    .venv/bin/python bench/classroom_bench.py            # 30 and 100
    .venv/bin/python bench/classroom_bench.py 30         # only 30

Each VE, in the panel and in the engine baseline alike, is made from the same golden image (a frozen VE
holding a marker file), with the course plan's limits, an address from the pool and an SSH port forward,
and counts as ready once its init has booted. Prints a table and writes bench/results/classroom.json.
"""

import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import PanelStack, wait_for

REPO = Path(__file__).resolve().parents[1]
COUNTS = [int(a) for a in sys.argv[1:]] or [30, 100]
GOAL_READY_100 = 60.0
GOAL_RESET_100 = 30.0
MARKER = "bench-golden-marker"
PID = os.getpid()
IP_POOL = f"10.{200 + PID % 50}.{PID // 50 % 64 * 4}.0/22"
PANEL_PORTS = (30000 + PID % 100 * 200, 30000 + PID % 100 * 200 + 149)
ENGINE_PORT = PANEL_PORTS[1] + 1  # the engine baseline's forwards start here


def stats(values):
    return {"n": len(values), "min_ms": round(min(values) * 1000, 1), "median_ms": round(statistics.median(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "total_s": round(sum(values), 2)}


class Bench(PanelStack):
    def __init__(self):
        super().__init__("vzclass-bench-", VZ_IP_POOL=IP_POOL, VZPANEL_SSH_PORTS=f"{PANEL_PORTS[0]}-{PANEL_PORTS[1]}")
        self.root = self.tmp / "vz"
        self.env["VZ_ROOT"] = os.environ["VZ_ROOT"] = str(self.root)
        self.results: dict = {"counts": COUNTS, "agent_threads": None}
        self.engine = None

    # -- processes ----------------------------------------------------------------------------------------

    def start_agent(self, threads: int):
        """The task worker (with `threads` children at once) and the node agent (with as many threads)."""
        self.stop("worker")
        self.stop("agent")
        self.spawn("worker", [sys.executable, "manage.py", "rqworker", "node:local"],
                   VZPANEL_CLASS_PARALLEL=str(threads))
        self.spawn("agent", [sys.executable, "-m", "vzpanel.agent", "--node", "local",
                             "--threads", str(max(threads, 2))])
        time.sleep(1.0)  # the worker registers with Redis; jobs queued meanwhile simply wait

    # -- set-up -------------------------------------------------------------------------------------------

    def setup(self):
        self.start_database()
        from vzengine import Engine
        from vzpanel.accounts.models import User
        from vzpanel.classroom import services
        from vzpanel.nodes.models import Node, Template
        from vzpanel.plans.models import Plan
        from vzpanel.ves.models import VE

        self.root.mkdir()
        os.chmod(self.root, 0o711)
        (self.root / "vz.conf").write_text('POOL_SIZE="8G"\n')
        self.engine = Engine(self.root, lock_wait=60)
        self.engine.ensure_ready()
        self.engine.templates.ensure("tiny")
        node = Node.local()
        Template.objects.get_or_create(node=node, name="tiny", defaults={"built": True})
        self.plan = Plan.objects.create(name="lab", ram_mb=256, swap_mb=0, cpus=1, disk_gb=2, nproc=256, max_ves=1)
        self.teacher = User.objects.create_user("bench-teacher", "", "bench-Password-1", role="teacher")
        self.start_agent(threads=8)
        # The golden image: the teacher's VE with a marker, frozen through the panel.
        gold = 100
        self.engine.create(gold, "tiny", hostname="golden")
        self.engine.start(gold, wait_boot=True)
        self.engine.exec(gold, f"echo {MARKER} > /root/MARKER")
        ve = VE.objects.create(ctid=gold, node=node, owner=self.teacher, hostname="golden", ostemplate="tiny",
                               status="running")
        course = services.create_course(self.teacher, name="golden", image_ve=ve)
        task = services.image_task(course)
        wait_for(lambda: task.refresh_from_db() or task.status in ("completed", "failed", "errored"), 60, "the freeze")
        assert task.status == "completed", task.error
        course.refresh_from_db()
        self.golden = course.ostemplate
        self.results["golden_image"] = self.golden

    # -- the engine alone -----------------------------------------------------------------------------------

    def engine_baseline(self, n: int) -> dict:
        """create + start(boot) for n VEs one after another, then snapshot-switch and reinstall each (running)."""
        eng = self.engine
        ctids = [50000 + i for i in range(n)]
        params = {"ram": f"{self.plan.ram_mb}M", "cpus": 1, "numproc": self.plan.nproc,
                  "diskspace": f"{self.plan.disk_gb}G"}
        create, start, switch, reinstall = [], [], [], []
        t_all = time.perf_counter()
        for i, ctid in enumerate(ctids):
            t0 = time.perf_counter()
            eng.create(ctid, self.golden, hostname=f"e{ctid}", ipadd=["auto"], portfwd=[f"tcp:{ENGINE_PORT + i}:22"],
                       **params)
            t1 = time.perf_counter()
            eng.start(ctid, wait_boot=True)
            t2 = time.perf_counter()
            create.append(t1 - t0)
            start.append(t2 - t1)
        ready = time.perf_counter() - t_all
        for ctid in ctids:
            eng.snapshot(ctid, "golden")
            eng.exec(ctid, "rm /root/MARKER")
        t_all = time.perf_counter()
        for ctid in ctids:
            t0 = time.perf_counter()
            eng.snapshot_switch(ctid, "golden")  # stops the running VE cleanly, swaps its files, starts it
            eng.wait_booted(ctid)
            switch.append(time.perf_counter() - t0)
        switched = time.perf_counter() - t_all
        assert all(eng.exec(c, "cat /root/MARKER").stdout.strip() == MARKER for c in ctids)
        t_all = time.perf_counter()
        for ctid in ctids:
            t0 = time.perf_counter()
            eng.reinstall(ctid, self.golden, snapshot=False)  # the same: clean stop, fresh root, start
            eng.wait_booted(ctid)
            reinstall.append(time.perf_counter() - t0)
        reinstalled = time.perf_counter() - t_all
        self.remove(ctids)
        return {"create": stats(create), "start_boot": stats(start), "ready_total_s": round(ready, 2),
                "snapshot_switch": stats(switch), "snapshot_switch_total_s": round(switched, 2),
                "reinstall": stats(reinstall), "reinstall_total_s": round(reinstalled, 2)}

    def remove(self, ctids):
        from vzengine import Engine

        def one(ctid):
            eng = Engine(self.root, lock_wait=60)
            if eng.is_running(ctid):
                eng.stop(ctid, fast=True)
            eng.destroy(ctid)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, ctids))

    # -- the panel --------------------------------------------------------------------------------------------

    def panel_class(self, n: int, label: str) -> dict:
        """Roster of n -> accounts -> n running VEs; delete the marker everywhere; reset all; end the course."""
        from vzpanel.classroom import services
        from vzpanel.tasks.models import Task

        course = services.create_course(self.teacher, name=f"class {label}", ostemplate=self.golden, plan=self.plan)
        course.max_ves = max(course.max_ves, n)
        course.save(update_fields=["max_ves"])
        roster = "name,email,group\n" + "".join(f"Student {i},{label}-{i}@example.edu,g{i % 4}\n" for i in range(n))
        t0 = time.perf_counter()
        result = services.import_roster(self.teacher, course, roster.encode())
        t_accounts = time.perf_counter() - t0
        assert result.created == n
        parent = services.provision(self.teacher, course)
        self.wait_task(parent, 600)
        t_ready = time.perf_counter() - t0
        assert parent.status == "completed", parent.error
        members = list(course.students().select_related("ve"))
        eng = self.engine
        assert all(eng.status(m.ve.ctid).status == "running" for m in members)
        assert all(eng.exec(m.ve.ctid, "cat /root/MARKER").stdout.strip() == MARKER for m in members)
        for m in members:
            eng.exec(m.ve.ctid, "rm /root/MARKER")
        t0 = time.perf_counter()
        reset, skipped = services.class_action(self.teacher, course, "reset")
        self.wait_task(reset, 600)
        t_reset = time.perf_counter() - t0
        assert reset.status == "completed" and not skipped, reset.error
        assert all(eng.exec(m.ve.ctid, "cat /root/MARKER").stdout.strip() == MARKER for m in members)
        t0 = time.perf_counter()
        end = services.end_course(self.teacher, course, archive=False)
        self.wait_task(end, 600)
        t_end = time.perf_counter() - t0
        assert end.status == "completed", end.error
        child_runs = [(c.finished_at - c.started_at).total_seconds() for c in Task.objects.filter(parent=parent)]
        return {"accounts_s": round(t_accounts, 3), "ready_s": round(t_ready, 2), "reset_s": round(t_reset, 2),
                "end_s": round(t_end, 2), "per_ve_provision": stats(child_runs)}

    @staticmethod
    def wait_task(task, timeout):
        wait_for(lambda: task.refresh_from_db() or task.status in ("completed", "failed", "errored", "cancelled"),
                 timeout, f"task {task.pk} ({task.action})", interval=0.1)

    # -- run ----------------------------------------------------------------------------------------------------

    def run(self):
        rows = []
        try:
            self.setup()
            self.results["agent_threads"] = 8
            if 30 in COUNTS:
                self.start_agent(threads=1)
                one = self.panel_class(30, "seq")
                self.results["panel_30_one_at_a_time"] = one
                rows.append(("panel, 30, 1 thread", one))
                self.start_agent(threads=8)
            for n in COUNTS:
                base = self.engine_baseline(n)
                self.results[f"engine_{n}"] = base
                panel = self.panel_class(n, f"c{n}")
                self.results[f"panel_{n}"] = panel
                rows.append((f"panel, {n}, 8 threads", panel))
                self.results[f"ratio_{n}"] = {
                    "ready_panel_over_engine": round(panel["ready_s"] / base["ready_total_s"], 2),
                    "reset_panel_over_snapshot_switch": round(panel["reset_s"] / base["snapshot_switch_total_s"], 3),
                    "reset_panel_over_reinstall": round(panel["reset_s"] / base["reinstall_total_s"], 3),
                }
        except BaseException:
            self.print_logs("agent", lines=30)
            raise
        finally:
            self.stop_all(keep=("redis",))
            try:
                if self.engine is not None:
                    self.engine.purge()
            finally:
                self.stop("redis")
                self.remove()
        self.report()

    def report(self):
        r = self.results
        print(f"\nclassroom benchmark: golden image {r['golden_image']}, agent threads {r['agent_threads']}")
        print(f"{'what':<44} {'count':>5} {'total s':>9} {'per VE ms (min/median/max)':>30}")
        for n in COUNTS:
            e = r[f"engine_{n}"]
            per = {k: e[k] for k in ("create", "start_boot", "snapshot_switch", "reinstall")}
            ready_per = [per["create"][k] + per["start_boot"][k] for k in ("min_ms", "median_ms", "max_ms")]
            print(f"{'engine create+start, one after another':<44} {n:>5} {e['ready_total_s']:>9.2f} "
                  f"{'/'.join(f'{v:.0f}' for v in ready_per):>30}")
            for key, total in (("snapshot_switch", "snapshot_switch_total_s"), ("reinstall", "reinstall_total_s")):
                s = e[key]
                spread = f"{s['min_ms']:.0f}/{s['median_ms']:.0f}/{s['max_ms']:.0f}"
                print(f"{'engine ' + key.replace('_', '-') + ' (running VE)':<44} {n:>5} {e[total]:>9.2f} {spread:>30}")
            p = r[f"panel_{n}"]
            s = p["per_ve_provision"]
            print(f"{'panel roster -> accounts':<44} {n:>5} {p['accounts_s']:>9.2f}")
            spread = f"{s['min_ms']:.0f}/{s['median_ms']:.0f}/{s['max_ms']:.0f}"
            print(f"{'panel roster -> all VEs running (ready)':<44} {n:>5} {p['ready_s']:>9.2f} {spread:>30}")
            print(f"{'panel reset of the whole class':<44} {n:>5} {p['reset_s']:>9.2f}")
            print(f"{'panel end of course (remove VEs+accounts)':<44} {n:>5} {p['end_s']:>9.2f}")
            q = r[f"ratio_{n}"]
            print(f"{'  ratio ready: panel / engine':<44} {n:>5} {q['ready_panel_over_engine']:>9.2f}")
            print(f"{'  ratio reset: panel / engine snapshot-switch':<44} {n:>5} {q['reset_panel_over_snapshot_switch']:>9.3f}")
            print(f"{'  ratio reset: panel / engine reinstall':<44} {n:>5} {q['reset_panel_over_reinstall']:>9.3f}")
        if "panel_30_one_at_a_time" in r:
            p = r["panel_30_one_at_a_time"]
            print(f"{'panel, agent doing 1 VE at a time: ready':<44} {30:>5} {p['ready_s']:>9.2f}")
            print(f"{'panel, agent doing 1 VE at a time: reset':<44} {30:>5} {p['reset_s']:>9.2f}")
        if 100 in COUNTS:
            p = r["panel_100"]
            print(f"goal: 100 ready < {GOAL_READY_100:.0f} s: {p['ready_s']:.1f} s "
                  f"({'met' if p['ready_s'] < GOAL_READY_100 else 'MISSED'}); reset < {GOAL_RESET_100:.0f} s: "
                  f"{p['reset_s']:.1f} s ({'met' if p['reset_s'] < GOAL_RESET_100 else 'MISSED'})")
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "classroom.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("classroom_bench.py needs root (LXC, btrfs)")
    threading.current_thread().name = "bench"
    Bench().run()
