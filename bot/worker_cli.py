"""``zapa worker`` and ``zapa queue``: reply processing on its own, and the queue's upkeep."""

from __future__ import annotations

import sys

import orjson
import structlog
from redis.exceptions import RedisError

from adapters import build_adapters
from bot.heap import freeze_startup_objects
from bot.redis_queue import QueueStats, RedisQueue
from bot.runtime import answering, create_redis, open_runtime
from config import Settings

logger = structlog.get_logger(__name__)


def run_worker(settings: Settings, concurrency: int | None) -> int:
    """Answer jobs from the shared queue until SIGTERM or SIGINT; 0 after a clean drain."""
    from bot.cli import new_event_loop

    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": max(1, concurrency)})
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_work(settings))
    finally:
        loop.close()


async def _work(settings: Settings) -> int:
    from bot.cli import stop_on_signals

    stop = stop_on_signals()
    async with open_runtime(settings, migrate=settings.is_sqlite) as runtime:
        # The adapters' senders deliver the replies; their webhook routes stay unused here.
        adapters = build_adapters(settings, runtime.engine, runtime.bus)
        try:
            for adapter in adapters:
                await adapter.start()
            freeze_startup_objects()
            async with answering(runtime):
                consumer = runtime.queue.consumer if isinstance(runtime.queue, RedisQueue) else ""
                logger.info(
                    "worker_started",
                    consumer=consumer,
                    concurrency=settings.worker_concurrency,
                    platforms=[adapter.platform for adapter in adapters],
                )
                await stop.wait()
                logger.info("worker_stopping", grace_seconds=settings.shutdown_grace_seconds)
        finally:
            for adapter in reversed(adapters):
                await adapter.aclose()
    logger.info("worker_stopped")
    return 0


async def queue_command(settings: Settings, action: str, *, as_json: bool = False) -> int:
    """``stats`` or ``retry-dead`` against the queue at ``REDIS_URL``."""
    assert settings.redis_url is not None
    redis = create_redis(settings.redis_url.get_secret_value())
    try:
        queue = RedisQueue(redis)
        if action == "stats":
            stats = await queue.stats()
            print(orjson.dumps(stats.as_dict()).decode() if as_json else _lines(stats))
        else:
            count = await queue.retry_dead()
            print(f"requeued {count} dead-lettered job{'s' if count != 1 else ''}")
    except (RedisError, OSError) as exc:
        print(f"zapa: Redis cannot be reached: {exc}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    return 0


def _lines(stats: QueueStats) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    return "\n".join(
        [
            f"jobs queued:             {stats.jobs}",
            f"conversations waiting:   {stats.waiting_conversations}",
            f"conversations in flight: {stats.in_flight_conversations}",
            f"dead letters:            {stats.dead}",
            f"oldest waiting:          {stats.oldest_seconds:.1f} s",
            f"workers known:           {stats.workers}",
            f"queue wait p50 / p95:    {ms(stats.wait_p50_ms)} / {ms(stats.wait_p95_ms)}",
        ]
    )
