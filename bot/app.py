"""The aiohttp application: webhooks, health, readiness and metrics.

Every resource is opened in a ``cleanup_ctx`` and kept under a typed ``web.AppKey``; the
worker is the last opened and the first stopped, so replies in flight are drained before
the database and the model client close.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adapters import WEBHOOK_ROUTES, Adapter, build_adapters
from bot import metrics
from bot.admin import api as admin_api
from bot.admin.auth import AdminAuth
from bot.admin.lockout import RedisLockout
from bot.admin.ui import add_ui_routes
from bot.errors import DependencyUnavailable
from bot.health import admin_health, readiness
from bot.http import REQUEST_ID, error_response, json_response
from bot.ratelimit import LimitsRateLimiter
from bot.runtime import Runtime, answering, open_runtime
from bot.worker import Worker
from config import Settings

logger = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
ADAPTERS = web.AppKey("adapters", dict[str, Adapter])
WORKER = web.AppKey("worker", Worker)

_STARTED = web.RequestKey("started", float)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOGIN_ATTEMPTS_PER_MINUTE = 5
# New request ids: 32 hex digits, a random half per process and a counter, unique across
# processes and restarts without a uuid4's system call per request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, log it, count webhooks, and turn failures into JSON."""
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.match(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
    request[REQUEST_ID] = request_id
    request[_STARTED] = time.perf_counter()
    # bind and reset rather than bound_contextvars(): its context manager costs as much again.
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await _answer(request, handler)
        name = request.match_info.route.name or ""
        if name.startswith("webhook-"):
            metrics.WEBHOOK_REQUESTS.labels(name.removeprefix("webhook-"), response.status).inc()
        logger.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.perf_counter() - request[_STARTED]) * 1000, 2),
        )
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or the JSON error for what it raised."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        response = error_response(exc.status, _slug(exc.reason), detail or exc.reason)
        for header in ("Allow", "Retry-After"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except DependencyUnavailable as exc:
        # The database or Redis is down or saturated: every route says so the same way.
        logger.warning("request_unavailable", path=request.path, error=str(exc))
        return error_response(503, "unavailable", str(exc), retry_after=5)
    except Exception:
        logger.exception("unhandled_error", path=request.path)
        return error_response(
            500, "internal_error", "an unexpected error occurred", request_id=request[REQUEST_ID]
        )


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Request-ID`` and ``X-Process-Time`` on every response, streamed ones included."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    started = request.get(_STARTED)
    if started is not None:
        response.headers["X-Process-Time"] = f"{time.perf_counter() - started:.6f}"


def _slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


async def health(_: web.Request) -> web.Response:
    """Liveness: the process serves."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the database, Redis and the model, checked concurrently with their durations."""
    overall, checks = await readiness(request.app[RUNTIME])
    return json_response(
        {"status": overall, "checks": checks}, 503 if overall == "unavailable" else 200
    )


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text exposition of the ``zapa_`` metrics."""
    metrics.QUEUE_DEPTH.set(await request.app[RUNTIME].queue.depth())
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def create_app(
    settings: Settings, *, run_worker: bool = True, migrate: bool = False
) -> web.Application:
    """The web application; resources open on startup and close on cleanup."""
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.on_response_prepare.append(_stamp_headers)

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, migrate=migrate) as runtime:
            app[RUNTIME] = runtime
            yield

    async def adapters_ctx(app: web.Application) -> AsyncIterator[None]:
        adapters = build_adapters(settings, app[RUNTIME].engine, app[RUNTIME].bus)
        app[ADAPTERS] = {adapter.platform: adapter for adapter in adapters}
        try:
            for adapter in adapters:
                await adapter.start()
            yield
        finally:
            for adapter in reversed(adapters):
                await adapter.aclose()

    async def admin_ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        # Any one address gets five sign-in attempts a minute, across every web process.
        windows = [(LOGIN_ATTEMPTS_PER_MINUTE, "minute")]
        limiter = (
            LimitsRateLimiter.on_redis(windows, runtime.redis)
            if runtime.redis is not None
            else LimitsRateLimiter.in_memory(windows)
        )
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        lockout = RedisLockout(runtime.redis) if runtime.redis is not None else None
        app[admin_api.AUTH] = AdminAuth(runtime.admins, limiter, secret_key=secret, lockout=lockout)
        app[admin_api.QUERIES] = runtime.admin_queries

        async def health() -> dict[str, Any]:
            enabled = app[ADAPTERS].keys()
            return await admin_health(runtime, WEBHOOK_ROUTES, enabled)

        app[admin_api.HEALTH] = health
        try:
            yield
        finally:
            await limiter.aclose()

    async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
        async with answering(app[RUNTIME]) as worker:
            app[WORKER] = worker
            yield

    app.cleanup_ctx.append(runtime_ctx)
    app.cleanup_ctx.append(adapters_ctx)
    app.cleanup_ctx.append(admin_ctx)
    if run_worker:
        app.cleanup_ctx.append(worker_ctx)

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_view)
    admin_api.add_routes(app)
    admin_api.add_read_routes(app)
    add_ui_routes(app)
    for platform, path in WEBHOOK_ROUTES.items():
        app.router.add_post(path, _webhook_handler(platform), name=f"webhook-{platform}")
    return app


def _webhook_handler(platform: str) -> Handler:
    """Hands the request to the platform's adapter; a disabled adapter's route is a 404."""

    async def handle(request: web.Request) -> web.StreamResponse:
        adapter = request.app[ADAPTERS].get(platform)
        if adapter is None:
            return error_response(
                404, "adapter_disabled", f"the {platform} adapter is not configured"
            )
        return await adapter.handle(request)

    return handle
