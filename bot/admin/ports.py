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


class Lockout(Protocol):
    """Failed sign-ins per account and the locks they lead to (the database's or Redis')."""

    async def add_login_failure(
        self, username: str, window_seconds: float, max_failures: int, lock_seconds: float
    ) -> LoginFailures:
        """Count one failure; once ``max_failures`` fall within the window, lock the account."""
        ...

    async def login_failures(self, username: str) -> LoginFailures:
        """The current count and lock, without adding a failure."""
        ...

    async def clear_login_failures(self, username: str) -> None:
        """Forget the failures after a successful sign-in (a lock stays until it expires)."""
        ...


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


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A conversation as the admin lists it; ``last_message_id`` is its pagination cursor."""

    id: int
    platform: str
    key: str
    created_at: datetime
    messages: int
    last_message_id: int
    last_text: str | None
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class MessageView:
    """One stored message of a transcript, with what it cost."""

    id: int
    role: str
    text: str
    status: str
    command: str | None
    reply_to_id: int | None
    user_id: int | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UserView:
    """A platform user as the admin lists it."""

    id: int
    platform: str
    platform_user_id: str
    name: str | None
    banned: bool
    rate_limit: str | None
    created_at: datetime
    last_seen_at: datetime
    messages: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Activity over a range of days (UTC dates as ``YYYY-MM-DD``)."""

    messages_per_day: list[dict[str, object]]  # {"day", "platform", "messages"}
    tokens_per_day: list[dict[str, object]]  # {"day", "prompt_tokens", "completion_tokens"}
    latency_per_day: list[dict[str, object]]  # {"day", "p50_ms", "p95_ms"}
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    answered: int
    failed: int
    rate_limited: int
    banned: int


@dataclass(frozen=True, slots=True)
class PlatformActivity:
    """A platform's latest message, and its turns that failed since a moment."""

    platform: str
    last_message_at: datetime | None
    failed: int


class AdminQueries(Protocol):
    """What the admin API reads (and the two user fields it writes)."""

    async def conversations(
        self, *, platform: str | None, q: str | None, limit: int, before: int | None
    ) -> list[ConversationView]:
        """Newest activity first; ``q`` finds a word in any message; ``before`` a cursor."""
        ...

    async def messages(
        self, conversation_id: int, *, limit: int, after: int | None
    ) -> list[MessageView] | None:
        """The transcript, oldest first from after ``after``; ``None`` for an unknown id."""
        ...

    async def users(
        self, *, platform: str | None, q: str | None, limit: int, before: int | None
    ) -> list[UserView]:
        """Newest first (cursor: user id); ``q`` matches part of the name or platform id."""
        ...

    async def update_user(
        self, user_id: int, *, banned: bool | None, rate_limit: str | None, set_rate_limit: bool
    ) -> UserView | None:
        """Set ``banned`` (when not ``None``) and ``rate_limit`` (when ``set_rate_limit``)."""
        ...

    async def stats(self, since: datetime, until: datetime) -> Stats:
        """Activity from ``since`` (inclusive) to ``until`` (exclusive)."""
        ...

    async def activity(self, since: datetime) -> list[PlatformActivity]:
        """Each platform that has conversations: its newest message, failures since ``since``."""
        ...
