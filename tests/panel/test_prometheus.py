"""/metrics: Prometheus' text format of nodes, VEs and tasks, only with a bearer token (the panel's metrics token
or an admin's API token); after a reconcile it exports what the engine reported of a real VE."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.panel.conftest import make_ve, stop_process, wait_for
from vzpanel.accounts.models import APIToken
from vzpanel.nodes.models import IPAddress, IPPool
from vzpanel.nodes.status import nodes_up
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

TOKEN = "metrics-token-for-tests-0123456789"
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def scrape(client, token=TOKEN, keyword="Bearer"):
    return client.get("/metrics", HTTP_AUTHORIZATION=f"{keyword} {token}" if token else "")


def families(response) -> dict:
    """Parse a scrape with prometheus_client's own parser; check names, labels and that no series repeats."""
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    out, seen = {}, set()
    for fam in text_string_to_metric_families(response.content.decode()):
        assert NAME.match(fam.name) and fam.name.startswith("vzpanel_"), fam.name
        assert fam.documentation, fam.name
        for s in fam.samples:
            assert all(LABEL.match(k) for k in s.labels), s
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, f"series repeated: {key}"
            seen.add(key)
        out[fam.name] = fam
    return out


def value(fams, name, sample=None, **labels):
    """The value of the one sample of family name with these labels (sample: the sample's own name)."""
    got = [s.value for s in fams[name].samples
           if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (name, labels, got)
    return got[0]


# --- access ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_needs_a_token_and_says_which(client, client_for, admin, settings):
    settings.VZPANEL_METRICS_TOKEN = ""
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "VZPANEL_METRICS_TOKEN (not set on this panel)" in response.content.decode()
    assert client_for(admin).get("/metrics").status_code == 403  # a session is no token
    assert scrape(client, "").status_code == 403

    settings.VZPANEL_METRICS_TOKEN = TOKEN
    refused = scrape(client, "wrong-token")
    assert refused.status_code == 403 and "Invalid or revoked API token" in refused.content.decode()
    assert b"vzpanel_" not in refused.content
    assert scrape(client, TOKEN, keyword="Basic").status_code == 403
    families(scrape(client))


@pytest.mark.django_db
def test_an_admins_api_token_works_and_nobody_elses(client, admin, owner, settings):
    settings.VZPANEL_METRICS_TOKEN = ""
    _, admin_key = APIToken.issue(admin, "prometheus", scope="read")
    _, owner_key = APIToken.issue(owner, "mine")
    families(scrape(client, admin_key))
    refused = scrape(client, owner_key)
    assert refused.status_code == 403 and "not an admin's" in refused.content.decode()
    expired, expired_key = APIToken.issue(admin, "old", days=1)
    APIToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    refused = scrape(client, expired_key)
    assert refused.status_code == 403 and "expired" in refused.content.decode()
    admin.is_active = False
    admin.save()
    assert scrape(client, admin_key).status_code == 403


# --- what it exports ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_exports_nodes_pools_ves_and_task_counters_with_valid_names(client, node, owner, settings):
    settings.VZPANEL_METRICS_TOKEN = TOKEN
    ve = make_ve(owner, node, 101, hostname='evil"} 1\nvzpanel_node_up{node="x')
    VE.objects.filter(pk=ve.pk).update(usage={"memory_bytes": 5 << 20, "cpu_seconds": 2.5, "net_in_bytes": 10,
                                              "net_out_bytes": 20, "nproc": 4, "disk_bytes": 7 << 20},
                                       usage_at=timezone.now())
    make_ve(owner, node, 102, status="destroyed")
    pool = IPPool.objects.create(node=node, name="public", network="192.0.2.0/29")
    IPAddress.objects.create(pool=pool, address="192.0.2.2", ve=ve)
    for status in ("completed", "completed", "failed"):
        Task.objects.create(node=node, ve=ve, action="start", status=status)
    Task.objects.create(node=node, ve=ve, action="stop", status="queued")

    fams = families(scrape(client))
    assert value(fams, "vzpanel_node_up", node=node.name) == 0  # no agent runs here
    assert value(fams, "vzpanel_node_address_pool_size", node=node.name, pool="public") == 5
    assert value(fams, "vzpanel_node_address_pool_used", node=node.name, pool="public") == 1
    assert value(fams, "vzpanel_node_ves", node=node.name, state="unknown") == 1  # running, on a down node
    assert value(fams, "vzpanel_ve_info", ctid="101", hostname='evil"} 1\nvzpanel_node_up{node="x') == 1
    assert {s.labels["node"] for s in fams["vzpanel_node_up"].samples} == {node.name}  # nothing injected
    assert value(fams, "vzpanel_ve_state", ctid="101", state="unknown") == 1
    assert value(fams, "vzpanel_ve_state", ctid="101", state="running") == 0
    assert not [s for s in fams["vzpanel_ve_info"].samples if s.labels["ctid"] == "102"]  # destroyed
    assert value(fams, "vzpanel_ve_memory_bytes", ctid="101") == 5 << 20
    assert value(fams, "vzpanel_ve_cpu_seconds", "vzpanel_ve_cpu_seconds_total", ctid="101") == 2.5
    assert value(fams, "vzpanel_ve_network_receive_bytes", "vzpanel_ve_network_receive_bytes_total", ctid="101") == 10
    assert value(fams, "vzpanel_ve_network_transmit_bytes", "vzpanel_ve_network_transmit_bytes_total",
                 ctid="101") == 20
    assert value(fams, "vzpanel_tasks_finished", "vzpanel_tasks_finished_total", action="start",
                 status="completed") == 2
    assert value(fams, "vzpanel_tasks_finished", "vzpanel_tasks_finished_total", action="start",
                 status="failed") == 1
    assert value(fams, "vzpanel_tasks_active", action="stop", status="queued") == 1


@pytest.mark.root
@pytest.mark.django_db(transaction=True)
def test_after_a_reconcile_it_exports_what_the_engine_reported(node_agent, engine, tiny_ve, node, owner, client,
                                                               settings):
    from vzpanel.nodes.reconcile import reconcile_node

    settings.VZPANEL_METRICS_TOKEN = TOKEN
    # The panel thinks the VE is stopped and knows nothing of its use: the reconcile reads both from the node.
    ve = VE.objects.create(ctid=tiny_ve, node=node, owner=owner, hostname="prom", ostemplate="tiny",
                           status="stopped")
    wait_for(lambda: nodes_up([node.name]), 60, "the node agent to announce itself")
    reconcile_node(node.name)
    ve.refresh_from_db()
    assert ve.status == "running" and ve.usage["memory_bytes"] > 0
    now = engine.usage(tiny_ve)

    fams = families(scrape(client))
    assert value(fams, "vzpanel_node_up", node=node.name) == 1
    assert value(fams, "vzpanel_ve_state", ctid=str(tiny_ve), state="running") == 1
    assert sum(s.value for s in fams["vzpanel_ve_state"].samples if s.labels["ctid"] == str(tiny_ve)) == 1
    memory = value(fams, "vzpanel_ve_memory_bytes", ctid=str(tiny_ve))
    assert memory == ve.usage["memory_bytes"]  # what the engine reported at the reconcile
    assert abs(memory - now["memory_bytes"]) <= max(16 << 20, now["memory_bytes"] // 2)  # and reports now
    assert value(fams, "vzpanel_ve_processes", ctid=str(tiny_ve)) == ve.usage["nproc"] >= 1
    assert value(fams, "vzpanel_ve_disk_bytes", ctid=str(tiny_ve)) == ve.usage["disk_bytes"]
    assert value(fams, "vzpanel_node_memory_used_bytes", node=node.name) == memory
    pool = engine.pool_info()
    assert value(fams, "vzpanel_node_disk_pool_size_bytes", node=node.name) == pool["size_bytes"]

    # The agent stops answering: the node is down and the VE's state unknown, not stopped.
    stop_process(node_agent.agent, timeout=30)
    fams = families(scrape(client))
    assert value(fams, "vzpanel_node_up", node=node.name) == 0
    assert value(fams, "vzpanel_ve_state", ctid=str(tiny_ve), state="unknown") == 1
    assert value(fams, "vzpanel_ve_state", ctid=str(tiny_ve), state="stopped") == 0


@pytest.mark.django_db
def test_the_sample_grafana_dashboard_uses_only_exported_metrics(client, node, settings):
    import json
    from pathlib import Path

    settings.VZPANEL_METRICS_TOKEN = TOKEN
    fams = families(scrape(client))
    exported = set(fams) | {f"{name}_total" for name, fam in fams.items() if fam.type == "counter"}
    dashboard = json.loads((Path(__file__).parents[2] / "contrib/grafana/vzpanel.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"vzpanel_[a-z_]+", target["expr"])}
    used |= set(re.findall(r"vzpanel_[a-z_]+", dashboard["templating"]["list"][0]["definition"]))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


@pytest.mark.django_db
def test_guessing_tokens_locks_the_address_out_even_for_the_right_one(client, settings):
    settings.VZPANEL_METRICS_TOKEN = TOKEN
    answers = [scrape(client, f"guess-{i}").status_code for i in range(settings.VZPANEL_LOGIN_FAILURES_PER_IP)]
    assert set(answers[:-1]) == {403} and answers[-1] == 429  # the last failure locks the address
    locked = scrape(client)
    assert locked.status_code == 429 and b"vzpanel_" not in locked.content  # the panel's lockout answer
