"""Builds the engine and everything it stands on, for the web app and for ``zapa chat``.

This is where concrete classes meet the engine's ports; nothing else picks them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from bot.engine import Engine, EngineConfig
from bot.errors import DependencyUnavailable
from bot.llm import build_responder
from bot.ports import ConversationStore, RateLimiter, Responder
from bot.queue import MemoryQueue
from bot.ratelimit import build_rate_limiter
from bot.worker import Worker
from config import Settings
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
    queue: MemoryQueue
    redis: aioredis.Redis | None


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

        queue = MemoryQueue()
        stack.callback(queue.close)
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
        yield Runtime(settings, engine, store, limiter, responder, queue, redis)


@asynccontextmanager
async def answering(runtime: Runtime, *, concurrency: int | None = None) -> AsyncIterator[Worker]:
    """Workers answering the runtime's queue, stopped within the shutdown grace on exit.

    Messages left unfinished by the last run are queued first; if the database is down
    now, they wait for the next start rather than keep this one from starting.
    """
    settings = runtime.settings
    worker = Worker(
        runtime.engine, runtime.queue, concurrency=concurrency or settings.worker_concurrency
    )
    worker.start()
    try:
        try:
            await runtime.engine.recover()
        except DependencyUnavailable as exc:
            logger.warning("recovery_failed", error=str(exc))
        yield worker
    finally:
        await worker.stop(settings.shutdown_grace_seconds)
