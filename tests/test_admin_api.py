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


async def patch_user(
    client: TestClient[Any, Any], auth: dict[str, str], user_id: int, body: Any
) -> tuple[int, dict[str, Any]]:
    response = await client.patch(f"/api/users/{user_id}", json=body, headers=auth)
    return response.status, await response.json()


async def user_id_of(client: TestClient[Any, Any], auth: dict[str, str], name: str) -> int:
    listed = await (await client.get(f"/api/users?q={name}", headers=auth)).json()
    [user] = listed["items"]
    return int(user["id"])


async def send(client: TestClient[Any, Any], text: str, user: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/webhooks/generic", json=message(text, f"chat-{user}", user), headers=bearer()
    )
    return response.status, await response.json()


async def test_a_ban_takes_effect_on_the_next_message_with_one_notice(
    client: TestClient[Any, Any],
) -> None:
    await talk(client, "hello", "chat-mallory", "mallory")
    auth = await token(client)
    mallory = await user_id_of(client, auth, "mallory")

    status, user = await patch_user(client, auth, mallory, {"banned": True})
    assert (status, user["banned"]) == (200, True)

    first_status, first = await send(client, "let me in", "mallory")
    second_status, second = await send(client, "please", "mallory")
    assert (first_status, first["error"]) == (403, "banned")
    assert (second_status, second["error"]) == (403, "banned")
    listed = await (await client.get("/api/conversations?q=please", headers=auth)).json()
    transcript = await (
        await client.get(f"/api/conversations/{listed['items'][0]['id']}/messages", headers=auth)
    ).json()
    # Both messages are kept for the record, neither is answered by the model, and the
    # user is told once.
    after_ban = transcript["items"][2:]
    assert sorted((m["role"], m["status"]) for m in after_ban) == [
        ("assistant", "banned"),
        ("user", "banned"),
        ("user", "banned"),
    ]
    [notice] = [m for m in after_ban if m["role"] == "assistant"]
    assert "blocked" in notice["text"]
    assert notice["model"] is None

    await patch_user(client, auth, mallory, {"banned": False})
    status, answered = await send(client, "sorry", "mallory")
    assert status == 200
    assert answered["reply"].endswith(": sorry")
    stats = await (await client.get("/api/stats", headers=auth)).json()
    assert stats["banned"] == 2


async def test_a_users_own_rate_limit_applies_from_the_next_message(
    client: TestClient[Any, Any],
) -> None:
    await talk(client, "hello", "chat-vip", "vip")
    auth = await token(client)
    vip = await user_id_of(client, auth, "vip")

    status, user = await patch_user(client, auth, vip, {"rate_limit": " 1/hour ; 5/day "})
    assert (status, user["rate_limit"]) == (200, "1/hour;5/day")
    assert (await send(client, "one", "vip"))[0] == 200
    status, refused = await send(client, "two", "vip")
    assert (status, refused["error"]) == (429, "rate_limited")
    # Other users keep the service's limit.
    assert (await send(client, "one", "someone-else"))[0] == 200

    status, user = await patch_user(client, auth, vip, {"rate_limit": None})
    assert (status, user["rate_limit"]) == (200, None)
    assert (await send(client, "three", "vip"))[0] == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"banned": "yes"}, "banned"),
        ({"rate_limit": "lots"}, "rate_limit"),
        ({"rate_limit": "0/minute"}, "rate_limit"),
        ({"rate_limit": 10}, "rate_limit"),
        ({"name": "Eve"}, "name"),
        ({}, "body"),
        (["banned"], "body"),
    ],
)
async def test_a_bad_user_change_is_refused_naming_the_field(
    client: TestClient[Any, Any], body: Any, field: str
) -> None:
    await talk(client, "hello", "chat-1", "ann")
    auth = await token(client)
    ann = await user_id_of(client, auth, "ann")
    status, error = await patch_user(client, auth, ann, body)
    assert (status, error["field"]) == (400, field)
    listed = await (await client.get("/api/users?q=ann", headers=auth)).json()
    assert (listed["items"][0]["banned"], listed["items"][0]["rate_limit"]) == (False, None)


async def test_changing_an_unknown_user_is_404_and_needs_a_token(
    client: TestClient[Any, Any],
) -> None:
    auth = await token(client)
    assert (await patch_user(client, auth, 999999, {"banned": True}))[0] == 404
    assert (await patch_user(client, auth, "abc", {"banned": True}))[0] == 404  # type: ignore[arg-type]
    assert (await patch_user(client, {}, 1, {"banned": True}))[0] == 401


async def test_bans_and_limits_are_written_to_the_audit_log(
    client: TestClient[Any, Any], database_url: str
) -> None:
    await talk(client, "hello", "chat-1", "ann")
    auth = await token(client)
    ann = await user_id_of(client, auth, "ann")
    await patch_user(client, auth, ann, {"banned": True, "rate_limit": "2/minute"})
    database = open_database(database_url, 1)
    try:
        entries = await SqlAdminStore(database).audit_log()
    finally:
        await database.dispose()
    actions = {(e.event, e.username) for e in entries}
    assert {("user_banned", "ops"), ("user_rate_limit", "ops")} <= actions
    assert any(e.detail and "2/minute" in e.detail and "ann" in e.detail for e in entries)


async def test_health_names_dependencies_adapters_and_the_queue(
    client: TestClient[Any, Any],
) -> None:
    await talk(client, "hello", "chat-1", "ann")
    health = await (await client.get("/api/health", headers=await token(client))).json()
    assert health["status"] == "ok"
    assert health["checks"]["database"]["status"] == "ok"
    assert health["checks"]["llm"]["status"] == "echo"
    assert health["adapters"]["webhook"]["status"] == "ok"
    assert health["adapters"]["webhook"]["last_message_at"] is not None
    assert health["adapters"]["telegram"]["status"] == "disabled"
    assert health["queue"]["depth"] == 0
    assert (await client.get("/api/health")).status == 401


async def test_stats_give_latency_per_day(client: TestClient[Any, Any]) -> None:
    await talk(client, "hello", "chat-1", "ann")
    stats = await (await client.get("/api/stats?days=2", headers=await token(client))).json()
    [today] = stats["latency_per_day"]
    assert today["p50_ms"] <= today["p95_ms"]
    assert stats["latency_p50_ms"] == today["p50_ms"]
