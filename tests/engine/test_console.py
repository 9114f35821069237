"""Console sessions: a real pty into a real VE, with scrollback, resize and several viewers."""

import asyncio
import contextlib
import os
import re

import pytest

from vzengine import InvalidInput
from vzengine.console import MAX_PENDING_INPUT, ConsoleSession, SessionRegistry, check_size, session_argv

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tiny_ve(vz_root):
    """One running tiny VE for the whole module: every test makes its own sessions in it."""
    from vzengine import Engine

    eng = Engine(vz_root, lock_wait=30)
    ctid = 7_770_000 + os.getpid() % 1000 * 10
    eng.create(ctid, "tiny", hostname=f"c{ctid}")
    try:
        eng.start(ctid, wait_boot=True)
        yield ctid
    finally:
        eng.destroy(ctid)


async def _until(session_output: bytearray, needle: bytes, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while needle not in session_output:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{needle!r} not seen in {bytes(session_output)[-300:]!r}")
        await asyncio.sleep(0.02)


def terminal(session: ConsoleSession) -> bytearray:
    """Subscribe like a terminal emulator: collect output and answer cursor-position queries."""
    seen = bytearray()

    def on_output(data: bytes) -> None:
        seen.extend(data)
        if b"\x1b[6n" in data:
            session.write(b"\x1b[1;1R")

    seen.extend(session.subscribe(on_output))
    return seen


@contextlib.asynccontextmanager
async def shell(engine, ctid, **kw):
    """A console session on VE ctid at its shell prompt, seen through terminal(); closed at the end."""
    s = ConsoleSession(engine.enter_argv(ctid), ctid, **kw)
    await s.start()
    seen = terminal(s)
    try:
        await _until(seen, b"# ")
        yield s, seen
    finally:
        await s.close()


def test_a_session_gives_a_root_shell_that_resizes(engine, tiny_ve):
    async def go():
        async with shell(engine, tiny_ve, rows=30, cols=100) as (s, seen):
            s.write(b"id -u; echo MARK-$((6*7))\n")
            await _until(seen, b"MARK-42")
            assert re.search(rb"\n0\r+\nMARK-42\r+\n", seen), seen
            s.write(b"stty size\n")
            await _until(seen, b"30 100")
            s.resize(40, 132)
            s.write(b"stty size\n")
            await _until(seen, b"40 132")
        assert not s.alive

    asyncio.run(go())


def test_a_viewer_who_reconnects_gets_the_scrollback_and_the_shell_survives(engine, tiny_ve):
    async def go():
        reg = SessionRegistry()
        s, created = await reg.open(tiny_ve, engine.enter_argv(tiny_ve))
        assert created
        first = terminal(s)
        await _until(first, b"# ")
        s.write(b"echo before-drop\n")
        await _until(first, b"before-drop\r")
        s.subscribers.clear()  # the browser tab went away
        s.write(b"echo while-away\n")
        await asyncio.sleep(0.3)
        again, created = await reg.open(tiny_ve, engine.enter_argv(tiny_ve))
        assert again is s and not created
        second = bytearray(s.subscribe(lambda b: None))
        assert b"before-drop" in second and b"while-away" in second
        await reg.close_all()
        assert not s.alive

    asyncio.run(go())


def test_idle_sessions_are_reaped(engine, tiny_ve):
    async def go():
        reg = SessionRegistry(idle_timeout=0.2)
        s, _ = await reg.open(tiny_ve, engine.enter_argv(tiny_ve))
        await asyncio.sleep(0.5)
        ended = await reg.reap()
        assert ended == [s] and not s.alive and reg.sessions == {}

    asyncio.run(go())


def test_the_session_ends_when_the_shell_exits(engine, tiny_ve):
    async def go():
        s = ConsoleSession(engine.enter_argv(tiny_ve), tiny_ve)
        await s.start()
        seen = terminal(s)
        await _until(seen, b"# ")
        s.write(b"exit 0\n")
        await asyncio.wait_for(s.closed.wait(), 10)
        assert s.returncode == 0

    asyncio.run(go())


@pytest.mark.parametrize(("rows", "cols"), [(0, 80), (24, 0), (99999, 80), ("a", 80), (None, 1), (-1, -1)])
def test_absurd_sizes_are_refused(rows, cols):
    with pytest.raises(InvalidInput, match="terminal size"):
        check_size(rows, cols)


def test_output_is_numbered_and_the_scrollback_keeps_the_newest(engine, tiny_ve):
    async def go():
        async with shell(engine, tiny_ve, scrollback=2000) as (s, seen):
            s.write(b"i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; echo END-$((2*3))\n")
            await _until(seen, b"END-6")
            assert s.total == len(seen) and s.total > 3000
            assert len(s.buffer) == 2000 and s.start_offset == s.total - 2000
            start, data = s.since(0)  # too old: from the oldest byte kept
            assert start == s.start_offset and data == bytes(seen[-2000:])
            start, data = s.since(s.total - 10, limit=4)
            assert start == s.total - 10 and data == bytes(seen[-10:-6])

    asyncio.run(go())


def test_a_paused_session_holds_output_until_resumed(engine, tiny_ve):
    async def go():
        async with shell(engine, tiny_ve) as (s, seen):
            s.pause_reading()
            assert s.paused
            s.write(b"echo HELD-$((40+2))\n")
            await asyncio.sleep(0.5)
            assert b"HELD-42" not in seen
            s.resume_reading()
            await _until(seen, b"HELD-42")

    asyncio.run(go())


def test_input_the_ve_does_not_read_never_blocks_the_loop(engine, tiny_ve):
    async def go():
        async with shell(engine, tiny_ve) as (s, _seen):
            s.write(b"sleep 30\n")  # reads no input: the ptys fill, then our queue
            await asyncio.sleep(0.3)
            chunk = b"x" * 65536
            sent = 0
            t0 = asyncio.get_running_loop().time()
            while s.write(chunk):
                sent += len(chunk)
                await asyncio.sleep(0)
                assert sent < 64 * MAX_PENDING_INPUT, "input was never refused"
            assert asyncio.get_running_loop().time() - t0 < 5
            assert sent >= MAX_PENDING_INPUT - len(chunk)
        assert not s.alive

    asyncio.run(go())


def test_login_mode_shows_the_ves_login_prompt(engine, tiny_ve):
    async def go():
        s = ConsoleSession(session_argv(engine, tiny_ve, "login"), tiny_ve)
        await s.start()
        seen = terminal(s)
        try:
            await _until(seen, b"login: ")
        finally:
            await s.close()

    asyncio.run(go())
    with pytest.raises(InvalidInput, match="console mode"):
        session_argv(engine, tiny_ve, "telnet")


@pytest.mark.slow
def test_login_mode_logs_in_to_a_debian_ve(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "debian-12-sysv", hostname=f"d{ctid}", userpasswd=[("root", "Console-pass-42")])
    engine.start(ctid, wait_boot=True)

    async def go():
        s = ConsoleSession(session_argv(engine, ctid, "login"), ctid)
        await s.start()
        seen = terminal(s)
        try:
            await _until(seen, b"login: ")
            s.write(b"root\r")
            await _until(seen, b"assword")
            s.write(b"Console-pass-42\r")
            await _until(seen, b"# ")
            s.write(b"id -u; echo IN-$((20+1))\r")
            await _until(seen, b"IN-21")
            assert re.search(rb"[\r\n]0\r+\nIN-21", seen), seen
        finally:
            await s.close()

    asyncio.run(go())


# --- a VE that is still booting ------------------------------------------------------------------------


def test_a_session_opened_while_the_ve_boots_shows_that_then_its_shell(engine, new_ctid):
    """The tiny template's boot check is /run/vz-booted: without it the VE counts as booting."""
    from vzengine.console import BootWatch

    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"b{ctid}")
    engine.start(ctid, wait_boot=True)
    assert "lxc.console.path = none" in engine.lxc_config(engine.config(ctid))  # checkpointable: no console
    assert BootWatch.for_ve(engine, ctid) is None  # booted: a plain shell
    assert BootWatch.for_ve(engine, ctid, show_log=True) is None  # and no console log to show
    engine.exec(ctid, "rm /run/vz-booted")
    watch = BootWatch.for_ve(engine, ctid)
    assert watch is not None and watch.booting and watch.log is None

    async def go():
        s = ConsoleSession(engine.enter_argv(ctid), ctid, boot=watch)
        await s.start()
        seen = terminal(s)
        try:
            await _until(seen, f"VE {ctid} is booting\u2026".encode())
            assert s.alive and s.booting and not s.write(b"id\n")  # nothing to type into yet
            s.resize(33, 99)
            await asyncio.sleep(0.6)  # a few boot checks
            assert s.booting and b"# " not in seen
            await asyncio.to_thread(engine.exec, ctid, "touch /run/vz-booted")
            await _until(seen, f"VE {ctid} has booted.".encode())
            await _until(seen, b"# ")
            assert s.boot_result == "booted" and s.booted.is_set() and not s.booting
            s.write(b"stty size; echo UP-$((40+2))\n")
            await _until(seen, b"UP-42")
            assert b"33 99" in seen  # the size set while booting reached the shell
        finally:
            await s.close()

    asyncio.run(go())
    engine.stop(ctid, fast=True)  # (BusyBox init takes seconds to halt cleanly)


def test_a_ve_that_stops_while_booting_ends_the_session_and_closing_one_ends_the_watch(engine, new_ctid):
    from vzengine.console import BootWatch

    ctid = new_ctid()
    engine.create(ctid, "tiny", hostname=f"b{ctid}")
    engine.start(ctid, wait_boot=True)
    engine.exec(ctid, "rm /run/vz-booted")

    async def go():
        s = ConsoleSession(engine.enter_argv(ctid), ctid, boot=BootWatch.for_ve(engine, ctid))
        await s.start()
        seen = terminal(s)
        await _until(seen, b"is booting")
        await asyncio.to_thread(engine.stop, ctid, fast=True)
        await asyncio.wait_for(s.closed.wait(), 10)
        assert s.boot_result == "stopped" and not s.alive and s.pid is None
        assert f"VE {ctid} stopped while booting.".encode() in seen

        await asyncio.to_thread(engine.start, ctid, wait_boot=True)
        await asyncio.to_thread(engine.exec, ctid, "rm /run/vz-booted")
        s = ConsoleSession(engine.enter_argv(ctid), ctid, boot=BootWatch.for_ve(engine, ctid))
        await s.start()
        await asyncio.sleep(0.3)
        await asyncio.wait_for(s.close(), 5)  # ends the wait for the boot; no shell was ever started
        assert not s.alive and s.pid is None and s.boot_result == "closed"

    asyncio.run(go())
    engine.stop(ctid, fast=True)


def test_vzctl_console_explains_why_a_checkpointable_ve_has_none(cli, tiny_ve):
    r = cli("vzctl", "console", str(tiny_ve))
    assert r.returncode == 8 and f"VE {tiny_ve} has no console device" in r.stderr and "vzctl enter" in r.stderr
    r = cli("vzctl", "console", str(tiny_ve), "--log")
    assert r.returncode == 3 and "has no console log" in r.stderr
    assert cli("vzctl", "console", "no-such-ve").returncode == 2


def vzctl_console_in_a_pty(vz_root, ctid) -> tuple[bytes, int]:
    """Attach `vzctl console` to a pseudo-terminal, wait for LXC to connect, detach with Ctrl-a q."""
    import pty
    import select
    import time

    from tests.engine.conftest import BIN

    pid, fd = pty.fork()
    if pid == 0:  # the child: vzctl replaces itself with lxc-console on the pty
        os.execv(str(BIN / "vzctl"), ["vzctl", "--root", str(vz_root), "console", str(ctid)])
    seen, deadline = b"", time.monotonic() + 20
    try:
        while b"Ctrl+a q" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(fd, 4096)
        os.write(fd, b"\x01q")
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return seen, os.waitstatus_to_exitcode(status)
            if select.select([fd], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(fd, 4096)
        raise AssertionError(f"vzctl console did not detach: {seen!r}")
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.slow
def test_a_systemd_ve_shows_its_boot_messages_from_its_console_log(engine, new_ctid, cli, vz_root):
    """debian-12 (systemd, not checkpointable) gets an LXC console whose log the session follows."""
    from vzengine.console import BootWatch

    ctid = new_ctid()
    engine.create(ctid, "debian-12", hostname=f"s{ctid}")
    log = engine.layout.console_log(ctid)
    config = engine.lxc_config(engine.config(ctid))
    assert f"lxc.console.logfile = {log}" in config and "lxc.console.path = none" not in config
    engine.start(ctid, wait_boot=True)
    assert b"Welcome to Debian" in log.read_bytes()
    # No getty on the console: no process in the VE has a terminal (it would look like someone's session).
    assert engine.exec(ctid, "ps -e -o tty= | grep -v '?' | wc -l").stdout.strip() == "0"
    # A unit that holds the boot for 2 s, so that the next boot is still going when the console opens.
    engine.exec(ctid, "printf '[Unit]\\nDescription=Slow boot\\n[Service]\\nType=oneshot\\nExecStart=/bin/sleep 2\\n"
                      "[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/slowboot.service && "
                      "systemctl enable -q slowboot.service")
    engine.stop(ctid)
    assert b"shutdown.target" in log.read_bytes()  # the shutdown is in the log too
    engine.start(ctid)
    rotated = log.with_name(log.name + ".1")
    assert rotated.is_file() and b"Welcome to Debian" in rotated.read_bytes()  # the last run's, kept once

    async def go():
        watch = await asyncio.to_thread(BootWatch.for_ve, engine, ctid)
        assert watch is not None and watch.booting and watch.log == log
        s = ConsoleSession(engine.enter_argv(ctid), ctid, boot=watch)
        await s.start()
        seen = terminal(s)
        try:
            await _until(seen, f"VE {ctid} is booting\u2026".encode())
            await _until(seen, b"Starting slowboot.service", timeout=20)
            assert s.booting and b"[  OK  ] " in seen
            await _until(seen, f"VE {ctid} has booted.".encode(), timeout=30)
            await _until(seen, b"# ")
            assert seen.count(b"Welcome to Debian") == 1  # this boot's log only
            s.write(b"echo SYS-$((3*3))\n")
            await _until(seen, b"SYS-9")
        finally:
            await s.close()
        # Booted: a console asked for the boot messages (after "Start VE") shows the log, then the shell.
        watch = await asyncio.to_thread(BootWatch.for_ve, engine, ctid, True)
        assert watch is not None and not watch.booting
        s = ConsoleSession(engine.enter_argv(ctid), ctid, boot=watch)
        await s.start()
        seen = terminal(s)
        try:
            await _until(seen, b"# ")
            assert f"VE {ctid} has booted; its boot messages:".encode() in seen and b"Finished slowboot" in seen
        finally:
            await s.close()

    asyncio.run(go())
    r = cli("vzctl", "console", str(ctid), "--log")
    assert r.returncode == 0 and "Welcome to Debian" in r.stdout and "Finished slowboot" in r.stdout
    seen, code = vzctl_console_in_a_pty(vz_root, ctid)
    assert code == 0 and b"attached to the console of VE" in seen, seen
    # The closed sessions' shells were reaped by their lxc-attach: no zombie holds up the clean stop.
    assert engine.exec(ctid, "ps -e -o stat= | grep -c Z").stdout.strip() == "0"
    engine.destroy(ctid)
    assert not list(engine.layout.logdir.glob(f"{ctid}.*"))  # the console logs went with the VE
