"""``SqlAdminQueries``: the admin's :class:`bot.admin.ports.AdminQueries` in SQL.

Lists are paged by id cursors rather than offsets, so a page stays cheap however deep it
is and does not shift when new messages arrive. The SQL is the same on both databases
except for two things: searching message text, which PostgreSQL does with the full-text
index and SQLite with ``LIKE``, and bucketing timestamps into UTC days.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from bot.admin.ports import ConversationView, MessageView, PlatformActivity, Stats, UserView
from storage import models
from storage.db import Database, fetch_all
from storage.models import UtcDateTime

_users = cast(Table, models.User.__table__)
_conversations = cast(Table, models.Conversation.__table__)
_messages = cast(Table, models.Message.__table__)

_USER = "user"
_ASSISTANT = "assistant"
# The closing statuses of an inbound message that the stats count.
_OUTCOMES = ("answered", "failed", "rate_limited", "banned")

# Each conversation's size and newest message, over which the conversation list pages.
_LATEST = (
    select(
        _messages.c.conversation_id,
        func.max(_messages.c.id).label("last_id"),
        func.count().label("message_count"),
    )
    .group_by(_messages.c.conversation_id)
    .subquery("latest")
)
_LAST_MESSAGE = _messages.alias("last_message")

_CONVERSATION_EXISTS = select(_conversations.c.id).where(
    _conversations.c.id == bindparam("conversation_id")
)
_TRANSCRIPT = (
    select(_messages)
    .where(
        _messages.c.conversation_id == bindparam("conversation_id"),
        _messages.c.id > bindparam("after", type_=Integer()),
    )
    .order_by(_messages.c.id)
    .limit(bindparam("limit", type_=Integer()))
)

# Rows are tuples, whose ``count`` is a method: counts are read under other names.
_USER_MESSAGES = (
    select(func.count())
    .select_from(_messages)
    .where(_messages.c.user_id == _users.c.id)
    .scalar_subquery()
    .label("message_count")
)
_USER_BY_ID = select(_users, _USER_MESSAGES).where(_users.c.id == bindparam("user_id"))

_SINCE = bindparam("since", type_=UtcDateTime())
_UNTIL = bindparam("until", type_=UtcDateTime())
_IN_RANGE = and_(_messages.c.created_at >= _SINCE, _messages.c.created_at < _UNTIL)
_HAS_LATENCY = and_(_IN_RANGE, _messages.c.role == _ASSISTANT, _messages.c.latency_ms.is_not(None))
_OUTCOME_COUNTS = (
    select(_messages.c.status, func.count().label("message_count"))
    .where(_IN_RANGE, _messages.c.role == _USER, _messages.c.status.in_(_OUTCOMES))
    .group_by(_messages.c.status)
)

_LATEST_BY_PLATFORM = select(
    _conversations.c.platform, func.max(_conversations.c.updated_at).label("last_at")
).group_by(_conversations.c.platform)
_FAILED_BY_PLATFORM = (
    select(_conversations.c.platform, func.count().label("failed"))
    .select_from(_messages.join(_conversations))
    .where(
        _messages.c.created_at >= _SINCE,
        _messages.c.role == _USER,
        _messages.c.status == "failed",
    )
    .group_by(_conversations.c.platform)
)


def _day(dialect_name: str) -> ColumnElement[str]:
    # Constants are literals, not parameters: PostgreSQL matches a GROUP BY expression
    # to the select list's only when both are spelled the same.
    if dialect_name == "postgresql":
        in_utc = func.timezone(literal_column("'UTC'"), _messages.c.created_at)
        return func.to_char(in_utc, literal_column("'YYYY-MM-DD'"))
    # SQLite stores naive UTC text, whose date() is the UTC day.
    return func.date(_messages.c.created_at)


def _text_matches(dialect_name: str, q: str) -> ColumnElement[bool]:
    if dialect_name == "postgresql":
        # Spelled like ix_messages_text_fts's expression, so the planner uses that index.
        simple: ColumnElement[str] = literal_column("'simple'")
        document = func.to_tsvector(simple, _messages.c.text)
        return document.op("@@")(func.plainto_tsquery(simple, q))
    return _messages.c.text.ilike(_contains(q), escape="\\")


def _contains(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# Units of work: synchronous functions of a connection, run by storage.db.Database.


def _transcript(connection: Connection, parameters: dict[str, Any]) -> list[Any] | None:
    if connection.execute(_CONVERSATION_EXISTS, parameters).first() is None:
        return None
    return list(connection.execute(_TRANSCRIPT, parameters).all())


def _update_user(connection: Connection, user_id: int, values: dict[str, Any]) -> Any:
    if "banned" in values:
        # A new ban gets its own notice; lifting one forgets the old.
        changed = _users.c.banned != values["banned"]
        values["ban_notified_at"] = case((changed, None), else_=_users.c.ban_notified_at)
    if values:
        connection.execute(update(_users).where(_users.c.id == user_id).values(**values))
    return connection.execute(_USER_BY_ID, {"user_id": user_id}).one_or_none()


def _latencies(
    connection: Connection, dialect_name: str, parameters: dict[str, Any]
) -> tuple[dict[str, tuple[float, float]], tuple[float, float] | None]:
    """Model latency p50 and p95 for each day and for the whole range."""
    day = _day(dialect_name).label("day")
    if dialect_name == "postgresql":
        # Computed by the database: a busy range holds millions of replies.
        percentiles = func.percentile_cont(literal_column("ARRAY[0.5, 0.95]")).within_group(
            _messages.c.latency_ms
        )
        statement = (
            select(day, percentiles.label("p")).where(_HAS_LATENCY).group_by(func.rollup(day))
        )
        per_day: dict[str, tuple[float, float]] = {}
        overall = None
        for row in connection.execute(statement, parameters):
            if row.p is None:  # the total of an empty range
                continue
            value = (float(row.p[0]), float(row.p[1]))
            if row.day is None:
                overall = value
            else:
                per_day[str(row.day)] = value
        return per_day, overall
    by_day: dict[str, list[float]] = {}
    statement = select(day, _messages.c.latency_ms).where(_HAS_LATENCY)
    for row in connection.execute(statement, parameters):
        by_day.setdefault(str(row.day), []).append(float(row.latency_ms))
    every = sorted(value for values in by_day.values() for value in values)
    per_day = {d: _p50_p95(sorted(values)) for d, values in by_day.items()}
    return per_day, _p50_p95(every) if every else None


def _p50_p95(ordered: list[float]) -> tuple[float, float]:
    return _percentile(ordered, 0.50), _percentile(ordered, 0.95)


def _stats(connection: Connection, dialect_name: str, parameters: dict[str, Any]) -> Stats:
    day = _day(dialect_name).label("day")
    per_platform = (
        select(day, _conversations.c.platform, func.count().label("message_count"))
        .select_from(_messages.join(_conversations))
        .where(_IN_RANGE, _messages.c.role == _USER)
        .group_by(day, _conversations.c.platform)
        .order_by(day, _conversations.c.platform)
    )
    tokens = (
        select(
            day,
            func.sum(_messages.c.prompt_tokens).label("prompt_tokens"),
            func.sum(_messages.c.completion_tokens).label("completion_tokens"),
        )
        .where(_IN_RANGE, _messages.c.role == _ASSISTANT)
        .group_by(day)
        .order_by(day)
    )
    per_day, overall = _latencies(connection, dialect_name, parameters)
    outcomes = {
        row.status: int(row.message_count)
        for row in connection.execute(_OUTCOME_COUNTS, parameters)
    }
    return Stats(
        messages_per_day=[
            {"day": str(row.day), "platform": row.platform, "messages": int(row.message_count)}
            for row in connection.execute(per_platform, parameters)
        ],
        tokens_per_day=[
            {
                "day": str(row.day),
                "prompt_tokens": int(row.prompt_tokens or 0),
                "completion_tokens": int(row.completion_tokens or 0),
            }
            for row in connection.execute(tokens, parameters)
        ],
        latency_per_day=[
            {"day": day, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2)}
            for day, (p50, p95) in sorted(per_day.items())
        ],
        latency_p50_ms=None if overall is None else round(overall[0], 2),
        latency_p95_ms=None if overall is None else round(overall[1], 2),
        answered=outcomes.get("answered", 0),
        failed=outcomes.get("failed", 0),
        rate_limited=outcomes.get("rate_limited", 0),
        banned=outcomes.get("banned", 0),
    )


def _percentile(ordered: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks of the sorted, non-empty values."""
    position = (len(ordered) - 1) * fraction
    below = math.floor(position)
    above = math.ceil(position)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


class SqlAdminQueries:
    """What the admin dashboard reads from the bot's tables, and the user fields it sets.

    Args:
        database: from :func:`storage.db.open_database`; the caller disposes of it.
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        self._dialect = database.dialect_name

    async def conversations(
        self, *, platform: str | None, q: str | None, limit: int, before: int | None
    ) -> list[ConversationView]:
        """Conversations by newest message first, each with its size and newest message.

        Args:
            platform: only conversations on this platform.
            q: only conversations with a message containing it (PostgreSQL: the words of
                ``q``, by full-text search; SQLite: the text, ignoring ASCII case).
            limit: the most conversations returned.
            before: the previous page's last ``last_message_id``; this page goes on from it.
        """
        statement: Select[Any] = (
            select(
                _conversations,
                _LATEST.c.last_id,
                _LATEST.c.message_count,
                _LAST_MESSAGE.c.text.label("last_text"),
                _LAST_MESSAGE.c.created_at.label("last_at"),
            )
            .select_from(
                _conversations.join(_LATEST, _LATEST.c.conversation_id == _conversations.c.id).join(
                    _LAST_MESSAGE, _LAST_MESSAGE.c.id == _LATEST.c.last_id
                )
            )
            .order_by(_LATEST.c.last_id.desc())
            .limit(limit)
        )
        if platform is not None:
            statement = statement.where(_conversations.c.platform == platform)
        if before is not None:
            statement = statement.where(_LATEST.c.last_id < before)
        if q is not None:
            matching = select(_messages.c.conversation_id).where(_text_matches(self._dialect, q))
            statement = statement.where(_conversations.c.id.in_(matching))
        rows = await self._db.run(fetch_all, statement, {})
        return [
            ConversationView(
                id=row.id,
                platform=row.platform,
                key=row.external_key,
                created_at=row.created_at,
                messages=int(row.message_count),
                last_message_id=row.last_id,
                last_text=row.last_text,
                last_at=row.last_at,
            )
            for row in rows
        ]

    async def messages(
        self, conversation_id: int, *, limit: int, after: int | None
    ) -> list[MessageView] | None:
        """The transcript, oldest first from after ``after``; ``None`` for an unknown id."""
        parameters = {"conversation_id": conversation_id, "after": after or 0, "limit": limit}
        rows = await self._db.run(_transcript, parameters)
        if rows is None:
            return None
        return [
            MessageView(
                id=row.id,
                role=row.role,
                text=row.text,
                status=row.status,
                command=row.command,
                reply_to_id=row.reply_to_id,
                user_id=row.user_id,
                model=row.model,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                latency_ms=row.latency_ms,
                delivered_at=row.delivered_at,
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def users(
        self, *, platform: str | None, q: str | None, limit: int, before: int | None
    ) -> list[UserView]:
        """Users by id, newest first, each with the number of messages they wrote.

        Args:
            platform: only users on this platform.
            q: only users whose name or platform user id contains it, ignoring case.
            limit: the most users returned.
            before: the previous page's last user id; this page goes on from it.
        """
        statement = select(_users, _USER_MESSAGES).order_by(_users.c.id.desc()).limit(limit)
        if platform is not None:
            statement = statement.where(_users.c.platform == platform)
        if before is not None:
            statement = statement.where(_users.c.id < before)
        if q is not None:
            pattern = _contains(q)
            statement = statement.where(
                or_(
                    _users.c.name.ilike(pattern, escape="\\"),
                    _users.c.platform_user_id.ilike(pattern, escape="\\"),
                )
            )
        rows = await self._db.run(fetch_all, statement, {})
        return [_user(row) for row in rows]

    async def update_user(
        self, user_id: int, *, banned: bool | None, rate_limit: str | None, set_rate_limit: bool
    ) -> UserView | None:
        """Set ``banned`` (when not ``None``) and ``rate_limit`` (when ``set_rate_limit``).

        Returns:
            The user as stored afterwards, or ``None`` if there is no such user.
        """
        values: dict[str, Any] = {}
        if banned is not None:
            values["banned"] = banned
        if set_rate_limit:
            values["rate_limit"] = rate_limit
        row = await self._db.transaction(_update_user, user_id, values)
        return None if row is None else _user(row)

    async def activity(self, since: datetime) -> list[PlatformActivity]:
        """Each platform's newest message, and its turns that failed since ``since``.

        The newest message is read off the conversations (each message touches its own),
        and the failures off the last hour's range of ``ix_messages_created_at``.
        """
        parameters = {"since": since}
        latest = await self._db.run(fetch_all, _LATEST_BY_PLATFORM, parameters)
        failed = {
            row.platform: int(row.failed)
            for row in await self._db.run(fetch_all, _FAILED_BY_PLATFORM, parameters)
        }
        return [
            PlatformActivity(row.platform, row.last_at, failed.get(row.platform, 0))
            for row in latest
        ]

    async def stats(self, since: datetime, until: datetime) -> Stats:
        """Activity from ``since`` (inclusive) to ``until`` (exclusive), by UTC day.

        Messages per day count what users wrote; tokens and latencies are the replies'.
        The outcome counts are of users' messages by the status their turn closed with.
        """
        parameters = {"since": since, "until": until}
        return await self._db.run(_stats, self._dialect, parameters)


def _user(row: Any) -> UserView:
    return UserView(
        id=row.id,
        platform=row.platform,
        platform_user_id=row.platform_user_id,
        name=row.name,
        banned=bool(row.banned),
        rate_limit=row.rate_limit,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        messages=int(row.message_count),
    )
