"""The Redis queue: jobs shared by any number of web and worker processes, on Redis Streams.

How order is kept across workers. Each conversation with queued jobs has its message ids
in a Redis list (its *lane*) and exactly one entry in the ``ready`` stream. Workers read
that stream through one consumer group, so an entry — a whole conversation — goes to one
worker at a time; while the entry is pending in the group, that worker owns the
conversation and works through its lane in order, one job at a time, and no other worker
can get it. The pending entry is the lease: its owner claims it again every few seconds
(resetting its idle time) for as long as it works, however long a model call takes; a
worker that dies stops doing so, and once the entry has been idle for ``lease_seconds``
another worker claims it (``XAUTOCLAIM``) and goes on with the job at the head of the lane.
Adding a job and finishing one are Lua scripts, so "the lane became non-empty" and "the
lane became empty" add and remove the conversation's single entry atomically.

Partitioning the stream by conversation would keep order too, but it ties conversations to
partitions and partitions to workers, so an uneven spread leaves workers idle while others
queue up, and rebalancing on every worker start or death is a protocol of its own. A lease
per conversation balances conversation by conversation and needs nothing but Redis.

A job is acknowledged only after its reply is stored and delivered; a job run again (after
a crash, or a retry) finds the stored reply and delivered mark, so a reply is generated and
sent once. Jobs that keep failing go to the ``dead`` stream (``zapa queue retry-dead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from bot import keys, metrics
from bot.batching import Coalescer
from bot.errors import DependencyUnavailable
from bot.messages import Command, MessageStatus, StoredMessage
from bot.ports import Job

logger = structlog.get_logger(__name__)

T = TypeVar("T")

# How long one XREADGROUP waits for work. A job arriving ends the wait at once; the bound
# is how soon the reader notices it should stop (cancelling a blocked read is unsafe).
BLOCK_MS = 250
ACTIVE_WITHIN_MS = 10_000
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
WAITS_KEPT = 1000

# Whether the entry id (ARGV) is pending for the consumer (ARGV) in the group (ARGV).
_OWNS = """
local function owns(stream, group, id, consumer)
  if id == '' then return false end
  local pending = redis.call('XPENDING', stream, group, id, id, 1)
  return pending[1] ~= nil and pending[1][2] == consumer
end
"""

# KEYS: jobs, lane, ready, dead-ids. ARGV: message id, job, conversation id.
_ENQUEUE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('RPUSH', KEYS[2], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[3], '*', 'c', ARGV[3])
end
return 1
"""

# KEYS: lane, jobs. The head job of a lane: {message id, job}, or nil.
_HEAD = """
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return false end
return {id, redis.call('HGET', KEYS[2], id)}
"""

# KEYS: jobs, lane, ready, waits. ARGV: message id, entry id, group, consumer, wait ms.
# Removes the finished job; returns the lane's next job, or nil when the conversation is
# released (or was not this consumer's to release any more).
_DONE = (
    _OWNS
    + """
if redis.call('LINDEX', KEYS[2], 0) == ARGV[1] then
  redis.call('LPOP', KEYS[2])
else
  redis.call('LREM', KEYS[2], 1, ARGV[1])
end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[5] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[5])
  redis.call('LTRIM', KEYS[4], 0, 999)
end
if not owns(KEYS[3], ARGV[3], ARGV[2], ARGV[4]) then return false end
local nxt = redis.call('LINDEX', KEYS[2], 0)
if not nxt then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
  return false
end
return {nxt, redis.call('HGET', KEYS[1], nxt)}
"""
)

# KEYS: lane, ready. ARGV: entry id, group, consumer, conversation id.
# Gives the conversation back: a fresh entry at the end of the stream if jobs remain.
_HAND_BACK = (
    _OWNS
    + """
if not owns(KEYS[2], ARGV[2], ARGV[1], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
if redis.call('LLEN', KEYS[1]) > 0 then
  redis.call('XADD', KEYS[2], '*', 'c', ARGV[4])
end
return 1
"""
)

# KEYS: ready. ARGV: group, consumer, entry ids… Renews the entries still this consumer's.
_RENEW = (
    _OWNS
    + """
local kept = {}
for i = 3, #ARGV do
  if owns(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""
)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What ``zapa queue stats`` shows."""

    jobs: int
    waiting_conversations: int
    in_flight_conversations: int
    dead: int
    oldest_seconds: float
    workers: int
    """Consumers that read the queue in the last ten seconds."""
    wait_p50_ms: float | None
    wait_p95_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """The stats as JSON-ready data."""
        return {
            "jobs": self.jobs,
            "waiting_conversations": self.waiting_conversations,
            "in_flight_conversations": self.in_flight_conversations,
            "dead": self.dead,
            "oldest_seconds": round(self.oldest_seconds, 3),
            "workers": self.workers,
            "wait_p50_ms": self.wait_p50_ms,
            "wait_p95_ms": self.wait_p95_ms,
        }


class RedisQueue:
    """The :class:`bot.ports.Queue` on Redis (see the module docstring for the design).

    Web processes only :meth:`put`; the first :meth:`get` starts the reader (claiming up to
    ``capacity`` conversations) and the lease renewal.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        capacity: int = 100,
        lease_seconds: float = 30.0,
        consumer: str | None = None,
    ) -> None:
        self._redis = redis
        self._capacity = capacity
        self._lease = lease_seconds
        self._consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._owned: dict[int, str] = {}  # conversation id → its entry in the ready stream
        self._room = asyncio.Condition()
        self._ready: asyncio.Queue[Job] = asyncio.Queue()
        self._handed_out: dict[int, float] = {}  # message id → queue wait in ms
        self._reader: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        # Loops stop at this rather than by cancellation: redis-py can lose a cancellation
        # that lands during a blocking read and wait on forever.
        self._pausing = asyncio.Event()
        self._closing = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()
        self._group_ready = False
        self._enqueue = redis.register_script(_ENQUEUE)
        # The jobs put in one turn of the event loop go to Redis in one pipeline.
        self._puts: Coalescer[Job, bool] = Coalescer(self._put_many)
        self._head = redis.register_script(_HEAD)
        self._done = redis.register_script(_DONE)
        self._hand_back = redis.register_script(_HAND_BACK)
        self._renew = redis.register_script(_RENEW)

    @property
    def capacity(self) -> int:
        """How many conversations this process takes on at once (its worker concurrency)."""
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = value

    @property
    def consumer(self) -> str:
        """This process's name in the consumer group."""
        return self._consumer

    async def put(self, job: Job) -> bool:
        """Queue the job unless its message is queued (or dead-lettered) already.

        Raises:
            bot.errors.DependencyUnavailable: Redis cannot be reached.
        """
        return await self._puts.one(job)

    async def _put_many(self, jobs: list[Job]) -> list[bool | BaseException]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job in jobs:
                    await self._enqueue(
                        keys=[
                            keys.QUEUE_JOBS,
                            keys.queue_lane(job.conversation_id),
                            keys.QUEUE_READY,
                            keys.QUEUE_DEAD_IDS,
                        ],
                        args=[job.message_id, _encode(job), job.conversation_id],
                        client=pipe,
                    )
                added = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable("redis", str(exc) or type(exc).__name__) from exc
        return [
            DependencyUnavailable("redis", str(one)) if isinstance(one, Exception) else bool(one)
            for one in added
        ]

    async def get(self) -> Job:
        """The next job of a conversation this process owns."""
        if self._reader is None and not self._pausing.is_set():
            self._reader = asyncio.create_task(self._read(), name="zapa-queue-reader")
            self._renewer = asyncio.create_task(self._keep_leases(), name="zapa-queue-leases")
        return await self._ready.get()

    async def ack(self, job: Job) -> None:
        """Remove the job; go on with the conversation's next one, or release it."""
        entry = self._owned.get(job.conversation_id, "")
        wait = self._handed_out.pop(job.message_id, None)
        try:
            following = await _retrying(
                lambda: self._done(
                    keys=[
                        keys.QUEUE_JOBS,
                        keys.queue_lane(job.conversation_id),
                        keys.QUEUE_READY,
                        keys.QUEUE_WAITS,
                    ],
                    args=[
                        job.message_id,
                        entry,
                        keys.QUEUE_GROUP,
                        self._consumer,
                        "" if wait is None else round(wait, 3),
                    ],
                ),
                self._lease,
            )
        except (RedisError, OSError) as exc:
            # The lease runs out and another worker runs the job again; it finds the reply
            # stored and delivered, and only finishes the bookkeeping.
            logger.error("queue_ack_failed", message_id=job.message_id, error=str(exc))
            await self._forget(job.conversation_id)
            return
        if following is None:
            await self._forget(job.conversation_id)
        else:
            self._hand_out(*_decode(following[0], following[1], job.conversation_id))

    async def retry(self, job: Job, delay: float) -> None:
        """Count the attempt, keep the conversation, and run the job again after ``delay``."""
        again = Job(job.message_id, job.conversation_id, job.request_id, job.attempt + 1)
        with contextlib.suppress(RedisError, OSError):
            # Without the count a job that kills workers would never reach the dead letters.
            await self._redis.hset(keys.QUEUE_JOBS, str(job.message_id), _encode(again))
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def release() -> None:
            self._timers.discard(handle)
            if job.conversation_id in self._owned:
                self._ready.put_nowait(again)

        handle = loop.call_later(delay, release)
        self._timers.add(handle)

    async def bury(self, job: Job, error: str) -> None:
        """Move the job to the dead letters and go on with its conversation."""
        fields = {
            "message_id": job.message_id,
            "conversation_id": job.conversation_id,
            "attempts": job.attempt,
            "error": error[:2000],
        }
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(keys.QUEUE_DEAD, fields)  # type: ignore[arg-type]
                pipe.sadd(keys.QUEUE_DEAD_IDS, str(job.message_id))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.error("dead_letter_failed", message_id=job.message_id, error=str(exc))
        await self.ack(job)

    async def depth(self) -> int:
        """Jobs waiting or in flight, in every process."""
        try:
            return int(await self._redis.hlen(keys.QUEUE_JOBS))
        except (RedisError, OSError):
            return 0

    async def pause(self) -> None:
        """Take on no more conversations (on shutdown, while jobs in flight finish)."""
        self._pausing.set()
        async with self._room:
            self._room.notify_all()
        await _finish(self._reader, BLOCK_MS / 1000 + 2)

    async def aclose(self) -> None:
        """Stop reading and renewing; give owned conversations back for others to take."""
        await self.pause()
        self._closing.set()
        await _finish(self._renewer, 2)
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for conversation_id, entry in list(self._owned.items()):
            try:
                await self._hand_back(
                    keys=[keys.queue_lane(conversation_id), keys.QUEUE_READY],
                    args=[entry, keys.QUEUE_GROUP, self._consumer, conversation_id],
                )
            except (RedisError, OSError) as exc:
                # The lease runs out and another worker claims it.
                logger.warning("queue_hand_back_failed", error=str(exc))
        if self._owned:
            logger.info("queue_handed_back", conversations=len(self._owned))
        self._owned.clear()

    async def stats(self) -> QueueStats:
        """Jobs, conversations waiting and in flight, dead letters, the oldest entry's age."""
        await self._ensure_group()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hlen(keys.QUEUE_JOBS)
            pipe.xinfo_groups(keys.QUEUE_READY)
            pipe.xlen(keys.QUEUE_DEAD)
            pipe.xrange(keys.QUEUE_READY, count=1)
            pipe.lrange(keys.QUEUE_WAITS, 0, WAITS_KEPT - 1)
            pipe.xinfo_consumers(keys.QUEUE_READY, keys.QUEUE_GROUP)
            jobs, groups, dead, oldest, waits, consumers = await pipe.execute()
        group: dict[str, Any] = next(
            (g for g in groups if _text(g.get("name")) == keys.QUEUE_GROUP), {}
        )
        age = 0.0
        if oldest:
            created_ms = int(_text(oldest[0][0]).split("-", 1)[0])
            age = max(0.0, time.time() - created_ms / 1000)
        samples = sorted(float(w) for w in waits)
        return QueueStats(
            jobs=int(jobs),
            waiting_conversations=int(group.get("lag") or 0),
            in_flight_conversations=int(group.get("pending") or 0),
            dead=int(dead),
            oldest_seconds=age,
            # Workers read at least every BLOCK_MS; the others stopped or died.
            workers=sum(1 for c in consumers if int(c.get("idle") or 0) < ACTIVE_WITHIN_MS),
            wait_p50_ms=round(statistics.median(samples), 3) if samples else None,
            wait_p95_ms=round(samples[int(len(samples) * 0.95) - 1], 3) if samples else None,
        )

    async def retry_dead(self) -> int:
        """Queue every dead-lettered job again; how many."""
        entries: list[Any] = await self._redis.xrange(keys.QUEUE_DEAD) or []
        for entry_id, fields in entries:
            message_id = int(fields[b"message_id"])
            await self._redis.srem(keys.QUEUE_DEAD_IDS, str(message_id))
            await self.put(Job(message_id, int(fields[b"conversation_id"])))
            await self._redis.xdel(keys.QUEUE_DEAD, entry_id)
        return len(entries)

    # -- reading and leases --------------------------------------------------------

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(
                keys.QUEUE_READY, keys.QUEUE_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if self._reader is not None:
            # Listed as a worker from the start, not only once it has had a job.
            await self._redis.xgroup_createconsumer(
                keys.QUEUE_READY, keys.QUEUE_GROUP, self._consumer
            )
        self._group_ready = True

    async def _read(self) -> None:
        failures = 0
        reclaimed_at = 0.0
        while not self._pausing.is_set():
            async with self._room:
                await self._room.wait_for(
                    lambda: len(self._owned) < self._capacity or self._pausing.is_set()
                )
            if self._pausing.is_set():
                return
            try:
                await self._ensure_group()
                if time.monotonic() - reclaimed_at >= self._lease / 2:
                    reclaimed_at = time.monotonic()
                    await self._reclaim()
                room = self._capacity - len(self._owned)
                if room <= 0:
                    continue
                streams: Any = await self._redis.xreadgroup(
                    keys.QUEUE_GROUP,
                    self._consumer,
                    {keys.QUEUE_READY: ">"},
                    count=room,
                    block=BLOCK_MS,
                )
                for _, entries in streams or []:
                    for entry_id, fields in entries:
                        await self._own(int(fields[b"c"]), _text(entry_id), reclaimed=False)
                failures = 0
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._group_ready = False  # the stream was deleted (FLUSHDB): make it again
            except (RedisError, OSError) as exc:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                logger.warning("queue_read_failed", error=str(exc), retry_in=delay)
                await _sleep_unless(self._pausing, delay)

    async def _reclaim(self) -> None:
        """Take over conversations whose owner stopped renewing its lease (it died)."""
        room = self._capacity - len(self._owned)
        if room <= 0:
            return
        result: Any = await self._redis.xautoclaim(
            keys.QUEUE_READY,
            keys.QUEUE_GROUP,
            self._consumer,
            min_idle_time=int(self._lease * 1000),
            start_id="0-0",
            count=room,
        )
        for entry_id, fields in result[1]:
            if fields:  # an entry deleted meanwhile has no fields
                conversation_id = int(fields[b"c"])
                logger.warning("conversation_reclaimed", conversation_id=conversation_id)
                await self._own(conversation_id, _text(entry_id), reclaimed=True)

    async def _own(self, conversation_id: int, entry: str, *, reclaimed: bool) -> None:
        self._owned[conversation_id] = entry
        try:
            head = await self._head(keys=[keys.queue_lane(conversation_id), keys.QUEUE_JOBS])
        except (RedisError, OSError):
            # Not renewed from now on: the lease runs out and a worker claims it again.
            await self._forget(conversation_id)
            raise
        if head is None:
            # Nothing left (finished just before its owner died): release the entry.
            await self._hand_back(
                keys=[keys.queue_lane(conversation_id), keys.QUEUE_READY],
                args=[entry, keys.QUEUE_GROUP, self._consumer, conversation_id],
            )
            await self._forget(conversation_id)
            return
        job, enqueued = _decode(head[0], head[1], conversation_id)
        if reclaimed:
            # Its last run may have died half way: count the attempt, and let the engine
            # look in the store rather than trust a copy of the message.
            job = Job(job.message_id, conversation_id, job.request_id, job.attempt + 1)
            await self._redis.hset(keys.QUEUE_JOBS, str(job.message_id), _encode(job))
        self._hand_out(job, enqueued)

    def _hand_out(self, job: Job, enqueued: float | None) -> None:
        """Pass the job to a worker task, recording how long it waited since ``enqueued``."""
        if enqueued is not None:
            wait = max(0.0, time.time() * 1000 - enqueued)
            self._handed_out[job.message_id] = wait
            metrics.QUEUE_WAIT.observe(wait / 1000)
        self._ready.put_nowait(job)

    async def _forget(self, conversation_id: int) -> None:
        self._owned.pop(conversation_id, None)
        async with self._room:
            self._room.notify_all()

    async def _keep_leases(self) -> None:
        while not await _sleep_unless(self._closing, self._lease / 3):
            owned = dict(self._owned)
            if not owned:
                continue
            try:
                kept = await self._renew(
                    keys=[keys.QUEUE_READY],
                    args=[keys.QUEUE_GROUP, self._consumer, *owned.values()],
                )
            except (RedisError, OSError) as exc:
                logger.warning("queue_lease_renewal_failed", error=str(exc))
                continue
            still = {_text(entry) for entry in kept}
            for conversation_id, entry in owned.items():
                if entry not in still and self._owned.get(conversation_id) == entry:
                    # Another worker took it over after this one stalled past the lease.
                    logger.warning("conversation_lease_lost", conversation_id=conversation_id)
                    await self._forget(conversation_id)


async def _retrying(call: Callable[[], Awaitable[T]], within: float) -> T:
    """Run ``call``, retrying on Redis errors with backoff for about ``within`` seconds."""
    deadline = time.monotonic() + within
    failures = 0
    while True:
        try:
            return await call()
        except (RedisError, OSError):
            delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            if time.monotonic() + delay > deadline:
                raise
            failures += 1
            await asyncio.sleep(delay)


async def _sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``event`` is set; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def _finish(task: asyncio.Task[None] | None, within: float) -> None:
    """Wait for a loop told to stop; cancel it only if it does not within ``within`` seconds."""
    if task is None:
        return
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 2)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- jobs as stored in Redis -----------------------------------------------------------


def _encode(job: Job) -> bytes:
    data: dict[str, Any] = {
        "c": job.conversation_id,
        "a": job.attempt,
        "r": job.request_id,
        "t": round(time.time() * 1000, 3),
    }
    if job.message is not None and job.attempt == 1:
        data["m"] = _message_data(job.message)
    return orjson.dumps(data)


def _decode(
    message_id: bytes | str, raw: bytes | None, conversation_id: int
) -> tuple[Job, float | None]:
    """The job stored as ``raw``, and when it was enqueued (epoch ms), if known."""
    data = orjson.loads(raw) if raw else {}
    message = data.get("m")
    job = Job(
        int(message_id),
        int(data.get("c", conversation_id)),
        data.get("r"),
        int(data.get("a", 1)),
        message=_message(message) if message else None,
    )
    enqueued = data.get("t")
    return job, float(enqueued) if enqueued is not None else None


def _message_data(message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "user_id": message.user_id,
        "platform": message.platform,
        "conversation_key": message.conversation_key,
        "platform_user_id": message.platform_user_id,
        "text": message.text,
        "status": message.status.value,
        "created_at": message.created_at.isoformat(),
        "command": message.command.value if message.command else None,
        "platform_message_id": message.platform_message_id,
        "route": dict(message.route),
        "request_id": message.request_id,
    }


def _message(data: dict[str, Any]) -> StoredMessage:
    return StoredMessage(
        id=data["id"],
        conversation_id=data["conversation_id"],
        user_id=data["user_id"],
        platform=data["platform"],
        conversation_key=data["conversation_key"],
        platform_user_id=data["platform_user_id"],
        text=data["text"],
        status=MessageStatus(data["status"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        command=Command(data["command"]) if data["command"] else None,
        platform_message_id=data["platform_message_id"],
        route=data["route"],
        request_id=data["request_id"],
    )
