"""Builds the engine and everything it stands on, for the web app and for ``zapa chat``.

This is where concrete classes meet the engine's ports; nothing else picks them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from bot.admin.ports import AdminQueries, AdminStore
from bot.bus import MemoryBus, RedisBus
from bot.engine import Engine, EngineConfig
from bot.errors import DependencyUnavailable
from bot.llm import build_responder
from bot.ports import ConversationStore, RateLimiter, Responder
from bot.queue import MemoryQueue
from bot.ratelimit import build_rate_limiter
from bot.redis_queue import RedisQueue
from bot.worker import Worker
from config import Settings
from storage.admin_queries import SqlAdminQueries
from storage.admin_store import SqlAdminStore
from storage.db import open_database
from storage.migrate import upgrade_head
from storage.repository import SqlConversationStore

logger = structlog.get_logger(__name__)

REDIS_MAX_CONNECTIONS = 100
REDIS_POOL_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Runtime:
    """The engine and its parts, open until the context that made them closes."""

    settings: Settings
    engine: Engine
    store: ConversationStore
    limiter: RateLimiter
    responder: Responder
    queue: MemoryQueue | RedisQueue
    bus: MemoryBus
    redis: aioredis.Redis | None
    admins: AdminStore
    admin_queries: AdminQueries


def create_redis(url: str) -> aioredis.Redis:
    """A Redis client with bounded timeouts, so an outage fails fast instead of hanging.

    The pool blocks (up to its timeout) when every connection is busy rather than failing
    at once, so a burst waits a moment instead of getting 503s.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_POOL_TIMEOUT,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


@asynccontextmanager
async def open_runtime(settings: Settings, *, migrate: bool = False) -> AsyncIterator[Runtime]:
    """Open the database, Redis, the limiter, the model client and the queue; close them after."""
    async with AsyncExitStack() as stack:
        if migrate:
            await asyncio.to_thread(upgrade_head, settings.database_url)
        db = open_database(settings.database_url, settings.database_pool_size)
        stack.push_async_callback(db.dispose)
        store = SqlConversationStore(db)

        redis: aioredis.Redis | None = None
        if settings.redis_url is not None:
            redis = create_redis(settings.redis_url.get_secret_value())
            stack.push_async_callback(redis.aclose)
        limiter = build_rate_limiter(settings, redis)
        stack.push_async_callback(limiter.aclose)

        responder = build_responder(settings)
        stack.push_async_callback(responder.aclose)

        # With Redis, jobs and reply events are shared by every process; without, one
        # process receives and answers.
        queue: MemoryQueue | RedisQueue
        bus: MemoryBus
        if redis is not None:
            queue = RedisQueue(
                redis,
                capacity=settings.worker_concurrency,
                lease_seconds=settings.queue_lease_seconds,
            )
            bus = RedisBus(redis)
        else:
            queue, bus = MemoryQueue(), MemoryBus()
        stack.push_async_callback(bus.aclose)
        stack.push_async_callback(queue.aclose)
        engine = Engine(
            store=store,
            limiter=limiter,
            responder=responder,
            queue=queue,
            config=EngineConfig(
                system_prompt=settings.system_prompt,
                history_max_tokens=settings.history_max_tokens,
            ),
        )
        yield Runtime(
            settings,
            engine,
            store,
            limiter,
            responder,
            queue,
            bus,
            redis,
            SqlAdminStore(db),
            SqlAdminQueries(db),
        )


@asynccontextmanager
async def answering(runtime: Runtime, *, concurrency: int | None = None) -> AsyncIterator[Worker]:
    """Workers answering the runtime's queue, stopped within the shutdown grace on exit.

    Messages left unfinished by the last run are queued first; if the database is down
    now, they wait for the next start rather than keep this one from starting. With the
    shared Redis queue this is repeated every lease period: a job lost with Redis's data
    (a restart without persistence), or never queued because Redis was down right after
    the message was stored, is queued again; a job still queued is left alone.
    """
    settings = runtime.settings
    concurrency = concurrency or settings.worker_concurrency
    shared = isinstance(runtime.queue, RedisQueue)
    if isinstance(runtime.queue, RedisQueue):
        runtime.queue.capacity = concurrency  # take on no more conversations than it runs
    worker = Worker(
        runtime.engine,
        runtime.queue,
        concurrency=concurrency,
        max_attempts=settings.job_max_attempts,
        retry_base=settings.job_retry_seconds,
    )
    worker.start()
    sweeping = asyncio.create_task(
        _recover(runtime, every=settings.queue_lease_seconds if shared else None)
    )
    try:
        yield worker
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        if isinstance(runtime.queue, RedisQueue):
            await runtime.queue.pause()  # other workers take what this one has not started
        await worker.stop(settings.shutdown_grace_seconds)


async def _recover(runtime: Runtime, *, every: float | None) -> None:
    """Queue unfinished messages again now, then every ``every`` seconds if given."""
    while True:
        try:
            await runtime.engine.recover()
        except DependencyUnavailable as exc:
            logger.warning("recovery_failed", error=str(exc))
        except Exception:
            logger.exception("recovery_failed")
        if every is None:
            return
        await asyncio.sleep(every)
