"""SqlAdminQueries against real SQLite and real PostgreSQL databases."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Connection

from bot.admin.ports import AdminQueries
from bot.messages import InboundMessage, MessageStatus, StoredMessage, Usage
from bot.ports import NewReply
from storage.admin_queries import SqlAdminQueries
from storage.db import Database, open_database
from storage.models import Message
from storage.repository import SqlConversationStore

HOUR = 3600.0
DAY_1 = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)
DAY_2 = datetime(2024, 3, 2, 0, 30, tzinfo=UTC)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url, pool_size=5)
    yield database
    await database.dispose()


@pytest.fixture
def store(database: Database) -> SqlConversationStore:
    return SqlConversationStore(database)


@pytest.fixture
def queries(database: Database) -> SqlAdminQueries:
    return SqlAdminQueries(database)


async def receive(
    store: SqlConversationStore,
    text: str,
    *,
    key: str = "chat-1",
    platform: str = "telegram",
    user: str = "u-1",
    user_name: str | None = None,
    status: MessageStatus = MessageStatus.RECEIVED,
) -> StoredMessage:
    message = InboundMessage(
        platform=platform, conversation_key=key, user_id=user, text=text, user_name=user_name
    )
    return await store.store_inbound(message, status, dedup_seconds=HOUR)


async def turn(
    store: SqlConversationStore,
    text: str,
    answer: str,
    *,
    key: str = "chat-1",
    platform: str = "telegram",
    user: str = "u-1",
    status: MessageStatus = MessageStatus.ANSWERED,
    usage: Usage | None = None,
    latency_ms: float | None = None,
) -> StoredMessage:
    stored = await receive(store, text, key=key, platform=platform, user=user)
    reply = NewReply(
        text=answer,
        status=status,
        model="gpt-test",
        usage=usage or Usage(),
        latency_ms=latency_ms,
    )
    await store.save_reply(stored, reply)
    return stored


async def move_conversation(database: Database, conversation_id: int, at: datetime) -> None:
    """Date every message of the conversation ``at``, as if it happened then."""

    def move(connection: Connection) -> None:
        connection.execute(
            update(Message).where(Message.conversation_id == conversation_id).values(created_at=at)
        )

    await database.run(move)


def test_queries_offer_every_method_of_the_port() -> None:
    port_methods = {
        name for name, member in vars(AdminQueries).items() if inspect.iscoroutinefunction(member)
    }
    assert len(port_methods) == 6
    for name in port_methods:
        implementation = getattr(SqlAdminQueries, name)
        assert inspect.iscoroutinefunction(implementation), name
        port_parameters = inspect.signature(getattr(AdminQueries, name)).parameters
        assert list(inspect.signature(implementation).parameters) == list(port_parameters), name


async def test_conversations_list_newest_activity_first_with_their_last_message(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    older = await turn(store, "first question", "first answer", key="a")
    await turn(store, "slack question", "slack answer", key="b", platform="slack")
    # A new message moves the older conversation back to the top.
    await receive(store, "a follow-up", key="a")

    listed = await queries.conversations(platform=None, q=None, limit=10, before=None)

    assert [(view.platform, view.key, view.messages) for view in listed] == [
        ("telegram", "a", 3),
        ("slack", "b", 2),
    ]
    top = listed[0]
    assert top.id == older.conversation_id
    assert top.last_text == "a follow-up"
    assert top.last_at is not None and top.last_at.utcoffset() == timedelta(0)
    assert top.last_message_id > listed[1].last_message_id


async def test_conversations_filter_by_platform(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    await turn(store, "hi", "hello", key="t")
    await turn(store, "hi", "hello", key="s", platform="slack")

    slack = await queries.conversations(platform="slack", q=None, limit=10, before=None)
    assert [(view.platform, view.key) for view in slack] == [("slack", "s")]
    assert await queries.conversations(platform="webhook", q=None, limit=10, before=None) == []


async def test_search_finds_a_word_of_any_message_in_the_conversation(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    await turn(store, "do you sell banana bread", "yes we do", key="fruit")
    await receive(store, "and then something else", key="fruit")
    await turn(store, "what is the weather", "sunny", key="weather", platform="slack")

    found = await queries.conversations(platform=None, q="Banana", limit=10, before=None)
    assert [view.key for view in found] == ["fruit"]
    # The match may be in any message; the view still shows the newest.
    assert found[0].last_text == "and then something else"
    assert found[0].messages == 3

    replies = await queries.conversations(platform=None, q="sunny", limit=10, before=None)
    assert [view.key for view in replies] == ["weather"]
    assert await queries.conversations(platform=None, q="kiwi", limit=10, before=None) == []
    assert await queries.conversations(platform="slack", q="banana", limit=10, before=None) == []


async def test_search_takes_like_wildcards_literally(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    await receive(store, "prices 50% off today", key="percent")
    await receive(store, "we have 500 items", key="digits")
    await receive(store, "the a_b test", key="underscore")
    await receive(store, "the axb test", key="letter")

    percent = await queries.conversations(platform=None, q="50%", limit=10, before=None)
    assert [view.key for view in percent] == ["percent"]
    underscore = await queries.conversations(platform=None, q="a_b", limit=10, before=None)
    assert [view.key for view in underscore] == ["underscore"]


async def test_conversation_pages_continue_without_overlap(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    for key in ("c1", "c2", "c3"):
        await turn(store, f"hello from {key}", "hi", key=key)

    first = await queries.conversations(platform=None, q=None, limit=2, before=None)
    second = await queries.conversations(
        platform=None, q=None, limit=2, before=first[-1].last_message_id
    )

    assert [view.key for view in first] == ["c3", "c2"]
    assert [view.key for view in second] == ["c1"]
    last = await queries.conversations(
        platform=None, q=None, limit=2, before=second[-1].last_message_id
    )
    assert last == []


async def test_transcript_is_oldest_first_and_pages_after_a_message(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    question = await turn(
        store,
        "question",
        "answer",
        usage=Usage(prompt_tokens=12, completion_tokens=5),
        latency_ms=321.5,
    )
    await turn(store, "another chat", "elsewhere", key="other")
    await receive(store, "second question")

    transcript = await queries.messages(question.conversation_id, limit=10, after=None)

    assert transcript is not None
    assert [(view.role, view.text) for view in transcript] == [
        ("user", "question"),
        ("assistant", "answer"),
        ("user", "second question"),
    ]
    asked, answered, _ = transcript
    assert asked.user_id == question.user_id
    assert asked.status == "answered"
    assert answered.reply_to_id == asked.id
    assert answered.user_id is None
    assert (answered.model, answered.prompt_tokens, answered.completion_tokens) == (
        "gpt-test",
        12,
        5,
    )
    assert answered.latency_ms == pytest.approx(321.5)

    rest = await queries.messages(question.conversation_id, limit=1, after=asked.id)
    assert rest is not None
    assert [view.text for view in rest] == ["answer"]
    past_the_end = await queries.messages(question.conversation_id, limit=10, after=10_000)
    assert past_the_end == []


async def test_transcript_of_an_unknown_conversation_is_none(queries: SqlAdminQueries) -> None:
    assert await queries.messages(10_000, limit=10, after=None) is None


async def test_users_list_newest_first_with_the_messages_they_wrote(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    await receive(store, "one", user="u-1", user_name="Ann Smith")
    await receive(store, "two", user="u-1", user_name="Ann Smith")
    await turn(store, "three", "reply", key="s", platform="slack", user="U777")
    await receive(store, "four", key="w", platform="webhook", user="bob-9")

    listed = await queries.users(platform=None, q=None, limit=10, before=None)

    assert [(view.platform, view.platform_user_id, view.messages) for view in listed] == [
        ("webhook", "bob-9", 1),
        ("slack", "U777", 1),
        ("telegram", "u-1", 2),
    ]
    ann = listed[-1]
    assert (ann.name, ann.banned, ann.rate_limit) == ("Ann Smith", False, None)

    page = await queries.users(platform=None, q=None, limit=2, before=None)
    rest = await queries.users(platform=None, q=None, limit=2, before=page[-1].id)
    assert [view.platform_user_id for view in page + rest] == ["bob-9", "U777", "u-1"]

    by_name = await queries.users(platform=None, q="ann s", limit=10, before=None)
    assert [view.platform_user_id for view in by_name] == ["u-1"]
    by_id = await queries.users(platform=None, q="u777", limit=10, before=None)
    assert [view.platform_user_id for view in by_id] == ["U777"]
    assert await queries.users(platform=None, q="%", limit=10, before=None) == []
    on_slack = await queries.users(platform="slack", q=None, limit=10, before=None)
    assert [view.platform_user_id for view in on_slack] == ["U777"]


async def test_update_user_bans_and_limits_then_reads_back(
    store: SqlConversationStore, queries: SqlAdminQueries
) -> None:
    stored = await receive(store, "hi", user="u-1")
    user_id = stored.user_id

    banned = await queries.update_user(
        user_id, banned=True, rate_limit="5/minute", set_rate_limit=True
    )
    assert banned is not None
    assert (banned.banned, banned.rate_limit, banned.messages) == (True, "5/minute", 1)

    # Leaving banned alone and clearing the limit.
    cleared = await queries.update_user(user_id, banned=None, rate_limit=None, set_rate_limit=True)
    assert cleared is not None
    assert (cleared.banned, cleared.rate_limit) == (True, None)

    # Not setting the limit keeps it, even when one is passed.
    await queries.update_user(user_id, banned=None, rate_limit="1/hour", set_rate_limit=True)
    unbanned = await queries.update_user(
        user_id, banned=False, rate_limit=None, set_rate_limit=False
    )
    assert unbanned is not None
    assert (unbanned.banned, unbanned.rate_limit) == (False, "1/hour")

    listed = await queries.users(platform=None, q=None, limit=10, before=None)
    assert [(view.banned, view.rate_limit) for view in listed] == [(False, "1/hour")]


async def test_update_of_an_unknown_user_is_none(queries: SqlAdminQueries) -> None:
    assert (
        await queries.update_user(10_000, banned=True, rate_limit=None, set_rate_limit=False)
        is None
    )


async def test_stats_count_messages_tokens_latency_and_outcomes_by_utc_day(
    store: SqlConversationStore, queries: SqlAdminQueries, database: Database
) -> None:
    moves: list[tuple[StoredMessage, datetime]] = []

    async def dated(at: datetime, key: str, platform: str = "telegram", **turn_args: Any) -> None:
        stored = await turn(store, "q", "a", key=key, platform=platform, **turn_args)
        moves.append((stored, at))

    usage = Usage(prompt_tokens=10, completion_tokens=3)
    await dated(DAY_1, "t1", usage=usage, latency_ms=100.0)
    await dated(DAY_1, "t2", usage=usage, latency_ms=200.0, status=MessageStatus.FAILED)
    await dated(DAY_1, "s1", "slack", usage=Usage(prompt_tokens=1, completion_tokens=1))
    await dated(DAY_2, "t3", usage=usage, latency_ms=300.0)
    await dated(DAY_2, "t4", status=MessageStatus.RATE_LIMITED, latency_ms=400.0)
    # Outside the range: neither counted nor in the percentiles.
    await dated(DAY_2 + timedelta(days=1), "late", usage=usage, latency_ms=99_999.0)
    await dated(DAY_1 - timedelta(days=1), "early", usage=usage, latency_ms=99_999.0)
    for stored, at in moves:
        await move_conversation(database, stored.conversation_id, at)

    stats = await queries.stats(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC))

    assert stats.messages_per_day == [
        {"day": "2024-03-01", "platform": "slack", "messages": 1},
        {"day": "2024-03-01", "platform": "telegram", "messages": 2},
        {"day": "2024-03-02", "platform": "telegram", "messages": 2},
    ]
    assert stats.tokens_per_day == [
        {"day": "2024-03-01", "prompt_tokens": 21, "completion_tokens": 7},
        {"day": "2024-03-02", "prompt_tokens": 10, "completion_tokens": 3},
    ]
    assert stats.latency_p50_ms == pytest.approx(250.0)
    assert stats.latency_p95_ms == pytest.approx(385.0)
    assert (stats.answered, stats.failed, stats.rate_limited) == (3, 1, 1)


async def test_stats_of_an_empty_range_are_zero(queries: SqlAdminQueries) -> None:
    stats = await queries.stats(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC))
    assert stats.messages_per_day == []
    assert stats.tokens_per_day == []
    assert (stats.latency_p50_ms, stats.latency_p95_ms) == (None, None)
    assert (stats.answered, stats.failed, stats.rate_limited) == (0, 0, 0)
