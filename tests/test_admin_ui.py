"""Serving the dashboard: the committed build, history-mode fallback, caching, security headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.admin.ui import CONTENT_SECURITY_POLICY, STATIC_DIR, add_ui_routes
from tests.harness import running, settings

ASSET = re.compile(r"""(?:src|href)="(/admin/assets/[^"]+)\"""")


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    async with running(settings(database_url=sqlite_url)) as started:
        yield started


async def serve(static_dir: Path) -> TestClient[Any, Any]:
    app = web.Application()
    add_ui_routes(app, static_dir)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_the_committed_build_is_served_with_its_assets(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/admin/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-cache"
    page = await response.text()
    assets = ASSET.findall(page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        loaded = await client.get(asset)
        assert loaded.status == 200, asset
        assert loaded.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert loaded.headers["X-Content-Type-Options"] == "nosniff"
    # Nothing inline: the policy forbids it, so the build must not need it.
    assert "<script>" not in page and "<style" not in page


@pytest.mark.parametrize("path", ["/admin/", "/admin/conversations/12", "/admin/users?q=ann"])
async def test_every_dashboard_path_is_the_app_with_security_headers(
    client: TestClient[Any, Any], path: str
) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert '<div id="app">' in await response.text()
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_admin_api_answers_carry_the_headers_and_are_not_cached(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/api/auth/me")
    assert response.status == 401
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    # Webhooks are not the admin's: no policy for them.
    assert "Content-Security-Policy" not in (await client.get("/health")).headers


async def test_admin_without_a_slash_redirects_and_a_missing_asset_is_a_json_404(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/admin", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (308, "/admin/")
    missing = await client.get("/admin/assets/nothing-here.js")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    escape = await client.get("/admin/assets/..%2F..%2F..%2Fpyproject.toml")
    assert escape.status == 404


async def test_a_missing_build_says_how_to_make_it(tmp_path: Path) -> None:
    client = await serve(tmp_path)
    try:
        response = await client.get("/admin/")
        assert response.status == 503
        assert "npm run build" in (await response.json())["detail"]
    finally:
        await client.close()


async def test_top_level_files_are_served_and_other_paths_fall_back(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<div id="app"></div>')
    (tmp_path / "favicon.svg").write_text("<svg/>")
    client = await serve(tmp_path)
    try:
        icon = await client.get("/admin/favicon.svg")
        assert (icon.status, await icon.text()) == (200, "<svg/>")
        deep = await client.get("/admin/users/favicon.svg")
        assert await deep.text() == '<div id="app"></div>'
    finally:
        await client.close()


def test_the_build_is_part_of_the_package() -> None:
    assert (STATIC_DIR / "index.html").is_file()
    assert any((STATIC_DIR / "assets").glob("*.js"))
