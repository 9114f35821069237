"""A VE's Network tab (addresses, reverse DNS, SSH keys pushed in), the Firewall tab, the user's SSH keys
and the admins' IP pools."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from vzpanel.core.decorators import admin_required
from vzpanel.tasks.models import Task

from . import services
from .access import get_ve_or_404


def network_context(request, ve, **forms):
    from vzpanel.nodes.sshforward import ssh_host

    from . import hosting
    from .forms import AddressAddForm, SSHPushForm

    net = hosting.network_of(ve)
    host = ssh_host(request)
    return {"ve": ve, "net": net, "ssh_host": host,
            "ssh_line": f"ssh -p {net['ssh_port']} root@{host}" if net["ssh_port"] else "",
            "plan_full": not request.user.is_panel_admin and plan_is_full(net),
            "add_form": forms.get("add_form") or AddressAddForm(),
            "push_form": SSHPushForm(initial={"password_off": not net["password_login"]}),
            "keys": request.user.ssh_keys.all() if ve.owner_id == request.user.pk else (ve.owner.ssh_keys.all()
                                                                                        if ve.owner else []),
            "active_task": ve.tasks.filter(status__in=Task.ACTIVE).first()}


def plan_is_full(net: dict) -> bool:
    """Whether the VE holds every address its plan allows, of both families (then Add cannot succeed)."""
    held = {4: 0, 6: 0}
    for a in net["addresses"]:
        held[a["version"]] += 1
    allowed = {4: net["allowed"]["ipv4"] or 0, 6: net["allowed"]["ipv6"] or 0}
    return all(held[v] >= allowed[v] for v in (4, 6))


@login_required
def ve_network(request, ctid):
    """The VE's addresses, its SSH line and its SSH keys."""
    ve = get_ve_or_404(request.user, ctid)
    return render(request, "ves/ve_network.html", network_context(request, ve))


def _hosting_call(request, ve, call, done: str):
    try:
        task = call()
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return render(request, "ves/ve_network.html", network_context(request, ve), status=exc.status_code)
    messages.success(request, f"{done} (task {task.pk}).")
    return redirect("ves:network", ve.ctid)


@login_required
@require_POST
def ve_address_add(request, ctid):
    from . import hosting
    from .forms import AddressAddForm

    ve = get_ve_or_404(request.user, ctid)
    form = AddressAddForm(request.POST)
    if not form.is_valid():
        return render(request, "ves/ve_network.html", network_context(request, ve, add_form=form), status=400)
    d = form.cleaned_data
    return _hosting_call(request, ve, lambda: hosting.add_address(request.user, ve, version=d["version"],
                                                                  address=d["address"], request=request),
                         "The address is being added")


@login_required
@require_POST
def ve_address_remove(request, ctid):
    from . import hosting

    ve = get_ve_or_404(request.user, ctid)
    address = request.POST.get("address", "")
    return _hosting_call(request, ve, lambda: hosting.remove_address(request.user, ve, address, request=request),
                         f"Address {address} is being removed")


@login_required
@require_POST
def ve_reverse_dns(request, ctid):
    from . import hosting

    ve = get_ve_or_404(request.user, ctid)
    try:
        hosting.set_reverse_dns(request.user, ve, request.POST.get("address", ""), request.POST.get("reverse_dns", ""))
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return render(request, "ves/ve_network.html", network_context(request, ve), status=exc.status_code)
    messages.success(request, "Reverse DNS name saved.")
    return redirect("ves:network", ve.ctid)


@login_required
@require_POST
def ve_ssh_push(request, ctid):
    from . import hosting

    ve = get_ve_or_404(request.user, ctid)
    off = request.POST.get("password_off") in ("on", "true", "1")
    return _hosting_call(request, ve, lambda: hosting.push_keys(request.user, ve, password_login=not off,
                                                                request=request),
                         "The SSH keys are being put into the VE")


@login_required
def ssh_keys(request):
    """The user's own public SSH keys: add, delete."""
    from . import hosting
    from .forms import SSHKeyForm

    form = SSHKeyForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                key = hosting.add_key(request.user, form.cleaned_data["name"], form.cleaned_data["key"])
            except services.ServiceError as exc:
                form.add_error("key", exc.message)
            else:
                messages.success(request, f"Key {key.name} added.")  # (its fingerprint is in the list)
                return redirect("ves:ssh-keys")
        status = 400
        if "PRIVATE KEY" in request.POST.get("key", ""):
            form.data = form.data.copy()
            form.data["key"] = ""  # a private key pasted by mistake is never sent back into the page
    return render(request, "ves/ssh_keys.html", {"form": form, "keys": request.user.ssh_keys.all()}, status=status)


@login_required
@require_POST
def ssh_key_delete(request, key_id):
    deleted, _ = request.user.ssh_keys.filter(pk=key_id).delete()
    if not deleted:
        raise Http404("No such key.")
    messages.success(request, "Key deleted (VEs keep it until you put your keys into them again).")
    return redirect("ves:ssh-keys")


@admin_required
def ip_pools(request):
    """Admins: the IP pools of every node."""
    from vzpanel.nodes.models import IPPool, Node

    from .forms import PoolForm

    form = PoolForm(request.POST or None, initial={"node": Node.local()})
    if request.method == "POST" and form.is_valid():
        pool = form.save()
        messages.success(request, f"Pool {pool.name} ({pool.network}) added to node {pool.node.name}.")
        return redirect("ves:pools")
    pools = IPPool.objects.select_related("node").annotate(used=Count("addresses"))
    return render(request, "ves/ip_pools.html", {"form": form, "pools": pools},
                  status=400 if form.errors else 200)


@admin_required
@require_POST
def ip_pool_delete(request, pool_id):
    from vzpanel.nodes.models import IPPool

    pool = IPPool.objects.filter(pk=pool_id).first()
    if pool is None:
        raise Http404("No such pool.")
    if pool.addresses.exists():
        messages.error(request, f"Pool {pool.name} has {pool.addresses.count()} address(es) in use: remove them "
                                "from their VEs first.")
    else:
        pool.delete()
        messages.success(request, f"Pool {pool.name} deleted.")
    return redirect("ves:pools")


# --- the Firewall tab (vzpanel/ves/firewall.py) -------------------------------------------------------


def firewall_context(ve, rule=None) -> dict:
    """The Firewall tab's context; ``rule`` is a refused new rule's fields, shown again to be corrected."""
    from . import firewall

    rule = {k: str((rule or {}).get(k, ""))[:100] for k in ("action", "proto", "port", "source")}
    return {"ve": ve, "fw": firewall.current(ve), "presets": firewall.PRESETS, "actions": firewall.ACTIONS,
            "rule": rule,
            "protos": firewall.PROTOS, "max_rules": firewall.MAX_RULES,
            "active_task": ve.tasks.filter(status__in=Task.ACTIVE).first(),
            "tasks": ve.tasks.filter(action=Task.Action.SET_FIREWALL).select_related("user")[:5]}


@login_required
def ve_firewall(request, ctid):
    """The VE's firewall: default policy, rules, presets (its owner and admins only)."""
    from . import firewall

    ve = get_ve_or_404(request.user, ctid)
    firewall.check_access(request.user, ve)
    return render(request, "ves/ve_firewall.html", firewall_context(ve))


@login_required
@require_POST
def ve_firewall_change(request, ctid):
    """Apply a preset, add or delete a rule, or set the default policy: one task replacing the whole set."""
    from . import firewall

    ve = get_ve_or_404(request.user, ctid)
    firewall.check_access(request.user, ve)
    fw, post = firewall.current(ve), request.POST
    policy, rules = fw["policy"], list(fw["rules"])
    try:
        what = post.get("op", "")
        if what == "preset":
            if post.get("preset") not in firewall.PRESETS:
                raise services.InvalidRequest("Pick one of the presets.")
            _label, policy, rules = firewall.PRESETS[post["preset"]]
        elif what == "add":
            rules.append(firewall.make_rule(post.get("action", ""), post.get("proto", ""), post.get("port", ""),
                                            post.get("source", "")))
        elif what == "delete":
            n = post.get("n", "")
            if not n.isdigit() or not 1 <= int(n) <= len(rules):
                raise services.InvalidRequest("There is no such rule.")
            del rules[int(n) - 1]
        elif what == "policy":
            policy = post.get("policy", "")
        else:
            raise services.InvalidRequest("Unknown change.")
        task = firewall.set_firewall(request.user, ve, policy, rules, request=request)
    except services.ServiceError as exc:
        messages.error(request, exc.message)
        return render(request, "ves/ve_firewall.html", firewall_context(ve, post if what == "add" else None),
                      status=exc.status_code)
    messages.success(request, f"The firewall is being changed (task {task.pk}).")
    return redirect("ves:firewall", ve.ctid)
