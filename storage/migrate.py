"""Apply and inspect the Alembic migrations shipped inside the ``storage`` package.

The Alembic configuration is built in code, so migrations work from any working
directory and from an installed wheel. The functions are synchronous: from inside an
event loop, call them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from storage.db import async_url, create_migration_engine, translated

logger = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Key of the Alembic config attribute that hands the URL to env.py without going through
# the ini parser (which would choke on a "%" in a password).
URL_ATTRIBUTE = "database_url"

# Alembic keeps the running command in module globals (alembic.context, alembic.op), so
# two commands in one process must not overlap; processes are serialized by env.py.
_ALEMBIC = threading.Lock()

_T = TypeVar("_T")


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for the packaged migrations and ``database_url``.

    Raises:
        ValueError: the URL is malformed or names an unsupported database.
    """
    url = async_url(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes[URL_ATTRIBUTE] = url.render_as_string(hide_password=False)
    return config


def upgrade_head(database_url: str) -> None:
    """Apply every pending migration (``alembic upgrade head``).

    Raises:
        ValueError: the URL is malformed or names an unsupported database.
        DependencyUnavailable: the database cannot be reached.
    """
    config = alembic_config(database_url)
    logger.info("migrating", database=async_url(database_url).render_as_string())
    with translated(), _ALEMBIC:
        command.upgrade(config, "head")


def downgrade_base(database_url: str) -> None:
    """Revert every migration (``alembic downgrade base``), dropping Zapa's tables.

    Raises:
        ValueError: the URL is malformed or names an unsupported database.
        DependencyUnavailable: the database cannot be reached.
    """
    config = alembic_config(database_url)
    with translated(), _ALEMBIC:
        command.downgrade(config, "base")


def current_revision(database_url: str) -> str | None:
    """The database's current migration revision, or ``None`` when it has none.

    Raises:
        ValueError: the URL is malformed or names an unsupported database.
        DependencyUnavailable: the database cannot be reached.
    """
    async_url(database_url)

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async def run() -> str | None:
        engine = create_migration_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    with translated():
        return run_coroutine(run)


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, in any thread.

    ``asyncio.run`` cannot nest: called from a thread that already runs a loop, the
    coroutine gets a private thread (and the caller's loop waits; prefer
    ``asyncio.to_thread`` there).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()
