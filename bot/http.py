"""Small helpers shared by the HTTP handlers: JSON responses and the error shape."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialized with orjson."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    error: str,
    detail: str,
    *,
    retry_after: float | None = None,
    **extra: Any,
) -> web.Response:
    """The spec's error body ``{"error", "detail"}``, with ``Retry-After`` when given."""
    headers = None
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return json_response({"error": error, "detail": detail, **extra}, status, headers)
