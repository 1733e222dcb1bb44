"""Readiness of the service's dependencies, and the fuller picture the admin shows.

``/ready`` answers from :func:`readiness`; the dashboard's overview from
:func:`admin_health`, which adds each adapter's recent activity and the queue's depth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.runtime import Runtime

CHECK_TIMEOUT = 3.0
"""Seconds each dependency check may take before it counts as unavailable."""

FAILURE_WINDOW = timedelta(hours=1)


async def _timed(check: Callable[[], Awaitable[str]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            status = await check()
        error = None
    except Exception as exc:
        status, error = "unavailable", str(exc) or type(exc).__name__
    result: dict[str, Any] = {
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if error:
        result["error"] = error
    return result


async def readiness(runtime: Runtime) -> tuple[str, dict[str, Any]]:
    """The database, Redis and the model, checked concurrently with their durations.

    Returns:
        ``ok``, ``degraded`` (the model's circuit is open) or ``unavailable``, and the checks.
    """

    async def database() -> str:
        await runtime.store.ping()
        return "ok"

    async def redis() -> str:
        if runtime.redis is None:
            return "disabled"
        await runtime.redis.ping()
        return "ok"

    async def llm() -> str:
        return runtime.responder.status()

    names = ("database", "redis", "llm")
    results = await asyncio.gather(_timed(database), _timed(redis), _timed(llm))
    checks = dict(zip(names, results, strict=True))
    if any(c["status"] == "unavailable" for c in checks.values()):
        return "unavailable", checks
    if checks["llm"]["status"] == "circuit_open":
        return "degraded", checks
    return "ok", checks


async def admin_health(
    runtime: Runtime, platforms: Iterable[str], enabled: Iterable[str]
) -> dict[str, Any]:
    """Readiness, plus each adapter's state and the reply queue's depth.

    An adapter is ``disabled`` when not configured, ``degraded`` when turns of its
    platform failed within the last hour, else ``ok``; its newest message is shown too.
    """
    overall, checks = await readiness(runtime)
    on = set(enabled)
    adapters: dict[str, Any] = {}
    try:
        activity = {
            a.platform: a
            for a in await runtime.admin_queries.activity(datetime.now(UTC) - FAILURE_WINDOW)
        }
    except Exception:  # the database check above already says why
        activity = {}
    for platform in platforms:
        seen = activity.get(platform)
        failed = seen.failed if seen else 0
        status = "disabled" if platform not in on else "degraded" if failed else "ok"
        adapters[platform] = {
            "status": status,
            "last_message_at": seen.last_message_at.isoformat()
            if seen and seen.last_message_at
            else None,
            "failed_last_hour": failed,
        }
    try:
        depth: int | None = await runtime.queue.depth()
    except Exception:
        depth = None
    return {"status": overall, "checks": checks, "adapters": adapters, "queue": {"depth": depth}}
