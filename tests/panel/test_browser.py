"""In a real browser: log in, create a VE, watch its task finish live, stop it, find it in the audit log."""

import re

import pytest
from playwright.sync_api import expect

from tests.panel.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_in(page, base, user):
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))


def test_it_logs_in_and_explains_a_wrong_password(live_panel, browser, owner):
    page = browser.new_page()
    page.goto(f"{live_panel}/login/")
    page.get_by_label("Username").fill(owner.username)
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Please enter a correct username and password")
    log_in(page, live_panel, owner)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


@pytest.mark.root
def test_it_creates_a_ve_watches_it_finish_stops_it_and_sees_the_audit_entry(
    live_panel, node_agent, engine_root, browser, owner, admin, node, panel_state
):
    from vzengine import Engine

    engine = Engine(engine_root)
    page = browser.new_page()
    try:
        log_in(page, live_panel, owner)
        page.get_by_role("link", name="New VE").click()
        page.get_by_label("OS template").select_option("tiny")
        page.get_by_label("Host name").fill("browser1")
        page.get_by_role("button", name="Create VE").click()

        # The task page shows at once, then live progress over the websocket until it completes.
        expect(page).to_have_url(re.compile(r"/tasks/\d+/$"))
        expect(page.locator("[data-ws]")).to_have_attribute("data-live", "ws")
        expect(page.locator(".task-status")).to_have_text("completed", timeout=240_000)
        expect(page.locator(".task-log")).to_contain_text("Completed")
        page.screenshot(path=str(panel_state / "browser-task.png"), full_page=True)

        page.locator("#ve-link").click()
        expect(page.locator("#ve-state")).to_have_text("running")
        page.get_by_role("button", name="Stop", exact=True).click()
        expect(page.locator("#ve-state")).to_have_text("stopped", timeout=120_000)
        page.screenshot(path=str(panel_state / "browser-ve.png"), full_page=True)
        ctid = int(page.url.rstrip("/").rsplit("/", 1)[1])
        assert engine.status(ctid).status == "stopped"

        admin_page = browser.new_page()
        log_in(admin_page, live_panel, admin)
        admin_page.goto(f"{live_panel}/audit/")
        admin_page.get_by_placeholder("Action, e.g. ve.stop").fill("ve.stop")
        row = admin_page.locator("#audit tbody tr").filter(has_text=owner.username)
        expect(row).to_have_count(1)
        expect(row).to_contain_text(str(ctid))
        expect(row).to_contain_text("completed")
        expect(row).to_contain_text("127.0.0.1")
        admin_page.screenshot(path=str(panel_state / "browser-audit.png"), full_page=True)
    finally:
        for info in engine.list():
            if info.hostname == "browser1":
                engine.destroy(info.ctid)


@pytest.mark.root
def test_a_customer_takes_a_snapshot_rolls_back_and_backs_up_in_the_browser(
    live_panel, node_agent, engine_root, browser, owner, node
):
    from tests.panel.conftest import make_ve
    from vzengine import Engine

    engine = Engine(engine_root)
    ctid = 9701
    engine.create(ctid, "tiny", hostname="browser2")
    page = browser.new_page()
    try:
        engine.start(ctid, wait_boot=True)
        make_ve(owner, node, ctid, hostname="browser2")
        log_in(page, live_panel, owner)
        page.goto(f"{live_panel}/ves/{ctid}/")
        page.get_by_role("link", name="Snapshots").click()
        page.get_by_label("Name").fill("before-rm")
        page.get_by_role("button", name="Take snapshot").click()
        row = page.locator('#snapshot-table tr[data-snapshot="before-rm"]')
        expect(row).to_be_visible(timeout=60_000)  # the list refreshes live when the task ends

        engine.exec(ctid, "rm /etc/hostname")
        row.locator("summary").click()
        row.get_by_label(re.compile("go back to")).check()
        row.get_by_role("button", name="Roll back").click()
        rollback = page.locator("#ve-storage-live details tr").filter(has_text="roll back")
        expect(rollback.locator(".badge")).to_have_text("completed", timeout=60_000)
        assert engine.is_running(ctid) and engine.exec(ctid, "cat /etc/hostname").stdout.strip() == "browser2"

        page.get_by_role("link", name="Backups").click()
        page.get_by_role("button", name="Back up now").click()
        expect(page.locator("#backup-table tbody tr[data-backup]")).to_have_count(1, timeout=120_000)
        expect(page.locator("#backup-table")).to_contain_text("verified")
    finally:
        page.close()
        if engine.exists(ctid):
            engine.destroy(ctid)
