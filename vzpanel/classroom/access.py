"""Who may see and run a course. Anyone else gets a 404 for it, as for a VE they may not see.

- see: admins, the course's teacher, its assistants and its students (a student sees only their own row);
- operate (start, stop, reset students' VEs, watch the dashboard): admins, the teacher, assistants;
- manage (roster, image, provisioning, quota, schedule, end): admins and the teacher.

Student VEs stay under vzpanel.ves.access, widened by `ve_rule` (registered in models.py): a course's
teacher sees the VE of each of its current students, an assistant those of the courses they assist.
That power comes from the membership alone and ends with it: an account's `teacher` field (who made it)
grants nothing by itself, and a customer's, teacher's or admin's account never comes under a teacher.
"""

import functools

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404

from .models import Course, Membership


def ve_rule(user) -> Q | None:
    """The VEs user sees through courses: their students' (as teacher) and their course's students' (as assistant)."""
    rules = []
    if user.role == user.Role.TEACHER and Course.objects.filter(teacher=user).exists():
        rules.append(Q(memberships__course__teacher=user, memberships__role=Membership.Role.STUDENT))
    assisted = list(Membership.objects.filter(user=user, role=Membership.Role.ASSISTANT)
                    .values_list("course_id", flat=True))
    if assisted:
        rules.append(Q(memberships__course_id__in=assisted, memberships__role=Membership.Role.STUDENT))
    if not rules:
        return None
    rule = rules[0]
    for more in rules[1:]:
        rule |= more
    return rule


def is_teachers_student(teacher, account) -> bool:
    """Whether account is already teacher's student: a student account made by (or given to) teacher, or a
    student in one of teacher's courses. Nobody else's account may come under a teacher."""
    if account.role != account.Role.STUDENT or account.is_superuser:
        return False
    if account.teacher_id == teacher.pk:
        return True
    return Membership.objects.filter(user=account, role=Membership.Role.STUDENT, course__teacher=teacher).exists()


def other_teacher_of(teacher, account):
    """Return another teacher whose student account is (by the account's maker, or a course of theirs), or None."""
    if account.teacher_id and account.teacher_id != teacher.pk:
        return account.teacher
    m = (Membership.objects.filter(user=account, role=Membership.Role.STUDENT).exclude(course__teacher=teacher)
         .select_related("course__teacher").first())
    return m.course.teacher if m is not None else None


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
