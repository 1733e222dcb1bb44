"""Admin sign-in over HTTP: tokens, lockouts, per-address limits, audit, revocation."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pwdlib.hashers.bcrypt import BcryptHasher
from redis.asyncio import Redis

from bot import keys
from bot.admin.passwords import hash_password
from storage.admin_store import SqlAdminStore
from storage.db import open_database
from tests.harness import running, settings, zapa

PASSWORD = "a long and unusual passphrase"


async def store_for(database_url: str) -> tuple[SqlAdminStore, Any]:
    database = open_database(database_url, 1)
    return SqlAdminStore(database), database


async def create(
    database_url: str, username: str = "ops", password_hash: str | None = None
) -> None:
    store, database = await store_for(database_url)
    try:
        await store.save_admin(username, password_hash or await hash_password(PASSWORD))
    finally:
        await database.dispose()


async def audit_events(database_url: str) -> list[str]:
    store, database = await store_for(database_url)
    try:
        return [entry.event for entry in reversed(await store.audit_log(100))]
    finally:
        await database.dispose()


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    await create(database_url)
    async with running(settings(database_url=database_url)) as started:
        yield started


async def sign_in(
    base: str, username: str = "ops", password: str = PASSWORD, address: str = "127.0.0.1"
) -> aiohttp.ClientResponse:
    """POST the login from a given loopback address (all of 127/8 reaches the server)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"{base}/api/auth/login", json={"username": username, "password": password}
        ) as response,
    ):
        await response.read()
        return response


def base_of(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_sign_in_gives_a_token_that_names_the_admin(client: TestClient[Any, Any]) -> None:
    response = await client.post("/api/auth/login", json={"username": "ops", "password": PASSWORD})
    assert response.status == 200
    grant = await response.json()
    assert grant["token_type"] == "bearer"
    assert grant["expires_in"] == 3600
    me = await client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {grant['access_token']}"}
    )
    assert me.status == 200
    body = await me.json()
    assert body["username"] == "ops"
    assert body["last_login_at"] is not None


async def test_wrong_password_and_unknown_user_look_and_take_the_same(
    client: TestClient[Any, Any],
) -> None:
    async def timed(username: str, address: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = await sign_in(base_of(client), username, "not the password", address)
        elapsed = time.perf_counter() - started
        assert response.status == 401
        return elapsed, {"status": response.status}

    known = [await timed("ops", f"127.0.1.{n}") for n in range(3)]
    unknown = [await timed("nobody", f"127.0.2.{n}") for n in range(3)]
    wrong = await client.post("/api/auth/login", json={"username": "ops", "password": "nope nope"})
    missing = await client.post("/api/auth/login", json={"username": "x", "password": "nope nope"})
    assert await wrong.json() == await missing.json()
    a = statistics.median(t for t, _ in known)
    b = statistics.median(t for t, _ in unknown)
    assert abs(a - b) < 0.5 * max(a, b)  # both verify a memory-hard hash


async def test_five_failures_lock_the_account_for_an_hour_across_addresses(
    database_url: str, client: TestClient[Any, Any]
) -> None:
    base = base_of(client)
    for n in range(5):  # spread over addresses: the lock is per account, not per address
        assert (
            await sign_in(base, password="wrong password!", address=f"127.0.3.{n}")
        ).status == 401
    locked = await sign_in(base, address="127.0.3.9")  # even the right password
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) > 3500
    events = await audit_events(database_url)
    assert events.count("login_failed") == 5
    assert "locked" in events
    assert events[-1] == "refused_locked"
    # The lock is stored: a restarted service keeps it.
    async with running(settings(database_url=database_url)) as restarted:
        again = await sign_in(base_of(restarted), address="127.0.3.10")
        assert again.status == 429


async def test_with_redis_the_lock_is_kept_in_redis_for_every_process(
    postgres_url: str, redis_url: str
) -> None:
    await create(postgres_url)
    config = settings(database_url=postgres_url, redis_url=redis_url)
    async with running(config) as first, running(config) as second:
        # Failures counted by two processes add up to one lock.
        for n in range(5):
            web = first if n % 2 else second
            response = await sign_in(
                base_of(web), password="wrong password!", address=f"127.0.5.{n}"
            )
            assert response.status == 401
        assert (await sign_in(base_of(first), address="127.0.5.9")).status == 429
    client = Redis.from_url(redis_url)
    try:
        lock = await client.pttl(f"{keys.ADMIN_LOCK}:ops")
    finally:
        await client.aclose()
    assert 3_500_000 < lock <= 3_600_000
    store, database = await store_for(postgres_url)
    try:
        assert (await store.login_failures("ops")).count == 0  # not in the database
    finally:
        await database.dispose()
    async with running(config) as restarted:
        locked = await sign_in(base_of(restarted), address="127.0.5.10")
        assert locked.status == 429
        assert int(locked.headers["Retry-After"]) > 3500


async def test_one_address_gets_five_attempts_a_minute(client: TestClient[Any, Any]) -> None:
    base = base_of(client)
    statuses = [
        (await sign_in(base, f"user{n}", "wrong password!", "127.0.4.1")).status for n in range(6)
    ]
    assert statuses == [401] * 5 + [429]
    assert (await sign_in(base, address="127.0.4.2")).status == 200  # other addresses are fine


async def test_sign_out_revokes_the_token(client: TestClient[Any, Any]) -> None:
    response = await client.post("/api/auth/login", json={"username": "ops", "password": PASSWORD})
    headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
    assert (await client.post("/api/auth/logout", headers=headers)).status == 200
    after = await client.get("/api/auth/me", headers=headers)
    assert after.status == 401
    assert (await after.json())["error"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer not-a-token", "Basic b3BzOnNlY3JldA=="],
    ids=["none", "empty", "garbage", "basic"],
)
async def test_without_a_valid_token_the_api_answers_401(
    client: TestClient[Any, Any], header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = await client.get("/api/auth/me", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"username": "ops"}', b'{"username": 7, "password": "x"}']
)
async def test_malformed_sign_in_is_400(client: TestClient[Any, Any], body: bytes) -> None:
    response = await client.post("/api/auth/login", data=body)
    assert response.status == 400


async def test_a_token_works_on_every_process_sharing_the_database(database_url: str) -> None:
    await create(database_url)
    async with running(settings(database_url=database_url)) as first:
        response = await first.post(
            "/api/auth/login", json={"username": "ops", "password": PASSWORD}
        )
        token = (await response.json())["access_token"]
    async with running(settings(database_url=database_url)) as second:
        me = await second.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status == 200


async def test_bcrypt_hash_verifies_and_is_upgraded_to_argon2id(database_url: str) -> None:
    await create(database_url, password_hash=BcryptHasher().hash(PASSWORD))
    async with running(settings(database_url=database_url)) as client:
        response = await client.post(
            "/api/auth/login", json={"username": "ops", "password": PASSWORD}
        )
        assert response.status == 200
    store, database = await store_for(database_url)
    try:
        admin = await store.admin_by_username("ops")
    finally:
        await database.dispose()
    assert admin is not None and admin.password_hash.startswith("$argon2id$")


def test_admin_create_reads_the_password_and_refuses_weak_ones(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'zapa.db'}"
    weak = zapa("admin", "create", "ops", env={"DATABASE_URL": url}, stdin="password123\n")
    assert weak.returncode == 2
    assert "password refused" in weak.stderr
    made = zapa("admin", "create", "ops", env={"DATABASE_URL": url}, stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "admin ops created"
    again = zapa("admin", "create", "ops", env={"DATABASE_URL": url}, stdin=PASSWORD + "!\n")
    assert again.stdout.strip() == "admin ops has a new password"

    async def check() -> None:
        async with running(settings(database_url=url)) as client:
            old = await client.post(
                "/api/auth/login", json={"username": "ops", "password": PASSWORD}
            )
            new = await client.post(
                "/api/auth/login", json={"username": "ops", "password": PASSWORD + "!"}
            )
            assert (old.status, new.status) == (401, 200)

    asyncio.run(check())
