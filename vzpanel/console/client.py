"""Talk to a node's console daemon from synchronous code (jobs, commands, tests)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from . import protocol as p


async def request(node: str, message: dict, timeout: float = 5.0) -> dict | None:
    """Send message to node's console daemon and return its answer, or None if none came in time."""
    layer = get_channel_layer()
    reply = await layer.new_channel()
    await layer.send(p.daemon_channel(node), {**message, "reply": reply})
    try:
        return await asyncio.wait_for(layer.receive(reply), timeout)
    except TimeoutError:
        return None


def _request(node: str, message: dict, timeout: float) -> dict | None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return async_to_sync(request)(node, message, timeout)
    # Called from a thread that runs an event loop already (e.g. Playwright's): ask from another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(async_to_sync(request), node, message, timeout).result()


def ping(node: str, timeout: float = 2.0) -> dict | None:
    """Return the daemon's pong (sessions, viewers), or None if it does not answer."""
    return _request(node, {"type": "console.ping"}, timeout)


def close_ve(node: str, ctid: int, why: str = "", timeout: float = 15.0) -> int | None:
    """End every console session of VE ctid (before a checkpoint); return how many, None if no answer."""
    answer = _request(node, {"type": "console.close_ve", "ctid": int(ctid), "why": why}, timeout)
    return answer["count"] if answer else None
