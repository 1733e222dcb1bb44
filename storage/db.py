"""Database access: PostgreSQL through asyncpg, SQLite through Python's own ``sqlite3``.

The store's work is written once, as units: synchronous functions of a SQLAlchemy
:class:`~sqlalchemy.engine.Connection`, which a :class:`Database` runs. On PostgreSQL a
unit runs on a pooled asyncpg connection, in a greenlet as SQLAlchemy's asyncio extension
runs everything; on SQLite it runs inline, in the event loop's thread, on one ``sqlite3``
connection (see :class:`SqliteDatabase` for why). Migrations have their own unpooled
async engine (:func:`create_migration_engine`).
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection, StaticPool
from sqlalchemy.sql import Executable

# SQLAlchemy's bridge from asyncio into its synchronous core, which AsyncConnection runs
# each of its calls with; exported by sqlalchemy.util.
from sqlalchemy.util import greenlet_spawn

from bot.batching import Coalescer
from bot.errors import DependencyUnavailable
from config.settings import normalize_database_url

logger = structlog.get_logger(__name__)

# Seconds to wait for a connection (to the server, or from a busy pool) before giving up,
# so an unreachable database fails a request instead of hanging it.
CONNECT_TIMEOUT = 10.0
POOL_TIMEOUT = 10.0
# Client-side bound on one statement; the store's statements take milliseconds.
COMMAND_TIMEOUT = 30.0
SQLITE_BUSY_TIMEOUT_MS = 5000

# Errors meaning "the database cannot be reached or cannot take work now", as opposed to
# a bug in a statement. OSError covers refused connections, DNS failures and timeouts;
# sqlite3's own error is what the statements run on the driver (storage.sqlite_hot) raise.
_UNAVAILABLE = (
    OSError,
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    sqlite3.OperationalError,
)
# SQLSTATE classes of a server that cannot take work now: connection exceptions (08),
# insufficient resources such as too many connections (53), operator intervention (57).
_UNAVAILABLE_STATES = frozenset({"08", "53", "57"})
# And one code of its own: the database is not accepting connections (``ALLOW_CONNECTIONS
# false``, as while it is being restored or moved).
_UNAVAILABLE_CODES = frozenset({"55000"})

_T = TypeVar("_T")
_P = ParamSpec("_P")
# A unit of work with its arguments bound.
_Work = Callable[[Connection], Any]


class UnitRefused(Exception):
    """Raised by a unit of :meth:`Database.batched` before it has written anything.

    Only that unit's caller gets it; the units sharing its transaction go on.
    """


# What the units storing an inbound message (storage.sqlite_hot, storage.pg_batch) give back.


class EventTaken(UnitRefused):
    """A recent delivery holds the event id; ``message_id`` is its message, if known."""

    def __init__(self, event_id: str, message_id: int | None = None) -> None:
        super().__init__(event_id)
        self.event_id = event_id
        self.message_id = message_id


class Ids(NamedTuple):
    """What storing a message created or found."""

    message_id: int
    conversation_id: int
    user_id: int


def async_url(database_url: str) -> URL:
    """Parse ``database_url`` and pick the async driver: asyncpg or aiosqlite.

    Raises:
        ValueError: the URL is malformed or names a database other than PostgreSQL
            (``postgresql://``, ``postgres://``) or SQLite.
    """
    return make_url(normalize_database_url(database_url))


class Database(abc.ABC):
    """Runs units of database work, each a function of a SQLAlchemy ``Connection``.

    A unit must not await or block on anything but its statements. Nothing connects
    until the first unit runs; connection failures raise
    :class:`bot.errors.DependencyUnavailable` and the next unit connects afresh.
    """

    #: ``"postgresql"`` or ``"sqlite"``: which SQL the units may use.
    dialect_name: str

    @abc.abstractmethod
    async def run(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work(connection, *args, **kwargs)``; each statement commits on its own.

        On SQLite the unit's statements happen to commit together; on PostgreSQL they
        run in autocommit mode, which spares the ``BEGIN`` and ``COMMIT`` round trips, so
        a write that must be all-or-nothing is one statement here or uses
        :meth:`transaction`.

        Raises:
            DependencyUnavailable: the database cannot be reached or is locked.
        """

    @abc.abstractmethod
    async def transaction(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work(connection, *args, **kwargs)`` in one transaction, all or nothing.

        It commits when ``work`` returns and rolls back when it raises.

        Raises:
            DependencyUnavailable: the database cannot be reached or is locked.
        """

    async def read(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work``, which only reads; as :meth:`run`, but SQLite opens no transaction.

        Raises:
            DependencyUnavailable: the database cannot be reached or is locked.
        """
        return await self.run(work, *args, **kwargs)

    async def batched(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` all or nothing, perhaps in one transaction with other callers' units.

        Each caller gets its own unit's result or exception, as with :meth:`transaction`;
        a unit that raises :class:`UnitRefused` must do so before it writes. Here, one
        transaction per unit; :class:`SqliteDatabase` commits the units that arrive
        together at once.

        Raises:
            DependencyUnavailable: the database cannot be reached or is locked.
        """
        return await self.transaction(work, *args, **kwargs)

    @abc.abstractmethod
    async def dispose(self) -> None:
        """Close every connection; a later unit connects again."""


def open_database(database_url: str, pool_size: int) -> Database:
    """The application's :class:`Database` for ``database_url``; nothing connects yet.

    Args:
        database_url: a PostgreSQL or SQLite URL; the driver part is ignored.
        pool_size: PostgreSQL connections kept open, the most this process uses; SQLite
            always uses one.

    Raises:
        ValueError: the URL is malformed or names an unsupported database.
    """
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        return SqliteDatabase(url)
    return PostgresDatabase(url, pool_size)


class PostgresDatabase(Database):
    """A pool of asyncpg connections in autocommit mode.

    A unit runs whole in one greenlet on the async engine's synchronous face: checkout,
    statements and checkin cost one switch into the greenlet, not one each as with
    ``AsyncConnection``, and no extra task for closing. Autocommit is set once per
    connection, not switched at every checkout, and spares single statements the
    ``BEGIN`` and ``COMMIT`` round trips.

    There is no ``pool_pre_ping``: its round trip per checkout cost about a third of a
    unit's CPU. A connection the server closed (a restart, a failover, an idle timeout) is
    instead noticed by asyncpg and dropped at checkout for free; one that dies unnoticed
    fails its unit with ``DependencyUnavailable``, and SQLAlchemy then recycles the whole
    pool, so the next unit reconnects.
    """

    dialect_name = "postgresql"

    def __init__(self, url: URL, pool_size: int) -> None:
        self._engine = _create_async_engine(
            url.set(drivername="postgresql+asyncpg"),
            pool_size=pool_size,
            # A fixed pool: overflow connections are closed as soon as they are returned,
            # so under load the server spent its time opening and closing them.
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
            isolation_level="AUTOCOMMIT",
            connect_args=_asyncpg_args(command_timeout=COMMAND_TIMEOUT),
        )
        self._sync_engine = self._engine.sync_engine
        self._transactional = self._sync_engine.execution_options(isolation_level="READ COMMITTED")
        event.listen(self._sync_engine, "checkout", _drop_closed_connection)
        event.listen(self._sync_engine, "handle_error", _count_broken_protocol_as_closed)

    async def run(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` in autocommit mode; see :meth:`Database.run`."""

        def unit() -> _T:
            with self._sync_engine.connect() as connection:
                return work(connection, *args, **kwargs)

        with translated():
            return await greenlet_spawn(unit)

    async def transaction(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` between ``BEGIN`` and ``COMMIT``; see :meth:`Database.transaction`."""

        def unit() -> _T:
            with self._transactional.begin() as connection:
                return work(connection, *args, **kwargs)

        with translated():
            return await greenlet_spawn(unit)

    async def dispose(self) -> None:
        """Close the pool's connections."""
        await self._engine.dispose()


def _drop_closed_connection(
    _dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    # Raising DisconnectionError at checkout makes the pool replace the connection.
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the server closed the connection")


def _count_broken_protocol_as_closed(context: ExceptionContext) -> None:
    # The server announces a terminated connection with an error message and then closes
    # the socket; a statement sent between the two fails with asyncpg's
    # InternalClientError, and the connection is as good as closed. Marked as a
    # disconnect, it is invalidated with the rest of the pool, and the unit fails with
    # DependencyUnavailable instead of an unexpected error.
    if isinstance(context.original_exception.__cause__, asyncpg.InternalClientError):
        context.is_disconnect = True


class SqliteDatabase(Database):
    """One ``sqlite3`` connection, used inline in the event loop's thread.

    Each statement takes some tens of microseconds, much less than handing it to a
    driver thread and waking the event loop again (aiosqlite's way, several times per
    statement). A unit runs from start to commit without yielding to the loop, so one
    connection serves every coroutine, no transaction is ever left open across an
    ``await``, and writers in this process never wait for each other.

    The price: the loop is blocked while a unit runs, microseconds normally. Only another
    process holding SQLite's write lock could stretch that up to ``busy_timeout`` (then
    ``DependencyUnavailable``); ``zapa migrate`` run against a live database is the one
    such process. Other code in this process should use this object too: a second
    connection holding the lock across an ``await`` would stall the loop until then.
    """

    dialect_name = "sqlite"

    def __init__(self, url: URL) -> None:
        _make_parent_directory(url)
        # StaticPool: the one connection, made on first use and after a failure.
        self._engine = create_engine(url.set(drivername="sqlite+pysqlite"), poolclass=StaticPool)
        _configure_sqlite(self._engine, migrations=False)
        self._connection: Connection | None = None
        self._batches: Coalescer[_Work, Any] = Coalescer(self._commit_units)

    async def run(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` and commit; see :meth:`Database.run`."""
        with self._connected() as connection, connection.begin():
            return work(connection, *args, **kwargs)

    async def read(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` outside a transaction; see :meth:`Database.read`.

        A read on the driver costs a few microseconds, SQLAlchemy's begin and commit
        around it several times that. A SQLAlchemy statement in ``work`` begins its own
        transaction, which is closed after it.
        """
        with self._connected() as connection:
            try:
                return work(connection, *args, **kwargs)
            finally:
                if connection.in_transaction():
                    connection.rollback()

    async def transaction(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` in one transaction; see :meth:`Database.transaction`.

        The driver opens it with ``BEGIN IMMEDIATE`` right before the first write, so
        statements before that read outside of it.
        """
        return await self.run(work, *args, **kwargs)

    async def batched(
        self, work: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``work`` in the transaction of every unit submitted in this loop iteration.

        A group commit: under load, the requests handled in one turn of the event loop
        each submit their unit, and the units run one after another in a single
        transaction in a following turn, so a commit (the one costly step of an
        SQLite write) serves them all. Alone, a unit waits for no one: it runs in the next
        turn. Every caller still gets its answer only after the commit.
        """

        def unit(connection: Connection) -> _T:
            return work(connection, *args, **kwargs)

        return cast(_T, await self._batches.one(unit))

    async def _commit_units(self, units: list[_Work]) -> list[Any]:
        outcomes: list[Any] = []
        try:
            with self._connected() as connection, connection.begin():
                for unit in units:
                    try:
                        outcomes.append(unit(connection))
                    except UnitRefused as refused:
                        outcomes.append(refused)
        except DependencyUnavailable:
            raise  # every caller gets it
        except Exception as exc:
            if len(units) == 1:
                return [exc]
            # One unit failed and rolled back every unit's work: alone, each gets its own
            # outcome, and only the failing one fails.
            return [self._commit_alone(unit) for unit in units]
        return outcomes

    def _commit_alone(self, unit: _Work) -> Any:
        try:
            with self._connected() as connection, connection.begin():
                return unit(connection)
        except Exception as exc:
            return exc

    async def dispose(self) -> None:
        """Close the connection."""
        self._close()
        self._engine.dispose()

    @contextmanager
    def _connected(self) -> Iterator[Connection]:
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
            yield self._connection
        except Exception as exc:
            unavailable = as_unavailable(exc)
            if unavailable is None:
                raise
            # A locked or broken database: start over with a new connection next time.
            self._close(invalidate=True)
            raise unavailable from exc

    def _close(self, *, invalidate: bool = False) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if invalidate:
                connection.invalidate()
            connection.close()
        except Exception as exc:  # it is being thrown away anyway
            logger.warning("sqlite_close_failed", error=type(exc).__name__)


def create_migration_engine(database_url: str) -> AsyncEngine:
    """An unpooled async engine for migrations (asyncpg or aiosqlite).

    On SQLite foreign keys stay off here: Alembic's batch mode rebuilds tables by
    dropping them, which with foreign keys on would cascade into the child tables.
    """
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        _make_parent_directory(url)
        engine = _create_async_engine(url, poolclass=NullPool)
        _check_directory_before_connecting(engine.sync_engine, url)
        _configure_sqlite(engine.sync_engine, migrations=True)
        return engine
    return _create_async_engine(url, poolclass=NullPool, connect_args=_asyncpg_args())


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


def _check_directory_before_connecting(engine: Engine, url: URL) -> None:
    directory = _directory(url)

    @event.listens_for(engine, "do_connect")
    def _check_directory(*_args: Any) -> None:
        # Fail before aiosqlite starts its connection thread: after a failed open that
        # thread can outlive the event loop and die with "Event loop is closed".
        if directory is not None and not directory.is_dir():
            raise FileNotFoundError(f"no directory {directory} for the SQLite database")


def _configure_sqlite(engine: Engine, *, migrations: bool) -> None:
    """Set the pragmas every SQLite connection needs, and how transactions begin.

    The application's connection lets the driver open a ``BEGIN IMMEDIATE`` right before
    the first write of a unit: the write lock is taken up front, so writers of other
    processes queue on ``busy_timeout`` instead of failing with ``database is locked``
    when a deferred transaction tries to upgrade, and reads need no ``BEGIN`` at all.

    Migration connections issue ``BEGIN IMMEDIATE`` themselves, so DDL is transactional
    too and two processes migrating at once take turns, and keep foreign keys off:
    Alembic's batch mode rebuilds a table by dropping it, which with foreign keys on
    would cascade into its child tables.
    """

    @event.listens_for(engine, "connect")
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

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def as_unavailable(exc: BaseException) -> DependencyUnavailable | None:
    """Translate a connection failure into ``DependencyUnavailable("database", …)``.

    Returns ``None`` for any other error, which the caller re-raises unchanged. The
    message is the driver's first line only: SQLAlchemy's own text would repeat the
    statement's parameters, which carry user messages.
    """
    invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if not isinstance(exc, _UNAVAILABLE) and not invalidated and not _refused(cause):
        return None
    lines = str(cause).strip().splitlines()
    detail = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    logger.warning("database_unavailable", error=detail)
    return DependencyUnavailable("database", detail)


def _refused(error: BaseException) -> bool:
    """Whether the server refused for now: too many connections, shutting down, starting."""
    for candidate in (error, error.__cause__):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str) and (
            state[:2] in _UNAVAILABLE_STATES or state in _UNAVAILABLE_CODES
        ):
            return True
    return False


@contextmanager
def translated() -> Iterator[None]:
    """Turn connection failures into :class:`DependencyUnavailable`."""
    try:
        yield
    except Exception as exc:
        unavailable = as_unavailable(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


# Units of work shared by the stores: one statement, its rows.


def fetch_all(
    connection: Connection, statement: Executable, parameters: dict[str, Any]
) -> list[Any]:
    """Every row of ``statement``."""
    return list(connection.execute(statement, parameters).all())


def fetch_one(connection: Connection, statement: Executable, parameters: dict[str, Any]) -> Any:
    """The one row of ``statement``; an error if there is none or several."""
    return connection.execute(statement, parameters).one()


def fetch_one_or_none(
    connection: Connection, statement: Executable, parameters: dict[str, Any]
) -> Any:
    """The row of ``statement``, or ``None``."""
    return connection.execute(statement, parameters).one_or_none()


def execute(connection: Connection, statement: Executable, parameters: dict[str, Any]) -> None:
    """Run ``statement`` for its effect."""
    connection.execute(statement, parameters)
