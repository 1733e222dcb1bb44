"""``SqlConversationStore``: the engine's :class:`bot.ports.ConversationStore` in SQL.

This is the hot path of every turn, so each method is one short transaction (or one
autocommitted read) of a few indexed statements, and every statement is built once, at
import, with bound parameters: SQLAlchemy then reuses its compiled form and the store
spends its time in the database rather than in building SQL. Connection failures become
:class:`bot.errors.DependencyUnavailable`, so the web layer answers 503 and the platform
retries later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Integer, Table, bindparam, func, insert, select, text, union, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert, ReturningInsert

from bot.errors import DependencyUnavailable, DuplicateEvent
from bot.messages import (
    ChatTurn,
    Command,
    InboundMessage,
    MessageStatus,
    Reply,
    Role,
    StoredMessage,
    Usage,
)
from bot.ports import NewReply
from storage.db import as_unavailable
from storage.models import (
    RECEIVED_PREDICATE,
    UNDELIVERED_PREDICATE,
    Conversation,
    InboundEvent,
    Message,
    User,
    UtcDateTime,
    utcnow,
)

logger = structlog.get_logger(__name__)

_USER = Role.USER.value
_ASSISTANT = Role.ASSISTANT.value
_RECEIVED = MessageStatus.RECEIVED.value
_ANSWERED = MessageStatus.ANSWERED.value

# Attempts to claim an event id whose first message keeps vanishing (erased meanwhile).
_CLAIM_ATTEMPTS = 3

_users = cast(Table, User.__table__)
_conversations = cast(Table, Conversation.__table__)
_messages = cast(Table, Message.__table__)
_events = cast(Table, InboundEvent.__table__)
_replies = _messages.alias("reply")


def _now(name: str = "now") -> Any:
    return bindparam(name, type_=UtcDateTime())


# The columns a StoredMessage is built from, over messages ⋈ conversations ⋈ users.
_INBOUND_COLUMNS = (
    _messages.c.id,
    _messages.c.conversation_id,
    _messages.c.user_id,
    _conversations.c.platform,
    _conversations.c.external_key,
    _users.c.platform_user_id,
    _messages.c.text,
    _messages.c.status,
    _messages.c.created_at,
    _messages.c.command,
    _messages.c.platform_message_id,
    _messages.c.route,
    _messages.c.request_id,
)
_INBOUND_FROM = _messages.join(
    _conversations, _messages.c.conversation_id == _conversations.c.id
).join(_users, _messages.c.user_id == _users.c.id)

_REPLY_COLUMNS = (
    _replies.c.id.label("reply_id"),
    _replies.c.text.label("reply_text"),
    _replies.c.status.label("reply_status"),
    _replies.c.model.label("reply_model"),
    _replies.c.prompt_tokens.label("reply_prompt_tokens"),
    _replies.c.completion_tokens.label("reply_completion_tokens"),
    _replies.c.delivered_at.label("reply_delivered_at"),
)

_EVENT = select(_events.c.message_id, _events.c.created_at).where(
    _events.c.platform == bindparam("platform"), _events.c.event_id == bindparam("event_id")
)

_GET_MESSAGE = (
    select(*_INBOUND_COLUMNS)
    .select_from(_INBOUND_FROM)
    .where(_messages.c.id == bindparam("message_id"), _messages.c.role == _USER)
)

# One backwards range scan of ix_messages_conversation_id_id, bounded below by the
# conversation's last reset.
# Turns are read as (question, answer) pairs keyed by the question's id: replies are stored
# when their turn closes, so while a conversation has messages queued, reply ids interleave
# with later questions' ids and only the question's id gives the arrival order.
_HISTORY = (
    select(_messages.c.text.label("question"), _replies.c.text.label("answer"))
    .select_from(_messages.join(_replies, _replies.c.reply_to_id == _messages.c.id))
    .with_hint(_messages, "INDEXED BY ix_messages_conversation_id_id", "sqlite")
    .where(
        _messages.c.conversation_id == bindparam("conversation_id"),
        _messages.c.id < bindparam("before"),
        _messages.c.id
        > select(_conversations.c.context_since)
        .where(_conversations.c.id == bindparam("conversation_id"))
        .scalar_subquery(),
        _messages.c.role == _USER,
        _messages.c.status == _ANSWERED,
        _messages.c.command.is_(None),
        _replies.c.status == _ANSWERED,
    )
    .order_by(_messages.c.id.desc())
    .limit(bindparam("limit", type_=Integer()))
)

_INSERT_MESSAGE: ReturningInsert[Any] = insert(_messages).returning(_messages.c.id)

_EXISTING_REPLY = select(*_REPLY_COLUMNS).where(_replies.c.reply_to_id == bindparam("inbound_id"))

_CLOSE_TURN = (
    update(_messages)
    .where(_messages.c.id == bindparam("inbound_id"))
    .values(status=bindparam("new_status"), updated_at=_now())
)

_REPLY_FOR = (
    select(*_REPLY_COLUMNS, *_INBOUND_COLUMNS)
    .select_from(_replies.join(_INBOUND_FROM, _replies.c.reply_to_id == _messages.c.id))
    .where(_replies.c.reply_to_id == bindparam("inbound_id"))
)

_MARK_DELIVERED = (
    update(_messages)
    .where(_messages.c.id == bindparam("reply_id"), _messages.c.delivered_at.is_(None))
    .values(delivered_at=_now(), updated_at=_now())
)

# The reset command's own id is the boundary: every question before it was answered
# before it (a conversation is answered in order), every question after it is new context.
_RESET_CONTEXT = (
    update(_conversations)
    .where(_conversations.c.id == bindparam("target_id"))
    .values(context_since=bindparam("message_id"), updated_at=_now())
)

_UNFINISHED = (
    select(*_INBOUND_COLUMNS)
    .select_from(_INBOUND_FROM)
    .where(
        _messages.c.id.in_(
            union(
                select(_messages.c.id)
                .with_hint(_messages, "INDEXED BY ix_messages_received", "sqlite")
                .where(text(RECEIVED_PREDICATE), _messages.c.role == _USER),
                select(_messages.c.reply_to_id)
                .with_hint(_messages, "INDEXED BY ix_messages_undelivered", "sqlite")
                .where(text(UNDELIVERED_PREDICATE)),
            )
        )
    )
    .order_by(_messages.c.id)
    .limit(bindparam("limit", type_=Integer()))
)

_PING = select(1)


@dataclasses.dataclass(frozen=True, slots=True)
class _Upserts:
    """The statements that need the dialect's ``INSERT … ON CONFLICT``."""

    user: ReturningInsert[Any]
    conversation: ReturningInsert[Any]
    event: ReturningInsert[Any]
    reply: ReturningInsert[Any]


@functools.cache
def _upserts(dialect: str) -> _Upserts:
    def insert_into(table: Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)

    user = insert_into(_users)
    conversation = insert_into(_conversations)
    event = insert_into(_events)
    reply: Insert = insert_into(_messages).on_conflict_do_nothing(
        index_elements=[_messages.c.reply_to_id]
    )
    return _Upserts(
        user=user.on_conflict_do_update(
            index_elements=[_users.c.platform, _users.c.platform_user_id],
            set_={
                "last_seen_at": user.excluded.last_seen_at,
                "name": func.coalesce(user.excluded.name, _users.c.name),
            },
        ).returning(_users.c.id),
        # DO UPDATE rather than DO NOTHING + SELECT: one atomic statement returns the id
        # even when a concurrent request created the row a moment ago.
        conversation=conversation.on_conflict_do_update(
            index_elements=[_conversations.c.platform, _conversations.c.external_key],
            set_={"updated_at": conversation.excluded.updated_at},
        ).returning(_conversations.c.id),
        # Takes over an expired event id; a recent one (also one that a concurrent
        # delivery just committed) is left alone and no row comes back.
        event=event.on_conflict_do_update(
            index_elements=[_events.c.platform, _events.c.event_id],
            set_={
                "message_id": event.excluded.message_id,
                "created_at": event.excluded.created_at,
            },
            where=_events.c.created_at <= _now("cutoff"),
        ).returning(_events.c.id),
        reply=reply.returning(_messages.c.id),
    )


class _EventTaken(Exception):
    """Internal: a recent delivery holds the event id; roll the transaction back."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id


class SqlConversationStore:
    """Users, conversations, messages and inbound events in PostgreSQL or SQLite.

    Statements run as Core on the session maker's engine: the store needs no identity
    map, and skipping the ORM session saves a measurable share of each hot-path call.

    Args:
        sessions: a session maker bound to an engine from :func:`storage.db.create_engine`.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        bind = sessions.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise TypeError("the session maker must be bound to an AsyncEngine")
        postgres = bind.dialect.name == "postgresql"
        self._engine = bind
        # Reads are single statements. On PostgreSQL autocommit spares them the BEGIN and
        # ROLLBACK round trips; SQLite's driver already runs them outside a transaction.
        self._reader = bind.execution_options(isolation_level="AUTOCOMMIT") if postgres else bind
        self._upserts = _upserts(bind.dialect.name)

    async def find_event(self, platform: str, event_id: str, within_seconds: float) -> int | None:
        """The id of the message first delivered with this event id, if that was recent.

        A cheap read ahead of the rate limiter; :meth:`store_inbound` claims the id again
        inside its transaction, so a race between two deliveries is still caught there.
        """
        row = await self._event(platform, event_id)
        if row is None or row.created_at <= utcnow() - timedelta(seconds=within_seconds):
            return None
        return int(row.message_id)

    async def store_inbound(
        self, message: InboundMessage, status: MessageStatus, *, dedup_seconds: float
    ) -> StoredMessage:
        """Store the user, the conversation and the message in one transaction.

        Raises:
            DuplicateEvent: ``message.event_id`` was stored for the platform within
                ``dedup_seconds`` (also when a concurrent delivery won the race); nothing
                is written.
            DependencyUnavailable: the database cannot be reached.
        """
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                return await self._store_inbound(message, status, dedup_seconds)
            except _EventTaken as taken:
                first = await self._event(message.platform, taken.event_id)
                if first is not None:
                    raise DuplicateEvent(int(first.message_id)) from None
        raise DependencyUnavailable("database", "the event id could not be claimed")

    async def get_message(self, message_id: int) -> StoredMessage | None:
        """The user message with that id, or ``None`` (also for an assistant reply's id)."""
        async with self._read() as connection:
            result = await connection.execute(_GET_MESSAGE, {"message_id": message_id})
            row = result.one_or_none()
        return None if row is None else _stored(row)

    async def history(self, message: StoredMessage, limit: int) -> list[ChatTurn]:
        """Up to ``limit`` newest answered turns before ``message``, oldest first.

        Only turns since the conversation's last reset count; commands and their answers,
        failed and refused turns are left out.
        """
        if limit <= 0:
            return []
        parameters = {
            "conversation_id": message.conversation_id,
            "before": message.id,
            "limit": max(1, limit // 2),
        }
        async with self._read() as connection:
            rows = (await connection.execute(_HISTORY, parameters)).all()
        turns: list[ChatTurn] = []
        for row in reversed(rows):
            turns += (ChatTurn(Role.USER, row.question), ChatTurn(Role.ASSISTANT, row.answer))
        return turns

    async def save_reply(self, inbound: StoredMessage, reply: NewReply) -> Reply:
        """Store the reply and close the inbound message's turn with ``reply.status``.

        A reply already stored for ``inbound`` (a redelivered job) is returned as it is,
        and nothing changes.
        """
        now = utcnow()
        text = _clean(reply.text)
        row: dict[str, Any] = {
            "conversation_id": inbound.conversation_id,
            "user_id": None,
            "role": _ASSISTANT,
            "text": text,
            "status": reply.status.value,
            # Copied so that a command's answer stays out of the prompt history too.
            "command": inbound.command.value if inbound.command else None,
            "reply_to_id": inbound.id,
            "route": {},
            "model": reply.model,
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "latency_ms": reply.latency_ms,
            "created_at": now,
            "updated_at": now,
        }
        async with self._write() as connection:
            reply_id = (await connection.execute(self._upserts.reply, row)).scalar_one_or_none()
            if reply_id is None:
                existing = await connection.execute(_EXISTING_REPLY, {"inbound_id": inbound.id})
                return _reply(existing.one(), inbound)
            await connection.execute(
                _CLOSE_TURN,
                {"inbound_id": inbound.id, "new_status": reply.status.value, "now": now},
            )
        return Reply(
            id=reply_id,
            inbound=dataclasses.replace(inbound, status=reply.status),
            text=text,
            status=reply.status,
            model=reply.model,
            usage=reply.usage,
            delivered=False,
        )

    async def reply_for(self, inbound_id: int) -> Reply | None:
        """The stored reply to an inbound message, or ``None`` while the turn is open."""
        async with self._read() as connection:
            row = (await connection.execute(_REPLY_FOR, {"inbound_id": inbound_id})).one_or_none()
        return None if row is None else _reply(row, _stored(row))

    async def mark_delivered(self, reply_id: int) -> None:
        """Record that the platform has the reply; the first delivery time is kept."""
        async with self._write() as connection:
            await connection.execute(_MARK_DELIVERED, {"reply_id": reply_id, "now": utcnow()})

    async def reset_context(self, command: StoredMessage) -> None:
        """Start a fresh context after ``command``: earlier messages leave the prompt.

        Messages that arrived after the command stay in the new context, even when they
        were stored before the command was processed.
        """
        async with self._write() as connection:
            await connection.execute(
                _RESET_CONTEXT,
                {"target_id": command.conversation_id, "message_id": command.id, "now": utcnow()},
            )

    async def unfinished(self, limit: int) -> list[StoredMessage]:
        """User messages not answered yet, or answered but not delivered; oldest first."""
        async with self._read() as connection:
            rows = (await connection.execute(_UNFINISHED, {"limit": limit})).all()
        return [_stored(row) for row in rows]

    async def ping(self) -> None:
        """Raise :class:`bot.errors.DependencyUnavailable` when the database is unreachable."""
        async with self._read() as connection:
            await connection.execute(_PING)

    async def _store_inbound(
        self, message: InboundMessage, status: MessageStatus, dedup_seconds: float
    ) -> StoredMessage:
        now = utcnow()
        text = _clean(message.text)
        async with self._write() as connection:
            user = {
                "platform": message.platform,
                "platform_user_id": message.user_id,
                "name": _clean(message.user_name) if message.user_name is not None else None,
                "created_at": now,
                "last_seen_at": now,
            }
            user_id = int((await connection.execute(self._upserts.user, user)).scalar_one())
            conversation = {
                "platform": message.platform,
                "external_key": message.conversation_key,
                "created_at": now,
                "updated_at": now,
            }
            conversation_id = int(
                (await connection.execute(self._upserts.conversation, conversation)).scalar_one()
            )
            row: dict[str, Any] = {
                "conversation_id": conversation_id,
                "user_id": user_id,
                "role": _USER,
                "text": text,
                "status": status.value,
                "command": message.command.value if message.command else None,
                "reply_to_id": None,
                "platform_message_id": message.platform_message_id,
                "route": dict(message.route),
                "request_id": message.request_id,
                "created_at": now,
                "updated_at": now,
            }
            message_id = int((await connection.execute(_INSERT_MESSAGE, row)).scalar_one())
            if message.event_id is not None:
                event = {
                    "platform": message.platform,
                    "event_id": message.event_id,
                    "message_id": message_id,
                    "created_at": now,
                    "cutoff": now - timedelta(seconds=dedup_seconds),
                }
                claimed = await connection.execute(self._upserts.event, event)
                if claimed.first() is None:
                    raise _EventTaken(message.event_id)

        return StoredMessage(
            id=message_id,
            conversation_id=conversation_id,
            user_id=user_id,
            platform=message.platform,
            conversation_key=message.conversation_key,
            platform_user_id=message.user_id,
            text=text,
            status=status,
            created_at=now,
            command=message.command,
            platform_message_id=message.platform_message_id,
            route=dict(message.route),
            request_id=message.request_id,
        )

    async def _event(self, platform: str, event_id: str) -> Any:
        async with self._read() as connection:
            result = await connection.execute(_EVENT, {"platform": platform, "event_id": event_id})
            return result.one_or_none()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with _translated(), self._reader.connect() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with _translated(), self._engine.begin() as connection:
            yield connection


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Turn connection failures into :class:`DependencyUnavailable`."""
    try:
        yield
    except Exception as exc:
        unavailable = as_unavailable(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL characters; SQLite could, but both must agree.
    return text.replace("\x00", "\ufffd")


def _stored(row: Any) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        conversation_id=row.conversation_id,
        user_id=row.user_id,
        platform=row.platform,
        conversation_key=row.external_key,
        platform_user_id=row.platform_user_id,
        text=row.text,
        status=MessageStatus(row.status),
        created_at=row.created_at,
        command=Command(row.command) if row.command else None,
        platform_message_id=row.platform_message_id,
        route=row.route or {},
        request_id=row.request_id,
    )


def _reply(row: Any, inbound: StoredMessage) -> Reply:
    status = MessageStatus(row.reply_status)
    return Reply(
        id=row.reply_id,
        inbound=dataclasses.replace(inbound, status=status),
        text=row.reply_text,
        status=status,
        model=row.reply_model,
        usage=Usage(
            prompt_tokens=row.reply_prompt_tokens,
            completion_tokens=row.reply_completion_tokens,
        ),
        delivered=row.reply_delivered_at is not None,
    )
