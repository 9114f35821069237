"""The web console against a real VE: Channels' communicator → the real ASGI app → the real Redis channel
layer → the real console daemon (`manage.py consoled`, a subprocess as in `serve`) → lxc-attach → the VE.

Busybox's shell asks the terminal where the cursor is (ESC[6n) and waits for the answer, as a real
terminal (xterm.js) gives it; the writer's Term below answers like one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from tests.panel.conftest import REPO, make_ve, panel_env, stop_process, wait_for
from vzpanel.asgi import application
from vzpanel.audit.models import AuditEntry
from vzpanel.console import client, protocol

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = [(b"origin", b"http://testserver"), (b"host", b"testserver")]


# --- fixtures ---------------------------------------------------------------------------------------


def start_daemon(redis_url, panel_state, test_db_path, vz_root, node="local", *args):
    log = open(panel_state / f"consoled-{node}.log", "ab")  # noqa: SIM115 - closed by stop_daemon
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "consoled", "--node", node, *args], cwd=REPO,
        env=panel_env(redis_url, panel_state, test_db_path, VZ_ROOT=str(vz_root)), stdout=log, stderr=subprocess.STDOUT,
    )
    proc.log_file = log

    def answers():
        assert proc.poll() is None, f"consoled exited; see {log.name}"
        return client.ping(node, timeout=0.5)

    try:
        wait_for(answers, 30, f"the console daemon of node {node}")
    except BaseException:
        stop_daemon(proc)
        raise
    return proc


def stop_daemon(proc):
    stop_process(proc, timeout=20)
    proc.log_file.close()


@pytest.fixture(scope="module")
def daemon(redis_url, panel_state, test_db_path, vz_root):
    """The node's console daemon, as `serve` runs it, on the private Redis and engine root."""
    proc = start_daemon(redis_url, panel_state, test_db_path, vz_root)
    yield proc
    stop_daemon(proc)


_ctids = iter(range(7_780_000 + os.getpid() % 1000 * 10, 7_780_000 + os.getpid() % 1000 * 10 + 10))


@pytest.fixture(scope="module")
def running_ve(vz_root):
    """One running tiny VE for the module; each test makes its own panel row and console session(s)."""
    from vzengine import Engine

    eng = Engine(vz_root, lock_wait=30)
    ctid = next(_ctids)
    eng.create(ctid, "tiny", hostname=f"con{ctid}")
    try:
        eng.start(ctid, wait_boot=True)
        yield ctid
    finally:
        eng.destroy(ctid)


@pytest.fixture
def console_ve(running_ve, owner, node, daemon):
    """The panel's row for the running VE, owned by owner; its console sessions end with the test."""
    yield make_ve(owner, node, running_ve)
    client.close_ve(node.name, running_ve)


# --- a terminal over the communicator ---------------------------------------------------------------


class Term:
    """One browser tab's websocket to a console: collects output, keeps the JSON messages."""

    def __init__(self, user, ctid, role="write", query="", headers=ORIGIN):
        path = f"/ws/ves/{ctid}/console/?role={role}" + (f"&{query}" if query else "")
        self.comm = WebsocketCommunicator(application, path, headers=headers)
        self.comm.scope["user"] = user
        self.comm.scope["client"] = ["127.0.0.1", 40000]
        self.output = bytearray()
        self.events: list[dict] = []
        self.closed: int | None = None
        self.answers_cursor = role == "write"
        self.acks = False  # acknowledge output as a browser does (only the flow-control test needs it)
        self.offset = self.acked = 0

    async def connect(self):
        return await self.comm.connect(timeout=5)

    async def open(self) -> dict:
        connected, code = await self.connect()
        assert connected, f"refused with {code}"
        return await self.event("opened")

    async def pump(self, timeout: float) -> None:
        # Not receive_output(): its timeout cancels the application, and we wait in small steps.
        message = await asyncio.wait_for(self.comm.output_queue.get(), timeout)
        if message["type"] == "websocket.close":
            self.closed = message.get("code", 1000)
        elif message.get("bytes") is not None:
            self.output += message["bytes"]
            self.offset += len(message["bytes"])
            if self.acks and self.offset - self.acked >= 64 * 1024:
                self.acked = self.offset
                await self.comm.send_to(text_data=json.dumps({"type": "ack", "offset": self.offset}))
            if b"\x1b[6n" in message["bytes"] and self.answers_cursor:
                await self.comm.send_to(bytes_data=b"\x1b[1;1R")
        else:
            event = json.loads(message["text"])
            self.events.append(event)
            if event["type"] == "opened":
                self.offset = self.acked = event["offset"]
            if event["type"] == "role":
                self.answers_cursor = event["role"] == "writer"

    async def until(self, predicate, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed is not None:
                raise AssertionError(f"no {what}; output {bytes(self.output[-400:])!r}, events {self.events[-5:]}, "
                                     f"closed {self.closed}")
            with contextlib.suppress(TimeoutError):
                await self.pump(min(left, 1.0))
        return result

    async def see(self, pattern: bytes | str, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern if isinstance(pattern, bytes) else re.escape(pattern.encode()))
        return await self.until(lambda: rx.search(self.output), f"{pattern!r} in the output", timeout)

    async def event(self, type_: str, timeout: float = 10.0, **match) -> dict:
        def found():
            for e in self.events:
                if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()):
                    self.events.remove(e)
                    return e
            return None

        return await self.until(found, f"{type_} message {match or ''}", timeout)

    async def type(self, text: str) -> None:
        await self.comm.send_to(bytes_data=text.encode())

    async def send(self, obj=None, text: str | None = None) -> None:
        await self.comm.send_to(text_data=text if text is not None else json.dumps(obj))

    async def closed_with(self, timeout: float = 10.0) -> int:
        return await self.until(lambda: self.closed, "close", timeout)

    async def disconnect(self) -> None:
        await self.comm.disconnect()


def run(coro):
    asyncio.run(coro)


# --- the console ------------------------------------------------------------------------------------


@pytest.mark.root
def test_it_opens_a_root_shell_in_the_ve(console_ve, owner):
    async def go():
        t = Term(owner, console_ve.ctid)
        opened = await t.open()
        assert opened["role"] == "writer" and opened["mode"] == "root" and opened["created"] is True
        await t.see("# ")
        await t.type("id\r")
        await t.see("uid=0(root)")
        await t.disconnect()

    run(go())
    entry = AuditEntry.objects.get(action="console.open")
    assert entry.user == owner and entry.ctid == console_ve.ctid and entry.ip == "127.0.0.1"
    assert "root shell, typing, new session" in entry.detail


@pytest.mark.root
def test_it_resizes_the_terminal_and_refuses_absurd_sizes(console_ve, owner):
    async def go():
        t = Term(owner, console_ve.ctid, query="rows=30&cols=100")
        await t.open()
        await t.see("# ")
        await t.type("stty size\r")
        await t.see(rb"\n30 100\r")
        await t.send({"type": "resize", "rows": 40, "cols": 132})
        await t.type("stty size\r")
        await t.see(rb"\n40 132\r")
        for rows, cols in ((0, 80), (99999, 80), ("many", 80), (True, 3)):
            await t.send({"type": "resize", "rows": rows, "cols": cols})
            error = await t.event("error", code="bad-size")
            assert "out of range" in error["message"] or "whole number" in error["message"]
        await t.type("stty size; echo SIZE-$((1+1))\r")
        await t.see("SIZE-2")
        assert re.search(rb"\n40 132\r+\nSIZE-2", t.output), "the absurd sizes changed the terminal"
        await t.disconnect()

    run(go())


@pytest.mark.root
def test_it_keeps_the_session_and_its_output_when_the_websocket_drops(console_ve, owner):
    async def go():
        t = Term(owner, console_ve.ctid)
        first = await t.open()
        await t.see("# ")
        await t.type("X=kept-$((40+2)); echo before-drop; (sleep 0.5; echo while-away) &\r")
        await t.see("before-drop\r")
        await t.disconnect()  # the network goes; the shell stays
        await asyncio.sleep(1)

        again = Term(owner, console_ve.ctid)
        reopened = await again.open()
        assert reopened["sid"] == first["sid"] and reopened["created"] is False
        await again.see("while-away")  # the scrollback, including what ran meanwhile
        assert b"before-drop" in again.output
        await again.type("echo $X\r")
        await again.see("kept-42")
        await again.disconnect()

    run(go())


@pytest.mark.root
def test_a_watcher_sees_the_output_and_its_keys_never_reach_the_ve(console_ve, owner, admin, engine):
    async def go():
        writer = Term(owner, console_ve.ctid)
        await writer.open()
        await writer.see("# ")
        watcher = Term(admin, console_ve.ctid, role="watch")
        opened = await watcher.open()
        assert opened["role"] == "viewer" and opened["writer"] == owner.username

        await writer.type("echo SHARED-$((3*3))\r")
        await watcher.see("SHARED-9")
        await watcher.type("touch /tmp/ro-proof\r")
        await watcher.send({"type": "input", "data": "touch /tmp/ro-proof\r"})
        refused = await watcher.event("error", code="read-only")
        assert "read-only" in refused["message"]
        await asyncio.sleep(0.5)
        await writer.type("echo RES-$([ -e /tmp/ro-proof ] && echo yes || echo no)\r")
        await writer.see("RES-no")
        await watcher.see("RES-no")
        assert b"touch /tmp/ro-proof" not in writer.output
        await watcher.send({"type": "close"})  # nor can it end the session
        assert "Only the one typing" in (await watcher.event("error", code="not-writer"))["message"]
        await writer.send({"type": "close"})  # the writer can, for everyone
        for term in (writer, watcher):
            exited = await term.event("exited")
            assert exited["reason"] == "closed" and f"{owner.username} ended the console session" in exited["message"]
            assert await term.closed_with() == protocol.CLOSE_ENDED

    run(go())
    assert engine.exec(console_ve.ctid, "test -e /tmp/ro-proof").returncode == 1  # asked the VE itself
    assert engine.exec(console_ve.ctid, "test -e /tmp").returncode == 0


@pytest.mark.root
def test_a_teacher_can_take_over_and_the_takeover_is_audited(console_ve, owner, teacher, student):
    from vzpanel.classroom.models import Course, Membership

    console_ve.owner = student
    console_ve.save()
    # the teacher reaches the student's VE through a current course of theirs (and only so)
    course = Course.objects.create(name="Shells", teacher=teacher, node=console_ve.node, ostemplate="tiny")
    Membership.objects.create(course=course, user=student, ve=console_ve)

    async def go():
        student_term = Term(student, console_ve.ctid)
        await student_term.open()
        await student_term.see("# ")
        teacher_term = Term(teacher, console_ve.ctid, role="watch")
        await teacher_term.open()
        await teacher_term.send({"type": "takeover"})
        role = await teacher_term.event("role", role="writer")
        assert role["reason"] == "takeover" and role["writer"] == teacher.username
        demoted = await student_term.event("role", role="viewer")
        assert demoted["by"] == teacher.username
        await teacher_term.type("echo TEACHER-$((2+3))\r")
        await student_term.see("TEACHER-5")
        await student_term.type("echo STUDENT-$((2+4))\r")  # now read-only: dropped
        await student_term.event("error", code="read-only")
        await teacher_term.type("echo AFTER-$((1))\r")
        await teacher_term.see("AFTER-1")
        assert b"STUDENT-6" not in teacher_term.output
        await teacher_term.send({"type": "release"})  # hands the keyboard back: nobody types until taken
        released = await student_term.event("role", reason="release")
        assert released["writer"] is None and released["role"] == "viewer"
        await student_term.send({"type": "takeover"})
        await student_term.event("role", role="writer")
        await student_term.type("echo BACK-$((4+4))\r")
        await teacher_term.see("BACK-8")
        await teacher_term.disconnect()
        await student_term.disconnect()

    run(go())
    takeovers = AuditEntry.objects.filter(action="console.takeover").order_by("id")
    assert [(e.user, e.ctid) for e in takeovers] == [(teacher, console_ve.ctid), (student, console_ve.ctid)]


@pytest.mark.root
def test_the_daemon_drops_a_watchers_input_whatever_relays_it(console_ve, running_ve):
    """Speak the daemon's protocol directly, as a relay that forwards everything would: role is the daemon's."""

    async def go():
        layer = get_channel_layer()
        daemon = protocol.daemon_channel(console_ve.node.name)
        writer, watcher = await layer.new_channel(), await layer.new_channel()
        base = {"type": "console.open", "ctid": running_ve, "mode": "root", "rows": 24, "cols": 80, "at": time.time()}
        await layer.send(daemon, {**base, "reply": writer, "role": "write", "user_id": 1, "username": "w"})
        opened = await asyncio.wait_for(layer.receive(writer), 10)
        assert opened["type"] == "console.opened" and opened["role"] == "writer"
        await layer.send(daemon, {**base, "reply": watcher, "role": "watch", "user_id": 2, "username": "v"})
        seen = await asyncio.wait_for(layer.receive(watcher), 10)
        assert seen["type"] == "console.opened" and seen["role"] == "viewer"
        sid = opened["sid"]
        out = bytearray()

        async def writer_sees(needle: bytes):
            while needle not in out:
                message = await asyncio.wait_for(layer.receive(writer), 10)
                if message["type"] == "console.output":
                    out.extend(message["data"])
                    if b"\x1b[6n" in message["data"]:  # the shell asks where the cursor is
                        await layer.send(daemon, {"type": "console.input", "sid": sid, "reply": writer,
                                                  "data": b"\x1b[1;1R"})

        await writer_sees(b"# ")
        await layer.send(daemon, {"type": "console.input", "sid": sid, "reply": watcher,
                                  "data": b"echo FROM-WATCHER-$((5*5))\r"})
        await layer.send(daemon, {"type": "console.input", "sid": sid, "reply": writer,
                                  "data": b"echo FROM-WRITER-$((6*6))\r"})
        await writer_sees(b"FROM-WRITER-36")
        refused = None
        while refused is None:
            message = await asyncio.wait_for(layer.receive(watcher), 10)
            refused = message if message["type"] == "console.error" else None
        assert b"FROM-WRITER-36" in out and b"FROM-WATCHER" not in out
        assert refused["code"] == "read-only"
        for channel in (writer, watcher):
            await layer.send(daemon, {"type": "console.detach", "sid": sid, "reply": channel})

    run(go())


@pytest.mark.root
def test_a_stopped_or_missing_ve_is_explained(owner, node, daemon, engine, new_ctid):
    stopped = new_ctid()
    engine.create(stopped, "tiny")
    make_ve(owner, node, stopped, status="stopped")
    missing = make_ve(owner, node, 999_999_990)

    async def go():
        t = Term(owner, stopped)
        assert (await t.connect())[0]
        error = await t.event("error")
        assert error["code"] == "not-running" and f"VE {stopped} is not running" in error["message"]
        assert await t.closed_with() == protocol.CLOSE_ENDED

        t = Term(owner, missing.ctid)
        assert (await t.connect())[0]
        error = await t.event("error")
        assert error["code"] == "no-such-ve" and "does not exist on node" in error["message"]
        assert await t.closed_with() == protocol.CLOSE_ENDED

    run(go())
    assert AuditEntry.objects.filter(action="console.open", result="failed").count() == 2


@pytest.mark.root
def test_bad_messages_get_a_clear_answer_and_break_nothing(console_ve, owner):
    async def go():
        t = Term(owner, console_ve.ctid, query="rows=0&cols=-5")
        assert (await t.connect())[0]
        assert "out of range" in (await t.event("error", code="bad-size"))["message"]
        await t.event("opened")
        await t.see("# ")
        for text, says in [
            ("{not json", "not valid JSON"),
            ("[1, 2]", 'a JSON object with a "type"'),
            ('{"type": "sudo"}', "Unknown message type 'sudo'"),
            ('{"type": "input"}', 'needs "data", a string'),
            ('{"type": "input", "data": 5}', 'needs "data", a string'),
            ('{"type": "ack", "offset": "all"}', 'needs "offset"'),
        ]:
            await t.send(text=text)
            assert says in (await t.event("error", code="bad-message"))["message"]
        await t.comm.send_to(bytes_data=b"x" * (protocol.MAX_INPUT + 1))
        assert "too much" in (await t.event("error", code="bad-message"))["message"]
        await t.type("echo STILL-$((1+1))\r")
        await t.see("STILL-2")
        await t.disconnect()

    run(go())


@pytest.mark.root
def test_a_flood_of_output_waits_for_the_browser_to_show_it(console_ve, owner, admin):
    """The daemon sends at most ACK_WINDOW bytes beyond what a browser acknowledged; when every viewer is that
    far behind it holds the VE's output; a watcher left behind by the writer is told what it missed."""

    async def go():
        t = Term(owner, console_ve.ctid)
        await t.open()
        await t.see("# ")
        slow = Term(admin, console_ve.ctid, role="watch")
        await slow.open()
        await t.type("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo FLOOD-$((1+1))\r")
        await t.until(lambda: t.offset > protocol.ACK_WINDOW, "the first window of output")
        await asyncio.sleep(1.0)
        held = t.offset
        assert held <= protocol.ACK_WINDOW + 3 * protocol.CHUNK, held  # not 3 MB: the pty is paused
        assert b"FLOOD-2" not in t.output
        t.acks = True
        await t.send({"type": "ack", "offset": t.offset})
        t.acked = t.offset
        await t.see("FLOOD-2", timeout=30)
        assert t.output.count(b"x") >= 3_000_000, [e for e in t.events if e["type"] != "opened"]
        await t.type("echo AFTER-$((3+4))\r")
        await t.see("AFTER-7")

        await slow.until(lambda: slow.offset > protocol.ACK_WINDOW, "the watcher's first window")
        assert b"FLOOD-2" not in slow.output  # it kept its window, the writer went on
        slow.acks = True
        await slow.send({"type": "ack", "offset": slow.offset})
        slow.acked = slow.offset
        skipped = await slow.event("skipped")
        assert skipped["lost"] > 1_000_000 and skipped["offset"] > slow.acked
        slow.offset = skipped["offset"]
        await slow.see("AFTER-7")
        await slow.disconnect()
        await t.disconnect()

    run(go())


@pytest.mark.root
def test_the_plan_can_give_a_login_prompt_instead_of_a_root_shell(console_ve, owner):
    owner.plan.console_mode = "login"
    owner.plan.save()

    async def go():
        t = Term(owner, console_ve.ctid)
        opened = await t.open()
        assert opened["mode"] == "login"
        await t.see("login: ")
        await t.disconnect()

    run(go())


@pytest.mark.root
def test_sessions_end_after_the_idle_timeout_or_nobody_watching_and_say_so(
    redis_url, panel_state, test_db_path, vz_root, running_ve, owner
):
    from vzpanel.nodes.models import Node

    quick = Node.objects.create(name="quick")
    ve = make_ve(owner, quick, running_ve)
    proc = start_daemon(redis_url, panel_state, test_db_path, vz_root, "quick", "--idle-timeout", "1.5",
                        "--linger", "0.5")

    async def go():
        t = Term(owner, ve.ctid)
        first = await t.open()
        await t.disconnect()
        await asyncio.sleep(1.5)  # nobody watching for longer than the linger time: ended
        t = Term(owner, ve.ctid)
        second = await t.open()
        assert second["created"] is True and second["sid"] != first["sid"]
        exited = await t.event("exited", timeout=10)  # nobody types: ended, and the terminal says why
        assert exited["reason"] == "idle" and "1.5 seconds without input" in exited["message"]
        assert await t.closed_with() == protocol.CLOSE_ENDED

    try:
        run(go())
    finally:
        stop_daemon(proc)


# --- a VE that is still booting ---------------------------------------------------------------------


@pytest.mark.root
def test_a_console_opened_while_the_ve_boots_says_so_then_gives_the_shell(owner, node, daemon, engine, new_ctid):
    """A fresh tiny VE made to count as booting by its template's own check (/run/vz-booted)."""
    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"boot{ctid}")
    engine.start(ctid, wait_boot=True)
    engine.exec(ctid, "rm /run/vz-booted")
    ve = make_ve(owner, node, ctid)

    async def go():
        t = Term(owner, ctid)
        opened = await t.open()
        assert opened["booting"] is True and opened["role"] == "writer"
        await t.see(f"VE {ctid} is booting\u2026")
        await t.type("id\r")  # nothing to type into yet: said once, nothing reaches the VE
        assert (await t.event("error"))["code"] == protocol.BOOTING
        watcher = Term(owner, ctid, role="watch")  # joins the booting session, with what it has shown
        assert (await watcher.open())["booting"] is True
        await watcher.see("is booting")
        await asyncio.to_thread(engine.exec, ctid, "touch /run/vz-booted")
        assert (await t.event("booted", timeout=10))["result"] == "booted"
        await watcher.event("booted")
        await t.see(f"VE {ctid} has booted.")
        await t.see("# ")
        assert b"uid=0" not in t.output
        await t.type("id\r")
        await t.see("uid=0(root)")
        await watcher.see("uid=0(root)")
        await t.type("exit\r")
        await t.event("exited")
        await watcher.disconnect()
        # The daemon remembers that this run of the VE has booted: the next console asks nothing.
        t = Term(owner, ctid)
        opened = await t.open()
        assert opened["booting"] is False and opened["created"] is True
        await t.see("# ")
        await t.disconnect()

    try:
        run(go())
    finally:
        client.close_ve(node.name, ctid)
        engine.stop(ctid, fast=True)
    assert ve.ctid == ctid


# --- access, again while the console is open --------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("how", ["given-away", "deactivated", "destroyed"])
def test_a_console_closes_when_its_user_loses_access_to_the_ve(console_ve, owner, outsider, admin, settings, how):
    from vzpanel.ves.models import VE

    settings.CONSOLE_RECHECK = 0.3

    async def go():
        t = Term(owner, console_ve.ctid)
        await t.open()
        await t.see("# ")
        await t.type("echo OWNERS-$((5*5))\r")
        await t.see("OWNERS-25")
        watcher = Term(admin, console_ve.ctid, role="watch")
        await watcher.open()
        await asyncio.sleep(0.8)  # a few checks pass while nothing changes
        assert t.closed is None and watcher.closed is None

        def take_away():
            if how == "given-away":
                VE.objects.filter(pk=console_ve.pk).update(owner=outsider)
            elif how == "deactivated":
                type(owner).objects.filter(pk=owner.pk).update(is_active=False)
            else:
                VE.objects.filter(pk=console_ve.pk).update(status=VE.Status.DESTROYED)

        await asyncio.to_thread(take_away)
        gone = await t.event("error", timeout=5)
        assert gone["code"] == protocol.ACCESS_GONE
        assert gone["message"] == f"You no longer have access to VE {console_ve.ctid}; its console was closed."
        assert await t.closed_with(5) == protocol.CLOSE_NOT_FOUND  # as for an outsider
        if how == "destroyed":  # the admin may not see a destroyed VE either: whichever comes first,
            # its own check (4404) or the end of the session it watches (4000), its console closes
            assert await watcher.closed_with(5) in (protocol.CLOSE_NOT_FOUND, protocol.CLOSE_ENDED)
            await watcher.disconnect()
            return
        # The session the owner typed in has ended: the admin watching it is told why.
        exited = await watcher.event("exited", timeout=5)
        assert exited["reason"] == "access" and "oscar-owner no longer has access" in exited["message"]
        await watcher.disconnect()
        if how == "given-away":  # the new owner gets a new shell, not the old owner's screen
            t = Term(outsider, console_ve.ctid)
            opened = await t.open()
            assert opened["created"] is True
            await t.see("# ")
            assert b"OWNERS-25" not in t.output
            await t.disconnect()

    run(go())
    revoked = AuditEntry.objects.filter(action="console.revoked")
    # Destroyed: the admin watching may not see the VE either, and its own check can come before the end of the
    # session it watches; then its console is revoked (and audited) too. Otherwise the admin keeps access.
    assert set(revoked.values_list("user__username", flat=True)) in (
        ({owner.username}, {owner.username, admin.username}) if how == "destroyed" else ({owner.username},))
    mine = revoked.get(user=owner)
    assert mine.result == "denied" and mine.ctid == console_ve.ctid


# --- who may open it --------------------------------------------------------------------------------


def refused(user, path, headers=ORIGIN):
    async def go():
        comm = WebsocketCommunicator(application, path, headers=headers)
        comm.scope["user"] = user
        connected, code = await comm.connect(timeout=5)
        await comm.disconnect()
        return None if connected else code

    return asyncio.run(go())


def test_an_outsider_and_anonymous_users_are_refused(owner_ve, outsider):
    assert refused(outsider, f"/ws/ves/{owner_ve.ctid}/console/") == protocol.CLOSE_NOT_FOUND
    assert refused(outsider, "/ws/ves/424242/console/") == protocol.CLOSE_NOT_FOUND
    assert refused(AnonymousUser(), f"/ws/ves/{owner_ve.ctid}/console/") == protocol.CLOSE_UNAUTHENTICATED
    assert not AuditEntry.objects.filter(action__startswith="console").exists()


@pytest.mark.parametrize("headers", [
    [(b"origin", b"http://evil.example"), (b"host", b"testserver")],
    [(b"origin", b"http://testserver.evil.example"), (b"host", b"testserver")],
    [(b"origin", b"null"), (b"host", b"testserver")],
    [(b"host", b"testserver")],  # no Origin at all
], ids=["other-site", "lookalike", "null", "none"])
def test_a_cross_origin_request_is_refused_even_from_the_owner(owner_ve, owner, headers):
    for path in (f"/ws/ves/{owner_ve.ctid}/console/", f"/ws/ves/{owner_ve.ctid}/"):
        assert refused(owner, path, headers) == protocol.CLOSE_CROSS_ORIGIN, path


def test_the_panels_own_origin_and_trusted_origins_are_let_in(owner_ve, owner, settings):
    assert refused(owner, f"/ws/ves/{owner_ve.ctid}/",
                   [(b"origin", b"https://testserver:443"), (b"host", b"testserver")]) is None
    settings.CSRF_TRUSTED_ORIGINS = ["https://panel.example"]
    assert refused(owner, f"/ws/ves/{owner_ve.ctid}/",
                   [(b"origin", b"https://panel.example"), (b"host", b"10.0.0.5:8000")]) is None


# --- in a browser -----------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.browser
def test_it_types_in_the_browser_terminal_and_reads_the_answer(live_panel, browser, console_ve, owner, admin,
                                                                panel_state):
    from playwright.sync_api import expect

    from tests.panel.test_browser import log_in

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    log_in(page, live_panel, owner)
    page.goto(f"{live_panel}/ves/{console_ve.ctid}/")
    page.get_by_role("link", name="Console").click()
    expect(page.locator("#console-status")).to_have_text("connected", timeout=15_000)
    expect(page.locator("#console-who")).to_have_text("new session")
    console_sockets = [u for u in sockets if "/console/" in u]
    assert len(console_sockets) == 1 and "?rows=" in console_sockets[0], sockets  # one, at the fitted size
    rows = page.locator("#terminal .xterm-rows")
    expect(rows).to_contain_text("#", timeout=10_000)
    page.locator("#terminal").click()
    page.keyboard.type("echo BROWSER-$((6*7)); stty size")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("BROWSER-42", timeout=10_000)
    # The terminal was fitted to the window: stty agrees with xterm's own size.
    size = page.evaluate("() => [document.getElementById('console').console.term.rows, "
                         "document.getElementById('console').console.term.cols]")
    expect(rows).to_contain_text(f"{size[0]} {size[1]}")
    assert size[1] > 80
    page.screenshot(path=str(panel_state / "browser-console.png"))

    page.reload()  # a new websocket: the same session, its output replayed
    expect(page.locator("#console-status")).to_have_text("connected", timeout=15_000)
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("BROWSER-42", timeout=10_000)

    # An admin watches the same session read-only, then takes over; the owner is told and watches.
    other = browser.new_context().new_page()
    log_in(other, live_panel, admin)
    other.goto(f"{live_panel}/ves/{console_ve.ctid}/console/")
    expect(other.locator("#console-status")).to_have_text("watching read-only", timeout=15_000)
    expect(other.locator("#console-who")).to_contain_text(f"{owner.username} is typing")
    expect(other.locator("#terminal .xterm-rows")).to_contain_text("BROWSER-42")
    other.get_by_role("button", name="Take over").click()
    expect(other.locator("#console-status")).to_have_text("connected")
    expect(page.locator("#console-status")).to_have_text("watching read-only")
    expect(page.locator("#console-who")).to_contain_text(f"{admin.username} took over")
    other.locator("#terminal").click()
    other.keyboard.type("echo ADMIN-$((2*2))")
    other.keyboard.press("Enter")
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("ADMIN-4", timeout=10_000)


@pytest.mark.slow
def test_start_ve_in_the_browser_console_shows_the_boot_messages_then_the_shell(
        live_panel, browser, node_agent, daemon, vz_root, owner, node):
    """The issue's "the console of a VE that is still booting shows its boot messages", end to end."""
    from playwright.sync_api import expect

    from tests.panel.test_browser import log_in
    from vzengine import Engine

    eng = Engine(vz_root, lock_wait=30)
    ctid = next(_ctids)
    eng.create(ctid, "debian-12", hostname=f"boot{ctid}")
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        make_ve(owner, node, ctid, status="stopped", hostname=f"boot{ctid}")
        log_in(page, live_panel, owner)
        page.goto(f"{live_panel}/ves/{ctid}/console/")
        start = page.get_by_role("button", name=f"Start VE {ctid}")
        expect(start).to_be_visible(timeout=15_000)
        start.click()
        rows = page.locator("#terminal .xterm-rows")
        # systemd's boot messages from the VE's console log, followed live or, if the VE had booted by the
        # time the page reconnected, replayed ("has booted; its boot messages:", scrolled away by now)
        expect(rows).to_contain_text("Reached target multi-user.target", timeout=60_000)
        expect(page.locator("#console-status")).to_have_text("connected", timeout=60_000)
        page.locator("#terminal").click()
        page.keyboard.type("hostname")
        page.keyboard.press("Enter")
        expect(rows).to_contain_text(f"boot{ctid}", timeout=10_000)
        assert eng.is_running(ctid)
    finally:
        page.close()
        client.close_ve(node.name, ctid)
        if eng.exists(ctid):
            eng.destroy(ctid)
