"""Shared fixtures: real databases (SQLite and Postgres) and a real Redis for every test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from storage.migrate import upgrade_head
from tests import services


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A Postgres server the suite may create databases on."""
    return services.postgres_url()


@pytest.fixture(scope="session")
def pg_database(pg_server_url: str) -> Iterator[str]:
    """A fresh, migrated Postgres database for this test session, dropped at the end."""
    name = f"zapa_test_{uuid.uuid4().hex[:12]}"
    admin = _asyncpg_dsn(pg_server_url)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server_url).set(drivername="postgresql+asyncpg", database=name)
    database_url = url.render_as_string(hide_password=False)
    upgrade_head(database_url)
    yield database_url
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate_all(database_url: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        if tables:
            names = ", ".join(f'"{row["tablename"]}"' for row in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url(pg_database: str) -> str:
    """The session's Postgres database, emptied for this test."""
    await _truncate_all(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file for this test."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'zapa.db'}"
    upgrade_head(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs twice: on SQLite and on Postgres, both empty and migrated."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    """A Redis server the suite may flush."""
    return services.redis_url()


@pytest.fixture
async def redis_url(redis_server_url: str) -> AsyncIterator[str]:
    """The Redis server, flushed before this test."""
    client = aioredis.from_url(redis_server_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    yield redis_server_url
