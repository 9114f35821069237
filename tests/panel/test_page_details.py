"""Details of the pages a tester found rough: a task's result in words, "New VE" disabled with its reason at
the plan's limit, every field of the VE page with its own label, and messages about a task marked with it
(so the live pages can settle them when the task ends: tests/panel/test_look.py watches that in a browser)."""

import re

import pytest
from django.utils import timezone

from tests.panel.conftest import make_ve
from vzpanel.tasks.models import Task

pytestmark = pytest.mark.django_db


def test_a_tasks_result_and_parameters_are_words_not_a_python_dict(client_for, owner, owner_ve, node):
    task = Task.objects.create(
        ve=owner_ve, node=node, user=owner, action="create", status="completed", progress=100,
        params={"ostemplate": "tiny", "hostname": "web1", "start": True}, finished_at=timezone.now(),
        result={"ctid": owner_ve.ctid, "status": "running", "ip_addresses": ["10.0.0.5", "fd77::5"], "onboot": False,
                "nameservers": [], "extra": {"memory_bytes": 7_340_032}})
    html = client_for(owner).get(f"/tasks/{task.pk}/").content.decode()
    result = html[html.index('id="task-result"'):]
    assert "{&#x27;" not in html and "{'" not in html and "[&#x27;" not in html
    for words in ("<dt", ">Addresses</dt>", "10.0.0.5, fd77::5", ">Starts with the node</dt>", ">no</dd>",
                  ">Name servers</dt>", ">Details</dt>", "7.0 MB", ">State</dt>", ">running</dd>"):
        assert words in result, words
    assert ">OS template</dt>" in html and ">Start</dt>" in html and ">yes</dd>" in html  # the parameters


def test_new_ve_is_disabled_with_the_reason_only_at_the_plans_limit(client_for, owner, admin, node, plan):
    page = client_for(owner).get("/ves/").content.decode()
    assert re.search(r'<a class="btn btn-primary" href="/ves/new/" id="new-ve">', page)
    for ctid in range(101, 101 + plan.max_ves):
        make_ve(owner, node, ctid)
    page = client_for(owner).get("/ves/").content.decode()
    assert '<button class="btn btn-primary" type="button" id="new-ve" disabled aria-describedby="new-ve-why">' in page
    assert f"Your plan {plan.name} allows {plan.max_ves} VE(s) and you have {plan.max_ves}." in page
    assert 'href="/ves/new/"' not in page
    assert 'id="new-ve" disabled' not in client_for(admin).get("/ves/").content.decode()  # admins have no plan limit
    owner.plan = None
    owner.save()
    assert "You have no plan yet" in client_for(owner).get("/ves/").content.decode()


def test_every_field_of_the_ve_page_has_its_own_label(client_for, owner, owner_ve):
    for response in (client_for(owner).get(f"/ves/{owner_ve.ctid}/"),
                     client_for(owner).post(f"/ves/{owner_ve.ctid}/destroy/", {"confirm": "nope"})):  # re-shown
        html = response.content.decode()
        fields = re.findall(r'<(?:input|select|textarea)\b(?![^>]*type="hidden")[^>]*\bid="([^"]+)"', html)
        assert fields, html[:300]
        assert len(fields) == len(set(fields)), sorted(fields)
        for field in fields:
            assert html.count(f'for="{field}"') == 1, field
        unlabelled = [tag for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html)
                      if 'type="hidden"' not in tag and " id=" not in tag and "aria-label" not in tag]
        assert unlabelled == []


def test_a_message_about_a_task_names_it(client_for, admin, node):
    response = client_for(admin).post("/ves/new/", {"ostemplate": "tiny", "hostname": "shop1", "start": "on"},
                                      follow=True)
    task = Task.objects.get(action="create")
    html = response.content.decode()
    assert re.search(rf'class="alert alert-success[^"]*" role="alert" data-task="{task.pk}">\s*VE \d+ is being created', html)
    assert 'aria-live="polite"' in html[html.index('id="messages"') - 20:html.index('id="messages"') + 60]
