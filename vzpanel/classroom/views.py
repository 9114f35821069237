from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm, SetPasswordForm
from django.core.exceptions import ValidationError
from django.db.models import OuterRef, Subquery
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from vzpanel.audit import log as audit
from vzpanel.core.decorators import is_htmx
from vzpanel.nodes.sshforward import ssh_host
from vzpanel.tasks.models import Task
from vzpanel.ves.models import VE

from . import services
from .access import (
    can_manage,
    can_operate,
    course_view,
    visible_courses,
)
from .forms import (
    AddStudentForm,
    AssistantForm,
    ClassActionForm,
    CourseForm,
    EndForm,
    ExtendForm,
    ImageForm,
    RemoveStudentForm,
    ResetOwnForm,
    ResetStudentForm,
    RosterForm,
    SessionForm,
    SheetForm,
)
from .models import Course, LabSession, LoginLink, Membership


def console_url(ctid, watch: bool) -> str:
    """The VE's web console (vzpanel.console), watching or typing; the VE page until the console is there."""
    try:
        return reverse("ves:console", args=[ctid]) + ("?watch=1" if watch else "?watch=0")
    except NoReverseMatch:
        return reverse("ves:detail", args=[ctid]) + "?tab=console" + ("&watch=1" if watch else "")


@login_required
def course_list(request):
    courses = list(visible_courses(request.user).select_related("teacher", "plan").order_by("status", "-created_at"))
    mine = dict(Membership.objects.filter(user=request.user).values_list("course_id", "role"))
    for c in courses:
        c.my_role = "teacher" if c.teacher_id == request.user.pk else mine.get(c.pk, "admin")
    can_create = request.user.is_panel_admin or request.user.role == request.user.Role.TEACHER
    return render(request, "classroom/course_list.html", {"courses": courses, "can_create": can_create})


@login_required
def course_create(request):
    if not (request.user.is_panel_admin or request.user.role == request.user.Role.TEACHER):
        raise Http404("Not found.")
    form = CourseForm(request.POST or None, user=request.user, creating=True)
    if request.method == "POST" and form.is_valid():
        data = {k: v for k, v in form.cleaned_data.items() if k not in ("image",)}
        try:
            ostemplate, image_ve = form.image_choice()
            course = services.create_course(request.user, ostemplate=ostemplate, image_ve=image_ve, request=request,
                                            **data)
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        except ValidationError as exc:
            form.add_error("image", exc)
        else:
            messages.success(request, f"Course {course.name} created. Upload its roster next.")
            return redirect("classroom:roster", course.pk)
    return render(request, "classroom/course_form.html", {"form": form, "creating": True},
                  status=400 if form.errors else 200)


@course_view("manage")
def course_edit(request, course):
    form = CourseForm(request.POST or None, instance=course, user=request.user, creating=False)
    if request.method == "POST" and form.is_valid():
        fields = {k: v for k, v in form.cleaned_data.items()}
        course.refresh_from_db()
        services.update_course(request.user, course, request=request, **fields)
        messages.success(request, "Course settings saved.")
        return redirect("classroom:detail", course.pk)
    return render(request, "classroom/course_form.html", {"form": form, "course": course, "creating": False},
                  status=400 if form.errors else 200)


def student_rows(course: Course, user=None):
    """Every student of course (or only user) with their VE and the newest task on it."""
    latest = Task.objects.filter(ve=OuterRef("ve")).order_by("-created_at", "-id")
    members = course.students().select_related("user", "ve")
    if user is not None:
        members = members.filter(user=user)
    members = list(members.annotate(last_task_id=Subquery(latest.values("id")[:1])))
    tasks = Task.objects.in_bulk([m.last_task_id for m in members if m.last_task_id])
    for m in members:
        m.last_task = tasks.get(m.last_task_id)
        m.last_label = (services.label(m.last_task.action) if m.last_task and "course" in m.last_task.params
                        else m.last_task.get_action_display() if m.last_task else "")
        m.failed = m.last_task is not None and m.last_task.status in (Task.Status.FAILED, Task.Status.ERRORED)
        m.busy = m.last_task is not None and m.last_task.is_active
        ve = m.live_ve
        m.state = ("suspended" if ve is not None and ve.status in services.ASLEEP and m.asleep_how == "suspended"
                   else ve.status if ve is not None else "no VE")
        if ve is not None:
            m.console_watch = console_url(ve.ctid, True)
            m.console_type = console_url(ve.ctid, False)
    return members


def operations(course: Course, limit: int = 6):
    ops = list(Task.objects.filter(ve__isnull=True, parent__isnull=True, params__course=course.pk)
               .select_related("user").order_by("-created_at", "-id")[:limit])
    for op in ops:
        op.label = services.label(op.action)
        op.counts = {}
        for status in op.children.values_list("status", flat=True):
            op.counts[status] = op.counts.get(status, 0) + 1
        op.total = sum(op.counts.values())
    return ops


def dashboard_context(request, course: Course, **extra):
    members = student_rows(course)
    ops = operations(course)
    image_task = services.image_task(course)
    live = (any(op.is_active for op in ops) or any(m.busy for m in members)
            or (image_task is not None and image_task.is_active))
    groups = sorted({m.group for m in members if m.group})
    with_ve = [m for m in members if m.live_ve is not None]
    plan = course.plan
    context = {
        "course": course,
        "members": members,
        "groups": groups,
        "ops": ops,
        "image_task": image_task,
        "live": live,
        "manage": can_manage(request.user, course),
        "counts": {
            "students": len(members),
            "ves": len(with_ve),
            "running": sum(1 for m in with_ve if m.state == "running"),
            "failed": sum(1 for m in members if m.failed),
            "ram_mb": len(with_ve) * plan.ram_mb if plan else None,
            "disk_gb": len(with_ve) * plan.disk_gb if plan else None,
        },
        "assistants": course.memberships.filter(role=Membership.Role.ASSISTANT).select_related("user"),
        "sessions": course.sessions.filter(ended=False),
        "ssh_host": ssh_host(request),
        "now": timezone.now(),
        "action_form": ClassActionForm(),
        "image_form": ImageForm(course=course, user=request.user),
        "sheet_form": SheetForm(),
        "session_form": SessionForm(),
        "assistant_form": AssistantForm(),
        "extend_form": ExtendForm(),
    }
    context.update(extra)
    return context


@course_view()
def course_detail(request, course):
    if not can_operate(request.user, course):
        return student_page(request, course)
    return render(request, "classroom/course_detail.html", dashboard_context(request, course))


@course_view()
def course_status(request, course):
    """The live part of the dashboard, for htmx to swap in while something is running."""
    if not can_operate(request.user, course):
        return student_page(request, course, partial=True)
    return render(request, "classroom/_live.html", dashboard_context(request, course))


def student_page(request, course: Course, partial: bool = False, **extra):
    """What a student sees of a course: their own VE(s), SSH details, console and reset."""
    mine = student_rows(course, request.user)
    if not mine:
        raise Http404("No such course.")
    context = {"course": course, "mine": mine, "ssh_host": ssh_host(request), "reset_form": ResetOwnForm(),
               "live": any(m.busy for m in mine), "image_task": None}
    context.update(extra)
    return render(request, "classroom/_student_live.html" if partial else "classroom/student.html", context)


@course_view("manage")
def roster(request, course):
    form = RosterForm(request.POST or None, request.FILES or None)
    errors = []
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data["roster"].read(2 << 20)
        try:
            result = services.import_roster(request.user, course, data, request=request)
        except services.RosterRejected as exc:
            errors = exc.errors
            form.add_error(None, exc.message)
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Roster imported: {result.created} new account(s), {result.linked} existing "
                                      f"account(s) linked, {result.already} already enrolled.")
            return redirect("classroom:detail", course.pk)
    return render(request, "classroom/roster.html", {"course": course, "form": form, "errors": errors,
                                                     "add_form": AddStudentForm()},
                  status=400 if form.errors else 200)


@course_view("manage")
@require_POST
def student_add(request, course):
    """Enrol one student by hand (the roster's checks), and build their VE if asked."""
    form = AddStudentForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            m = services.add_student(request.user, course, name=data["name"], login=data["login"],
                                     group=data["group"], request=request)
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            message = f"{m.name} ({m.user.get_username()}) is in the course."
            if data["provision"] and m.live_ve is None:
                try:
                    task = services.provision(request.user, course, [m], request=request)
                    message += f" Building their VE (task {task.pk})."
                except services.ServiceError as exc:
                    messages.warning(request, f"Their VE was not built: {exc.message}")
            messages.success(request, message)
            return redirect("classroom:detail", course.pk)
    return render(request, "classroom/roster.html", {"course": course, "form": RosterForm(), "errors": [],
                                                     "add_form": form}, status=400)


@course_view("manage")
def student_remove(request, course, member):
    """Remove one student (after confirmation): back up and destroy their VE, then their account or enrolment."""
    membership = get_object_or_404(Membership.objects.select_related("user", "ve"), pk=member, course=course,
                                   role=Membership.Role.STUDENT)
    form = RemoveStudentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            task = services.remove_student(request.user, course, membership, archive=form.cleaned_data["archive"],
                                           request=request)
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            if task is None:
                messages.success(request, f"{membership.name} was removed from the course.")
            else:
                messages.success(request, f"Removing {membership.name} (task {task.pk}): their VE is "
                                          f"{'backed up and ' if form.cleaned_data['archive'] else ''}destroyed, "
                                          "then they leave the course.")
            return redirect("classroom:detail", course.pk)
    others = Membership.objects.filter(user=membership.user_id).exclude(course=course).exists()
    return render(request, "classroom/remove_student.html",
                  {"course": course, "m": membership, "form": form,
                   "account_goes": membership.created_account and not others},
                  status=400 if form.errors else 200)


@course_view("operate")
def student_reset(request, course, member):
    """Reset one student's VE to the course image, after asking whether to keep their work (as the class reset)."""
    membership = get_object_or_404(Membership.objects.select_related("user", "ve"), pk=member, course=course,
                                   role=Membership.Role.STUDENT)
    form = ResetStudentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        keep = form.cleaned_data["keep_work"]
        try:
            task, skipped = services.class_action(request.user, course, "reset", [membership], keep_work=keep,
                                                  request=request)
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            if skipped:
                form.add_error(None, "; ".join(skipped))
            else:
                messages.success(request, f"Resetting {membership.name}'s VE to the course image (task {task.pk})"
                                          + (", keeping their work as a snapshot." if keep else "; their work is not kept."),
                                 extra_tags=f"task:{task.pk}")
                return redirect("classroom:detail", course.pk)
    return render(request, "classroom/reset_student.html", {"course": course, "m": membership, "form": form},
                  status=400 if form.errors else 200)

def _done(request, course, message=None):
    if message:
        messages.success(request, message)
    if is_htmx(request):
        return render(request, "classroom/_live.html", dashboard_context(request, course))
    return redirect("classroom:detail", course.pk)


def _refused(request, course, exc):
    messages.error(request, exc.message)
    return redirect("classroom:detail", course.pk)


@course_view("manage")
@require_POST
def provision(request, course):
    try:
        parent = services.provision(request.user, course, request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, f"Provisioning {parent.params.get('count', '')} VE(s) (task {parent.pk}).")


def members_for(course: Course, target: str):
    students = course.students().select_related("user", "ve")
    kind, _, value = (target or "all").partition(":")
    if kind == "all":
        return list(students)
    if kind == "group":
        return list(students.filter(group=value))
    if kind == "member" and value.isdigit():
        return list(students.filter(pk=int(value)))
    raise Http404("No such students.")


@course_view("operate")
@require_POST
def class_action(request, course):
    form = ClassActionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose start, stop, suspend or reset.")
        return redirect("classroom:detail", course.pk)
    data = form.cleaned_data
    members = members_for(course, data["target"])
    try:
        task, skipped = services.class_action(request.user, course, data["action"], members,
                                              keep_work=data["keep_work"], request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    n = task.children.count() if task.ve_id is None else 1
    if skipped:
        messages.warning(request, f"{len(skipped)} skipped: " + "; ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
    return _done(request, course, f"{data['action'].capitalize()} queued for {n} VE(s).")


@course_view("operate")
@require_POST
def retry(request, course, member):
    membership = get_object_or_404(Membership, pk=member, course=course, role=Membership.Role.STUDENT)
    try:
        services.retry(request.user, course, membership, request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, f"Retrying for {membership.name}.")


@course_view("operate")
@require_POST
def cancel(request, course, task_id):
    parent = get_object_or_404(Task, pk=task_id, ve__isnull=True, params__course=course.pk)
    n = services.cancel_queued(request.user, course, parent, request=request)
    return _done(request, course, f"{n} queued task(s) cancelled.")


@course_view("manage")
@require_POST
def image(request, course):
    form = ImageForm(request.POST, course=course, user=request.user)
    if not form.is_valid():
        messages.error(request, "Choose a template or one of your VEs.")
        return redirect("classroom:detail", course.pk)
    kind, _, value = form.cleaned_data["image"].partition(":")
    try:
        if kind == "ve":
            ve = get_object_or_404(VE.objects.live(), pk=int(value))
            task = services.freeze_image(request.user, course, ve, reset_after=form.cleaned_data["reset_after"],
                                         keep_work=form.cleaned_data["keep_work"], request=request)
            message = f"Freezing VE {ve.ctid} as the course's image (task {task.pk})."
        else:
            services.set_template_image(request.user, course, value, request=request)
            message = f"The course's image is now template {value}; new VEs get it, existing ones when reset."
            if form.cleaned_data["reset_after"]:
                task, _ = services.class_action(request.user, course, "reset", keep_work=form.cleaned_data["keep_work"],
                                                request=request)
                message += f" Resetting the class (task {task.pk})."
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, message)


@course_view("manage")
@require_POST
@never_cache
def sheet(request, course):
    """A printable sheet of new sign-in links or initial passwords (shown once, never stored)."""
    form = SheetForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose links or passwords.")
        return redirect("classroom:detail", course.pk)
    members = list(course.governed_students().select_related("user", "ve"))
    if form.cleaned_data["who"] == "new":
        members = [m for m in members if m.user.last_login is None]
    if not members:
        messages.warning(request, "Every student has signed in already; choose 'every student' to print for all.")
        return redirect("classroom:detail", course.pk)
    if form.cleaned_data["kind"] == "links":
        rows = [(m, request.build_absolute_uri(reverse("classroom:link-login", args=[key])))
                for m, key in services.issue_links(request.user, course, members)]
    else:
        rows = services.issue_passwords(request.user, course, members)
    return render(request, "classroom/sheet.html", {"course": course, "rows": rows, "kind": form.cleaned_data["kind"],
                                                    "login_url": request.build_absolute_uri(reverse("login")),
                                                    "ssh_host": ssh_host(request)})


@course_view("manage")
@require_POST
def session_add(request, course):
    form = SessionForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(e for errs in form.errors.values() for e in errs)
        messages.error(request, f"The session was not added: {errors}")
        return redirect("classroom:detail", course.pk)
    try:
        services.add_session(request.user, course, **form.cleaned_data, request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, "Lab session added.")


@course_view("manage")
@require_POST
def session_delete(request, course, session_id):
    get_object_or_404(LabSession, pk=session_id, course=course).delete()
    audit.record("class.session.delete", request=request, detail=f"course {course.pk}: session {session_id}")
    return _done(request, course, "Lab session removed.")


@course_view("manage")
@require_POST
def assistant_add(request, course):
    form = AssistantForm(request.POST)
    try:
        if not form.is_valid():
            raise services.InvalidRequest("Give a user name.")
        m = services.add_assistant(request.user, course, form.cleaned_data["username"], request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, f"{m.user.get_username()} assists in this course now.")


@course_view("manage")
@require_POST
def assistant_remove(request, course, member):
    m = get_object_or_404(Membership, pk=member, course=course)
    try:
        services.remove_assistant(request.user, course, m, request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, f"{m.user.get_username()} no longer assists.")


@course_view("manage")
def end(request, course):
    form = EndForm(request.POST or None, course=course)
    if request.method == "POST" and form.is_valid():
        try:
            task = services.end_course(request.user, course, archive=form.cleaned_data["archive"], request=request)
        except services.ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Ending the course (task {task.pk}): VEs are "
                                      f"{'backed up and ' if form.cleaned_data['archive'] else ''}removed.")
            return redirect("classroom:detail", course.pk)
    return render(request, "classroom/end.html", {"course": course, "form": form,
                                                  "students": course.students().count()},
                  status=400 if form.errors else 200)


@course_view("manage")
@require_POST
def extend(request, course):
    form = ExtendForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the new end date.")
        return redirect("classroom:detail", course.pk)
    try:
        services.extend_course(request.user, course, form.cleaned_data["ends_on"], request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    return _done(request, course, f"The course now ends on {course.ends_on:%Y-%m-%d}.")


@course_view()
@require_POST
def reset_own(request, course, member):
    membership = get_object_or_404(Membership, pk=member, course=course, user=request.user)
    form = ResetOwnForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Tick the box to confirm the reset.")
        return redirect("classroom:detail", course.pk)
    try:
        services.reset_own(request.user, membership, keep_work=form.cleaned_data["keep_work"], request=request)
    except services.ServiceError as exc:
        return _refused(request, course, exc)
    messages.success(request, "Your VE is being reset to the course image.")
    return redirect("classroom:detail", course.pk)


# --- signing in with a printed link -------------------------------------------------------------------

@never_cache
def link_login(request, key):
    """A one-time sign-in link: GET asks (link checkers must not spend it), POST signs in."""
    link = LoginLink.find(key)
    if link is None:
        audit.record("login.link", request=request, result="denied", detail="unknown, used or expired link")
        return render(request, "classroom/link_login.html", {"invalid": True}, status=404)
    if request.method == "POST":
        user = LoginLink.redeem(key)
        if user is None:
            return render(request, "classroom/link_login.html", {"invalid": True}, status=404)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        request.session[FIRST_SIGN_IN] = not user.has_usable_password()
        audit.record("login.link", request=request, user=user)
        if not user.has_usable_password():
            return redirect("classroom:welcome")
        return redirect("classroom:detail", link.course_id) if link.course_id else redirect("classroom:list")
    return render(request, "classroom/link_login.html", {"link": link})


FIRST_SIGN_IN = "classroom.first_sign_in"  # session key: this session began with a login link (see welcome)


def first_sign_in(request) -> bool:
    """Whether this session may set a password without the old one: the account never had one (made by a
    roster) and was signed in with a one-time link. Any other session must know the current password."""
    user = request.user
    if user.has_usable_password():
        return False
    return bool(request.session.get(FIRST_SIGN_IN)) or LoginLink.objects.filter(user=user,
                                                                                 used_at__isnull=False).exists()


@login_required
def welcome(request):
    """Let a student who signed in with a link choose a password; anyone else changes theirs with the old one."""
    first = first_sign_in(request)
    form_class = SetPasswordForm if first else PasswordChangeForm
    form = form_class(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        update_session_auth_hash(request, form.user)
        request.session.pop(FIRST_SIGN_IN, None)
        audit.record("password.set" if first else "password.change", request=request)
        messages.success(request, "Password set. Sign in with your user name and this password from now on.")
        return redirect("classroom:list")
    if request.method == "POST" and not first:
        audit.record("password.change", request=request, result="denied", detail="welcome page: wrong or no old password")
    return render(request, "classroom/welcome.html", {"form": form, "first": first}, status=400 if form.errors else 200)
