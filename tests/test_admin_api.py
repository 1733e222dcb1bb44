"""The admin's read API over HTTP: conversations, transcripts, users, stats, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.admin.passwords import hash_password
from storage.admin_store import SqlAdminStore
from storage.db import open_database
from tests.harness import bearer, message, running, settings

PASSWORD = "a long and unusual passphrase"


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    database = open_database(database_url, 1)
    try:
        await SqlAdminStore(database).save_admin("ops", await hash_password(PASSWORD))
    finally:
        await database.dispose()
    async with running(settings(database_url=database_url)) as started:
        yield started


async def token(client: TestClient[Any, Any]) -> dict[str, str]:
    response = await client.post("/api/auth/login", json={"username": "ops", "password": PASSWORD})
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def talk(client: TestClient[Any, Any], text: str, conversation: str, user: str) -> None:
    response = await client.post(
        "/webhooks/generic", json=message(text, conversation, user), headers=bearer()
    )
    assert response.status == 200


async def test_a_conversation_from_a_webhook_is_listed_searchable_and_readable(
    client: TestClient[Any, Any],
) -> None:
    await talk(client, "tell me about penguins", "t-1", "u-1")
    await talk(client, "and about owls", "t-1", "u-1")
    await talk(client, "something else entirely", "t-2", "u-2")
    auth = await token(client)

    listed = await (await client.get("/api/conversations", headers=auth)).json()
    assert [c["key"] for c in listed["items"]] == ["t-2", "t-1"]  # newest activity first
    assert listed["items"][1]["messages"] == 4  # two questions, two answers
    found = await (await client.get("/api/conversations?q=penguins", headers=auth)).json()
    assert [c["key"] for c in found["items"]] == ["t-1"]
    nothing = await (await client.get("/api/conversations?q=walrus", headers=auth)).json()
    assert nothing["items"] == []
    other = await (await client.get("/api/conversations?platform=slack", headers=auth)).json()
    assert other["items"] == []

    page = await (await client.get("/api/conversations?limit=1", headers=auth)).json()
    assert [c["key"] for c in page["items"]] == ["t-2"]
    rest = await (
        await client.get(f"/api/conversations?limit=1&cursor={page['next_cursor']}", headers=auth)
    ).json()
    assert [c["key"] for c in rest["items"]] == ["t-1"]

    conversation_id = found["items"][0]["id"]
    transcript = await (
        await client.get(f"/api/conversations/{conversation_id}/messages", headers=auth)
    ).json()
    texts = [m["text"] for m in transcript["items"]]
    assert texts[0] == "tell me about penguins"
    assert texts[2] == "and about owls"
    assert [m["role"] for m in transcript["items"]] == ["user", "assistant"] * 2
    assert transcript["items"][1]["completion_tokens"] > 0
    assert transcript["items"][0]["status"] == "answered"


async def test_users_and_stats(client: TestClient[Any, Any]) -> None:
    await talk(client, "hello", "t-1", "ann")
    await talk(client, "hello again", "t-1", "ann")
    await talk(client, "hi", "t-9", "bob")
    auth = await token(client)
    listed = await (await client.get("/api/users", headers=auth)).json()
    counts = {u["platform_user_id"]: u["messages"] for u in listed["items"]}
    assert counts == {"ann": 2, "bob": 1}
    bob = await (await client.get("/api/users?q=BO", headers=auth)).json()
    assert [u["platform_user_id"] for u in bob["items"]] == ["bob"]
    stats = await (await client.get("/api/stats?days=7", headers=auth)).json()
    assert stats["answered"] == 3
    assert sum(day["messages"] for day in stats["messages_per_day"]) == 3
    assert stats["days"] == 7


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/conversations?limit=0", 400),
        ("/api/conversations?limit=many", 400),
        ("/api/users?cursor=-3", 400),
        ("/api/stats?days=1000", 400),
        ("/api/conversations/999999/messages", 404),
        ("/api/conversations/abc/messages", 404),
    ],
)
async def test_bad_parameters_and_unknown_ids(
    client: TestClient[Any, Any], path: str, status: int
) -> None:
    response = await client.get(path, headers=await token(client))
    assert response.status == status
    body = await response.json()
    if status == 400:
        assert body["field"] in path


@pytest.mark.parametrize(
    "path", ["/api/conversations", "/api/conversations/1/messages", "/api/users", "/api/stats"]
)
async def test_every_route_needs_a_token(client: TestClient[Any, Any], path: str) -> None:
    assert (await client.get(path)).status == 401


async def test_the_openapi_document_names_exactly_the_routes_served(
    client: TestClient[Any, Any],
) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"
    }
    assert documented == served
    assert document["openapi"].startswith("3.1")
