"""Who may see and run a course. Anyone else gets a 404 for it, as for a VE they may not see.

- see: admins, the course's teacher, its assistants and its students (a student sees only their own row);
- operate (start, stop, reset students' VEs, watch the dashboard): admins, the teacher, assistants;
- manage (roster, image, provisioning, quota, schedule, end): admins and the teacher.

Student VEs stay under vzpanel.ves.access: a course's teacher sees them there because every student
account of the course has `teacher` = the course's teacher.
"""

import functools

from django.contrib.auth.decorators import login_required
from django.http import Http404

from .models import Course, Membership


def visible_courses(user):
    return Course.objects.visible_to(user)


def get_course_or_404(user, pk) -> Course:
    """Return course pk if user may see it, else raise Http404."""
    try:
        return visible_courses(user).select_related("teacher", "plan", "node").get(pk=int(pk))
    except (Course.DoesNotExist, ValueError, TypeError):
        raise Http404("No such course.") from None


def role_in(user, course: Course) -> str:
    """Return what user is in course: admin, teacher, assistant, student, or '' (nothing)."""
    if not getattr(user, "is_authenticated", False):
        return ""
    if course.teacher_id == user.pk:
        return "teacher"
    if user.is_panel_admin:
        return "admin"
    role = Membership.objects.filter(course=course, user=user).values_list("role", flat=True).first()
    return role or ""


def can_manage(user, course: Course) -> bool:
    return role_in(user, course) in ("admin", "teacher")


def can_operate(user, course: Course) -> bool:
    return role_in(user, course) in ("admin", "teacher", Membership.Role.ASSISTANT)


def require_manage(user, course: Course) -> None:
    """Raise Http404 unless user manages course (students and assistants learn nothing more)."""
    if not can_manage(user, course):
        raise Http404("No such course.")


def require_operate(user, course: Course) -> None:
    if not can_operate(user, course):
        raise Http404("No such course.")


def course_view(need: str = "see"):
    """Decorate a view of one course: log in, then hand it the course instead of its ``pk``.

    ``need`` is what the user must be able to do with it (see, operate, manage); anyone else gets
    a 404, as for a course that does not exist.
    """
    check = {"see": None, "operate": require_operate, "manage": require_manage}[need]

    def decorate(view):
        @login_required
        @functools.wraps(view)
        def wrapped(request, pk, *args, **kwargs):
            course = get_course_or_404(request.user, pk)
            if check is not None:
                check(request.user, course)
            return view(request, course, *args, **kwargs)

        return wrapped

    return decorate
