"""``SqlAdminStore``: the admin's :class:`bot.admin.ports.AdminStore` in SQL.

Every write that must not race is one statement: admins and secrets are inserted with
``ON CONFLICT``, and a failed sign-in is counted by a single upsert whose ``CASE``
expressions restart an expired window and set the lock, so concurrent failures from
several processes each count once. Connection failures become
:class:`bot.errors.DependencyUnavailable` (the :class:`~storage.db.Database` translates them).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import ReturningInsert

from bot.admin.ports import Admin, AdminSession, AuditEntry, LoginFailures
from storage import models
from storage.db import Database, execute, fetch_all, fetch_one, fetch_one_or_none
from storage.models import UtcDateTime, utcnow

# The window of LoginFailures.count in login_failures(), which is not told it; the
# product's "five failures within 15 minutes".
FAILURE_WINDOW_SECONDS = 15 * 60.0

_admins = cast(Table, models.Admin.__table__)
_sessions = cast(Table, models.AdminSession.__table__)
_audit = cast(Table, models.AdminAudit.__table__)
_failures = cast(Table, models.AdminLoginFailure.__table__)
_secrets = cast(Table, models.Secret.__table__)


def _time(name: str) -> Any:
    return bindparam(name, type_=UtcDateTime())


# Parameters are named apart from the columns a statement writes: SQLAlchemy would take a
# parameter named like a column for a value to write there too.
_ADMIN_BY_USERNAME = select(_admins).where(_admins.c.username == bindparam("name"))
_ADMIN_BY_ID = select(_admins).where(_admins.c.id == bindparam("admin_id"))
_SET_PASSWORD = (
    update(_admins)
    .where(_admins.c.username == bindparam("name"))
    .values(password_hash=bindparam("new_hash", type_=Text()))
    .returning(*_admins.c)
)
_RECORD_LOGIN = (
    update(_admins)
    .where(_admins.c.id == bindparam("admin_id"))
    .values(
        last_login_at=_time("now"),
        password_hash=func.coalesce(bindparam("new_hash", type_=Text()), _admins.c.password_hash),
    )
)

_INSERT_SESSION = insert(_sessions)
_SESSION = select(_sessions).where(_sessions.c.id == bindparam("session_id"))
_REVOKE_SESSION = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("session_id"), _sessions.c.revoked_at.is_(None))
    .values(revoked_at=_time("now"))
)

_INSERT_AUDIT = insert(_audit)
# Ids grow with insertion, so they order entries even when two share a timestamp.
_AUDIT_LOG = select(_audit).order_by(_audit.c.id.desc()).limit(bindparam("limit", type_=Integer()))

# Rows are tuples, whose ``count`` is a method: the column is read as ``failures``.
_FAILURES = select(
    _failures.c["count"].label("failures"),
    _failures.c.first_failure_at,
    _failures.c.locked_until,
).where(_failures.c.username == bindparam("name"))
_CLEAR_FAILURES = update(_failures).where(_failures.c.username == bindparam("name")).values(count=0)
_SECRET = select(_secrets.c.value).where(_secrets.c.name == bindparam("secret_name"))

_Insert = postgresql.Insert | sqlite.Insert


@dataclasses.dataclass(frozen=True, slots=True)
class _Upserts:
    """The statements whose ``ON CONFLICT`` clause each dialect builds its own way."""

    new_admin: ReturningInsert[Any]
    failure: ReturningInsert[Any]
    secret: Executable


def _upserts(make_insert: Callable[[Table], _Insert]) -> _Upserts:
    new_admin = (
        make_insert(_admins)
        .on_conflict_do_nothing(index_elements=[_admins.c.username])
        .returning(*_admins.c)
    )

    # In DO UPDATE, column references read the row as it was before this failure. A
    # window is restarted when it has expired or was cleared by a successful sign-in.
    stored_count = _failures.c["count"]
    restart = or_(_failures.c.first_failure_at <= _time("window_start"), stored_count == 0)
    count = case((restart, 1), else_=stored_count + 1)
    lock_end = _time("lock_end")
    # Every failure at or past the limit renews the lock, so the count keeps locking
    # while the window lasts; a later lock already set is kept.
    renew = and_(
        count >= bindparam("max_failures", type_=Integer()),
        or_(_failures.c.locked_until.is_(None), _failures.c.locked_until < lock_end),
    )
    fresh = make_insert(_failures).values(
        username=bindparam("name"),
        count=1,
        first_failure_at=_time("now"),
        locked_until=_time("first_lock"),
    )
    failure = fresh.on_conflict_do_update(
        index_elements=[_failures.c.username],
        set_={
            "count": count,
            "first_failure_at": case((restart, _time("now")), else_=_failures.c.first_failure_at),
            "locked_until": case((renew, lock_end), else_=_failures.c.locked_until),
        },
    ).returning(stored_count.label("failures"), _failures.c.locked_until)

    secret = make_insert(_secrets).on_conflict_do_nothing(index_elements=[_secrets.c.name])
    return _Upserts(new_admin=new_admin, failure=failure, secret=secret)


_UPSERTS = {"postgresql": _upserts(postgresql.insert), "sqlite": _upserts(sqlite.insert)}


# Units of work: synchronous functions of a connection, run by storage.db.Database.


def _save_admin(
    connection: Connection, upserts: _Upserts, row: dict[str, Any]
) -> tuple[Admin, bool]:
    # Nothing deletes admins, so a username the insert found taken is there to update.
    created = connection.execute(upserts.new_admin, row).one_or_none()
    if created is not None:
        return _admin(created), True
    parameters = {"name": row["username"], "new_hash": row["password_hash"]}
    return _admin(connection.execute(_SET_PASSWORD, parameters).one()), False


def _secret(connection: Connection, upserts: _Upserts, row: dict[str, Any]) -> str:
    # On PostgreSQL each statement commits on its own, so the select sees whichever
    # insert won, this one or a concurrent caller's.
    connection.execute(upserts.secret, row)
    return str(connection.execute(_SECRET, {"secret_name": row["name"]}).scalar_one())


class SqlAdminStore:
    """Admins, their sessions, the audit log, sign-in failures and secrets in SQL.

    Args:
        database: from :func:`storage.db.open_database`; the caller disposes of it.
        failure_window_seconds: the window :meth:`login_failures` counts in, which
            should equal the ``window_seconds`` given to :meth:`add_login_failure`.
    """

    def __init__(
        self, database: Database, *, failure_window_seconds: float = FAILURE_WINDOW_SECONDS
    ) -> None:
        self._db = database
        self._upserts = _UPSERTS[database.dialect_name]
        self._failure_window = timedelta(seconds=failure_window_seconds)

    async def save_admin(self, username: str, password_hash: str) -> tuple[Admin, bool]:
        """Create the admin, or set a new password for an existing one; ``created``."""
        row = {"username": username, "password_hash": password_hash, "created_at": utcnow()}
        return await self._db.run(_save_admin, self._upserts, row)

    async def admin_by_username(self, username: str) -> Admin | None:
        """The admin with that username (exact match), or ``None``."""
        row = await self._db.run(fetch_one_or_none, _ADMIN_BY_USERNAME, {"name": username})
        return None if row is None else _admin(row)

    async def admin_by_id(self, admin_id: int) -> Admin | None:
        """The admin with that id, or ``None``."""
        row = await self._db.run(fetch_one_or_none, _ADMIN_BY_ID, {"admin_id": admin_id})
        return None if row is None else _admin(row)

    async def record_login(self, admin_id: int, password_hash: str | None) -> None:
        """Set ``last_login_at`` to now, and replace the hash when given (a rehash)."""
        parameters = {"admin_id": admin_id, "now": utcnow(), "new_hash": password_hash}
        await self._db.run(execute, _RECORD_LOGIN, parameters)

    async def create_session(self, admin_id: int, expires_at: datetime) -> AdminSession:
        """A new session with a random 256-bit, URL-safe id."""
        session = AdminSession(
            id=secrets.token_urlsafe(32),
            admin_id=admin_id,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        row = {
            "id": session.id,
            "admin_id": admin_id,
            "created_at": session.created_at,
            "expires_at": expires_at,
        }
        await self._db.run(execute, _INSERT_SESSION, row)
        return session

    async def session(self, session_id: str) -> AdminSession | None:
        """The session, or ``None`` if unknown."""
        row = await self._db.run(fetch_one_or_none, _SESSION, {"session_id": session_id})
        if row is None:
            return None
        return AdminSession(
            id=row.id,
            admin_id=row.admin_id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )

    async def revoke_session(self, session_id: str) -> None:
        """Mark the session revoked now; a session revoked before keeps its first time."""
        parameters = {"session_id": session_id, "now": utcnow()}
        await self._db.run(execute, _REVOKE_SESSION, parameters)

    async def audit(
        self, event: str, username: str, address: str | None, detail: str | None = None
    ) -> None:
        """Append an entry to the audit log."""
        row = {
            "at": utcnow(),
            "event": event,
            "username": username,
            "address": address,
            "detail": detail,
        }
        await self._db.run(execute, _INSERT_AUDIT, row)

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest entries, newest first."""
        rows = await self._db.run(fetch_all, _AUDIT_LOG, {"limit": limit})
        return [
            AuditEntry(
                id=row.id,
                at=row.at,
                event=row.event,
                username=row.username,
                address=row.address,
                detail=row.detail,
            )
            for row in rows
        ]

    async def add_login_failure(
        self, username: str, window_seconds: float, max_failures: int, lock_seconds: float
    ) -> LoginFailures:
        """Count one failure; once ``max_failures`` fall within the window, lock the account.

        A window starts at its first failure and lasts ``window_seconds``; a failure after
        it starts a new one. Each failure from the ``max_failures``-th on locks the account
        for ``lock_seconds`` from now, unless it is locked longer already.
        """
        now = utcnow()
        lock_end = now + timedelta(seconds=lock_seconds)
        parameters = {
            "name": username,
            "now": now,
            "window_start": now - timedelta(seconds=window_seconds),
            "lock_end": lock_end,
            "first_lock": lock_end if max_failures <= 1 else None,
            "max_failures": max_failures,
        }
        row = await self._db.run(fetch_one, self._upserts.failure, parameters)
        return LoginFailures(count=row.failures, locked_until=_future(row.locked_until, now))

    async def login_failures(self, username: str) -> LoginFailures:
        """The failures in the current window (see the constructor), and an active lock."""
        now = utcnow()
        row = await self._db.run(fetch_one_or_none, _FAILURES, {"name": username})
        if row is None:
            return LoginFailures(count=0)
        current = row.first_failure_at > now - self._failure_window
        return LoginFailures(
            count=row.failures if current else 0, locked_until=_future(row.locked_until, now)
        )

    async def clear_login_failures(self, username: str) -> None:
        """Forget the failures after a successful sign-in (a lock stays until it expires)."""
        await self._db.run(execute, _CLEAR_FAILURES, {"name": username})

    async def secret(self, name: str, generate: str) -> str:
        """The stored value of ``name``; ``generate`` is stored first if there is none.

        Concurrent first calls from several processes all get the same value.
        """
        row = {"name": name, "value": generate, "created_at": utcnow()}
        return await self._db.run(_secret, self._upserts, row)


def _admin(row: Any) -> Admin:
    return Admin(
        id=row.id,
        username=row.username,
        password_hash=row.password_hash,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


def _future(moment: datetime | None, now: datetime) -> datetime | None:
    return moment if moment is not None and moment > now else None
