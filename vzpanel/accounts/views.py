from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from vzpanel.audit import log as audit
from vzpanel.audit.log import client_ip
from vzpanel.core.decorators import admin_required
from vzpanel.ves import services as ve_services
from vzpanel.ves.models import VE
from vzpanel.ves.views import report_plan_change

from . import ratelimit
from .forms import TokenForm, UserCreateForm, UserEditForm
from .models import APIToken, User


class LoginView(auth_views.LoginView):
    """Django's login, refused for a while after too many failures from one address or for one user."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")[:150]
        if ratelimit.blocked(client_ip(request), username):
            audit.record("login.blocked", request=request, username=username, result="denied")
            form = self.get_form()
            form.is_valid()
            form.errors.clear()
            form.add_error(None, "Too many failed logins. Wait 15 minutes and try again.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        username = self.request.POST.get("username", "")[:150]
        audit.record("login.failed", request=self.request, username=username, result="denied")
        return super().form_invalid(form)

    def form_valid(self, form):
        response = super().form_valid(form)
        audit.record("login", request=self.request, user=form.get_user())
        return response


@login_required
def tokens(request):
    """List the user's API tokens; create one (its key is shown once)."""
    form = TokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        token, new_key = APIToken.issue(request.user, form.cleaned_data["name"])
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


@admin_required
def user_edit(request, pk):
    user = get_object_or_404(User, pk=pk)
    form = UserEditForm(request.POST or None, instance=user)
    if request.method == "POST" and form.is_valid():
        change = None
        with transaction.atomic():
            form.save()
            changed = ", ".join(form.changed_data) or "nothing"
            detail = f"user {user.username}: {changed}"
            if "plan" in form.changed_data:
                detail += f" (plan now {user.plan or 'none'})"
            audit.record("user.update", request=request, detail=detail)
            if "plan" in form.changed_data:  # the new plan's limits for their VEs, live
                change = ve_services.apply_plans(request.user, [user], request=request)
        messages.success(request, f"User {user.username} saved.")
        if change is not None:
            report_plan_change(request, change)
        return redirect("accounts:users")
    ves = VE.objects.live().filter(owner=user).order_by("ctid") if user.pk else []
    return render(
        request, "accounts/user_form.html", {"form": form, "edited": user, "ves": ves},
        status=400 if form.errors else 200,
    )
