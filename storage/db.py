"""Async engines and sessions for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from bot.errors import DependencyUnavailable

logger = structlog.get_logger(__name__)

# Seconds to wait for a connection (to the server, or from a busy pool) before giving up,
# so an unreachable database fails a request instead of hanging it.
CONNECT_TIMEOUT = 10.0
POOL_TIMEOUT = 10.0
# Client-side bound on one statement; the store's statements take milliseconds.
COMMAND_TIMEOUT = 30.0
SQLITE_BUSY_TIMEOUT_MS = 5000

# Errors meaning "the database cannot be reached or cannot take work now", as opposed to
# a bug in a statement. OSError covers refused connections, DNS failures and timeouts.
_UNAVAILABLE = (OSError, OperationalError, InterfaceError, PoolTimeoutError)


def async_url(database_url: str) -> URL:
    """Parse ``database_url`` and pick the async driver: asyncpg or aiosqlite.

    Raises:
        ValueError: the URL is malformed or names a database other than PostgreSQL
            (``postgresql://``, ``postgres://``) or SQLite.
    """
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database {backend!r}: use postgresql:// or sqlite://")


def create_engine(database_url: str, pool_size: int) -> AsyncEngine:
    """Create the application's engine for ``database_url``.

    PostgreSQL gets a pre-pinged pool of ``pool_size`` (plus as many overflow
    connections) with asyncpg's prepared-statement cache. SQLite gets WAL, foreign keys
    and a busy timeout on every connection; its parent directory is created if missing.

    Args:
        database_url: a PostgreSQL or SQLite URL; see :func:`async_url`.
        pool_size: connections kept open (PostgreSQL, and SQLite files).

    Raises:
        ValueError: the URL is malformed or names an unsupported database.
    """
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, pool_size)
        _configure_sqlite(engine, url, migrations=False)
        return engine
    return _create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=POOL_TIMEOUT,
        pool_pre_ping=True,
        connect_args=_asyncpg_args(command_timeout=COMMAND_TIMEOUT),
    )


def create_migration_engine(database_url: str) -> AsyncEngine:
    """An unpooled engine for migrations.

    On SQLite foreign keys stay off here: Alembic's batch mode rebuilds tables by
    dropping them, which with foreign keys on would cascade into the child tables.
    """
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        _make_parent_directory(url)
        engine = _create_async_engine(url, poolclass=NullPool)
        _configure_sqlite(engine, url, migrations=True)
        return engine
    return _create_async_engine(url, poolclass=NullPool, connect_args=_asyncpg_args())


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _asyncpg_args(command_timeout: float | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "timeout": CONNECT_TIMEOUT,
        # JIT compilation only slows down the store's short indexed queries.
        "server_settings": {"application_name": "zapa", "jit": "off"},
    }
    if command_timeout is not None:
        args["command_timeout"] = command_timeout
    return args


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _directory(url: URL) -> Path | None:
    """The directory of a SQLite database file (``None`` in memory or for ``file:`` URIs)."""
    if url.database is None or _is_memory(url) or url.database.startswith("file:"):
        return None
    return Path(url.database).parent


def _make_parent_directory(url: URL) -> None:
    directory = _directory(url)
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # Connecting will fail with the database's own, clearer error.
        logger.warning("sqlite_directory_unavailable", error=str(exc))


def _sqlite_engine(url: URL, pool_size: int) -> AsyncEngine:
    if _is_memory(url):
        # SQLAlchemy keeps one shared connection for an in-memory database.
        return _create_async_engine(url)
    _make_parent_directory(url)
    return _create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=POOL_TIMEOUT
    )


def _configure_sqlite(engine: AsyncEngine, url: URL, *, migrations: bool) -> None:
    """Set the pragmas every SQLite connection needs, and how transactions begin.

    The application's connections let the driver open a ``BEGIN IMMEDIATE`` right before
    the first write of a transaction: the write lock is taken up front, so concurrent
    writers queue on ``busy_timeout`` instead of failing with ``database is locked``
    when a deferred transaction tries to upgrade, and reads (single statements) need no
    BEGIN at all, which saves a thread round trip per call.

    Migration connections issue ``BEGIN IMMEDIATE`` themselves, so DDL is transactional
    too and two processes migrating at once take turns, and keep foreign keys off:
    Alembic's batch mode rebuilds a table by dropping it, which with foreign keys on
    would cascade into its child tables.
    """
    directory = _directory(url)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _check_directory(*_args: Any) -> None:
        # Fail before aiosqlite starts its connection thread: after a failed open that
        # thread can outlive the event loop and die with "Event loop is closed".
        if directory is not None and not directory.is_dir():
            raise FileNotFoundError(f"no directory {directory} for the SQLite database")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None if migrations else "IMMEDIATE"
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'OFF' if migrations else 'ON'}")
        finally:
            cursor.close()

    if migrations:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def as_unavailable(exc: BaseException) -> DependencyUnavailable | None:
    """Translate a connection failure into ``DependencyUnavailable("database", …)``.

    Returns ``None`` for any other error, which the caller re-raises unchanged. The
    message is the driver's first line only: SQLAlchemy's own text would repeat the
    statement's parameters, which carry user messages.
    """
    invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if not isinstance(exc, _UNAVAILABLE) and not invalidated:
        return None
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    detail = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    logger.warning("database_unavailable", error=detail)
    return DependencyUnavailable("database", detail)
