"""A teacher's reset of one student's VE asks first, with the class reset's choice: keep the student's work as a
snapshot (the default) or not. Nothing is queued until it is confirmed; only those who operate the class may."""

import pytest

from tests.panel.conftest import make_user, make_ve
from vzpanel.classroom import services
from vzpanel.classroom.models import Membership
from vzpanel.tasks.models import Task

pytestmark = pytest.mark.django_db


@pytest.fixture
def course(teacher, node, plan):
    return services.create_course(teacher, name="Networks 101", ostemplate="tiny", plan=plan)


@pytest.fixture
def amy(course, node, teacher):
    user = make_user("amy@example.edu", "student", teacher=teacher)
    return Membership.objects.create(course=course, user=user, ve=make_ve(user, node, 301), display_name="Amy")


def resets():
    return Task.objects.filter(action=services.RESET)


def test_the_dashboard_offers_a_reset_page_not_an_instant_reset(client_for, teacher, course, amy):
    html = client_for(teacher).get(f"/classes/{course.pk}/").content.decode()
    assert f'href="/classes/{course.pk}/students/{amy.pk}/reset/"' in html
    assert 'name="action" value="reset" type="submit" onclick' in html  # the whole-class button, with its choice
    assert 'value="member:' in html and html.count('value="reset"') == 1  # no one-click reset per student

    page = client_for(teacher).get(f"/classes/{course.pk}/students/{amy.pk}/reset/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="keep_work"' in html and 'id="id_keep_work" class="form-check-input" checked' in html
    assert "Files the student changed are lost unless you keep them" in html


def test_it_queues_nothing_until_confirmed(client_for, teacher, course, amy):
    response = client_for(teacher).post(f"/classes/{course.pk}/students/{amy.pk}/reset/", {"keep_work": "on"})
    assert response.status_code == 400
    assert b"This field is required" in response.content
    assert not resets().exists()


@pytest.mark.parametrize("keep", [True, False])
def test_the_reset_keeps_the_work_only_when_asked(client_for, teacher, course, amy, keep):
    data = {"confirm": "on", **({"keep_work": "on"} if keep else {})}
    response = client_for(teacher).post(f"/classes/{course.pk}/students/{amy.pk}/reset/", data, follow=True)
    assert response.redirect_chain[-1][0] == f"/classes/{course.pk}/"
    task = resets().get()
    assert task.ve.ctid == 301 and task.params["keep_work"] is keep and task.user == teacher
    said = "keeping their work as a snapshot" if keep else "their work is not kept"
    assert f'data-task="{task.pk}"' in response.content.decode() and said in response.content.decode()


def test_only_those_who_operate_the_class_reach_it(client_for, course, amy, student, owner):
    other = make_user("ben@example.edu", "student")
    for user in (amy.user, other, owner):
        c = client_for(user)
        assert c.get(f"/classes/{course.pk}/students/{amy.pk}/reset/").status_code == 404
        assert c.post(f"/classes/{course.pk}/students/{amy.pk}/reset/", {"confirm": "on"}).status_code == 404
    assert not resets().exists()


def test_an_unknown_student_is_404(client_for, teacher, course, amy):
    assert client_for(teacher).get(f"/classes/{course.pk}/students/999/reset/").status_code == 404
