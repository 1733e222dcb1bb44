"""The admin JSON API (SPEC §6) on aiohttp: ``/api/auth/…`` so far."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from bot.admin.auth import AdminAuth, NotSignedIn, SignInRefused
from bot.admin.ports import Admin
from bot.errors import DependencyUnavailable
from bot.http import error_response, json_response

AUTH = web.AppKey("admin_auth", AdminAuth)
_ADMIN = web.RequestKey("admin", Admin)
_SESSION = web.RequestKey("admin_session", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    """Mount the admin API; ``app[AUTH]`` must be set before it serves."""
    app.router.add_post("/api/auth/login", login)
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
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error_response(400, "malformed_json", "the body is not a JSON object")
    if not isinstance(body, dict):
        return error_response(400, "malformed_json", "the body is not a JSON object")
    for field in ("username", "password"):
        value = body.get(field)
        if not isinstance(value, str) or not value or len(value) > 1024:
            return error_response(
                400, "invalid_request", f"{field}: a non-empty string is required", field=field
            )
    try:
        grant = await request.app[AUTH].login(body["username"], body["password"], request.remote)
    except SignInRefused as exc:
        return error_response(exc.status, exc.error, exc.detail, retry_after=exc.retry_after)
    except DependencyUnavailable as exc:
        return error_response(503, "unavailable", str(exc), retry_after=5)
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
