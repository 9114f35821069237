#!/usr/bin/env python3
"""Benchmark the panel: page and API speed with 1,000 VEs, and click-to-running against the engine's start.

Everything runs on 127.0.0.1 in a private state dir with its own Redis, web server (daphne) and node agent;
all of them are stopped by pid at the end. Run from the repository root:

    .venv/bin/python bench/panel_bench.py            # pages and API (any user)
    sudo .venv/bin/python bench/panel_bench.py       # plus click-to-running on a real VE (root, LXC, btrfs)

Prints a table and writes bench/results/panel.json.
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from common import free_port, percentile, stop_process, wait_for

REPO = Path(__file__).resolve().parents[1]
N_VES = 1000
SAMPLES = 100
API_SECONDS = 5.0
API_THREADS = 4
START_RUNS = 3
PASSWORD = "bench-Password-1"


class Bench:
    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="vzpanel-bench-", dir="/var/tmp"))
        os.chmod(self.tmp, 0o711)  # the engine root below it must be reachable by the VEs' mapped root
        self.procs: list[subprocess.Popen] = []
        self.sock = self.tmp / "redis.sock"
        self.env = {
            **os.environ,
            "VZPANEL_STATE": str(self.tmp),
            "REDIS_URL": f"unix://{self.sock}",
            "DATABASE_URL": f"sqlite:///{self.tmp / 'bench.sqlite3'}",
            "VZPANEL_SECRET_KEY": "bench-secret-key-not-for-production",
            "DJANGO_SETTINGS_MODULE": "vzpanel.settings",
        }
        os.environ.update(self.env)
        self.results: dict = {"ves": N_VES, "samples": SAMPLES}

    def spawn(self, argv, log_name, **env):
        log = open(self.tmp / log_name, "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, cwd=REPO, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.procs):
            stop_process(proc, 20)

    # -- set-up ---------------------------------------------------------------------------------------

    def setup(self):
        self.spawn(["redis-server", "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
                    "--save", "", "--appendonly", "no", "--dir", str(self.tmp)], "redis.log")
        wait_for(self.sock.exists, 10, "redis")
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=self.env, check=True)
        sys.path.insert(0, str(REPO))
        import django

        django.setup()
        from vzpanel.accounts.models import APIToken, User
        from vzpanel.nodes.models import Node, Template
        from vzpanel.plans.models import Plan
        from vzpanel.ves.models import VE

        node = Node.local()
        Template.objects.get_or_create(node=node, name="tiny", defaults={"built": True})
        plan = Plan.objects.create(name="bench", max_ves=N_VES)
        self.admin = User.objects.create_user("bench-admin", "", PASSWORD, role="admin", is_superuser=True)
        owners = [User.objects.create_user(f"customer{i}", "", PASSWORD, plan=plan) for i in range(20)]
        VE.objects.bulk_create(
            VE(ctid=1000 + i, node=node, owner=owners[i % 20], hostname=f"host{i}.example.test", ostemplate="tiny",
               status="running" if i % 3 else "stopped", ip_addresses=[f"10.1.{i // 250}.{i % 250 + 1}"],
               limits=plan.limits())
            for i in range(N_VES)
        )
        _, self.token = APIToken.issue(self.admin, "bench")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.spawn([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                    "vzpanel.asgi:application"], "web.log")

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False

        wait_for(listening, 30, "daphne")

    def session(self):
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"{self.base}/login/").read().decode()
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode({"username": self.admin.username, "password": PASSWORD,
                                       "csrfmiddlewaretoken": csrf}).encode()
        opener.open(urllib.request.Request(f"{self.base}/login/", data, headers={"Referer": f"{self.base}/login/"}))
        return opener

    # -- measurements ---------------------------------------------------------------------------------

    def time_pages(self):
        opener = self.session()
        pages = {
            "ve_list": "/ves/",
            "ve_list_search": "/ves/?q=host77&status=running",
            "ve_list_sorted_page10": "/ves/?sort=-hostname&page=10",
            "ve_page": "/ves/1500/",
            "api_ve_list": None,
        }
        for name, path in pages.items():
            if path is None:
                continue
            opener.open(self.base + path).read()  # warm up
            times = []
            for _ in range(SAMPLES):
                t0 = time.perf_counter()
                response = opener.open(self.base + path)
                response.read()
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status == 200
            self.results[name] = {"p50_ms": round(percentile(times, 50), 1), "p95_ms": round(percentile(times, 95), 1)}

    def api_rps(self):
        count = [0]
        lock = threading.Lock()
        deadline = time.monotonic() + API_SECONDS

        def worker():
            request = urllib.request.Request(f"{self.base}/api/ves/", headers={"Authorization": f"Token {self.token}"})
            n = 0
            while time.monotonic() < deadline:
                with urllib.request.urlopen(request) as response:
                    response.read()
                n += 1
            with lock:
                count[0] += n

        threads = [threading.Thread(target=worker) for _ in range(API_THREADS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        self.results["api_ve_list_rps"] = {"requests": count[0], "seconds": round(elapsed, 2),
                                           "rps": round(count[0] / elapsed, 1), "threads": API_THREADS,
                                           "page_size": 50}

    def click_to_running(self):
        if os.geteuid() != 0 or not shutil.which("lxc-start") or not os.path.exists("/usr/bin/chromium"):
            self.results["click_to_running"] = "skipped: needs root, LXC and /usr/bin/chromium"
            return
        from playwright.sync_api import sync_playwright

        from vzengine import Engine
        from vzpanel.accounts.models import User
        from vzpanel.nodes.models import Node
        from vzpanel.ves.models import VE

        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        root = self.tmp / "vz"
        root.mkdir()
        os.chmod(root, 0o711)
        (root / "vz.conf").write_text('POOL_SIZE="4G"\n')
        engine = Engine(root)
        ctid = 990000
        try:
            engine.ensure_ready()
            engine.create(ctid, "tiny", hostname="bench-start")
            VE.objects.create(ctid=ctid, node=Node.local(), owner=User.objects.get(username="customer0"),
                              hostname="bench-start", ostemplate="tiny", status="stopped")
            self.spawn([sys.executable, "manage.py", "rqworker", "node:local"], "agent.log", VZ_ROOT=str(root))
            panel, engine_only = [], []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run"])
                page = browser.new_page()
                page.goto(f"{self.base}/login/")
                page.get_by_label("Username").fill("customer0")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(re.compile(r"/ves/$"))
                for _ in range(START_RUNS):
                    page.goto(f"{self.base}/ves/{ctid}/")
                    page.wait_for_selector("[data-live=ws]")
                    t0 = time.perf_counter()
                    page.get_by_role("button", name="Start", exact=True).click()
                    try:
                        page.wait_for_function(
                            "document.querySelector('#ve-state')?.textContent.trim() === 'running'", timeout=30_000)
                    except Exception:
                        page.screenshot(path=str(REPO / "bench" / "results" / "click-fail.png"), full_page=True)
                        raise
                    panel.append(time.perf_counter() - t0)
                    engine.stop(ctid)
                    VE.objects.filter(ctid=ctid).update(status="stopped")
                    t0 = time.perf_counter()
                    engine.start(ctid)
                    engine_only.append(time.perf_counter() - t0)
                    engine.stop(ctid)
                browser.close()
            self.results["click_to_running"] = {
                "runs": START_RUNS,
                "panel_click_to_running_ms": round(statistics.median(panel) * 1000),
                "engine_start_ms": round(statistics.median(engine_only) * 1000),
                "panel_overhead_ms": round((statistics.median(panel) - statistics.median(engine_only)) * 1000),
            }
        finally:
            try:
                if engine.exists(ctid):
                    engine.destroy(ctid)
            finally:
                engine.purge()

    def run(self):
        try:
            self.setup()
            self.time_pages()
            self.api_rps()
            self.click_to_running()
        except BaseException:
            for log in ("agent.log", "web.log"):
                if (self.tmp / log).exists():
                    print(f"--- {log} (last lines)", file=sys.stderr)
                    print("\n".join((self.tmp / log).read_text(errors="replace").splitlines()[-25:]), file=sys.stderr)
            raise
        finally:
            self.stop_all()
            shutil.rmtree(self.tmp, ignore_errors=True)
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "panel.json").write_text(json.dumps(self.results, indent=2) + "\n")
        print(json.dumps(self.results, indent=2))


if __name__ == "__main__":
    Bench().run()
