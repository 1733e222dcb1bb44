"""The database schema as SQLAlchemy 2 declarative models.

The same models serve PostgreSQL (asyncpg) and SQLite (aiosqlite); the few things only
one of them has (the full-text index) are marked with ``info={"only_on": dialect}`` and
picked out by :func:`metadata_for`. The migrations, applied in order, create exactly this schema,
and ``tests/test_migrations.py`` holds the two in agreement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-assigns ids to a column typed exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

ROLES = ("user", "assistant")
STATUSES = ("received", "answered", "failed", "rate_limited", "banned")
# Predicates of the partial indexes. Queries must spell them the same way, without
# parameters, for the planners to pick these indexes.
RECEIVED_PREDICATE = "status = 'received'"
UNDELIVERED_PREDICATE = "reply_to_id IS NOT NULL AND delivered_at IS NULL"


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC and given their ``tzinfo`` back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; naive datetimes are refused rather than guessed at."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to the naive values SQLite returns."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so constraint names are stable."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A person on one platform."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("platform", "platform_user_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String)
    name: Mapped[str | None] = mapped_column(Text)
    banned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    rate_limit: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Set when the platform says the user cannot be reached (blocked the bot); cleared
    # when the user writes again.
    unreachable_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When the banned user was told so; cleared when the ban is lifted or set again.
    ban_notified_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Conversation(Base):
    """A chat, a thread or a caller's conversation id on one platform."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "external_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    external_key: Mapped[str] = mapped_column(String)
    # Messages with an id up to this one were before the last /reset and leave the prompt.
    context_since: Mapped[int] = mapped_column(BigInteger, default=0, server_default=sql_text("0"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Message(Base):
    """A user message or an assistant reply; a reply points at its inbound message."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES}", name="role"),
        CheckConstraint(f"status IN {STATUSES}", name="status"),
        # The newest messages of a conversation, the prompt history's query.
        Index(None, "conversation_id", "id"),
        # The admin's statistics and health, which read a range of days or the last hour.
        Index(None, "created_at"),
        # Recovery after a restart: messages not answered yet, and replies not delivered
        # yet. Partial, so each stays as small as its backlog (and an index on the status
        # alone would lure SQLite's planner away from the history index).
        Index(
            "ix_messages_received",
            "id",
            postgresql_where=sql_text(RECEIVED_PREDICATE),
            sqlite_where=sql_text(RECEIVED_PREDICATE),
        ),
        Index(
            "ix_messages_undelivered",
            "reply_to_id",
            postgresql_where=sql_text(UNDELIVERED_PREDICATE),
            sqlite_where=sql_text(UNDELIVERED_PREDICATE),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        Id, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    user_id: Mapped[int | None] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    command: Mapped[str | None] = mapped_column(String(16))
    reply_to_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    platform_message_id: Mapped[str | None] = mapped_column(String)
    route: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str | None] = mapped_column(String)
    model: Mapped[str | None] = mapped_column(String)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


# Full-text search over messages for the admin; PostgreSQL only.
Index(
    "ix_messages_text_fts",
    func.to_tsvector(sql_text("'simple'"), Message.text),
    postgresql_using="gin",
    info={"only_on": "postgresql"},
).ddl_if(dialect="postgresql")


class InboundEvent(Base):
    """A platform delivery id already stored, so a redelivery is recognized."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("platform", "event_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String)
    message_id: Mapped[int] = mapped_column(Id, ForeignKey("messages.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


def metadata_for(dialect_name: str) -> MetaData:
    """The schema as it exists on one database dialect.

    Indexes marked ``info={"only_on": ...}`` for another dialect are left out, so a
    schema comparison on SQLite does not expect PostgreSQL's full-text index.
    """
    foreign = {
        index.name
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.info.get("only_on", dialect_name) != dialect_name
    }
    if not foreign:
        return Base.metadata
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(metadata)
        for index in list(copy.indexes):
            if index.name in foreign:
                copy.indexes.discard(index)
    return metadata


class Admin(Base):
    """An operator account of the admin dashboard."""

    __tablename__ = "admins"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AdminSession(Base):
    """A signed-in admin session; its random id is what access tokens name."""

    __tablename__ = "admin_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    admin_id: Mapped[int] = mapped_column(
        Id, ForeignKey("admins.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AdminAudit(Base):
    """One sign-in event of the admin audit log."""

    __tablename__ = "admin_audit"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(32))
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class AdminLoginFailure(Base):
    """Failed sign-ins of one username in the current counting window, and its lock."""

    __tablename__ = "admin_login_failures"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_failure_at: Mapped[datetime] = mapped_column(UtcDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Secret(Base):
    """A generated secret shared by every process, such as the session signing key."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
