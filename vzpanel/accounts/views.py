import django_otp
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_login_failed
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from vzpanel.audit import log as audit
from vzpanel.core.clientip import client_ip
from vzpanel.core.decorators import admin_required
from vzpanel.ves import services as ve_services
from vzpanel.ves.models import VE
from vzpanel.ves.views import report_plan_change

from . import lockout, twofactor
from .forms import CodeForm, TokenForm, UserCreateForm, UserEditForm
from .models import APIToken, User


class LoginView(auth_views.LoginView):
    """The password step; users with an authenticator (or whose role needs one) go on to the code step.

    django-axes refuses the password check itself after too many failures (see lockout.py); its
    middleware turns the refusal into the lockout page.
    """

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form):
        user = form.get_user()
        if twofactor.has_device(user) or twofactor.is_required(user):
            p = twofactor.start_pending(self.request, user, user.backend, self.get_success_url())
            return redirect("login-enrol" if p.enrol else "login-code")
        response = super().form_valid(form)
        audit.record("login", request=self.request, user=user, detail="password", ip=client_ip(self.request))
        return response


class AdminLoginView(LoginView):
    """The Django admin's login page: the panel's sign-in (lockout, two factors), back to the admin after."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = False  # a signed-in non-staff user would loop between login and admin

    def get_default_redirect_url(self):
        return reverse("admin:index")


def _finish_signin(request, p: twofactor.Pending, device, kind: str):
    twofactor.clear_pending(request)
    login(request, p.user, backend=p.backend)
    django_otp.login(request, device)
    audit.record("login", request=request, user=p.user, detail=f"password and {kind}", ip=client_ip(request))
    if kind == "recovery code":
        left = twofactor.recovery_left(p.user)
        messages.warning(request, f"You signed in with a recovery code; {left} left. "
                                  "Make new ones on your account page if you are running low.")
    return p.next_url if url_has_allowed_host_and_scheme(
        p.next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()) else "/"


def _expired(request):
    messages.info(request, "Your sign-in timed out. Enter your user name and password again.")
    return redirect("login")


@sensitive_post_parameters("code")
@never_cache
def signin_code(request):
    """The second step: a code from the authenticator app, or a recovery code."""
    p = twofactor.pending(request)
    if p is None:
        return _expired(request)
    if p.enrol:
        return redirect("login-enrol")
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        username = p.user.get_username()
        if not lockout.is_allowed(request, username, "second factor"):
            audit.record("login.blocked", request=request, username=username, result="denied",
                         detail="second factor: refused, too many failures", ip=client_ip(request))
            return lockout.lockout_response(request)
        device, kind = twofactor.verify(p.user, form.cleaned_data["code"])
        if device is not None:
            return redirect(_finish_signin(request, p, device, kind))
        user_login_failed.send(sender=__name__, request=request,
                               credentials={"username": username, lockout.METHOD_KEY: kind})
        wait = twofactor.throttled_seconds(p.user)
        form.add_error("code", "That code is not right." + (
            f" Wait {wait} s before the next try." if wait else " Use the current code from your app, or an unused recovery code."))
    return render(request, "accounts/login_code.html", {"form": form, "pending_user": p.user},
                  status=400 if form.errors else 200)


@sensitive_post_parameters("code")
@never_cache
def signin_enrol(request):
    """The second step for a user whose role needs two factors and who has none yet: set them up now."""
    p = twofactor.pending(request)
    if p is None:
        return _expired(request)
    if not p.enrol:
        return redirect("login-code")
    device = twofactor.unconfirmed_device(p.user)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        codes = twofactor.confirm(p.user, device, form.cleaned_data["code"])
        if codes is not None:
            next_url = _finish_signin(request, p, device, "authenticator app (just set up)")
            audit.record("2fa.enable", request=request, detail="authenticator app and recovery codes",
                         ip=client_ip(request))
            return render(request, "accounts/recovery_codes.html", {"codes": codes, "next_url": next_url})
        form.add_error("code", "That code is not right. Check the time on your phone and type the current code.")
    return render(request, "accounts/enrol.html", {
        "form": form, "device": device, "secret": twofactor.secret_of(device), "qr": twofactor.qr_svg(device),
        "required": True, "pending_user": p.user, "action": reverse("login-enrol"),
    }, status=400 if form.errors else 200)


@login_required
def account(request):
    """The user's account page: two-factor sign-in, API tokens, password."""
    user = request.user
    return render(request, "accounts/account.html", {
        "has_device": twofactor.has_device(user), "recovery_left": twofactor.recovery_left(user),
        "required": twofactor.is_required(user), "token_count": user.api_tokens.count(), "form": CodeForm(),
    })


@sensitive_post_parameters("code")
@login_required
def two_factor_setup(request):
    """Set up an authenticator app (replacing any current one): scan, confirm with a code, get recovery codes."""
    device = twofactor.unconfirmed_device(request.user)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        codes = twofactor.confirm(request.user, device, form.cleaned_data["code"])
        if codes is not None:
            django_otp.login(request, device)  # this session has just proved the new factor
            audit.record("2fa.enable", request=request, detail="authenticator app and recovery codes",
                         ip=client_ip(request))
            return render(request, "accounts/recovery_codes.html",
                          {"codes": codes, "next_url": reverse("accounts:index")})
        form.add_error("code", "That code is not right. Check the time on your phone and type the current code.")
    return render(request, "accounts/enrol.html", {
        "form": form, "device": device, "secret": twofactor.secret_of(device), "qr": twofactor.qr_svg(device),
        "required": twofactor.is_required(request.user), "replacing": twofactor.has_device(request.user),
        "action": reverse("accounts:2fa-setup"),
    }, status=400 if form.errors else 200)


def _check_current_code(request, form) -> bool:
    """Validate form's code against the user's authenticator (not a recovery code); explain a wrong one."""
    if not form.is_valid():
        return False
    code = twofactor.normalise(form.cleaned_data["code"])
    device, _ = twofactor.verify(request.user, code) if code.isdigit() else (None, "")
    if device is None:
        form.add_error("code", "Type the current code from your authenticator app.")
        return False
    return True


@sensitive_post_parameters("code")
@login_required
@require_POST
def recovery_codes(request):
    """Replace the recovery codes (after a current code from the app) and show the new ones once."""
    form = CodeForm(request.POST)
    if not twofactor.has_device(request.user) or not _check_current_code(request, form):
        return _account_with_errors(request, form)
    codes = twofactor.new_recovery_codes(request.user)
    audit.record("2fa.recovery_codes", request=request, detail="new recovery codes", ip=client_ip(request))
    return render(request, "accounts/recovery_codes.html", {"codes": codes, "next_url": reverse("accounts:index")})


@sensitive_post_parameters("code")
@login_required
@require_POST
def two_factor_disable(request):
    """Turn two-factor sign-in off (after a current code), unless the user's role requires it."""
    form = CodeForm(request.POST)
    if twofactor.is_required(request.user):
        form.add_error(None, f"Your role ({request.user.get_role_display()}) must sign in with two factors. "
                             "Set up a new authenticator instead: it replaces the current one.")
        return _account_with_errors(request, form)
    if not _check_current_code(request, form):
        return _account_with_errors(request, form)
    twofactor.remove(request.user)
    request.session.pop(django_otp.DEVICE_ID_SESSION_KEY, None)
    audit.record("2fa.disable", request=request, detail="authenticator app and recovery codes removed",
                 ip=client_ip(request))
    messages.success(request, "Two-factor sign-in is off. Your password alone signs you in now.")
    return redirect("accounts:index")


def _account_with_errors(request, form):
    user = request.user
    return render(request, "accounts/account.html", {
        "has_device": twofactor.has_device(user), "recovery_left": twofactor.recovery_left(user),
        "required": twofactor.is_required(user), "token_count": user.api_tokens.count(), "form": form,
    }, status=400)


@login_required
def tokens(request):
    """List the user's API tokens; create one (its key is shown once)."""
    form = TokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        token, new_key = APIToken.issue(request.user, form.cleaned_data["name"], scope=form.cleaned_data["scope"],
                                        days=form.cleaned_data.get("days"))
        audit.record("token.create", request=request, detail=f"token {token}")
        form = TokenForm()
    return render(
        request,
        "accounts/tokens.html",
        {"tokens": request.user.api_tokens.all(), "form": form, "new_key": new_key},
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def token_revoke(request, pk):
    token = get_object_or_404(APIToken, pk=pk, user=request.user)
    audit.record("token.revoke", request=request, detail=f"token {token}")
    token.delete()
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("accounts:tokens")


@admin_required
def user_list(request):
    users = User.objects.select_related("plan", "teacher").annotate(
        ve_count=Count("ves", filter=~Q(ves__status="destroyed"))
    ).order_by("username")
    q = request.GET.get("q", "").strip()
    if q:
        users = users.filter(Q(username__icontains=q) | Q(email__icontains=q) | Q(role=q))
    page = Paginator(users, 50).get_page(request.GET.get("page"))
    return render(request, "accounts/user_list.html", {"page": page, "q": q})


@admin_required
def user_create(request):
    form = UserCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        audit.record("user.create", request=request, detail=f"user {user.username} ({user.role})")
        messages.success(request, f"User {user.username} created.")
        return redirect("accounts:users")
    return render(request, "accounts/user_form.html", {"form": form}, status=400 if form.errors else 200)


def save_user(request, form, user) -> None:
    """Save an edited user, audit it, and (a new plan) apply its limits to their VEs live, saying so."""
    change = None
    with transaction.atomic():
        form.save()
        detail = f"user {user.username}: {', '.join(form.changed_data) or 'nothing'}"
        if "plan" in form.changed_data:
            detail += f" (plan now {user.plan or 'none'})"
        audit.record("user.update", request=request, detail=detail)
        if "plan" in form.changed_data:  # the new plan's limits for their VEs, live
            change = ve_services.apply_plans(request.user, [user], request=request)
    if change is not None:
        report_plan_change(request, change)


@admin_required
def user_edit(request, pk):
    user = get_object_or_404(User, pk=pk)
    form = UserEditForm(request.POST or None, instance=user)
    if request.method == "POST" and form.is_valid():
        save_user(request, form, user)
        messages.success(request, f"User {user.username} saved.")
        return redirect("accounts:users")
    ves = VE.objects.live().filter(owner=user).order_by("ctid") if user.pk else []
    return render(
        request, "accounts/user_form.html", {"form": form, "edited": user, "ves": ves},
        status=400 if form.errors else 200,
    )
