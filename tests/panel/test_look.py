"""The panel's look in a real browser: no page wider than the screen (1366 and 390 px), no clipped buttons,
no serious or critical axe-core violations in light and dark mode, no console errors, the theme follows the
system and the switch without a flash, and the rough edges a tester found stay fixed (live messages, one
state per task, the snapshot panel, the skip link).

axe-core is vendored for the tests only (tests/vendor/axe-core, pinned in package.json); the panel never
serves it. Screenshots go to the test's tmp dir (look-*.png).
"""

import datetime as dt
import json
import re
import threading
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.panel.conftest import PASSWORD, make_user, make_ve

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"
WIDTHS = {"wide": (1366, 800), "phone": (390, 844)}

# Every visible element inside the viewport; every button, link, summary or field inside the boxes of the
# ancestors that clip it (a scrolling table, a card). Returns what is wrong, in words.
OVERFLOW_JS = """() => {
  const vw = document.documentElement.clientWidth, bad = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "") +
    " '" + (el.innerText || el.value || "").trim().slice(0, 40) + "'";
  const clipped = (el) => { for (let a = el; a; a = a.parentElement) { const s = getComputedStyle(a);
    if (s.clip === "rect(0px, 0px, 0px, 0px)" || s.clipPath === "inset(50%)") return true; } return false; };
  const shown = (el) => { const s = getComputedStyle(el); const r = el.getBoundingClientRect();
    return s.display !== "none" && s.visibility !== "hidden" && r.width > 0 && r.height > 0 && !clipped(el); };
  if (document.documentElement.scrollWidth > vw + 1)
    bad.push("the page scrolls sideways: " + document.documentElement.scrollWidth + " px wide in " + vw);
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest(".visually-hidden, .visually-hidden-focusable, .xterm") || !shown(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.right > vw + 1 || r.left < -1) bad.push(name(el) + " spans " + Math.round(r.left) + ".." + Math.round(r.right) + " of " + vw);
  }
  for (const el of document.querySelectorAll("button, a.btn, summary, input:not([type=hidden]), select, textarea")) {
    if (el.closest(".visually-hidden, .visually-hidden-focusable, .xterm") || !shown(el)) continue;
    const r = el.getBoundingClientRect();
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX === "visible" && s.overflowY === "visible") continue;
      const b = a.getBoundingClientRect();
      if (r.left < b.left - 1 || r.right > b.right + 1) { bad.push(name(el) + " is cut off by " + name(a)); break; }
    }
  }
  return bad.slice(0, 15);
}"""

# Record the theme the page has when its <body> first appears: it must already be the right one (no flash).
THEME_AT_FIRST_PAINT = """
new MutationObserver(function (changes, observer) {
  if (document.body) {
    window.__themeAtBody = document.documentElement.getAttribute("data-bs-theme");
    observer.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
"""


@pytest.fixture
def look(node, plan, owner, admin, teacher, student):
    """A panel with something on every page: VEs (the owner at their plan's limit), tasks with results,
    snapshots with long descriptions, a class with students, plans, audit entries."""
    from vzpanel.audit.models import AuditEntry
    from vzpanel.classroom import services as classes
    from vzpanel.classroom.models import Membership
    from vzpanel.tasks.models import Task
    from vzpanel.ves.models import Backup, Snapshot

    now = timezone.now()
    ve = make_ve(owner, node, 101, hostname="web1")
    ve.ip_addresses = ["10.0.0.101", "fd77::101"]
    ve.limits = {"ram_mb": 256, "swap_mb": 0, "cpus": 1, "disk_gb": 2, "nproc": 128}
    ve.save()
    make_ve(owner, node, 102, status="stopped", hostname="db1")  # plan "small" allows 2: the owner is full
    Task.objects.create(ve=ve, node=node, user=owner, action="create", status="completed", progress=100,
                        params={"ostemplate": "tiny", "hostname": "web1", "start": True}, message="Done",
                        result={"ctid": 101, "status": "running", "hostname": "web1", "ostemplate": "tiny",
                                "ip_addresses": ["10.0.0.101"], "nproc": 3, "onboot": False, "nameservers": [],
                                "extra": {"memory_bytes": 7340032}},
                        started_at=now, finished_at=now, log="[12:00:00] Creating\n[12:00:01] Completed\n")
    Task.objects.create(ve=ve, node=node, user=owner, action="reinstall", status="failed", progress=40,
                        message="the template is missing", error="The template debian-13 is not on this node.",
                        started_at=now, finished_at=now)
    for i, name in enumerate(("before-upgrade", "nightly")):
        Snapshot.objects.create(ve=ve, name=name, created_at=now - dt.timedelta(hours=i + 1), ve_state="running",
                                size_bytes=52_428_800, exclusive_bytes=1_048_576,
                                description="Everything as it was before the big PHP upgrade of the shop, "
                                            "with the customer's uploads and the database files")
    Backup.objects.create(ve=ve, node=node, ctid=101, path="/var/lib/vz/backups/101-1.tar.zst",
                          size_bytes=80_000_000, created_at=now, verified_at=now)
    course = classes.create_course(teacher, name="Networks 101", ostemplate="tiny", plan=plan)
    members = [(student, 201)] + [(make_user(f"s{i}@example.edu", "student", teacher=teacher), 201 + i)
                                  for i in range(1, 4)]
    for user, ctid in members:
        Membership.objects.create(course=course, user=user, ve=make_ve(user, node, ctid), ssh_port=22000 + ctid,
                                  display_name=f"Student with a rather long name {ctid}", group="tue")
    AuditEntry.objects.create(user=owner, username=owner.username, action="ve.start", ve=ve, ctid=101,
                              ip="127.0.0.1", result="ok")
    return {"ve": ve, "course": course}


def sign_in(browser, base, user) -> dict:
    """Log user in through the login form once; return the browser storage state to open pages with."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(re.compile(r"/login/"))
    state = context.storage_state()
    context.close()
    return state


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, context):
        self.page = context.new_page()
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))


def open_page(browser, state, *, scheme="light", width="wide"):
    w, h = WIDTHS[width]
    context = browser.new_context(storage_state=state, color_scheme=scheme, viewport={"width": w, "height": h})
    context.add_init_script(THEME_AT_FIRST_PAINT)
    return context, Watched(context)


def axe_problems(page) -> list[str]:
    """Run axe-core on the page; return its serious and critical violations in words."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => JSON.stringify(await axe.run(document, {resultTypes: ['violations']}))")
    problems = []
    for v in json.loads(result)["violations"]:
        if v["impact"] in ("serious", "critical"):
            targets = [" ".join(map(str, n["target"])) for n in v["nodes"][:4]]
            problems.append(f"{v['id']} ({v['impact']}): {v['help']} at {targets}")
    return problems


def settle(page):
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(150)  # htmx swaps and bootstrap's fade-ins


def pages_for(look) -> dict:
    ve, course = look["ve"].ctid, look["course"].pk
    return {
        "owner": ["/ves/", f"/ves/{ve}/", f"/ves/{ve}/console/", f"/ves/{ve}/snapshots/", f"/ves/{ve}/backups/",
                  f"/ves/{ve}/network/", f"/ves/{ve}/firewall/", "/tasks/", "TASK", "/account/", "/account/tokens/"],
        "admin": ["/plans/", "/plans/new/", "/audit/", "/classes/"],
        "teacher": ["/classes/", f"/classes/{course}/", f"/classes/{course}/students/MEMBER/reset/"],
        "student": [f"/classes/{course}/"],
    }


def resolve(path, look):
    from vzpanel.classroom.models import Membership
    from vzpanel.tasks.models import Task

    if path == "TASK":
        return f"/tasks/{Task.objects.filter(action='create').first().pk}/"
    if "MEMBER" in path:
        member = Membership.objects.filter(course=look["course"], role="student").first()
        return path.replace("MEMBER", str(member.pk))
    return path


def test_the_main_pages_have_no_serious_accessibility_violations_in_light_or_dark_mode(
        live_panel, browser, look, owner, admin, teacher, student):
    people = {"owner": owner, "admin": admin, "teacher": teacher, "student": student}
    found = []
    login_context, login = open_page(browser, None)
    for scheme in ("light", "dark"):
        login.page.emulate_media(color_scheme=scheme)
        login.page.goto(f"{live_panel}/login/")
        settle(login.page)
        found += [f"/login/ {scheme}: {p}" for p in axe_problems(login.page)]
    login_context.close()
    for who, paths in pages_for(look).items():
        state = sign_in(browser, live_panel, people[who])
        for scheme in ("light", "dark"):
            context, watched = open_page(browser, state, scheme=scheme)
            for path in paths:
                path = resolve(path, look)
                response = watched.page.goto(live_panel + path)
                assert response.status == 200, f"{who} {path}: {response.status}"
                settle(watched.page)
                assert watched.page.evaluate("document.documentElement.dataset.bsTheme") == scheme
                found += [f"{who} {path} {scheme}: {p}" for p in axe_problems(watched.page)]
            context.close()
    assert not found, "\n".join(found)


def screens(look, live_panel, browser, admin):
    """The screens photographed at both widths: VE list, VE page, class page; the dashboard and a node page
    when the panel has them."""
    ve, course = look["ve"].ctid, look["course"].pk
    shots = [("owner", "/ves/", "ve-list"), ("owner", f"/ves/{ve}/", "ve-page"),
             ("owner", f"/ves/{ve}/snapshots/", "ve-snapshots"), ("teacher", f"/classes/{course}/", "class-page")]
    probe = sign_in(browser, live_panel, admin)
    context = browser.new_context(storage_state=probe)
    page = context.new_page()
    dashboard = page.goto(f"{live_panel}/")
    if dashboard.status == 200 and not re.search(r"/ves/$", page.url):
        shots.append(("admin", "/", "dashboard"))
    from vzpanel.nodes.models import Node

    name = Node.objects.first().name
    if page.goto(f"{live_panel}/nodes/{name}/").status == 200:
        shots.append(("admin", f"/nodes/{name}/", "node-page"))
    context.close()
    return shots, probe


def test_the_screens_fit_1366_and_390_px_without_console_errors(live_panel, browser, look, owner, teacher, admin,
                                                               tmp_path):
    shots, admin_state = screens(look, live_panel, browser, admin)
    states = {"owner": sign_in(browser, live_panel, owner), "teacher": sign_in(browser, live_panel, teacher),
              "admin": admin_state}
    found = []
    for width in WIDTHS:
        # Dark mode changes colours, not layout: at the phone width light is enough (the a11y test covers dark).
        for scheme in ("light", "dark") if width == "wide" else ("light",):
            for who, path, name in shots:
                context, watched = open_page(browser, states[who], scheme=scheme, width=width)
                watched.page.goto(live_panel + path)
                settle(watched.page)
                for panel in watched.page.locator("details.row-panel").all():
                    panel.evaluate("d => d.open = true")  # the snapshot rows' roll back / delete panels
                settle(watched.page)
                watched.page.screenshot(path=str(tmp_path / f"look-{name}-{width}-{scheme}.png"), full_page=True)
                found += [f"{name} at {width} {scheme}: {p}" for p in watched.page.evaluate(OVERFLOW_JS)]
                if scheme == "light" or name in ("ve-page", "class-page"):
                    found += [f"{name} at {width} {scheme}: {p}" for p in axe_problems(watched.page)]
                found += [f"{name} at {width} {scheme}: {e}" for e in watched.errors]
                context.close()
    assert not found, "\n".join(found)


def test_the_snapshot_panel_keeps_delete_on_screen_and_in_its_cell_at_1366(live_panel, browser, look, owner):
    context, watched = open_page(browser, sign_in(browser, live_panel, owner))
    page = watched.page
    page.goto(f"{live_panel}/ves/101/snapshots/")
    row = page.locator('#snapshot-table tr[data-snapshot="nightly"]')
    row.get_by_text("Roll back / delete").click()
    delete = row.get_by_role("button", name="Delete snapshot")
    expect(delete).to_be_visible()
    box, cell = delete.bounding_box(), row.locator("td.actions").bounding_box()
    assert box["x"] + box["width"] <= 1366 and box["x"] >= cell["x"] - 1
    assert box["x"] + box["width"] <= cell["x"] + cell["width"] + 1
    assert page.evaluate(OVERFLOW_JS) == []
    context.close()


def test_the_class_table_shows_every_students_buttons_at_1366(live_panel, browser, look, teacher):
    context, watched = open_page(browser, sign_in(browser, live_panel, teacher))
    page = watched.page
    page.goto(f"{live_panel}/classes/{look['course'].pk}/")
    actions = page.locator("#students td.actions")
    expect(actions).to_have_count(4)
    for cell in actions.all():
        expect(cell.get_by_role("link", name=re.compile("^Reset"))).to_be_in_viewport()
        expect(cell.get_by_role("link", name=re.compile("^Remove"))).to_be_in_viewport()
    assert page.evaluate(OVERFLOW_JS) == []
    context.close()


def test_dark_mode_follows_the_system_and_the_switch_remembers_the_choice_without_a_flash(
        live_panel, browser, look, owner):
    state = sign_in(browser, live_panel, owner)
    context, watched = open_page(browser, state, scheme="dark")
    page = watched.page
    page.goto(f"{live_panel}/ves/")
    assert page.evaluate("window.__themeAtBody") == "dark"  # already dark when the body first appears
    assert page.evaluate("document.documentElement.dataset.bsTheme") == "dark"
    page.emulate_media(color_scheme="light")  # the system changes while the page is open
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "light")

    # The switch in the user menu: dark although the system says light, remembered across pages.
    page.get_by_role("button", name=owner.username).click()
    page.get_by_role("button", name="Dark").click()
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
    page.goto(f"{live_panel}/ves/101/")
    assert page.evaluate("window.__themeAtBody") == "dark"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(map(int, re.findall(r"\d+", background)[:3])) < 150, background  # a dark page, not a light one
    page.get_by_role("button", name=owner.username).click()
    expect(page.get_by_role("button", name="Dark")).to_have_attribute("aria-pressed", "true")
    page.get_by_role("button", name="System").click()
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "light")
    page.reload()
    assert page.evaluate("window.__themeAtBody") == "light"
    assert watched.errors == []
    context.close()

    # The login page (no user menu) and the error pages follow the system too.
    context, watched = open_page(browser, None, scheme="dark")
    watched.page.goto(f"{live_panel}/login/")
    assert watched.page.evaluate("window.__themeAtBody") == "dark"
    context.close()


def test_the_skip_link_is_first_and_moves_focus_to_the_content(live_panel, browser, look, owner):
    context, watched = open_page(browser, sign_in(browser, live_panel, owner))
    page = watched.page
    page.goto(f"{live_panel}/ves/101/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main#main")).to_be_focused()
    context.close()


def in_a_worker_thread(work):
    """Run work as a task worker would, outside Playwright's event loop (async_to_sync refuses to run in it)."""
    from django.db import connection

    failure = []

    def target():
        try:
            work()
        except BaseException as exc:  # handed back to the test below
            failure.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if failure:
        raise failure[0]


def run(task, status, **fields):
    """Move a task as the runner does (the row, then the push to the browsers watching it)."""
    from vzpanel.tasks.models import Task
    from vzpanel.tasks.queue import publish_task
    from vzpanel.tasks.runner import finish

    def work():
        if status in Task.FINISHED:
            finish(task, status, **fields)
            return
        Task.objects.filter(pk=task.pk).update(status=status, started_at=timezone.now(), **fields)
        task.refresh_from_db()
        publish_task(task)

    in_a_worker_thread(work)


def test_the_creation_message_goes_when_the_live_page_sees_the_task_end(live_panel, browser, look, admin, node):
    from vzpanel.tasks.models import Task

    context, watched = open_page(browser, sign_in(browser, live_panel, admin))
    page = watched.page
    page.goto(f"{live_panel}/ves/new/")
    page.get_by_label("OS template").select_option("tiny")
    page.get_by_label("Host name").fill("shop1")
    page.get_by_role("button", name="Create VE").click()  # no agent here: the task waits, queued
    expect(page).to_have_url(re.compile(r"/tasks/\d+/$"))
    message = page.locator("#messages .alert").filter(has_text="is being created")
    expect(message).to_be_visible()
    expect(page.locator("[data-ws]")).to_have_attribute("data-live", "ws")
    task = Task.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    run(task, "running", progress=30, message="Copying the template")
    expect(page.locator(".task-status")).to_have_text("running")
    expect(message).to_be_visible()  # still being created
    run(task, "completed", result={"ctid": task.ve.ctid, "status": "running", "hostname": "shop1"})
    expect(message).to_have_count(0)
    expect(page.locator(".task-status")).to_have_text("completed")
    expect(page.locator("#task-result")).to_contain_text("Host name")
    expect(page.locator("#live-status")).to_contain_text("completed")

    # A failure turns the message into what went wrong.
    page.goto(f"{live_panel}/ves/new/")
    page.get_by_label("OS template").select_option("tiny")
    page.get_by_role("button", name="Create VE").click()
    expect(page).to_have_url(re.compile(r"/tasks/\d+/$"))
    expect(page.locator("[data-ws]")).to_have_attribute("data-live", "ws")
    task = Task.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    run(task, "failed", error="The node is out of disk space.")
    alert = page.locator("#messages .alert")
    expect(alert).to_contain_text("failed: The node is out of disk space.")
    expect(alert).to_have_class(re.compile("alert-danger"))
    assert watched.errors == []
    context.close()


def test_a_reinstall_shows_one_state_in_the_panel_and_the_table(live_panel, browser, look, owner, node):
    from vzpanel.tasks.models import Task

    ve = look["ve"]
    task = Task.objects.create(ve=ve, node=node, user=owner, action="reinstall", params={"ostemplate": "tiny"})
    context, watched = open_page(browser, sign_in(browser, live_panel, owner))
    page = watched.page
    page.goto(f"{live_panel}/ves/{ve.ctid}/")
    expect(page.locator("[data-ws]")).to_have_attribute("data-live", "ws")
    panel, row = page.locator(f"#task-{task.pk} .task-status"), page.locator(f'#ve-tasks tr[data-task-id="{task.pk}"]')
    expect(panel).to_have_text("queued")
    expect(row.locator(".badge")).to_have_text("queued")
    run(task, "running", progress=10, message="Stopping")
    expect(panel).to_have_text("running")
    expect(row.locator(".badge")).to_have_text("running")
    from vzpanel.tasks.runner import Progress

    in_a_worker_thread(lambda: Progress(task)(55, "Copying files"))
    expect(page.locator(f"#task-{task.pk} .progress-bar")).to_have_text("55%")
    expect(row.locator(".badge")).to_have_text("running")
    run(task, "completed", result={"ctid": ve.ctid, "ostemplate": "tiny", "status": "running"})
    expect(row.locator(".badge")).to_have_text("completed")
    expect(page.locator(f"#task-{task.pk}")).to_have_count(0)
    assert watched.errors == []
    context.close()


def test_new_ve_is_disabled_with_the_reason_at_the_plans_limit(live_panel, browser, look, owner):
    context, watched = open_page(browser, sign_in(browser, live_panel, owner))
    page = watched.page
    page.goto(f"{live_panel}/ves/")
    button = page.locator("#new-ve")
    expect(button).to_be_disabled()
    expect(button).to_have_accessible_description(re.compile("allows 2 VE"))
    expect(page.locator("#new-ve-why")).to_contain_text("Destroy one or ask an admin for a bigger plan.")
    context.close()


def test_a_teachers_reset_of_one_student_asks_whether_to_keep_the_work(live_panel, browser, look, teacher):
    from vzpanel.tasks.models import Task

    context, watched = open_page(browser, sign_in(browser, live_panel, teacher))
    page = watched.page
    page.goto(f"{live_panel}/classes/{look['course'].pk}/")
    row = page.locator("#students tbody tr").first
    row.get_by_role("link", name=re.compile("^Reset")).click()
    expect(page.get_by_role("heading", name=re.compile("Reset .*VE"))).to_be_visible()
    keep = page.get_by_label(re.compile("Keep the student's current files"))
    expect(keep).to_be_checked()  # the safe choice is the default
    page.get_by_role("button", name="Reset the VE").click()
    expect(page.get_by_text("This field is required")).to_be_visible()  # not confirmed: nothing queued
    assert not Task.objects.filter(action="student.reset").exists()
    watched.errors.clear()  # the browser logs the form's 400 answer as an error
    page.get_by_label(re.compile("fresh copy of the course image")).check()
    page.get_by_role("button", name="Reset the VE").click()
    message = page.locator("#messages .alert").filter(has_text="keeping their work as a snapshot")
    expect(message).to_be_visible()
    child = Task.objects.get(action="student.reset")
    assert child.params["keep_work"] is True
    # The dashboard polls while the reset runs; when it shows the reset ended, the message goes.
    run(child, "running", progress=20, message="Taking a snapshot")
    page.wait_for_timeout(2500)
    expect(message).to_be_visible()
    run(child, "completed", result={"ctid": child.ve.ctid, "kept_as_snapshot": "work-1", "status": "running"})
    expect(message).to_have_count(0, timeout=10_000)
    assert watched.errors == []
    context.close()
