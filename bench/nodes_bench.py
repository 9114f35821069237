#!/usr/bin/env python3
"""Benchmark many nodes from one panel: pages with 10,000 VEs over 20 nodes against 1,000 VEs on one node.

Each case runs on its own private PostgreSQL (tests/postgres.py, Debian's package), its own Redis and daphne,
with rows made for the benchmark (VEs with limits and usage, an address row each from its node's pool, a
finished task each). Measured as the admin: the VE list, a node page, the dashboard and the API list (p50 and
p95 of 100 requests each), and how long a node's real agent process takes to answer a request pushed on its
queue (the panel's own client, real Redis; median of 50). Both cases run at once, each panel in a process of
its own, and their requests are interleaved: the machine is shared, and load that comes and goes then falls on
both alike, so the ratio holds even when the absolute times do not. Everything it starts is stopped by pid
and removed.
Run as root (PostgreSQL runs as the `postgres` user) from the repository root:

    .venv/bin/python bench/nodes_bench.py

Prints a table and writes bench/results/nodes.json.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from common import PanelStack, percentile

REPO = Path(__file__).resolve().parents[1]
CASES = [(1000, 1), (10_000, 20)]
SAMPLES = 100
AGENT_CALLS = 50
PASSWORD = "bench-Password-1"
VES_PER_OWNER = 50


class Case(PanelStack):
    """One case: n_ves VEs spread evenly over n_nodes nodes, on a private PostgreSQL at database_url."""

    def __init__(self, n_ves: int, n_nodes: int, database_url: str, postmaster: int):
        super().__init__("vzpanel-nodes-bench-", DATABASE_URL=database_url, VZPANEL_NODE="node01")
        self.n_ves, self.n_nodes, self.postmaster = n_ves, n_nodes, postmaster

    def make_rows(self):
        from django.db import connection

        from vzpanel.accounts.models import APIToken, User
        from vzpanel.nodes.models import IPAddress, IPPool, Node, Template
        from vzpanel.plans.models import Plan
        from vzpanel.tasks.models import Task
        from vzpanel.ves.models import VE

        nodes = [Node.objects.create(name=f"node{i + 1:02d}", cpus=32, ram_mb=262_144) for i in range(self.n_nodes)]
        pools = []
        for i, node in enumerate(nodes):
            Template.objects.create(node=node, name="tiny", built=True)
            pools.append(IPPool.objects.create(node=node, name="public", network=f"10.{i + 1}.0.0/16",
                                               gateway=f"10.{i + 1}.0.1"))
        plan = Plan.objects.create(name="bench", max_ves=VES_PER_OWNER)
        self.admin = User.objects.create_user("bench-admin", "", PASSWORD, role="admin", is_superuser=True)
        owners = User.objects.bulk_create(
            User(username=f"customer{i}", plan=plan, role="customer") for i in range(self.n_ves // VES_PER_OWNER))
        ves = []
        for i in range(self.n_ves):
            node = i % self.n_nodes
            address = str(ipaddress.ip_network(pools[node].network)[i // self.n_nodes + 2])
            running = i % 3 != 0
            ves.append(VE(ctid=1000 + i, node=nodes[node], owner=owners[i % len(owners)],
                          hostname=f"host{i}.example.test", ostemplate="tiny",
                          status="running" if running else "stopped", ip_addresses=[address], limits=plan.limits(),
                          usage={"memory_bytes": 50_000_000, "disk_bytes": 300_000_000, "cpu_seconds": 12.5,
                                 "nproc": 9} if running else {}))
        ves = VE.objects.bulk_create(ves, batch_size=2000)
        IPAddress.objects.bulk_create((IPAddress(pool=pools[i % self.n_nodes], address=ve.ip_addresses[0], ve=ve)
                                       for i, ve in enumerate(ves)), batch_size=2000)
        Task.objects.bulk_create((Task(ve=ve, node=ve.node, action="start", status="completed", user=ve.owner,
                                       progress=100) for ve in ves), batch_size=2000)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # what autovacuum does soon after any bulk load
        _, self.token = APIToken.issue(self.admin, "bench")
        self.first = nodes[0].name

    def start_agents(self):
        """One real agent process for the first node; the others' alive keys set as their agents would."""
        import redis

        from vzpanel.agent import protocol

        self.spawn("agent", [sys.executable, "-m", "vzpanel.agent", "--node", self.first],
                   VZ_ROOT=str(self.tmp / "no-engine-root"), VZPANEL_NO_DATABASE="1")
        r = redis.Redis(unix_socket_path=str(self.sock))
        for i in range(1, self.n_nodes):
            r.set(protocol.alive_key(f"node{i + 1:02d}"), "{}", ex=3600)
        deadline = time.monotonic() + 30
        while not r.exists(protocol.alive_key(self.first)):
            if time.monotonic() > deadline or self.procs["agent"].poll() is not None:
                raise RuntimeError("the node agent did not start")
            time.sleep(0.05)

    def serve(self) -> None:
        """Make the rows, start the agent and daphne, say where they are, and keep them up until stdin closes."""
        try:
            self.start_database()
            t0 = time.perf_counter()
            self.make_rows()
            rows_seconds = round(time.perf_counter() - t0, 1)
            self.start_agents()
            base = self.start_web()
            print("READY " + json.dumps({"base": base, "sock": str(self.sock), "first": self.first,
                                         "token": self.token, "ves": self.n_ves, "nodes": self.n_nodes,
                                         "rows_seconds": rows_seconds, "web_pid": self.procs["web"].pid,
                                         "postmaster_pid": self.postmaster}), flush=True)
            sys.stdin.read()  # the parent closes it when it has measured
        except BaseException:
            self.print_logs("web", "agent")
            raise
        finally:
            self.stop_all()
            self.remove()


def login(base: str):
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/login/").read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"username": "bench-admin", "password": PASSWORD,
                                   "csrfmiddlewaretoken": csrf}).encode()
    opener.open(urllib.request.Request(f"{base}/login/", data, headers={"Referer": f"{base}/login/"}))
    return opener


def timed(client, url: str) -> float:
    t0 = time.perf_counter()
    with client.open(url) as response:
        response.read()
        assert response.status == 200, (url, response.status)
    return (time.perf_counter() - t0) * 1000


def measure(cases: list[dict]) -> None:
    """Time every page of every case, the cases' requests interleaved (the machine is shared: whatever load
    comes and goes falls on both alike), then the agents the same way; results go into each case's dict."""
    from vzpanel.agent.client import RemoteEngine, connect

    for case in cases:
        session = login(case["base"])
        api = urllib.request.build_opener()
        api.addheaders = [("Authorization", f"Token {case['token']}")]
        case["clients"] = {"ve_list": (session, "/ves/"), "node_page": (session, f"/nodes/{case['first']}/"),
                           "dashboard": (session, "/"), "api_ve_list": (api, "/api/ves/")}
    for name in cases[0]["clients"]:
        times: list[list[float]] = [[] for _ in cases]
        for _ in range(3):  # warm up
            for case in cases:
                client, path = case["clients"][name]
                timed(client, case["base"] + path)
        cpu_before = [cpu_ms(case) for case in cases]
        for i in range(SAMPLES):
            order = list(enumerate(cases)) if i % 2 == 0 else list(reversed(list(enumerate(cases))))
            for k, case in order:
                client, path = case["clients"][name]
                times[k].append(timed(client, case["base"] + path))
        for case, t, before in zip(cases, times, cpu_before, strict=True):
            web, db = (round((after - was) / SAMPLES, 1) for after, was in zip(cpu_ms(case), before, strict=True))
            case[name] = {"p50_ms": round(percentile(t, 50), 1), "p95_ms": round(percentile(t, 95), 1),
                          "cpu_ms": round(web + db, 1), "web_cpu_ms": web, "db_cpu_ms": db}
    engines = [RemoteEngine(case["first"], connect(f"unix://{case['sock']}"), timeout=10) for case in cases]
    times = [[] for _ in cases]
    for _ in range(5):
        for engine in engines:
            engine.call("ping")
    for _ in range(AGENT_CALLS):
        for k, engine in enumerate(engines):
            t0 = time.perf_counter()
            engine.call("ping")
            times[k].append((time.perf_counter() - t0) * 1000)
    for case, t in zip(cases, times, strict=True):
        case["agent_take"] = {"median_ms": round(statistics.median(t), 2), "p95_ms": round(percentile(t, 95), 2),
                              "calls": AGENT_CALLS}
        del case["clients"]


def serve_case(n_ves: int, n_nodes: int) -> None:
    """One case in this process, on a PostgreSQL of its own (started and removed here)."""
    sys.path.insert(0, str(REPO))
    import psycopg

    from tests.postgres import private_postgres

    with private_postgres() as (url, superuser):
        with psycopg.connect(superuser) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        postmaster = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
        Case(n_ves, n_nodes, url, postmaster).serve()


def cpu_ms(case: dict) -> tuple[float, float]:
    """CPU time used so far by a case's web server, and by its PostgreSQL (the postmaster, the backends it
    reaped, and those alive now), in ms: what its requests cost, whatever else the shared machine runs."""
    tick = 1000 / os.sysconf("SC_CLK_TCK")

    def stat(pid: int) -> list[str] | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    web, db = (sum(int(x) for x in (stat(pid) or [])[11:15])  # utime stime cutime cstime
               for pid in (case["web_pid"], case["postmaster_pid"]))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat(int(entry.name))
            if fields and int(fields[1]) == case["postmaster_pid"]:
                db += int(fields[11]) + int(fields[12])
    return web * tick, db * tick


def start_case(n_ves: int, n_nodes: int) -> tuple[subprocess.Popen, dict]:
    """Start one case's panel in a process of its own (Django is set up once per process); wait until it is up."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(n_ves), str(n_nodes)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("READY "):
            return proc, json.loads(line.removeprefix("READY "))
    proc.wait()
    raise RuntimeError(f"the case {n_ves} VEs / {n_nodes} nodes did not start (exit status {proc.returncode})")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_case(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vzpanel.settings")
    procs = []
    try:
        results = []
        for n_ves, n_nodes in CASES:
            proc, case = start_case(n_ves, n_nodes)
            procs.append(proc)
            results.append(case)
        load_before = os.getloadavg()[0]
        measure(results)
        load_after = os.getloadavg()[0]
    finally:
        for proc in procs:  # closing stdin ends each case, which stops what it started and removes its files
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    base, big = results
    print(f"{'':22} {'1,000 VEs / 1 node':>30} {'10,000 VEs / 20 nodes':>30} {'ratio':>13}")
    print(f"{'':22} {'p50 / p95 ms, CPU ms':>30} {'p50 / p95 ms, CPU ms':>30} {'p95':>6} {'CPU':>6}  "
          "CPU ms at 10,000: web + database")
    for key, label in [("ve_list", "VE list (admin)"), ("node_page", "node page"), ("dashboard", "dashboard"),
                       ("api_ve_list", "API VE list")]:
        a, b = base[key], big[key]
        print(f"{label:22} {a['p50_ms']:>11.1f} / {a['p95_ms']:>6.1f}, {a['cpu_ms']:>8.1f} "
              f"{b['p50_ms']:>11.1f} / {b['p95_ms']:>6.1f}, {b['cpu_ms']:>8.1f} "
              f"{b['p95_ms'] / a['p95_ms']:>5.2f}x {b['cpu_ms'] / max(a['cpu_ms'], 0.1):>5.2f}x  "
              f"{b['web_cpu_ms']} + {b['db_cpu_ms']}")
    a, b = base["agent_take"], big["agent_take"]
    print(f"{'agent takes a request':22} {a['median_ms']:>11.2f} ms median {'':>8} {b['median_ms']:>11.2f} ms median "
          f"{'':>8} {b['median_ms'] / a['median_ms']:>5.2f}x")
    print(f"p50 / p95 of {SAMPLES} requests each, the two cases interleaved; CPU ms: web server + PostgreSQL CPU per "
          f"request (what a request costs, whatever else runs); agent: median of {AGENT_CALLS} requests pushed on "
          f"its queue until its answer; machine load average {load_before:.1f} before, {load_after:.1f} after "
          f"(CPUs: {os.cpu_count()})")
    goal = big["ve_list"]["p95_ms"] < 50
    print(f"goal VE list p95 < 50 ms at 10,000 VEs: {'met' if goal else 'NOT met'} in wall time on this machine now "
          f"(CPU per request {big['ve_list']['cpu_ms']} ms); agent within 100 ms: "
          f"{'met' if b['median_ms'] < 100 else 'NOT met'}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "nodes.json").write_text(json.dumps({"cases": results, "load": [load_before, load_after]}, indent=2)
                                     + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
