"""What the admin needs from storage; ``storage/admin_store.py`` implements it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Admin:
    """An operator account."""

    id: int
    username: str
    password_hash: str
    created_at: datetime
    last_login_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AdminSession:
    """A signed-in session; tokens name it, so revoking it ends them."""

    id: str
    admin_id: int
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One sign-in event: ``login``, ``login_failed``, ``locked``, ``logout``, ``created``."""

    id: int
    at: datetime
    event: str
    username: str
    address: str | None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class LoginFailures:
    """Failed sign-ins of one account within the counting window, and any lock."""

    count: int
    locked_until: datetime | None = None


class AdminStore(Protocol):
    """Admins, their sessions, the audit log, sign-in failures and the signing key."""

    async def save_admin(self, username: str, password_hash: str) -> tuple[Admin, bool]:
        """Create the admin, or set a new password for an existing one; ``created``."""
        ...

    async def admin_by_username(self, username: str) -> Admin | None:
        """The admin with that username (exact match), or ``None``."""
        ...

    async def admin_by_id(self, admin_id: int) -> Admin | None:
        """The admin with that id, or ``None``."""
        ...

    async def record_login(self, admin_id: int, password_hash: str | None) -> None:
        """Set ``last_login_at`` to now, and replace the hash when given (a rehash)."""
        ...

    async def create_session(self, admin_id: int, expires_at: datetime) -> AdminSession:
        """A new session with a random id (at least 128 bits, URL-safe)."""
        ...

    async def session(self, session_id: str) -> AdminSession | None:
        """The session, or ``None`` if unknown."""
        ...

    async def revoke_session(self, session_id: str) -> None:
        """Mark the session revoked now (idempotent)."""
        ...

    async def audit(
        self, event: str, username: str, address: str | None, detail: str | None = None
    ) -> None:
        """Append an entry to the audit log."""
        ...

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest entries, newest first."""
        ...

    async def add_login_failure(
        self, username: str, window_seconds: float, max_failures: int, lock_seconds: float
    ) -> LoginFailures:
        """Count one failure; once ``max_failures`` fall within the window, lock the account.

        Failures older than ``window_seconds`` no longer count. The result says how many
        count now and until when the account is locked (if it is).
        """
        ...

    async def login_failures(self, username: str) -> LoginFailures:
        """The current count and lock, without adding a failure."""
        ...

    async def clear_login_failures(self, username: str) -> None:
        """Forget the failures after a successful sign-in (a lock stays until it expires)."""
        ...

    async def secret(self, name: str, generate: str) -> str:
        """The stored value of ``name``; ``generate`` is stored first if there is none.

        Concurrent first calls from several processes all get the same value.
        """
        ...
