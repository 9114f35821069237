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
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from common import PanelStack, percentile

REPO = Path(__file__).resolve().parents[1]
N_VES = 1000
SAMPLES = 100
API_SECONDS = 5.0
API_THREADS = 4
START_RUNS = 3
PASSWORD = "bench-Password-1"


class Bench(PanelStack):
    def __init__(self):
        super().__init__("vzpanel-bench-")
        self.results: dict = {"ves": N_VES, "samples": SAMPLES}

    # -- set-up ---------------------------------------------------------------------------------------

    def setup(self):
        self.start_database()
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
        self.base = self.start_web()

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
            # The task worker (unprivileged in `serve`) and the node agent (root), as the run command has them.
            self.spawn("worker", [sys.executable, "manage.py", "rqworker", "node:local"])
            self.spawn("agent", [sys.executable, "-m", "vzpanel.agent", "--node", "local"], VZ_ROOT=str(root))
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
            self.print_logs("worker", "agent", "web")
            raise
        finally:
            self.stop_all()
            self.remove()
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "panel.json").write_text(json.dumps(self.results, indent=2) + "\n")
        print(json.dumps(self.results, indent=2))


if __name__ == "__main__":
    Bench().run()
