"""The panel's channel layer: channels-redis with fewer Redis round trips per message.

The console relays every keystroke and every piece of output through the layer. channels-redis
spends four Redis round trips on a send (drop expired, count, add, set expiry) and four on a receive
(restore the backup queue, pop, copy to the backup queue, clear it), one after the other; a
receive loop (the console daemon's, or the one a web process shares among all its websockets)
then handles one message per four round trips, and under load the queue behind it grows.

Here:
- send is one transaction doing the same four steps, with the same capacity and expiry rules; it reads
  nothing of the channel but its size (ZCARD), so a node agent may send to a web process's channel with
  write-only access to it (vzpanel/nodes/join.py: nodes must not read what others are sent);
- receive pops in batches: whatever is queued (up to BATCH) in one command, else it blocks for the
  next message. The popped messages are kept by the layer (per event loop), not by the receiving
  coroutine, and the fetch runs in its own task, so a receiver that is cancelled loses nothing:
  the next receive gets them. (channels-redis' backup queue guards the same moment; a process that
  dies loses what it had fetched either way, as it loses its in-memory per-channel buffers.)

Groups, flush and everything else are channels-redis' own.
"""

import asyncio
import collections
import time
import weakref

from channels.exceptions import ChannelFull
from channels_redis import core

BATCH = 100

class RedisChannelLayer(core.RedisChannelLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # event loop → {channel key: (messages fetched and not yet received, the fetch in flight)}
        self._fetched = weakref.WeakKeyDictionary()

    async def send(self, channel, message):
        """Send a message onto a (general or specific) channel; raise ChannelFull at capacity."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        if "!" in channel:  # process-local: the process's channel, with the full name in the message
            message = {**message, "__asgi_channel__": channel}
            key = self.prefix + self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            key = self.prefix + channel
            index = next(self._send_index_generator)
        now = time.time()
        member, capacity = self.serialize(message), self.get_capacity(channel)
        # One round trip, and no command that reads the channel's messages (ZCARD only counts them): a node
        # agent sends to a web process's channel with write-only access (vzpanel/nodes/join.py). A script
        # (EVAL) would need read access to its keys. The message carries random bytes, so ZREM takes back
        # exactly this one when it went over the capacity.
        async with self.connection(index).pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, 0, int(now) - int(self.expiry))
            pipe.zadd(key, {member: now})
            pipe.zcard(key)
            pipe.expire(key, int(self.expiry))
            _, _, size, _ = await pipe.execute()
        if size > capacity:
            await self.connection(index).zrem(key, member)
            raise ChannelFull()

    async def receive_single(self, channel):
        """Return (channel name, message) of the next message on channel, fetching in batches."""
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        key = self.prefix + channel
        per_loop = self._fetched.setdefault(asyncio.get_running_loop(), {})
        entry = per_loop.get(key)
        if entry is None:
            entry = per_loop[key] = [collections.deque(), None]
        queue = entry[0]
        while not queue:
            if entry[1] is None or entry[1].done():
                index = self.consistent_hash(channel) if "!" in channel else next(self._receive_index_generator)
                entry[1] = asyncio.ensure_future(self._fetch(index, key, queue))
            await asyncio.shield(entry[1])
        message = self.deserialize(queue.popleft())
        return message.pop("__asgi_channel__", channel), message

    async def _fetch(self, index, key, queue) -> None:
        connection = self.connection(index)
        items = await connection.zpopmin(key, BATCH)
        if items:
            queue.extend(member for member, _ in items)
            return
        popped = await connection.bzpopmin(key, timeout=self.brpop_timeout)
        if popped is not None:
            queue.append(popped[1])

    async def close_pools(self):
        """Stop this event loop's fetches (what they had fetched is dropped), then close its connections."""
        for _queue, fetch in self._fetched.pop(asyncio.get_running_loop(), {}).values():
            if fetch is not None:
                fetch.cancel()
        await super().close_pools()
