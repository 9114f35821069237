"""The Firewall tab and API: its owner sets a preset through the page (a real node agent applies it to a real
VE of the private engine root), sees the rules, and an outsider gets nothing. Engine behaviour (traffic,
reboots, bad input) is in tests/engine/test_ve_firewall.py."""

import pytest

from tests.panel.conftest import wait_task
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE


def fw_task(ve) -> Task:
    task = Task.objects.filter(ve=ve, action="set_firewall").order_by("-id").first()
    assert task is not None, "no set_firewall task"
    task = wait_task(task, timeout=60)
    assert task.status == "completed", (task.error, task.traceback, task.log)
    return task


@pytest.fixture
def live_ve(engine, new_ctid, owner, node, plan):
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"fw{ctid}")
    engine.start(ctid, wait_boot=True)
    return VE.objects.create(ctid=ctid, node=node, owner=owner, hostname=f"fw{ctid}", ostemplate="tiny",
                             status="running")


@pytest.mark.root
def test_it_sets_a_preset_from_the_page_and_round_trips_through_the_api(node_agent, engine, live_ve, client_for,
                                                                       api_for, owner, outsider):
    ctid = live_ve.ctid
    web = client_for(owner)
    page = web.get(f"/ves/{ctid}/firewall/")
    assert page.status_code == 200 and "Web server (22, 80, 443)" in page.content.decode()
    web.post(f"/ves/{ctid}/firewall/change/", {"op": "preset", "preset": "web"})
    fw_task(live_ve)
    conf = engine.config(ctid)
    assert conf.get("FIREWALL_POLICY") == "drop"
    assert conf.get("FIREWALL_RULES") == "accept tcp 22;accept tcp 80;accept tcp 443"
    page = web.get(f"/ves/{ctid}/firewall/").content.decode()
    assert "accept tcp 443" in page

    # an outsider learns nothing, on the page or the API
    assert client_for(outsider).get(f"/ves/{ctid}/firewall/").status_code == 404
    assert client_for(outsider).post(f"/ves/{ctid}/firewall/change/", {"op": "preset", "preset": "open"}
                                     ).status_code == 404
    assert api_for(outsider).get(f"/api/ves/{ctid}/firewall/").status_code == 404

    api = api_for(owner)
    assert api.get(f"/api/ves/{ctid}/firewall/").json() == {
        "policy": "drop", "rules": ["accept tcp 22", "accept tcp 80", "accept tcp 443"]}
    bad = api.post(f"/api/ves/{ctid}/firewall/", {"policy": "drop", "rules": ["accept tcp 70000"]}, format="json")
    assert bad.status_code == 400
    r = api.post(f"/api/ves/{ctid}/firewall/", {"policy": "accept", "rules": ["drop udp 53 from 10.0.0.0/8"]},
                 format="json")
    assert r.status_code == 202, r.content
    fw_task(live_ve)
    assert api.get(f"/api/ves/{ctid}/firewall/").json() == {"policy": "accept", "rules": ["drop udp 53 from 10.0.0.0/8"]}
    assert engine.status(ctid).extra["firewall_rules"] == ["drop udp 53 from 10.0.0.0/8"]
