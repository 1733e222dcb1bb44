"""``SqlConversationStore``: the engine's :class:`bot.ports.ConversationStore` in SQL.

This is the hot path of every turn, so each method is one unit of work of a few indexed
statements, and every statement is built once, at import, with bound parameters:
SQLAlchemy then reuses its compiled form and the store spends its time in the database
rather than in building SQL.

On PostgreSQL every method is a single statement in autocommit mode, one round trip:
storing messages (users, conversations, messages and event ids: those that arrive
together, :mod:`storage.pg_batch`) and storing a reply (the reply, and the turn's new
status) are each one statement of data-modifying CTEs, atomic on their own.

SQLite has no such CTEs, but runs its statements in-process for a few microseconds each,
so there those two are short transactions of several statements. Those of every message
and turn (admission, storing a message, history, storing a reply, marking it delivered)
run on the driver itself (:mod:`storage.sqlite_hot`), and the writes that arrive together
share one commit.

Connection failures become :class:`bot.errors.DependencyUnavailable`, so the web layer
answers 503 and the platform retries later.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any, cast

import structlog
from sqlalchemy import (
    Integer,
    Table,
    bindparam,
    exists,
    select,
    text,
    union,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable, Select

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
from bot.ports import Admission, NewReply
from storage import sqlite_hot
from storage.db import Database, EventTaken, fetch_all
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
from storage.pg_batch import PostgresBatches

logger = structlog.get_logger(__name__)

_USER = Role.USER.value
_ASSISTANT = Role.ASSISTANT.value
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


def _new(column: str, table: Table) -> Any:
    """The bound parameter ``new_<column>``: a value to write into ``table.<column>``.

    Typed like the column, for asyncpg's casts, and named apart from it: when a statement
    writes a table, SQLAlchemy takes every execution parameter named like one of its
    columns for a value to write there too (also inside a CTE).
    """
    return bindparam(f"new_{column}", type_=table.c[column].type)


def _prefixed(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` keyed for :func:`_new`'s parameters."""
    return {f"new_{column}": value for column, value in values.items()}


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

_EXISTING_REPLY = select(*_REPLY_COLUMNS).where(_replies.c.reply_to_id == bindparam("inbound_id"))

_REPLY_FOR = (
    select(*_REPLY_COLUMNS, *_INBOUND_COLUMNS)
    .select_from(_replies.join(_INBOUND_FROM, _replies.c.reply_to_id == _messages.c.id))
    .where(_replies.c.reply_to_id == bindparam("inbound_id"))
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

# Writes. A new message is stored by storage.sqlite_hot or storage.pg_batch from its
# fields, the time, and the cutoff: an event id stored before then is taken over. A reply
# comes as its row.
_REPLY_ROW_COLUMNS = (
    "conversation_id",
    "role",
    "text",
    "status",
    "command",
    "reply_to_id",
    "route",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "created_at",
    "updated_at",
)

_CLOSE_TURN = (
    update(_messages)
    .where(_messages.c.id == bindparam("inbound_id"))
    .values(status=bindparam("new_status"), updated_at=_now())
)

_MARK_DELIVERED = (
    update(_messages)
    .where(_messages.c.id == bindparam("reply_id"), _messages.c.delivered_at.is_(None))
    .values(delivered_at=_now(), updated_at=_now())
)

# The first message of a banned user since the ban claims the notice; later ones find it taken.
_CLAIM_BAN_NOTICE = (
    update(_users)
    .where(
        _users.c.id == bindparam("user_id"),
        _users.c.banned.is_(True),
        _users.c.ban_notified_at.is_(None),
    )
    .values(ban_notified_at=_now())
    .returning(_users.c.id)
)

_MARK_UNREACHABLE = (
    update(_users).where(_users.c.id == bindparam("user_id")).values(unreachable_at=_now())
)

# The reset command's own id is the boundary: every question before it was answered
# before it (a conversation is answered in order), every question after it is new context.
_RESET_CONTEXT = (
    update(_conversations)
    .where(_conversations.c.id == bindparam("target_id"))
    .values(context_since=bindparam("message_id"), updated_at=_now())
)


def _postgres_save_reply() -> Select[Any]:
    """PostgreSQL's one statement that stores a reply and closes the turn.

    No row comes back when the turn already has a reply; then nothing changes. The turn
    takes the reply's status: both are the parameter ``new_status``.
    """
    reply = (
        postgresql.insert(_messages)
        .values({name: _new(name, _messages) for name in _REPLY_ROW_COLUMNS})
        .on_conflict_do_nothing(index_elements=[_messages.c.reply_to_id])
        .returning(_messages.c.id)
        .cte("reply_row")
    )
    closed = _CLOSE_TURN.where(exists(reply.select())).cte("closed")
    return select(reply.c.id).add_cte(closed)


_POSTGRES_SAVE_REPLY = _postgres_save_reply()


# Units of work: synchronous functions of a connection, run by storage.db.Database.


def _save_reply_postgres(
    connection: Connection, row: dict[str, Any], closing: dict[str, Any]
) -> int | None:
    parameters = {**_prefixed(row), **closing}
    return connection.execute(_POSTGRES_SAVE_REPLY, parameters).scalar_one_or_none()


def _event(connection: Connection, platform: str, event_id: str) -> Any:
    return connection.execute(_EVENT, {"platform": platform, "event_id": event_id}).one_or_none()


def _claim_ban_notice(connection: Connection, parameters: dict[str, Any]) -> bool:
    return connection.execute(_CLAIM_BAN_NOTICE, parameters).first() is not None


def _get_message(connection: Connection, message_id: int) -> StoredMessage | None:
    row = connection.execute(_GET_MESSAGE, {"message_id": message_id}).one_or_none()
    return None if row is None else _stored(row)


def _existing_reply(connection: Connection, inbound: StoredMessage) -> Reply:
    row = connection.execute(_EXISTING_REPLY, {"inbound_id": inbound.id}).one()
    return _reply(row, inbound)


def _reply_for(connection: Connection, inbound_id: int) -> Reply | None:
    row = connection.execute(_REPLY_FOR, {"inbound_id": inbound_id}).one_or_none()
    return None if row is None else _reply(row, _stored(row))


def _execute(connection: Connection, statement: Executable, parameters: dict[str, Any]) -> None:
    connection.execute(statement, parameters)


def _unfinished(connection: Connection, limit: int) -> list[StoredMessage]:
    return [_stored(row) for row in connection.execute(_UNFINISHED, {"limit": limit})]


def _ping(connection: Connection) -> None:
    connection.execute(_PING)


class SqlConversationStore:
    """Users, conversations, messages and inbound events in PostgreSQL or SQLite.

    Statements run as Core: the store needs no identity map, and skipping the ORM saves a
    measurable share of each hot-path call.

    Args:
        database: from :func:`storage.db.open_database`; the caller disposes of it.
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        self._postgres = database.dialect_name == "postgresql"
        self._batches = PostgresBatches(database) if self._postgres else None

    async def admission(
        self, platform: str, platform_user_id: str, event_id: str | None, within_seconds: float
    ) -> Admission:
        """An earlier recent delivery of the event, and the user's ban and own rate limit.

        A cheap read ahead of the rate limiter; :meth:`store_inbound` claims the event id
        again when it writes, so a race between two deliveries is still caught there.
        """
        parameters = {
            "platform": platform,
            "platform_user_id": platform_user_id,
            "event_id": event_id,
        }
        if self._batches is not None:
            row = await self._batches.admission(parameters)
        else:
            row = await self._db.read(sqlite_hot.admission, parameters)
        first = None
        if row.message_id is not None and row.created_at > utcnow() - timedelta(
            seconds=within_seconds
        ):
            first = int(row.message_id)
        return Admission(first, banned=bool(row.banned), rate_limit=row.rate_limit)

    async def claim_ban_notice(self, user_id: int) -> bool:
        """True for the first call since the user was banned: that message gets the notice."""
        parameters = {"user_id": user_id, "now": utcnow()}
        return bool(await self._db.run(_claim_ban_notice, parameters))

    async def store_inbound(
        self, message: InboundMessage, status: MessageStatus, *, dedup_seconds: float
    ) -> StoredMessage:
        """Store the user, the conversation and the message, all or nothing.

        Raises:
            DuplicateEvent: ``message.event_id`` was stored for the platform within
                ``dedup_seconds`` (also when a concurrent delivery won the race); nothing
                is written.
            DependencyUnavailable: the database cannot be reached.
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=dedup_seconds)
        text = _clean(message.text)
        fields: dict[str, Any] = {
            "platform": message.platform,
            "platform_user_id": message.user_id,
            "name": _clean(message.user_name) if message.user_name is not None else None,
            "external_key": message.conversation_key,
            "event_id": message.event_id,
            "role": _USER,
            "text": text,
            "status": status.value,
            "command": message.command.value if message.command else None,
            "platform_message_id": message.platform_message_id,
            "route": dict(message.route),
            "request_id": message.request_id,
        }
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                if self._batches is not None:
                    ids = await self._batches.store(fields, now, cutoff)
                else:
                    ids = await self._db.batched(sqlite_hot.store_inbound, fields, now, cutoff)
                break
            except EventTaken as taken:
                if taken.message_id is not None:
                    raise DuplicateEvent(taken.message_id) from None
                first = await self._db.run(_event, message.platform, taken.event_id)
                if first is not None:
                    raise DuplicateEvent(int(first.message_id)) from None
        else:
            raise DependencyUnavailable("database", "the event id could not be claimed")
        return StoredMessage(
            id=ids.message_id,
            conversation_id=ids.conversation_id,
            user_id=ids.user_id,
            platform=message.platform,
            conversation_key=message.conversation_key,
            platform_user_id=message.user_id,
            text=text,
            status=status,
            created_at=now,
            command=message.command,
            platform_message_id=message.platform_message_id,
            route=fields["route"],
            request_id=message.request_id,
        )

    async def get_message(self, message_id: int) -> StoredMessage | None:
        """The user message with that id, or ``None`` (also for an assistant reply's id)."""
        return await self._db.run(_get_message, message_id)

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
        if self._postgres:
            pairs = await self._db.run(fetch_all, _HISTORY, parameters)
        else:
            pairs = await self._db.read(sqlite_hot.history, parameters)
        turns: list[ChatTurn] = []
        for question, answer in reversed(pairs):  # newest first from either database
            turns += (ChatTurn(Role.USER, question), ChatTurn(Role.ASSISTANT, answer))
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
        closing = {"inbound_id": inbound.id, "new_status": reply.status.value, "now": now}
        if self._postgres:
            reply_id = await self._db.run(_save_reply_postgres, row, closing)
        else:
            # Shares a group commit with the messages and replies stored meanwhile.
            reply_id = await self._db.batched(sqlite_hot.save_reply, row, closing)
        if reply_id is None:
            return await self._db.run(_existing_reply, inbound)
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
        return await self._db.run(_reply_for, inbound_id)

    async def mark_delivered(self, reply_id: int) -> None:
        """Record that the platform has the reply; the first delivery time is kept."""
        if self._postgres:
            await self._db.run(_execute, _MARK_DELIVERED, {"reply_id": reply_id, "now": utcnow()})
        else:
            await self._db.batched(sqlite_hot.mark_delivered, reply_id, utcnow())

    async def mark_unreachable(self, user_id: int) -> None:
        """Record that the platform refuses messages to the user (until they write again)."""
        await self._db.run(_execute, _MARK_UNREACHABLE, {"user_id": user_id, "now": utcnow()})

    async def reset_context(self, command: StoredMessage) -> None:
        """Start a fresh context after ``command``: earlier messages leave the prompt.

        Messages that arrived after the command stay in the new context, even when they
        were stored before the command was processed.
        """
        parameters = {"target_id": command.conversation_id, "message_id": command.id}
        await self._db.run(_execute, _RESET_CONTEXT, {**parameters, "now": utcnow()})

    async def unfinished(self, limit: int) -> list[StoredMessage]:
        """User messages not answered yet, or answered but not delivered; oldest first."""
        return await self._db.run(_unfinished, limit)

    async def ping(self) -> None:
        """Raise :class:`bot.errors.DependencyUnavailable` when the database is unreachable."""
        await self._db.run(_ping)


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
