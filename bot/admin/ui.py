"""Serving the dashboard's build at ``/admin/``, and the headers every admin response gets.

The build (``admin-ui/``'s ``npm run build``) is committed under ``bot/admin/static/``, so
the service needs no Node at run time. Hashed assets never change under their name and are
cached for a year; every other path is the app's ``index.html`` (the router's history
mode), which is revalidated on each visit so a new release is picked up at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from bot.http import error_response

STATIC_DIR: Final = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMMUTABLE: Final = "public, max-age=31536000, immutable"
REVALIDATE: Final = "no-cache"
_ADMIN_PREFIXES: Final = ("/admin", "/api/")


def add_ui_routes(app: web.Application, static_dir: Path = STATIC_DIR) -> None:
    """Mount the dashboard at ``/admin/``; ``/admin`` redirects there."""
    root = static_dir.resolve()

    async def redirect(_: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": "/admin/"})

    async def serve(request: web.Request) -> web.StreamResponse:
        index = root / "index.html"
        if not index.is_file():
            return error_response(
                503,
                "dashboard_not_built",
                "the dashboard is not built: run `npm ci && npm run build` in admin-ui/",
            )
        tail = request.match_info["tail"]
        if tail.startswith("assets/"):
            asset = (root / tail).resolve()
            if not asset.is_relative_to(root / "assets") or not asset.is_file():
                return error_response(404, "not_found", "no such file")
            return web.FileResponse(asset, headers={"Cache-Control": IMMUTABLE})
        if tail and "/" not in tail:
            # A file of the build's top level (the icon); the rest is the app's routes.
            top = (root / tail).resolve()
            if top.parent == root and top.is_file():
                return web.FileResponse(top, headers={"Cache-Control": REVALIDATE})
        return web.FileResponse(index, headers={"Cache-Control": REVALIDATE})

    app.router.add_get("/admin", redirect)
    app.router.add_get("/admin/{tail:.*}", serve)
    app.on_response_prepare.append(_secure)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every response of the dashboard and of its API."""
    if request.path.startswith(_ADMIN_PREFIXES):
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/api/"):
            # Tokens and transcripts stay out of shared and browser caches.
            response.headers.setdefault("Cache-Control", "no-store")
