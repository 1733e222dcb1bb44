"""Reply events between processes: in memory for one process, Redis pub/sub for several.

A web process holding a synchronous or streaming webhook request listens for its message's
events; the worker that makes the reply publishes them. With one process the events stay in
memory; with separate workers they travel on one Redis channel that every web process
subscribes to, and each hands them to its own listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bot import keys
from bot.ports import ReplyEvent

logger = structlog.get_logger(__name__)

RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)
READ_SECONDS = 0.25


class MemoryBus:
    """Listeners and publishers in one process."""

    local = True

    def __init__(self) -> None:
        self._queues: defaultdict[int, list[asyncio.Queue[ReplyEvent]]] = defaultdict(list)

    @asynccontextmanager
    async def listen(self, message_id: int) -> AsyncIterator[asyncio.Queue[ReplyEvent]]:
        """Receive the events of one message while the context is open."""
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self._queues[message_id].append(queue)
        try:
            yield queue
        finally:
            queues = self._queues[message_id]
            queues.remove(queue)
            if not queues:
                del self._queues[message_id]

    async def publish(self, event: ReplyEvent) -> None:
        """Hand the event to this process's listeners."""
        self.deliver(event)

    def deliver(self, event: ReplyEvent) -> None:
        """Put the event in the queue of each listener of its message."""
        for queue in self._queues.get(event.message_id, ()):
            queue.put_nowait(event)

    async def aclose(self) -> None:
        """Nothing to release."""


class RedisBus(MemoryBus):
    """Events published on one Redis channel and handed to the listeners of this process.

    The subscription starts with the first listener and reconnects after a Redis outage;
    events published meanwhile are lost, which is why :attr:`local` is false and listeners
    also look in the store from time to time.
    """

    local = False

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__()
        self._redis = redis
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = asyncio.Event()
        self._origin = secrets.token_hex(8)

    @asynccontextmanager
    async def listen(self, message_id: int) -> AsyncIterator[asyncio.Queue[ReplyEvent]]:
        """Receive the events of one message; the first listener starts the subscription."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="zapa-reply-bus")
        async with super().listen(message_id) as queue:
            with contextlib.suppress(TimeoutError):
                # The store is asked after this anyway; waiting longer gains nothing.
                async with asyncio.timeout(1.0):
                    await self._subscribed.wait()
            yield queue

    async def publish(self, event: ReplyEvent) -> None:
        """Hand the event to this process's listeners, and publish it to the others.

        Listeners here get it at once, with the stored reply; other processes get it from
        Redis (a lost event is found in the store later) and skip their own.
        """
        self.deliver(event)
        data: dict[str, object] = {"m": event.message_id, "o": self._origin}
        if event.delta is not None:
            data["d"] = event.delta
        if event.done:
            data["done"] = 1
        try:
            await self._redis.publish(keys.REPLY_EVENTS, orjson.dumps(data))
        except RedisError as exc:
            logger.warning("reply_event_not_published", error=str(exc))

    async def _read(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.REPLY_EVENTS)
                self._subscribed.set()
                attempt = 0
                while not self._closing.is_set():
                    # A bounded wait, so closing never has to cancel a blocked read.
                    message = await pubsub.get_message(timeout=READ_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                delay = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
                attempt += 1
                logger.warning("reply_bus_disconnected", error=str(exc), retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, raw: bytes) -> None:
        try:
            data = orjson.loads(raw)
            if data.get("o") == self._origin:
                return  # delivered here when it was published
            event = ReplyEvent(int(data["m"]), data.get("d"), bool(data.get("done")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("reply_event_malformed")
            return
        self.deliver(event)

    async def aclose(self) -> None:
        """Stop the subscription."""
        self._closing.set()
        if self._reader is not None:
            done, _ = await asyncio.wait({self._reader}, timeout=READ_SECONDS + 2)
            if not done:
                self._reader.cancel()
            self._reader = None
