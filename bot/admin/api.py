"""The admin JSON API (SPEC §6) on aiohttp: sign-in, conversations, users, statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from bot.admin.auth import AdminAuth, NotSignedIn, SignInRefused
from bot.admin.openapi import OPENAPI
from bot.admin.ports import Admin, AdminQueries
from bot.errors import DependencyUnavailable
from bot.http import error_response, json_response
from config.settings import parse_rate_limit

AUTH = web.AppKey("admin_auth", AdminAuth)
_ADMIN = web.RequestKey("admin", Admin)
_SESSION = web.RequestKey("admin_session", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    """Mount the admin API; ``app[AUTH]`` must be set before it serves."""
    app.router.add_post("/api/auth/login", _validated(login))
    app.router.add_post("/api/auth/logout", signed_in(logout))
    app.router.add_get("/api/auth/me", signed_in(me))


def signed_in(handler: Handler) -> Handler:
    """Let the request through only with a valid bearer token (401 otherwise)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("sign in first: Authorization: Bearer <token>")
        try:
            admin, session = await request.app[AUTH].authenticate(token.strip())
        except NotSignedIn:
            return _unauthorized("the token is invalid, expired or revoked")
        except DependencyUnavailable as exc:
            return error_response(503, "unavailable", str(exc), retry_after=5)
        request[_ADMIN] = admin
        request[_SESSION] = session
        return await handler(request)

    return guarded


async def login(request: web.Request) -> web.Response:
    """``{"username", "password"}`` → a bearer token."""
    body = await _json_object(request)
    for field in ("username", "password"):
        value = body.get(field)
        if not isinstance(value, str) or not value or len(value) > 1024:
            raise _Invalid(field, f"{field}: a non-empty string is required")
    try:
        grant = await request.app[AUTH].login(body["username"], body["password"], request.remote)
    except SignInRefused as exc:
        return error_response(exc.status, exc.error, exc.detail, retry_after=exc.retry_after)
    return json_response(
        {"access_token": grant.access_token, "token_type": "bearer", "expires_in": grant.expires_in}
    )


async def logout(request: web.Request) -> web.Response:
    """Revoke the session behind the token."""
    await request.app[AUTH].logout(request[_ADMIN], request[_SESSION], request.remote)
    return json_response({"status": "signed_out"})


async def me(request: web.Request) -> web.Response:
    """Who the token belongs to."""
    admin = request[_ADMIN]
    return json_response(
        {
            "id": admin.id,
            "username": admin.username,
            "created_at": admin.created_at.isoformat(),
            "last_login_at": admin.last_login_at.isoformat() if admin.last_login_at else None,
        }
    )


def _unauthorized(detail: str) -> web.Response:
    response = error_response(401, "unauthorized", detail)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


QUERIES = web.AppKey("admin_queries", AdminQueries)
HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
HEALTH: web.AppKey[HealthCheck] = web.AppKey("admin_health")
MAX_LIMIT = 100
DEFAULT_LIMIT = 50


class _Invalid(Exception):
    def __init__(self, field: str, detail: str, error: str = "invalid_request") -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail
        self.error = error


def add_read_routes(app: web.Application) -> None:
    """Mount the conversation, user and statistics routes, and the OpenAPI document."""
    app.router.add_get("/api/conversations", signed_in(conversations))
    app.router.add_get("/api/conversations/{id}/messages", signed_in(conversation_messages))
    app.router.add_get("/api/users", signed_in(users))
    app.router.add_patch("/api/users/{id}", signed_in(update_user))
    app.router.add_get("/api/stats", signed_in(stats))
    app.router.add_get("/api/health", signed_in(health))
    app.router.add_get("/api/openapi.json", openapi_document)


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Invalid(name, f"{name}: an integer is required") from None
    if not low <= value <= high:
        raise _Invalid(name, f"{name}: between {low} and {high}")
    return value


def _text(request: web.Request, name: str, longest: int = 200) -> str | None:
    value = request.query.get(name, "").strip()
    if len(value) > longest:
        raise _Invalid(name, f"{name}: at most {longest} characters")
    return value or None


def _limit(request: web.Request, default: int, most: int) -> int:
    return _int(request, "limit", default, 1, most) or default  # never None: it has a default


def _listing(request: web.Request) -> dict[str, Any]:
    """The filters and page of a listing: ``platform``, ``q``, ``limit``, ``before``."""
    return {
        "platform": _text(request, "platform", 32),
        "q": _text(request, "q"),
        "limit": _limit(request, DEFAULT_LIMIT, MAX_LIMIT),
        "before": _int(request, "cursor", None, 1, 2**62),
    }


def _page(items: list[Any], limit: int, cursor: Callable[[Any], int]) -> dict[str, Any]:
    return {
        "items": [_jsonable(item) for item in items],
        "next_cursor": cursor(items[-1]) if len(items) == limit else None,
    }


def _jsonable(item: Any) -> dict[str, Any]:
    data = dataclasses.asdict(item)
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


def _validated(handler: Handler) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Invalid as exc:
            return error_response(400, exc.error, exc.detail, field=exc.field)
        except DependencyUnavailable as exc:
            return error_response(503, "unavailable", str(exc), retry_after=5)

    return checked


@_validated
async def conversations(request: web.Request) -> web.Response:
    """Conversations, newest activity first; ``q`` searches every message."""
    filters = _listing(request)
    found = await request.app[QUERIES].conversations(**filters)
    return json_response(_page(found, filters["limit"], lambda c: c.last_message_id))


@_validated
async def conversation_messages(request: web.Request) -> web.Response:
    """A conversation's transcript, oldest first."""
    conversation_id = _path_id(request)
    limit = _limit(request, MAX_LIMIT, 500)
    found = None
    if conversation_id is not None:
        found = await request.app[QUERIES].messages(
            conversation_id, limit=limit, after=_int(request, "cursor", None, 0, 2**62)
        )
    if found is None:
        return error_response(404, "not_found", "no such conversation")
    return json_response(_page(found, limit, lambda m: m.id))


@_validated
async def users(request: web.Request) -> web.Response:
    """Users with their message counts, newest first."""
    filters = _listing(request)
    found = await request.app[QUERIES].users(**filters)
    return json_response(_page(found, filters["limit"], lambda u: u.id))


@_validated
async def update_user(request: web.Request) -> web.Response:
    """Ban or unban a user, or set their own rate limit (``null``: the service's)."""
    user_id = _path_id(request)
    changes = _user_changes(await _json_object(request))
    found = None
    if user_id is not None:
        found = await request.app[QUERIES].update_user(
            user_id,
            banned=changes.get("banned"),
            rate_limit=changes.get("rate_limit"),
            set_rate_limit="rate_limit" in changes,
        )
    if found is None:
        return error_response(404, "not_found", "no such user")
    who = f"user {found.id} ({found.platform}:{found.platform_user_id})"
    auth, admin = request.app[AUTH], request[_ADMIN]
    if "banned" in changes:
        event = "user_banned" if changes["banned"] else "user_unbanned"
        await auth.record(admin, event, who, request.remote)
    if "rate_limit" in changes:
        limit = changes["rate_limit"] or "default"
        await auth.record(admin, "user_rate_limit", f"{who}: {limit}", request.remote)
    return json_response(_jsonable(found))


def _path_id(request: web.Request) -> int | None:
    """The ``{id}`` of the path; ``None`` when it is not a number (no such thing: 404)."""
    try:
        return int(request.match_info["id"])
    except ValueError:
        return None


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise _Invalid("body", "the body is not a JSON object", "malformed_json")
    return body


def _user_changes(body: dict[str, Any]) -> dict[str, Any]:
    """``banned`` and ``rate_limit`` from a PATCH body, checked; nothing else is accepted."""
    unknown = sorted(set(body) - {"banned", "rate_limit"})
    if unknown:
        raise _Invalid(unknown[0], f"{unknown[0]}: not a field of a user that can be changed")
    if not body:
        raise _Invalid("body", "give banned, rate_limit or both")
    if "banned" in body and not isinstance(body["banned"], bool):
        raise _Invalid("banned", "banned: true or false")
    if "rate_limit" in body:
        limit = body["rate_limit"]
        if limit is not None and not isinstance(limit, str):
            raise _Invalid("rate_limit", "rate_limit: a string such as 10/minute;100/day, or null")
        body["rate_limit"] = _rate_limit(limit)
    return body


def _rate_limit(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        windows = parse_rate_limit(value)
    except ValueError as exc:
        raise _Invalid("rate_limit", f"rate_limit: {exc}") from None
    if len(value) > 200 or len(windows) > 8:
        raise _Invalid("rate_limit", "rate_limit: at most 8 windows")
    return ";".join(f"{limit}/{period}" for limit, period in windows)


@_validated
async def stats(request: web.Request) -> web.Response:
    """Activity over the last ``days`` days (default 14), today included."""
    days = _int(request, "days", 14, 1, 366) or 14  # never None: it has a default
    until = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    found = await request.app[QUERIES].stats(until - timedelta(days=days), until)
    body = dataclasses.asdict(found)
    body["days"] = days
    return json_response(body)


async def health(request: web.Request) -> web.Response:
    """The dependencies, each adapter's recent activity and the queue, for the overview."""
    return json_response(await request.app[HEALTH]())


async def openapi_document(_: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of the admin API."""
    return json_response(OPENAPI)
