"""PostgreSQL's webhook path in batches: one statement for the messages arriving together.

Under load, reading each message's admission and storing each message with statements of
their own cost a round trip each, a commit per message, and the server's CPU as much as
Zapa's. :class:`PostgresBatches` collects the calls made in one turn of the event loop
(:class:`bot.batching.Coalescer`) and answers them with one statement: the admissions with one read
(:data:`_ADMIT_MANY`), the messages with one statement of data-modifying CTEs
(:data:`_STORE_MANY`), in which each message still claims its event id, and a message
whose event id a recent delivery holds writes nothing. Alone, a call waits for no one: its
batch of one runs in the next turn of the loop.

Rows are written in key order within the statement (events, users and conversations each
sorted), so that concurrent batches lock them in one order; a deadlock or serialization
failure all the same (another process's statements) has each message of the batch stored
again on its own.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from bot.batching import Coalescer
from storage.db import Database, EventTaken, Ids

logger = structlog.get_logger(__name__)

# SQLSTATEs after which the batch's messages are stored one by one instead.
_CONFLICT_STATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure

_COLUMNS = (
    "platform",
    "platform_user_id",
    "name",
    "external_key",
    "event_id",
    "role",
    "text",
    "status",
    "command",
    "platform_message_id",
    "route",
    "request_id",
)

_ADMIT_MANY = text(
    """
SELECT i.n, e.message_id, e.created_at, u.banned, u.rate_limit
FROM unnest(
    CAST(:platform AS text[]), CAST(:platform_user_id AS text[]), CAST(:event_id AS text[])
) WITH ORDINALITY AS i(platform, platform_user_id, event_id, n)
LEFT OUTER JOIN users AS u
    ON u.platform = i.platform AND u.platform_user_id = i.platform_user_id
LEFT OUTER JOIN inbound_events AS e
    ON e.platform = i.platform AND e.event_id = i.event_id
ORDER BY i.n
"""
)

# Ids are drawn for every message first, so the event claims can name their message and
# the result can be told apart by message; a message whose claim failed comes back empty.
_STORE_MANY = text(
    """
WITH input AS (
    SELECT * FROM unnest(
        CAST(:platform AS text[]), CAST(:platform_user_id AS text[]), CAST(:name AS text[]),
        CAST(:external_key AS text[]), CAST(:event_id AS text[]), CAST(:role AS text[]),
        CAST(:text AS text[]), CAST(:status AS text[]), CAST(:command AS text[]),
        CAST(:platform_message_id AS text[]), CAST(:route AS text[]),
        CAST(:request_id AS text[]), CAST(:now AS timestamptz[])
    ) WITH ORDINALITY AS i(
        platform, platform_user_id, name, external_key, event_id, role, text, status,
        command, platform_message_id, route, request_id, now, n
    )
),
ids AS (
    SELECT input.*, nextval(pg_get_serial_sequence('messages', 'id')) AS id
    FROM input ORDER BY n
),
claimed AS (
    INSERT INTO inbound_events AS e (platform, event_id, message_id, created_at)
    SELECT platform, event_id, id, now FROM ids
    WHERE event_id IS NOT NULL
    ORDER BY platform, event_id
    ON CONFLICT (platform, event_id) DO UPDATE
        SET message_id = excluded.message_id, created_at = excluded.created_at
        WHERE e.created_at <= CAST(:cutoff AS timestamptz)
    RETURNING e.message_id
),
admitted AS (
    SELECT * FROM ids
    WHERE event_id IS NULL OR id IN (SELECT message_id FROM claimed)
),
user_rows AS (
    INSERT INTO users AS u (platform, platform_user_id, name, created_at, last_seen_at)
    SELECT DISTINCT ON (platform, platform_user_id) platform, platform_user_id, name, now, now
    FROM admitted
    ORDER BY platform, platform_user_id, name IS NULL, n DESC
    ON CONFLICT (platform, platform_user_id) DO UPDATE SET
        last_seen_at = excluded.last_seen_at,
        name = coalesce(excluded.name, u.name),
        unreachable_at = NULL
    RETURNING u.id, u.platform, u.platform_user_id
),
conversation_rows AS (
    INSERT INTO conversations AS c (platform, external_key, created_at, updated_at)
    SELECT DISTINCT ON (platform, external_key) platform, external_key, now, now
    FROM admitted
    ORDER BY platform, external_key, n DESC
    ON CONFLICT (platform, external_key) DO UPDATE SET updated_at = excluded.updated_at
    RETURNING c.id, c.platform, c.external_key
),
message_rows AS (
    INSERT INTO messages (
        id, conversation_id, user_id, role, text, status, command, platform_message_id,
        route, request_id, created_at, updated_at
    )
    SELECT a.id, c.id, u.id, a.role, a.text, a.status, a.command, a.platform_message_id,
        CAST(a.route AS json), a.request_id, a.now, a.now
    FROM admitted AS a
    JOIN user_rows AS u
        ON u.platform = a.platform AND u.platform_user_id = a.platform_user_id
    JOIN conversation_rows AS c
        ON c.platform = a.platform AND c.external_key = a.external_key
    RETURNING id, conversation_id, user_id
)
SELECT ids.n, m.id, m.conversation_id, m.user_id
FROM ids LEFT JOIN message_rows AS m ON m.id = ids.id
ORDER BY ids.n
"""
)


class PostgresBatches:
    """The webhook path's admission reads and message writes, in batches."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._admissions: Coalescer[dict[str, Any], Any] = Coalescer(self._admit_many)
        self._stores: Coalescer[_Store, Ids] = Coalescer(self._store_many)

    async def admission(self, parameters: dict[str, Any]) -> Any:
        """The admission row (``message_id``, ``created_at``, ``banned``, ``rate_limit``)."""
        return await self._admissions.one(parameters)

    async def store(self, fields: dict[str, Any], now: datetime, cutoff: datetime) -> Ids:
        """Store one message (the store's fields), created at ``now``.

        Raises:
            EventTaken: its event id was stored after ``cutoff``; nothing was written.
            DependencyUnavailable: the database cannot be reached.
        """
        return await self._stores.one(_Store(fields, now, cutoff))

    async def _admit_many(self, batch: list[dict[str, Any]]) -> list[Any]:
        return await self._db.run(_admit, batch)

    async def _store_many(self, batch: list[_Store]) -> list[Ids | BaseException]:
        # A retried event twice in one batch: the first delivery goes in, the others are
        # its duplicates (one statement cannot claim one event id twice).
        leaders: list[_Store] = []
        first: dict[tuple[str, str], int] = {}  # event -> its leader's index in ``leaders``
        places: list[int] = []  # each message's leader
        for message in batch:
            key = (message.fields["platform"], message.fields["event_id"])
            if message.fields["event_id"] is not None and key in first:
                places.append(first[key])
                continue
            if message.fields["event_id"] is not None:
                first[key] = len(leaders)
            places.append(len(leaders))
            leaders.append(message)
        try:
            stored = await self._db.run(_store, leaders)
        except DBAPIError as exc:
            if not _conflict(exc):
                raise
            logger.warning("inbound_batch_conflict", size=len(leaders))
            stored = []
            for leader in leaders:
                stored += await self._db.run(_store, [leader])
        outcomes: list[Ids | BaseException] = []
        for message, place in zip(batch, places, strict=True):
            ids, event_id = stored[place], message.fields["event_id"]
            if leaders[place] is message:
                outcomes.append(ids if ids is not None else EventTaken(event_id))
            else:
                outcomes.append(EventTaken(event_id, ids.message_id if ids else None))
        return outcomes


class _Store(NamedTuple):
    """A message to store: the store's fields, when, and the cutoff for its event id."""

    fields: dict[str, Any]
    now: datetime
    cutoff: datetime


def _conflict(exc: DBAPIError) -> bool:
    for candidate in (exc.orig, exc.orig.__cause__ if exc.orig is not None else None):
        if getattr(candidate, "sqlstate", None) in _CONFLICT_STATES:
            return True
    return False


def _admit(connection: Connection, batch: list[dict[str, Any]]) -> list[Any]:
    parameters = {
        column: [item[column] for item in batch]
        for column in ("platform", "platform_user_id", "event_id")
    }
    return list(connection.execute(_ADMIT_MANY, parameters).all())


def _store(connection: Connection, batch: list[_Store]) -> list[Ids | None]:
    """Store the batch; per message its ids, or ``None`` when its event id was taken."""
    parameters: dict[str, Any] = {column: [] for column in (*_COLUMNS, "now")}
    for message in batch:
        for column in _COLUMNS:
            value = message.fields[column]
            parameters[column].append(json.dumps(value) if column == "route" else value)
        parameters["now"].append(message.now)
    # One cutoff for all: the batch's messages arrived within a turn of the event loop.
    parameters["cutoff"] = max(message.cutoff for message in batch)
    rows = connection.execute(_STORE_MANY, parameters).all()
    return [
        None if row.id is None else Ids(row.id, row.conversation_id, row.user_id) for row in rows
    ]
