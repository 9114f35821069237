"""Issue 15 in a real browser: an admin keeps the IP pools; a customer sees and changes a VE's addresses, copies
its SSH line, adds a key, puts it into the running VE and logs in with it for real, and sets the VE's firewall,
which holds against real traffic even after the VE's root flushes its own rules. Every one of these pages fits
a 1366 px and a 390 px wide window, logs no console error and labels every input.

One Debian VE (debian-12-sysv: OpenSSH, boots in a second) and one client network namespace serve the whole
module; each test makes its own database rows for them (the database is emptied after every test)."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import time
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from .conftest import start_daphne, stop_process, wait_task
from .hosting_helpers import (
    BANNER,
    PING,
    TEMPLATE,
    banner,
    client_namespace,
    keygen,
    pool,
    port_free,
    ssh_argv,
    wait_ok,
)
from .test_browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = (1366, 390)
CTID = 9715
SHOTS = os.environ.get("VZPANEL_TEST_SHOTS")  # a directory: screenshots of every page checked, to look at

# Every visible element that sticks out of the window, and every form control without a label.
LAYOUT = """() => {
  const vw = document.documentElement.clientWidth;
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width <= 1 || r.height <= 1) continue;  // not shown, or visually hidden (screen readers only)
    if (r.right > vw + 0.5 || r.left < -0.5) wide.push(`${name(el)} (${Math.round(r.left)}..${Math.round(r.right)})`);
    // text that runs out of its box (a long word that cannot wrap)
    else if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === 'visible' &&
             r.left + el.scrollWidth > vw + 0.5) wide.push(`${name(el)}: its text runs to ${Math.round(r.left + el.scrollWidth)}`);
  }
  const unlabelled = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    const named = (el.labels && [...el.labels].some(l => l.textContent.trim())) || el.getAttribute('aria-label') ||
      el.getAttribute('aria-labelledby');
    if (!named) unlabelled.push(name(el) + '[name=' + el.name + ']');
  }
  return {vw, scroll: document.documentElement.scrollWidth, wide, unlabelled};
}"""


# --- pages, widths, console errors ----------------------------------------------------------------------


def new_page(browser, base, user, **context):
    """A fresh browser context (its own session, clipboard allowed) with user logged in; console errors and
    uncaught exceptions collect in ``page.errors``."""
    ctx = browser.new_context(viewport={"width": WIDTHS[0], "height": 900},
                              permissions=["clipboard-read", "clipboard-write"], **context)
    page = ctx.new_page()
    page.errors = []
    page.on("console", lambda m: console_error(page, m))
    page.on("pageerror", lambda exc: page.errors.append((str(exc), "")))
    page.documents = set()
    page.on("response", lambda r: page.documents.add(r.url) if r.request.resource_type == "document"
            and r.status in (400, 403, 409) else None)
    log_in(page, base, user)
    return page


def console_error(page, message) -> None:
    if message.type == "error":
        page.errors.append((message.text, message.location.get("url") or ""))


def real_errors(page) -> list:
    """The page's console errors but one that is no fault of these pages: the page itself answered 400, 403 or
    409 (a form refused, as the panel answers on purpose)."""
    return [f"{text} ({url})" for text, url in page.errors
            if not (text.startswith("Failed to load resource") and url in page.documents)]


def assert_fits(page, what: str) -> None:
    """At each width: nothing wider than the window, every input labelled, no console error so far."""
    try:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            page.wait_for_timeout(100)  # one layout pass after the resize
            got = page.evaluate(LAYOUT)
            if SHOTS:
                page.screenshot(path=os.path.join(SHOTS, f"{what.replace(' ', '-')}-{width}.png"), full_page=True)
            assert got["scroll"] <= got["vw"] and not got["wide"], f"{what} at {width} px: too wide: {got}"
            assert not got["unlabelled"], f"{what} at {width} px: inputs without a label: {got['unlabelled']}"
    finally:
        page.set_viewport_size({"width": WIDTHS[0], "height": 900})
    assert not real_errors(page), f"{what}: console errors: {real_errors(page)}"


def invalid_feedback(page, field_id: str):
    """The error shown right under a form field."""
    return page.locator(f"#{field_id} ~ .invalid-feedback")


def finish(ve, action: str):
    """Wait for the VE's last task of action to complete (the agent runs it) and return it."""
    from vzpanel.tasks.models import Task

    task = wait_task(Task.objects.filter(ve=ve, action=action).latest("pk"), timeout=120)
    assert task.status == "completed", (task.error, task.log)
    return task


# --- IP pools: the admin's page ----------------------------------------------------------------------


def add_pool(page, name, network, kind="public", nameservers=""):
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Network").fill(network)
    page.get_by_label("Kind").select_option(kind)
    page.get_by_label(re.compile("^Name ?servers$", re.I)).fill(nameservers)
    page.get_by_role("button", name="Add pool").click()


def test_an_admin_adds_ipv4_and_ipv6_pools_and_bad_ones_are_refused_next_to_the_field(live_panel, browser, admin,
                                                                                       node):
    from vzpanel.nodes.models import IPPool

    page = new_page(browser, live_panel, admin)
    page.get_by_role("button", name=re.compile(admin.username)).click()
    page.get_by_role("link", name="IP pools").click()
    expect(page.get_by_role("heading", name="IP pools")).to_be_visible()
    assert_fits(page, "the empty pools page")

    add_pool(page, "public-v4", "198.51.100.0/26", "public", "198.51.100.1")
    expect(page.locator("#messages")).to_contain_text("Pool public-v4 (198.51.100.0/26) added")
    add_pool(page, "private-v6", "2001:db8:abcd:12::/64", "private")
    rows = page.locator("#ip-pools tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="public-v4")).to_contain_text("198.51.100.0/26")
    expect(rows.filter(has_text="private-v6")).to_contain_text("private")

    for name, network, words in [("overlap", "198.51.100.32/27", "overlaps pool public-v4"),
                                 ("overlap6", "2001:db8:abcd::/48", "overlaps pool private-v6"),
                                 ("hostbits", "10.1.2.3/24", "has host bits set"),
                                 ("garbage", "not-a-network", "is not a network")]:
        add_pool(page, name, network)
        expect(page.get_by_label("Network")).to_have_class(re.compile("is-invalid"))
        expect(invalid_feedback(page, "id_network")).to_contain_text(words)
        expect(page.get_by_label("Network")).to_have_value(network)  # kept, to be corrected
        expect(rows).to_have_count(2)
    assert_fits(page, "the pools page with an error")
    assert sorted(IPPool.objects.values_list("name", "network", "version", "kind")) == [
        ("private-v6", "2001:db8:abcd:12::/64", 6, "private"), ("public-v4", "198.51.100.0/26", 4, "public")]


# --- one running Debian VE and one client namespace for the module ------------------------------------


@pytest.fixture(scope="module")
def namespace():
    """A client network namespace linked to the host: ``run`` commands in it; ``host`` is the host's end."""
    with client_namespace() as (run, host):
        yield SimpleNamespace(run=run, host=host)


@pytest.fixture(scope="module")
def hosting_ve(vz_root, net):
    """A running debian-12-sysv VE with one address of the private pool and its SSH forward, destroyed at the
    end of the module even when a test fails."""
    from vzengine import Engine

    eng = Engine(vz_root, lock_wait=60)
    port = next(p for p in (20000 + secrets.randbelow(20000) for _ in range(100)) if port_free(p))
    try:
        eng.create(CTID, TEMPLATE, hostname="hosting1", ipadd=[net.ip(66)], portfwd=[f"tcp:{port}:22"])
        eng.start(CTID, wait_boot=True)
        yield SimpleNamespace(ctid=CTID, engine=eng, address=net.ip(66), port=port)
    finally:
        if eng.exists(CTID):
            if eng.is_running(CTID):
                eng.stop(CTID, fast=True)
            eng.destroy(CTID)


@pytest.fixture
def ve(hosting_ve, net, owner, node, plan):
    """The panel's rows for the module's VE: a public and a private pool, the VE (owner's, plan: two IPv4
    addresses, no IPv6) and its private address with the SSH port."""
    from vzpanel.nodes.models import IPAddress
    from vzpanel.ves.models import VE

    plan.ipv4_addresses, plan.ipv6_addresses = 2, 0
    plan.save()
    pool(node, "public", f"{net.prefix}.0/26")
    private = pool(node, "private", f"{net.prefix}.64/26", kind="private")
    row = VE.objects.create(ctid=hosting_ve.ctid, node=node, owner=owner, hostname="hosting1", ostemplate=TEMPLATE,
                            status="running", ip_addresses=[hosting_ve.address])
    IPAddress.objects.create(pool=private, address=hosting_ve.address, ve=row, ssh_port=hosting_ve.port)
    row.hosting = hosting_ve
    return row


@pytest.fixture
def panel(redis_url, panel_state, test_db_path, transactional_db, namespace):
    """The panel (daphne) telling its users to SSH to the host's address on the namespace's link."""
    proc, base = start_daphne(redis_url, panel_state, test_db_path, "web-hosting.log", VZPANEL_SSH_HOST=namespace.host)
    try:
        yield base
    finally:
        stop_process(proc)
        proc.log_file.close()


# --- the Network tab --------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_a_customer_sees_copies_adds_and_removes_addresses_within_the_plan(panel, node_agent, browser, owner, ve,
                                                                            namespace, net):
    from vzpanel.nodes.models import IPAddress
    from vzpanel.tasks.models import Task

    eng, ctid = ve.hosting.engine, ve.ctid
    page = new_page(browser, panel, owner)
    page.goto(f"{panel}/ves/{ctid}/")
    expect(page.locator("dd").filter(has_text=ve.hosting.address)).to_be_visible()
    page.locator("#ve-tabs").get_by_role("link", name="Network").click()
    addresses = page.locator("#ve-addresses [data-address]")
    expect(addresses).to_have_count(1)
    expect(addresses.first).to_contain_text(ve.hosting.address)
    expect(addresses.first).to_contain_text("private")

    # the SSH line is exactly what to type, and Copy puts exactly that in the clipboard
    line = f"ssh -p {ve.hosting.port} root@{namespace.host}"
    expect(page.locator("#ssh-line")).to_have_text(line)
    expect(page.get_by_role("button", name="Put the keys into this VE")).to_be_disabled()  # no key yet
    copy = page.get_by_role("button", name="Copy")
    copy.click()
    expect(page.locator("#ssh-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == line
    assert_fits(page, "the Network tab")

    # beyond the plan (no IPv6): refused in words, nothing added
    page.get_by_label("Family").select_option("IPv6")
    page.get_by_role("button", name="Add address").click()
    expect(page.get_by_role("alert").filter(has_text="allows 0 IPv6 address(es)")).to_be_visible()
    assert IPAddress.objects.filter(ve=ve).count() == 1 and not Task.objects.filter(action="address_add").exists()

    # the next free IPv4 (the public pool's first) goes on live and answers
    page.get_by_label("Family").select_option("IPv4")
    page.get_by_role("button", name="Add address").click()
    expect(page.locator("#messages")).to_contain_text("The address is being added")
    finish(ve, "address_add")
    assert net.ip(2) in eng.status(ctid).ip_addresses
    assert wait_ok(namespace.run, ["python3", "-c", PING, net.ip(2)], tries=10).returncode == 0
    page.locator("#ve-tabs").get_by_role("link", name="Overview").click()  # the VE page lists both too
    expect(page.locator("dd").filter(has_text=ve.hosting.address)).to_contain_text(net.ip(2))
    page.locator("#ve-tabs").get_by_role("link", name="Network").click()
    expect(addresses).to_have_count(2)
    expect(addresses.filter(has_text=net.ip(2))).to_contain_text("public")
    # the plan's two IPv4 addresses are taken: the button says so instead of failing later
    expect(page.get_by_role("button", name="Add address")).to_be_disabled()
    expect(page.locator("#address-room")).to_contain_text("all the addresses your plan allows")
    assert_fits(page, "the Network tab with two addresses")

    addresses.filter(has_text=net.ip(2)).get_by_role("button", name="Remove").click()
    expect(page.locator("#messages")).to_contain_text(f"Address {net.ip(2)} is being removed")
    finish(ve, "address_del")
    assert net.ip(2) not in eng.status(ctid).ip_addresses
    page.reload()
    expect(addresses).to_have_count(1)
    expect(page.get_by_role("button", name="Add address")).to_be_enabled()
    assert not real_errors(page), real_errors(page)


# --- SSH keys: the page, the button, and a real log-in ------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_a_customer_adds_a_key_puts_it_into_the_running_ve_and_logs_in_with_it(panel, node_agent, browser, owner,
                                                                                ve, namespace, tmp_path):
    from vzpanel.accounts.models import SSHKey

    page = new_page(browser, panel, owner)
    page.get_by_role("button", name=re.compile(owner.username)).click()
    page.get_by_role("link", name="SSH keys").click()
    expect(page.get_by_role("heading", name="Your SSH keys")).to_be_visible()
    assert_fits(page, "the empty SSH keys page")

    for bad, words in [("ssh-ed25519 not*base64 me@laptop", "not valid base64"),
                       ("-----BEGIN OPENSSH PRIVATE KEY-----", "That is a private key")]:
        page.get_by_label("Name").fill("laptop")
        page.get_by_label("Public key").fill(bad)
        page.get_by_role("button", name="Add key").click()
        expect(invalid_feedback(page, "id_key")).to_contain_text(words)
        # a bad public key stays to be corrected; a pasted private key is not echoed into the page
        expect(page.get_by_label("Public key")).to_have_value("" if "PRIVATE" in bad else bad)
        assert not SSHKey.objects.exists()
    expect(page.locator("#ssh-keys")).to_have_count(0)
    expect(page.locator("#no-ssh-keys")).to_be_visible()
    assert_fits(page, "the SSH keys page with an error")

    public = keygen(tmp_path)
    page.get_by_label("Name").fill("laptop")
    page.get_by_label("Public key").fill(public)
    page.get_by_role("button", name="Add key").click()
    expect(page.locator("#ssh-keys [data-key]")).to_have_count(1)
    key = SSHKey.objects.get(user=owner)
    expect(page.locator("#ssh-keys")).to_contain_text(key.fingerprint)
    assert_fits(page, "the SSH keys page with a key")

    def offered_methods(port, host) -> list[str]:
        """The log-in methods the VE's sshd offers, as `ssh -v` reports them (asking until it answers)."""
        argv = ssh_argv(tmp_path / "no-such-key", port, host, "-o", "PreferredAuthentications=password", "-v")
        for _ in range(10):
            r = namespace.run(*argv, "true")
            assert r.returncode != 0
            methods = re.findall(r"Authentications that can continue: (\S+)", r.stderr)
            if methods:
                return methods
            time.sleep(0.5)
        raise AssertionError(f"sshd at {host}:{port} did not answer: {r.stderr}")

    assert any("password" in m for m in offered_methods(ve.hosting.port, namespace.host))  # before: on

    # into the running VE, password log-in over SSH off
    page.goto(f"{panel}/ves/{ve.ctid}/network/")
    expect(page.locator("#ssh-keys-state")).to_contain_text("Password log-in over SSH is on")
    line = page.locator("#ssh-line").inner_text().strip()
    page.get_by_label("Switch password log-in over SSH off").check()
    page.get_by_role("button", name="Put the keys into this VE").click()
    expect(page.locator("#messages")).to_contain_text("The SSH keys are being put into the VE")
    finish(ve, "ssh_keys")
    page.reload()
    expect(page.locator("#ssh-keys-state")).to_contain_text("Password log-in over SSH is off")

    # the line the page shows logs in with the key, from another machine (the namespace)
    argv = shlex.split(line)
    assert argv[:2] == ["ssh", "-p"]
    private_key = tmp_path / "id-ed25519"
    r = wait_ok(namespace.run, [*ssh_argv(private_key, int(argv[2]), argv[3].split("@")[1]),
                                "cat /root/.ssh/authorized_keys; hostname"], tries=20)
    assert r.returncode == 0, r.stderr
    assert public in r.stdout and "hosting1" in r.stdout
    # the server offers no password log-in any more
    offered = offered_methods(ve.hosting.port, namespace.host)
    assert offered and all("password" not in m and "keyboard-interactive" not in m for m in offered), offered
    assert not real_errors(page), real_errors(page)


# --- the Firewall tab, against real traffic --------------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_the_ssh_only_preset_and_a_custom_rule_hold_against_real_traffic_even_after_iptables_f_inside(
        panel, node_agent, browser, owner, ve, namespace):
    from vzpanel.tasks.models import Task

    eng, ctid, address = ve.hosting.engine, ve.ctid, ve.hosting.address
    # two more servers in the VE: 8080 the custom rule lets in, 9090 nothing does
    r = eng.exec(ctid, "/usr/sbin/sshd -p 8080 -p 9090 -o PidFile=/run/sshd-extra.pid")
    assert r.returncode == 0, r.stderr
    try:
        for port in (22, 8080, 9090):  # each answers before the firewall (the new sshd may take a moment)
            assert wait_ok(namespace.run, ["python3", "-c", BANNER, address, str(port), "3"], tries=10
                           ).stdout.startswith("SSH-2.0"), f"port {port} before"

        page = new_page(browser, panel, owner)
        page.goto(f"{panel}/ves/{ctid}/")
        page.locator("#ve-tabs").get_by_role("link", name="Firewall").click()
        expect(page.locator("#fw-rules")).to_contain_text("No rules")
        assert_fits(page, "the Firewall tab")
        page.get_by_role("button", name="SSH only").click()
        expect(page.locator("#messages")).to_contain_text("The firewall is being changed")
        finish(ve, "set_firewall")
        page.reload()
        expect(page.locator("#fw-rules tbody tr")).to_have_count(1)
        expect(page.get_by_label("Default policy")).to_have_value("drop")

        # a bad rule is refused in words and changes nothing; what was typed stays to be corrected
        page.get_by_label("Action").select_option("accept")
        page.get_by_label("Protocol").select_option("tcp")
        page.get_by_label("Port or range").fill("70000")
        page.get_by_role("button", name="Add rule").click()
        expect(page.get_by_role("alert").filter(has_text="'70000' is not a port")).to_be_visible()
        expect(page.get_by_label("Port or range")).to_have_value("70000")
        expect(page.get_by_label("Protocol")).to_have_value("tcp")
        assert Task.objects.filter(ve=ve, action="set_firewall").count() == 1
        page.get_by_label("Port or range").fill("8080")
        page.get_by_role("button", name="Add rule").click()
        expect(page.locator("#messages")).to_contain_text("The firewall is being changed")
        finish(ve, "set_firewall")
        page.reload()
        expect(page.locator("#fw-rules tbody tr")).to_have_count(2)
        expect(page.locator("#fw-rules")).to_contain_text("accept tcp 8080")
        assert_fits(page, "the Firewall tab with rules")
        assert eng.config(ctid).get("FIREWALL_RULES") == "accept tcp 22;accept tcp 8080"

        def assert_filtered(when: str):
            assert (banner(namespace.run, address, 22) or "").startswith("SSH-2.0"), f"22 {when}"
            assert (banner(namespace.run, address, 8080) or "").startswith("SSH-2.0"), f"8080 {when}"
            assert banner(namespace.run, address, 9090) is None, f"9090 answered {when}"
            # the SSH forward on the host reaches port 22 of the VE, so it passes too
            assert (banner(namespace.run, namespace.host, ve.hosting.port) or "").startswith("SSH-2.0"), when

        assert_filtered("with the firewall on")
        # the VE's root flushes its own rules: the host's hold
        r = eng.exec(ctid, "iptables -P INPUT ACCEPT && iptables -F && iptables -t mangle -F && iptables -L -n")
        assert r.returncode == 0, r.stderr
        assert_filtered("after iptables -F inside the VE")
        assert not real_errors(page), real_errors(page)
    finally:
        eng.exec(ctid, "kill $(cat /run/sshd-extra.pid)")
        eng.set(ctid, firewall_policy="accept", firewall_rules=[], save=True)

