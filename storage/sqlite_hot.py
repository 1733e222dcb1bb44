"""The SQLite store's hot statements, run on the ``sqlite3`` driver itself.

Every webhook reads its admission (an earlier delivery, the user's ban and limit) and
stores its message; every turn reads its history, stores its reply and marks it
delivered. Through SQLAlchemy each of those statements cost several times what
SQLite spends on it: parameter processing, compiled-cache lookups, result wrapping. Here
they are plain SQL with named parameters on the connection's ``sqlite3`` object, whose
own statement cache keeps them prepared. Values are written exactly as SQLAlchemy writes
them (see :func:`sqlite_time` and :func:`sqlite_json`), so every other query reads these
rows as its own, and ``tests/test_storage.py`` holds the two paths together.

Storing takes SQLite's write lock first (``BEGIN IMMEDIATE``), so the check for an earlier
delivery and the writes that follow cannot be split by another process's write, and a
repeat is refused before anything is written: it can share a group commit
(:meth:`storage.db.Database.batched`) with the messages around it.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection

from storage.db import EventTaken, Ids


class AdmissionRow(NamedTuple):
    """An earlier delivery of the event (if any), and the user's ban and own limit."""

    message_id: int | None
    created_at: datetime | None
    banned: bool
    rate_limit: str | None


_ADMISSION = """
SELECT inbound_events.message_id, inbound_events.created_at, users.banned, users.rate_limit
FROM (SELECT 1) AS anchor
LEFT OUTER JOIN users
  ON users.platform = :platform AND users.platform_user_id = :platform_user_id
LEFT OUTER JOIN inbound_events
  ON inbound_events.platform = :platform AND inbound_events.event_id = :event_id
"""

_RECENT_EVENT = """
SELECT message_id FROM inbound_events
WHERE platform = :platform AND event_id = :event_id AND created_at > :cutoff
"""

# A message without a user name keeps the name stored before; writing again means the
# user can be reached again.
_USER = """
INSERT INTO users (platform, platform_user_id, name, created_at, last_seen_at)
VALUES (:platform, :platform_user_id, :name, :now, :now)
ON CONFLICT (platform, platform_user_id) DO UPDATE SET
  name = coalesce(excluded.name, users.name),
  last_seen_at = excluded.last_seen_at,
  unreachable_at = NULL
RETURNING id
"""

_CONVERSATION = """
INSERT INTO conversations (platform, external_key, created_at, updated_at)
VALUES (:platform, :external_key, :now, :now)
ON CONFLICT (platform, external_key) DO UPDATE SET updated_at = excluded.updated_at
RETURNING id
"""

_MESSAGE = """
INSERT INTO messages (
  conversation_id, user_id, role, text, status, command, platform_message_id, route,
  request_id, created_at, updated_at
) VALUES (
  :conversation_id, :user_id, :role, :text, :status, :command, :platform_message_id, :route,
  :request_id, :now, :now
)
RETURNING id
"""

# The earlier delivery was checked under the write lock: an event id still here is
# expired and is taken over.
_EVENT = """
INSERT INTO inbound_events (platform, event_id, message_id, created_at)
VALUES (:platform, :event_id, :message_id, :now)
ON CONFLICT (platform, event_id) DO UPDATE SET
  message_id = excluded.message_id, created_at = excluded.created_at
"""


# A turn already answered (a redelivered job) keeps its reply: nothing comes back.
_REPLY = """
INSERT INTO messages (
  conversation_id, role, text, status, command, reply_to_id, route, model, prompt_tokens,
  completion_tokens, latency_ms, created_at, updated_at
) VALUES (
  :conversation_id, :role, :text, :status, :command, :reply_to_id, :route, :model,
  :prompt_tokens, :completion_tokens, :latency_ms, :created_at, :updated_at
)
ON CONFLICT (reply_to_id) DO NOTHING
RETURNING id
"""

_CLOSE_TURN = "UPDATE messages SET status = :new_status, updated_at = :now WHERE id = :inbound_id"

_MARK_DELIVERED = """
UPDATE messages SET delivered_at = :now, updated_at = :now
WHERE id = :reply_id AND delivered_at IS NULL
"""

# Newest first; the store turns them around. The index on (conversation_id, id) walks one
# conversation backwards from the message.
_HISTORY = """
SELECT question.text, answer.text
FROM messages AS question INDEXED BY ix_messages_conversation_id_id
JOIN messages AS answer ON answer.reply_to_id = question.id
WHERE question.conversation_id = :conversation_id
  AND question.id < :before
  AND question.id > (SELECT context_since FROM conversations WHERE id = :conversation_id)
  AND question.role = 'user' AND question.status = 'answered' AND question.command IS NULL
  AND answer.status = 'answered'
ORDER BY question.id DESC
LIMIT :limit
"""


def sqlite_time(value: datetime) -> str:
    """A timezone-aware time as SQLAlchemy's SQLite ``DATETIME`` stores it (naive UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def sqlite_json(value: Any) -> str:
    """A value as SQLAlchemy's ``JSON`` type stores it (``json.dumps``)."""
    return json.dumps(value)


def _driver(connection: Connection) -> sqlite3.Connection:
    driver = connection.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _writing(connection: Connection) -> sqlite3.Connection:
    """The driver, in a transaction that holds SQLite's write lock."""
    driver = _driver(connection)
    if not driver.in_transaction:
        driver.execute("BEGIN IMMEDIATE")
    return driver


def admission(connection: Connection, parameters: dict[str, Any]) -> AdmissionRow:
    """Read the admission of a message (see ``SqlConversationStore.admission``)."""
    row = _driver(connection).execute(_ADMISSION, parameters).fetchone()
    message_id, created_at, banned, rate_limit = row
    return AdmissionRow(
        message_id,
        datetime.fromisoformat(created_at).replace(tzinfo=UTC) if created_at else None,
        bool(banned),
        rate_limit,
    )


def store_inbound(
    connection: Connection, fields: dict[str, Any], now: datetime, cutoff: datetime
) -> Ids:
    """Store the user, the conversation, the message and its event id.

    Raises:
        EventTaken: the event id was stored after ``cutoff``; nothing was written.
    """
    driver = _writing(connection)
    stamp = sqlite_time(now)
    platform, event_id = fields["platform"], fields["event_id"]
    if event_id is not None:
        recent = driver.execute(
            _RECENT_EVENT,
            {"platform": platform, "event_id": event_id, "cutoff": sqlite_time(cutoff)},
        ).fetchone()
        if recent is not None:
            raise EventTaken(event_id, recent[0])
    user = {
        "platform": platform,
        "platform_user_id": fields["platform_user_id"],
        "name": fields["name"],
        "now": stamp,
    }
    user_id = driver.execute(_USER, user).fetchone()[0]
    conversation = {"platform": platform, "external_key": fields["external_key"], "now": stamp}
    conversation_id = driver.execute(_CONVERSATION, conversation).fetchone()[0]
    message = {
        "conversation_id": conversation_id,
        "user_id": user_id,
        "role": fields["role"],
        "text": fields["text"],
        "status": fields["status"],
        "command": fields["command"],
        "platform_message_id": fields["platform_message_id"],
        "route": sqlite_json(fields["route"]),
        "request_id": fields["request_id"],
        "now": stamp,
    }
    message_id = driver.execute(_MESSAGE, message).fetchone()[0]
    if event_id is not None:
        event = {"platform": platform, "event_id": event_id, "message_id": message_id}
        driver.execute(_EVENT, {**event, "now": stamp})
    return Ids(message_id, conversation_id, user_id)


def save_reply(connection: Connection, row: dict[str, Any], closing: dict[str, Any]) -> int | None:
    """Store a reply and close its turn; ``None`` (and no change) if the turn has one."""
    driver = _writing(connection)
    stamp = sqlite_time(closing["now"])
    values = {
        **row,
        "route": sqlite_json(row["route"]),
        "created_at": stamp,
        "updated_at": stamp,
    }
    found = driver.execute(_REPLY, values).fetchone()
    if found is None:
        return None
    driver.execute(_CLOSE_TURN, {**closing, "now": stamp})
    return int(found[0])


def mark_delivered(connection: Connection, reply_id: int, now: datetime) -> None:
    """Record the first delivery of a reply."""
    _writing(connection).execute(_MARK_DELIVERED, {"reply_id": reply_id, "now": sqlite_time(now)})


def history(connection: Connection, parameters: dict[str, Any]) -> list[tuple[str, str]]:
    """Up to ``limit`` answered (question, answer) pairs before ``before``, newest first."""
    return _driver(connection).execute(_HISTORY, parameters).fetchall()
