"""Console sessions: a real pty into a real VE, with scrollback, resize and several viewers."""

import asyncio
import re

import pytest

from vzengine import InvalidInput
from vzengine.console import ConsoleSession, SessionRegistry, check_size

pytestmark = pytest.mark.root


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


def test_a_session_gives_a_root_shell_that_resizes(engine, tiny_ve):
    async def go():
        s = ConsoleSession(engine.enter_argv(tiny_ve), tiny_ve, rows=30, cols=100)
        await s.start()
        seen = terminal(s)
        try:
            await _until(seen, b"# ")
            s.write(b"id -u; echo MARK-$((6*7))\n")
            await _until(seen, b"MARK-42")
            assert re.search(rb"\n0\r+\nMARK-42\r+\n", seen), seen
            s.write(b"stty size\n")
            await _until(seen, b"30 100")
            s.resize(40, 132)
            s.write(b"stty size\n")
            await _until(seen, b"40 132")
        finally:
            await s.close()
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
