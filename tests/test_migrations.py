"""The packaged Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect
from sqlalchemy.engine import Connection, make_url

from bot.errors import DependencyUnavailable
from bot.messages import InboundMessage, MessageStatus
from storage.db import CONNECT_TIMEOUT, create_migration_engine, open_database
from storage.migrate import alembic_config, current_revision, downgrade_base, upgrade_head
from storage.models import metadata_for
from storage.repository import SqlConversationStore

ROOT = Path(__file__).resolve().parents[1]
HEAD = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_current_head()


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_server_url: str
) -> AsyncIterator[str]:
    """An empty, never migrated database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"zapa_migrations_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_dsn(pg_server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield (
        make_url(pg_server_url)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )
    admin = await asyncpg.connect(_dsn(pg_server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _inspect(url: str, check: Any) -> Any:
    engine = create_migration_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(check)
    finally:
        await engine.dispose()


def _differences(connection: Connection, metadata: MetaData | None = None) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    target = metadata if metadata is not None else metadata_for(connection.dialect.name)
    return list(compare_metadata(context, target))


def _check_constraint_names(connection: Connection) -> set[str | None]:
    return {check["name"] for check in inspect(connection).get_check_constraints("messages")}


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrated_schema_matches_the_models(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_head, empty_url)

    assert await asyncio.to_thread(current_revision, empty_url) == HEAD
    assert await _inspect(empty_url, _differences) == []
    # Alembic does not compare check constraints; their names must still match.
    assert await _inspect(empty_url, _check_constraint_names) == {
        "ck_messages_role",
        "ck_messages_status",
    }


async def test_schema_comparison_notices_a_column_the_migration_lacks(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_head, empty_url)

    def with_extra_column(connection: Connection) -> list[Any]:
        metadata = MetaData()
        for table in metadata_for(connection.dialect.name).sorted_tables:
            table.to_metadata(metadata)
        metadata.tables["users"].append_column(Column("nickname", Integer, nullable=True))
        return _differences(connection, metadata)

    differences = await _inspect(empty_url, with_extra_column)
    assert [(kind, column.name) for kind, *_, column in differences] == [("add_column", "nickname")]


async def test_fulltext_index_exists_only_on_postgres(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_head, empty_url)

    def index_names(connection: Connection) -> tuple[str, set[str | None]]:
        names = {index["name"] for index in inspect(connection).get_indexes("messages")}
        return connection.dialect.name, names

    dialect, names = await _inspect(empty_url, index_names)
    assert ("ix_messages_text_fts" in names) == (dialect == "postgresql")
    assert {
        "ix_messages_conversation_id_id",
        "ix_messages_received",
        "ix_messages_undelivered",
    } <= names


async def test_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_head, empty_url)

    await asyncio.to_thread(downgrade_base, empty_url)
    assert await asyncio.to_thread(current_revision, empty_url) is None
    assert await _inspect(empty_url, _tables) <= {"alembic_version"}

    await asyncio.to_thread(upgrade_head, empty_url)
    assert await asyncio.to_thread(current_revision, empty_url) == HEAD
    assert await _inspect(empty_url, _differences) == []
    database = open_database(empty_url, pool_size=1)
    try:
        store = SqlConversationStore(database)
        message = InboundMessage(platform="cli", conversation_key="c", user_id="u", text="hi")
        stored = await store.store_inbound(message, MessageStatus.RECEIVED, dedup_seconds=60)
        assert await store.get_message(stored.id) == stored
    finally:
        await database.dispose()


async def test_upgrading_twice_changes_nothing(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_head, empty_url)
    await asyncio.to_thread(upgrade_head, empty_url)
    assert await asyncio.to_thread(current_revision, empty_url) == HEAD


async def _migrate_in_a_process(url: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from storage.migrate import upgrade_head; upgrade_head(sys.argv[1])",
        url,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_processes_migrating_a_new_database_at_once_take_turns(empty_url: str) -> None:
    codes = await asyncio.gather(*(_migrate_in_a_process(empty_url) for _ in range(3)))

    assert codes == [0, 0, 0]
    assert await asyncio.to_thread(current_revision, empty_url) == HEAD
    assert await _inspect(empty_url, _differences) == []


async def test_threads_migrating_at_once_take_turns(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'zapa.db'}"
    await asyncio.gather(*(asyncio.to_thread(upgrade_head, url) for _ in range(3)))
    assert await asyncio.to_thread(current_revision, url) == HEAD


async def test_urls_without_an_async_driver_are_accepted(empty_url: str) -> None:
    url = make_url(empty_url)
    plain = url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)
    if url.get_backend_name() == "postgresql":
        plain = plain.replace("postgresql://", "postgres://", 1)

    await asyncio.to_thread(upgrade_head, plain)

    assert await asyncio.to_thread(current_revision, empty_url) == HEAD
    database = open_database(plain, pool_size=1)
    try:
        store = SqlConversationStore(database)
        await store.ping()
    finally:
        await database.dispose()


async def test_fresh_database_has_no_revision(empty_url: str) -> None:
    assert await asyncio.to_thread(current_revision, empty_url) is None


def test_migrations_run_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite+aiosqlite:///{tmp_path / 'zapa.db'}"
    upgrade_head(url)
    assert current_revision(url) == HEAD


async def test_upgrade_called_inside_a_running_event_loop_still_completes(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'zapa.db'}"
    # A caller that forgot asyncio.to_thread: no "asyncio.run() cannot be called" crash.
    upgrade_head(url)
    assert current_revision(url) == HEAD


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://user@localhost/zapa", ""],
)
def test_malformed_or_unsupported_url_raises_a_clear_error(url: str) -> None:
    with pytest.raises(ValueError, match="database"):
        upgrade_head(url)
    with pytest.raises(ValueError, match="database"):
        current_revision(url)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_postgres_raises_dependency_unavailable_quickly() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/test"
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable) as caught:
        upgrade_head(url)
    assert caught.value.dependency == "database"
    assert time.monotonic() - started < CONNECT_TIMEOUT
    with pytest.raises(DependencyUnavailable):
        current_revision(url)


def test_sqlite_in_an_impossible_directory_raises_dependency_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DependencyUnavailable):
        upgrade_head(f"sqlite+aiosqlite:///{blocker / 'zapa.db'}")
