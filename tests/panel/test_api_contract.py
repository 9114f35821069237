"""The API keeps its OpenAPI contract: schemathesis fuzzes a real running panel as every role.

The panel's own schema (drf-spectacular, /api/schema/) is the contract. schemathesis (its `st run` CLI, in a
subprocess, so its own Hypothesis runs apart from pytest's) sends generated valid and invalid requests to the
real ASGI server (daphne) with a real Redis, task worker and node agent on a private engine root, and checks
every answer: no 5xx, only documented statuses, bodies and content types as documented.

Replay a failure: VZPANEL_FUZZ_SEED=<the seed printed> .venv/bin/python -m pytest tests/panel/test_api_contract.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.panel.conftest import make_ve, start_daphne, stop_process, wait_for

SEED = int(os.environ.get("VZPANEL_FUZZ_SEED", "20261207"))
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
ST = Path(sys.executable).with_name("st")

# What each role leaves out, and why. DELETE everywhere: destroying the VEs the run needs would leave the
# rest of the run only 404s (destroy is covered by test_ve_actions.py). Everywhere: reinstall and taking a
# backup rebuild or archive a VE on the node (slow host work that only queues up behind the run).
EXCLUDE_ALL = ["--exclude-method", "DELETE",
               "--exclude-operation-id", "ves_reinstall_create",
               "--exclude-operation-id", "ves_backups_create"]
# Admins have no plan limit: every valid create would build one more real VE on the node.
EXCLUDE_ADMIN = ["--exclude-operation-id", "ves_create"]


def get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def token_for(user) -> str:
    from vzpanel.accounts.models import APIToken

    return APIToken.issue(user, "fuzz")[1]


@pytest.fixture
def fuzz_panel(redis_url, panel_state, test_db_path, transactional_db):
    """The panel with limits far above the run's rate: this test checks the contract, not throttling."""
    proc, base = start_daphne(redis_url, panel_state, test_db_path, "fuzz-web.log",
                              VZPANEL_API_RATE_USER="1000000/minute", VZPANEL_API_RATE_ANON="1000000/minute")
    yield base
    stop_process(proc)
    proc.log_file.close()


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_api_keeps_its_schema_for_every_role(fuzz_panel, node_agent, node, admin, owner, teacher, student,
                                                 panel_state, tmp_path):
    from vzpanel.tasks.models import Task

    # A real tiny VE for the customer (built by the node agent), and a student's VE the teacher may see.
    status, _, body = _post(fuzz_panel, "/api/ves/", token_for(owner), {"ostemplate": "tiny", "hostname": "fuzz1"})
    assert status == 202, body
    task = Task.objects.get(pk=json.loads(body)["id"])
    wait_for(lambda: Task.objects.get(pk=task.pk).status in ("completed", "failed", "errored"), 240, "the VE")
    assert Task.objects.get(pk=task.pk).status == "completed", Task.objects.get(pk=task.pk).log
    make_ve(student, node, 201, status="stopped")

    status, _, body = get(f"{fuzz_panel}/api/schema/?format=json", token_for(admin))
    assert status == 200, body
    schema = tmp_path / "openapi.json"
    schema.write_bytes(body)

    roles = {"anonymous": (None, 4, []), "customer": (token_for(owner), 8, []),
             "teacher": (token_for(teacher), 6, []), "admin": (token_for(admin), 8, EXCLUDE_ADMIN)}
    print(f"schemathesis seed {SEED} (replay: VZPANEL_FUZZ_SEED={SEED})")
    failed, cases, running = [], {}, {}
    started = time.monotonic()
    for role, (token, examples, exclude) in roles.items():  # the roles at once: each waits on the server
        report = panel_state / f"schemathesis-{role}.xml"
        command = [str(ST), "run", str(schema), "--url", fuzz_panel, "--checks", CHECKS, "--seed", str(SEED),
                   "--max-examples", str(examples), "--workers", "1", "--request-timeout", "30",
                   "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
                   "--report", "junit", "--report-junit-path", str(report), *EXCLUDE_ALL, *exclude]
        if token:
            command += ["--header", f"Authorization: Token {token}"]
        out = open(panel_state / f"schemathesis-{role}.txt", "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                env={**os.environ, "NO_COLOR": "1"})
        running[role] = (proc, out, report)
    for role, (proc, out, report) in running.items():
        try:
            returncode = proc.wait(timeout=max(1, 600 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        out.seek(0)
        text = out.read()
        out.close()
        summary = [line for line in text.splitlines() if "cases" in line.lower() or "passed" in line]
        cases[role] = summary[-3:]
        print(f"{role}: exit {returncode} after {time.monotonic() - started:.0f} s; {' | '.join(summary[-3:])}")
        if returncode != 0:
            failed.append(f"--- {role} (seed {SEED}, report {report}) ---\n{text[-8000:]}")
    assert not failed, "\n".join(failed)


def _post(base, path, token, data):
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(data).encode(), method="POST",
                                     headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.django_db(transaction=True)
def test_it_throttles_with_429_and_retry_after(redis_url, panel_state, test_db_path, owner):
    proc, base = start_daphne(redis_url, panel_state, test_db_path, "throttle-web.log",
                              VZPANEL_API_RATE_USER="3/minute", VZPANEL_API_RATE_ANON="2/minute")
    try:
        token = token_for(owner)
        assert [get(f"{base}/api/templates/", token)[0] for _ in range(3)] == [200, 200, 200]
        status, headers, body = get(f"{base}/api/templates/", token)
        assert status == 429
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert "throttled" in json.loads(body)["detail"]
        # DRF checks permissions before throttles: an anonymous caller gets 401 before any budget counts
        # (token guessing has its own lockout, vzpanel/api/auth.py).
        assert [get(f"{base}/api/ves/")[0] for _ in range(3)] == [401, 401, 401]
    finally:
        stop_process(proc)
        proc.log_file.close()


def test_bad_input_is_a_400_naming_the_field(api_for, admin, owner, owner_ve):
    from vzpanel.tasks.models import Task

    api = api_for(admin)
    # The integer that used to reach the database and answer 500.
    response = api.post("/api/ves/bulk/", {"action": "start", "ctids": [36893488147419103232]}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["errors"] == {"ctids.0": ["This CTID is out of range: a CTID is from 100 to 999999999."]}
    assert body["detail"].startswith("ctids.0: This CTID is out of range")
    response = api.post("/api/ves/bulk/", {"action": "start", "ctids": list(range(100, 1101))}, format="json")
    assert response.status_code == 400 and "ctids" in response.json()["errors"]
    response = api_for(owner).post("/api/ves/101/set-hostname/", {"hostname": "a b"}, format="json")
    assert response.json() == {"detail": "hostname: A host name is letters, digits, '-' and '.' only.",
                               "errors": {"hostname": ["A host name is letters, digits, '-' and '.' only."]}}
    response = api_for(owner).get("/api/ves/?q=" + "x" * 201)
    assert response.status_code == 400 and response.json()["errors"] == {"q": ["At most 200 characters."]}
    assert api_for(owner).get("/api/ves/99999999999999999999/").status_code == 404
    assert api_for(owner).get("/api/tasks/99999999999999999999/").status_code == 404
    assert not Task.objects.exists()


def test_every_operation_says_what_it_does(api_for, admin):
    paths = api_for(admin).get("/api/schema/?format=json").json()["paths"]
    descriptions = [op["description"] for ops in paths.values() for method, op in ops.items()
                    if method != "parameters"]
    assert len(descriptions) == len(set(descriptions)), "two operations share a description"
    for ops in paths.values():
        for op in (o for m, o in ops.items() if m != "parameters"):
            assert {"401", "403", "429"} <= set(op["responses"]), op["operationId"]
            assert op["responses"]["429"]["headers"]["Retry-After"]
