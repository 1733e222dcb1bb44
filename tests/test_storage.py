"""SqlConversationStore against real SQLite and real PostgreSQL databases."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from bot.errors import DependencyUnavailable, DuplicateEvent
from bot.messages import (
    ChatTurn,
    Command,
    InboundMessage,
    MessageStatus,
    Role,
    StoredMessage,
    Usage,
)
from bot.ports import ConversationStore, NewReply
from storage.admin_queries import SqlAdminQueries
from storage.db import SQLITE_BUSY_TIMEOUT_MS, Database, UnitRefused, open_database
from storage.migrate import upgrade_head
from storage.models import Base, Conversation, InboundEvent, Message, User, utcnow
from storage.repository import SqlConversationStore
from storage.sqlite_hot import sqlite_json, sqlite_time

HOUR = 3600.0


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url, pool_size=5)
    yield database
    await database.dispose()


@pytest.fixture
def store(database: Database) -> SqlConversationStore:
    return SqlConversationStore(database)


def inbound(
    text: str = "hello",
    *,
    key: str = "chat-1",
    user: str = "u-1",
    event_id: str | None = None,
    platform: str = "telegram",
    command: Command | None = None,
    user_name: str | None = None,
) -> InboundMessage:
    return InboundMessage(
        platform=platform,
        conversation_key=key,
        user_id=user,
        text=text,
        event_id=event_id,
        user_name=user_name,
        command=command,
    )


async def receive(store: SqlConversationStore, message: InboundMessage) -> StoredMessage:
    return await store.store_inbound(message, MessageStatus.RECEIVED, dedup_seconds=HOUR)


async def turn(
    store: SqlConversationStore,
    text: str,
    answer: str,
    *,
    status: MessageStatus = MessageStatus.ANSWERED,
    command: Command | None = None,
    key: str = "chat-1",
) -> StoredMessage:
    stored = await receive(store, inbound(text, key=key, command=command))
    await store.save_reply(stored, NewReply(text=answer, status=status, model="gpt-test"))
    return stored


async def count(database: Database, model: type[object]) -> int:
    def rows(connection: Connection) -> int:
        return int(connection.scalar(select(func.count()).select_from(model)) or 0)

    return await database.run(rows)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_store_offers_every_method_of_the_engine_port() -> None:
    port_methods = {
        name
        for name, member in vars(ConversationStore).items()
        if inspect.iscoroutinefunction(member)
    }
    assert port_methods  # the port is read correctly
    for name in port_methods:
        implementation = getattr(SqlConversationStore, name, None)
        assert implementation is not None, name
        assert inspect.iscoroutinefunction(implementation), name
        port_parameters = inspect.signature(getattr(ConversationStore, name)).parameters
        assert list(inspect.signature(implementation).parameters) == list(port_parameters), name


async def test_stored_message_round_trips(store: SqlConversationStore) -> None:
    message = InboundMessage(
        platform="webhook",
        conversation_key="ticket-42",
        user_id="u-7",
        text="Hello there",
        event_id="evt-1",
        user_name="Ann",
        platform_message_id="pm-9",
        route={"callback_url": "https://example.test/cb", "thread": ["a", 1]},
        request_id="req-1",
    )
    stored = await store.store_inbound(message, MessageStatus.RECEIVED, dedup_seconds=HOUR)

    assert stored.text == "Hello there"
    assert stored.conversation_key == "ticket-42"
    assert stored.platform_user_id == "u-7"
    assert stored.status is MessageStatus.RECEIVED
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)
    assert await store.get_message(stored.id) == stored


async def test_command_round_trips(store: SqlConversationStore) -> None:
    stored = await receive(store, inbound("/usage", command=Command.USAGE))
    loaded = await store.get_message(stored.id)
    assert loaded is not None
    assert loaded.command is Command.USAGE


async def test_unknown_message_and_reply_ids_are_not_inbound_messages(
    store: SqlConversationStore,
) -> None:
    stored = await turn(store, "hi", "hello!")
    reply = await store.reply_for(stored.id)
    assert reply is not None
    assert await store.get_message(reply.id) is None
    assert await store.get_message(10_000) is None


async def test_duplicate_event_names_the_first_message_and_writes_nothing(
    store: SqlConversationStore, database: Database
) -> None:
    first = await receive(store, inbound("first", event_id="update-1"))

    with pytest.raises(DuplicateEvent) as caught:
        await receive(store, inbound("second", key="chat-2", user="u-2", event_id="update-1"))

    assert caught.value.message_id == first.id
    assert await count(database, Message) == 1
    assert await count(database, Conversation) == 1
    assert await count(database, User) == 1
    assert await count(database, InboundEvent) == 1


async def test_same_event_id_on_another_platform_is_a_new_message(
    store: SqlConversationStore,
) -> None:
    first = await receive(store, inbound(event_id="42", platform="telegram"))
    second = await receive(store, inbound(event_id="42", platform="slack"))
    assert second.id != first.id


async def test_expired_event_id_is_accepted_again(store: SqlConversationStore) -> None:
    first = await receive(store, inbound("first", event_id="webhook-id-1"))
    await asyncio.sleep(0.05)

    again = await store.store_inbound(
        inbound("again", event_id="webhook-id-1"), MessageStatus.RECEIVED, dedup_seconds=0.01
    )

    assert again.id != first.id
    # The key now belongs to the new message.
    with pytest.raises(DuplicateEvent) as caught:
        await receive(store, inbound("third", event_id="webhook-id-1"))
    assert caught.value.message_id == again.id


async def test_admission_names_a_recent_delivery_only(store: SqlConversationStore) -> None:
    assert (await store.admission("telegram", "u-1", "update-7", HOUR)).first_message_id is None
    first = await receive(store, inbound(event_id="update-7"))

    assert (await store.admission("telegram", "u-1", "update-7", HOUR)).first_message_id == first.id
    assert (await store.admission("slack", "u-1", "update-7", HOUR)).first_message_id is None
    assert (await store.admission("telegram", "u-1", None, HOUR)).first_message_id is None
    await asyncio.sleep(0.05)
    assert (await store.admission("telegram", "u-1", "update-7", 0.01)).first_message_id is None


async def test_admission_reports_what_an_admin_set_for_the_user(
    store: SqlConversationStore, database: Database
) -> None:
    unknown = await store.admission("telegram", "nobody", None, HOUR)
    assert (unknown.banned, unknown.rate_limit) == (False, None)
    first = await receive(store, inbound(user="u-9"))
    queries = SqlAdminQueries(database)

    await queries.update_user(first.user_id, banned=True, rate_limit="3/hour", set_rate_limit=True)

    seen = await store.admission("telegram", "u-9", None, HOUR)
    assert (seen.banned, seen.rate_limit) == (True, "3/hour")
    # The same platform id elsewhere is another person.
    assert not (await store.admission("slack", "u-9", None, HOUR)).banned


async def test_admissions_asked_together_each_get_their_own_answer(
    store: SqlConversationStore, database: Database
) -> None:
    banned = await receive(store, inbound(user="banned", event_id="e-old"))
    limited = await receive(store, inbound(user="limited"))
    queries = SqlAdminQueries(database)
    await queries.update_user(banned.user_id, banned=True, rate_limit=None, set_rate_limit=False)
    await queries.update_user(
        limited.user_id, banned=None, rate_limit="2/minute", set_rate_limit=True
    )

    answers = await asyncio.gather(
        store.admission("telegram", "limited", None, HOUR),
        store.admission("telegram", "banned", "e-old", HOUR),
        store.admission("telegram", "stranger", "e-new", HOUR),
        store.admission("slack", "banned", "e-old", HOUR),
    )

    assert [(a.first_message_id, a.banned, a.rate_limit) for a in answers] == [
        (None, False, "2/minute"),
        (banned.id, True, None),
        (None, False, None),
        (None, False, None),  # another platform: another person, another event
    ]


async def test_messages_stored_together_each_get_their_own_outcome(
    store: SqlConversationStore, database: Database
) -> None:
    earlier = await receive(store, inbound("earlier", event_id="seen"))

    results = await asyncio.gather(
        receive(store, inbound("again", event_id="seen")),
        receive(store, inbound("new", key="chat-a", user="ann", event_id="fresh")),
        receive(store, inbound("retry of new", key="chat-a", user="ann", event_id="fresh")),
        receive(store, inbound("no event", key="chat-b", user="ann", user_name="Ann")),
        receive(store, inbound("other user", key="chat-b", user="bob")),
        return_exceptions=True,
    )

    again, new, retry, no_event, other = results
    assert isinstance(again, DuplicateEvent) and again.message_id == earlier.id
    assert isinstance(new, StoredMessage) and new.text == "new"
    assert isinstance(retry, DuplicateEvent) and retry.message_id == new.id
    assert isinstance(no_event, StoredMessage) and isinstance(other, StoredMessage)
    assert no_event.user_id == new.user_id != other.user_id
    assert no_event.conversation_id == other.conversation_id != new.conversation_id
    for stored in (new, no_event, other):
        assert await store.get_message(stored.id) == stored
    assert await count(database, Message) == 4
    assert await count(database, User) == 3  # u-1, ann, bob


async def test_a_ban_notice_is_claimed_once_per_ban(
    store: SqlConversationStore, database: Database
) -> None:
    first = await receive(store, inbound(user="u-3"))
    queries = SqlAdminQueries(database)
    assert not await store.claim_ban_notice(first.user_id)  # not banned

    await queries.update_user(first.user_id, banned=True, rate_limit=None, set_rate_limit=False)
    claims = await asyncio.gather(*(store.claim_ban_notice(first.user_id) for _ in range(5)))
    assert sorted(claims) == [False, False, False, False, True]
    # Banning again while banned changes nothing; lifting and renewing the ban does.
    await queries.update_user(first.user_id, banned=True, rate_limit=None, set_rate_limit=False)
    assert not await store.claim_ban_notice(first.user_id)
    await queries.update_user(first.user_id, banned=False, rate_limit=None, set_rate_limit=False)
    await queries.update_user(first.user_id, banned=True, rate_limit=None, set_rate_limit=False)
    assert await store.claim_ban_notice(first.user_id)


async def test_concurrent_first_messages_share_one_conversation(
    store: SqlConversationStore, database: Database
) -> None:
    messages = [inbound(f"message {n}", key="new-chat", user=f"u-{n % 4}") for n in range(20)]

    stored = await asyncio.gather(*(receive(store, message) for message in messages))

    assert len({message.id for message in stored}) == 20
    assert len({message.conversation_id for message in stored}) == 1
    assert len({message.user_id for message in stored}) == 4
    assert await count(database, Conversation) == 1
    assert await count(database, User) == 4


async def test_concurrent_deliveries_of_one_event_store_it_once(
    store: SqlConversationStore, database: Database
) -> None:
    results = await asyncio.gather(
        *(receive(store, inbound(f"try {n}", event_id="retried")) for n in range(10)),
        return_exceptions=True,
    )

    winners = [result for result in results if isinstance(result, StoredMessage)]
    duplicates = [result for result in results if isinstance(result, DuplicateEvent)]
    assert len(winners) == 1
    assert len(duplicates) == 9
    assert {duplicate.message_id for duplicate in duplicates} == {winners[0].id}
    assert await count(database, Message) == 1


async def test_user_name_is_updated_when_given_and_kept_otherwise(
    store: SqlConversationStore, database: Database
) -> None:
    def name(connection: Connection) -> str | None:
        return connection.scalar(select(User.name))

    await receive(store, inbound(user_name="Ann"))
    await receive(store, inbound())
    assert await database.run(name) == "Ann"
    await receive(store, inbound(user_name="Ann B."))
    assert await database.run(name) == "Ann B."


async def test_text_with_nul_character_is_stored(store: SqlConversationStore) -> None:
    stored = await receive(store, inbound("before\x00after"))
    loaded = await store.get_message(stored.id)
    assert loaded is not None
    assert loaded.text.startswith("before")
    assert loaded.text.endswith("after")


async def test_history_is_oldest_first_and_limited_to_the_newest(
    store: SqlConversationStore,
) -> None:
    for n in range(5):
        await turn(store, f"question {n}", f"answer {n}")
    await turn(store, "elsewhere", "other chat", key="chat-2")
    current = await receive(store, inbound("question 5"))

    assert await store.history(current, limit=4) == [
        ChatTurn(Role.USER, "question 3"),
        ChatTurn(Role.ASSISTANT, "answer 3"),
        ChatTurn(Role.USER, "question 4"),
        ChatTurn(Role.ASSISTANT, "answer 4"),
    ]
    assert len(await store.history(current, limit=100)) == 10
    assert await store.history(current, limit=0) == []


async def test_history_leaves_out_failed_refused_and_command_turns(
    store: SqlConversationStore,
) -> None:
    await turn(store, "kept question", "kept answer")
    await turn(store, "model was down", "sorry", status=MessageStatus.FAILED)
    await turn(store, "too fast", "slow down", status=MessageStatus.RATE_LIMITED)
    await turn(store, "/help", "I can answer questions", command=Command.HELP)
    await receive(store, inbound("still waiting"))
    current = await receive(store, inbound("now"))

    assert await store.history(current, limit=50) == [
        ChatTurn(Role.USER, "kept question"),
        ChatTurn(Role.ASSISTANT, "kept answer"),
    ]


async def test_history_pairs_questions_with_answers_stored_after_later_questions(
    store: SqlConversationStore,
) -> None:
    # Three questions queued at once, answered one by one: reply ids come after all three.
    first, second, third = [await receive(store, inbound(f"q{n}")) for n in range(3)]
    await store.save_reply(first, NewReply(text="a0", status=MessageStatus.ANSWERED))
    assert await store.history(second, limit=10) == [
        ChatTurn(Role.USER, "q0"),
        ChatTurn(Role.ASSISTANT, "a0"),
    ]
    await store.save_reply(second, NewReply(text="a1", status=MessageStatus.ANSWERED))
    assert [t.content for t in await store.history(third, limit=10)] == ["q0", "a0", "q1", "a1"]


async def test_history_only_holds_what_came_before_the_message(
    store: SqlConversationStore,
) -> None:
    early = await receive(store, inbound("early"))
    await turn(store, "later", "later answer")
    assert await store.history(early, limit=10) == []


async def test_history_starts_after_a_reset(store: SqlConversationStore) -> None:
    await turn(store, "old question", "old answer")
    reset = await receive(store, inbound("/reset", command=Command.RESET))
    # A message that arrived while the reset was waiting belongs to the new context.
    queued = await receive(store, inbound("asked right after the reset"))
    await store.reset_context(reset)
    await store.save_reply(reset, NewReply(text="Fresh start", status=MessageStatus.ANSWERED))

    assert await store.history(queued, limit=10) == []
    await store.save_reply(queued, NewReply(text="new answer", status=MessageStatus.ANSWERED))
    current = await receive(store, inbound("next"))
    assert await store.history(current, limit=10) == [
        ChatTurn(Role.USER, "asked right after the reset"),
        ChatTurn(Role.ASSISTANT, "new answer"),
    ]


async def test_reset_of_a_conversation_does_not_touch_another(
    store: SqlConversationStore,
) -> None:
    await turn(store, "mine", "my answer", key="chat-1")
    other = await turn(store, "theirs", "their answer", key="chat-2")
    await store.reset_context(other)

    current = await receive(store, inbound("next", key="chat-1"))
    assert len(await store.history(current, limit=10)) == 2


async def test_save_reply_closes_the_turn(store: SqlConversationStore) -> None:
    stored = await receive(store, inbound("what is 2+2?"))
    assert await store.reply_for(stored.id) is None

    reply = await store.save_reply(
        stored,
        NewReply(
            text="4",
            status=MessageStatus.ANSWERED,
            model="gpt-test",
            usage=Usage(prompt_tokens=12, completion_tokens=1),
            latency_ms=85.5,
        ),
    )

    assert reply.inbound.id == stored.id
    assert reply.inbound.status is MessageStatus.ANSWERED
    assert reply.as_result()["usage"] == {"prompt_tokens": 12, "completion_tokens": 1}
    assert reply.delivered is False
    assert await store.reply_for(stored.id) == reply
    loaded = await store.get_message(stored.id)
    assert loaded is not None
    assert loaded.status is MessageStatus.ANSWERED


async def test_saving_a_reply_twice_keeps_the_first(
    store: SqlConversationStore, database: Database
) -> None:
    stored = await receive(store, inbound())
    first = await store.save_reply(stored, NewReply(text="one", status=MessageStatus.ANSWERED))
    second = await store.save_reply(stored, NewReply(text="two", status=MessageStatus.FAILED))

    assert second.id == first.id
    assert second.text == "one"
    assert second.status is MessageStatus.ANSWERED
    assert await count(database, Message) == 2
    loaded = await store.get_message(stored.id)
    assert loaded is not None
    assert loaded.status is MessageStatus.ANSWERED


async def test_concurrent_replies_to_one_message_store_one(
    store: SqlConversationStore, database: Database
) -> None:
    stored = await receive(store, inbound())
    replies = await asyncio.gather(
        *(
            store.save_reply(stored, NewReply(text=f"r{n}", status=MessageStatus.ANSWERED))
            for n in range(5)
        )
    )
    assert len({reply.id for reply in replies}) == 1
    assert await count(database, Message) == 2


async def test_marked_delivery_is_remembered(store: SqlConversationStore) -> None:
    stored = await turn(store, "hi", "hello")
    reply = await store.reply_for(stored.id)
    assert reply is not None
    assert reply.delivered is False

    await store.mark_delivered(reply.id)
    await store.mark_delivered(reply.id)

    delivered = await store.reply_for(stored.id)
    assert delivered is not None
    assert delivered.delivered is True


async def test_reply_row_reads_back_as_written_on_either_database(
    store: SqlConversationStore, database: Database
) -> None:
    # SQLite writes replies on the driver (storage.sqlite_hot): SQLAlchemy must read them.
    stored = await receive(store, inbound("question"))
    before = utcnow()
    reply = await store.save_reply(
        stored,
        NewReply(
            text="answer",
            status=MessageStatus.ANSWERED,
            model="gpt-test",
            usage=Usage(prompt_tokens=7, completion_tokens=3),
            latency_ms=12.25,
        ),
    )
    await store.mark_delivered(reply.id)

    def read(connection: Connection) -> Message:
        return connection.execute(select(Message).where(Message.id == reply.id)).one()

    row = await database.run(read)
    assert (row.role, row.text, row.status, row.reply_to_id) == (
        "assistant",
        "answer",
        "answered",
        stored.id,
    )
    assert (row.model, row.prompt_tokens, row.completion_tokens, row.latency_ms) == (
        "gpt-test",
        7,
        3,
        12.25,
    )
    assert row.route == {} and row.command is None and row.user_id is None
    assert before <= row.created_at <= row.delivered_at == row.updated_at <= utcnow()
    assert row.created_at.tzinfo is not None


async def test_unfinished_lists_open_and_undelivered_turns_oldest_first(
    store: SqlConversationStore,
) -> None:
    waiting = await receive(store, inbound("waiting", key="a"))
    done = await turn(store, "done", "delivered", key="b")
    done_reply = await store.reply_for(done.id)
    assert done_reply is not None
    await store.mark_delivered(done_reply.id)
    undelivered = await turn(store, "answered", "not delivered yet", key="c")
    refused = await turn(store, "refused", "slow down", key="d", status=MessageStatus.RATE_LIMITED)
    last = await receive(store, inbound("last", key="a"))

    unfinished = await store.unfinished(limit=100)

    assert [message.id for message in unfinished] == [
        waiting.id,
        undelivered.id,
        refused.id,
        last.id,
    ]
    assert unfinished[0] == waiting
    assert [message.id for message in await store.unfinished(limit=2)] == [
        waiting.id,
        undelivered.id,
    ]


async def test_ping_answers_on_a_reachable_database(store: SqlConversationStore) -> None:
    await store.ping()


async def test_timestamps_are_aware_utc_whatever_the_database(
    store: SqlConversationStore,
) -> None:
    stored = await receive(store, inbound())
    loaded = await store.get_message(stored.id)
    assert loaded is not None
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.astimezone(UTC) == stored.created_at


@pytest.fixture(params=["postgres-closed-port", "sqlite-impossible-directory"])
async def unreachable_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlConversationStore]:
    if request.param == "postgres-closed-port":
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/test"
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the directory should be")
        url = f"sqlite+aiosqlite:///{blocker / 'data' / 'zapa.db'}"
    database = open_database(url, pool_size=2)
    yield SqlConversationStore(database)
    await database.dispose()


async def test_unreachable_database_raises_dependency_unavailable(
    unreachable_store: SqlConversationStore,
) -> None:
    with pytest.raises(DependencyUnavailable) as caught:
        await unreachable_store.ping()
    assert caught.value.dependency == "database"

    with pytest.raises(DependencyUnavailable):
        await receive(unreachable_store, inbound(event_id="e-1"))
    with pytest.raises(DependencyUnavailable):
        await unreachable_store.get_message(1)


async def _terminate_other_connections(postgres_url: str) -> None:
    dsn = make_url(postgres_url).set(drivername="postgresql")
    admin = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        # What a server restart or failover does to the pooled connections.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


async def test_store_recovers_after_postgres_drops_its_connections(postgres_url: str) -> None:
    database = open_database(postgres_url, pool_size=2)
    store = SqlConversationStore(database)
    try:
        first = await receive(store, inbound("before the restart"))
        await asyncio.gather(store.ping(), store.ping())  # both pooled connections in use
        await _terminate_other_connections(postgres_url)

        try:
            second = await receive(store, inbound("after the restart"))
        except DependencyUnavailable:
            # The driver may not have seen the connection close yet: that one call fails
            # (the webhook answers 503, the platform retries), and the pool starts over.
            second = await receive(store, inbound("after the restart"))
        assert second.id > first.id
        assert await store.get_message(second.id) == second
        await asyncio.gather(store.ping(), store.ping())
    finally:
        await database.dispose()


async def test_sqlite_database_directory_is_created(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'nested' / 'zapa.db'}"
    await asyncio.to_thread(upgrade_head, url)
    database = open_database(url, pool_size=2)
    try:
        store = SqlConversationStore(database)
        stored = await receive(store, inbound())
        assert await store.get_message(stored.id) == stored
    finally:
        await database.dispose()
    assert (tmp_path / "data" / "nested" / "zapa.db").is_file()


async def test_models_create_a_working_in_memory_sqlite_schema() -> None:
    database = open_database("sqlite+aiosqlite:///:memory:", pool_size=1)
    try:
        await database.run(Base.metadata.create_all)
        store = SqlConversationStore(database)
        stored = await receive(store, inbound())
        assert await store.get_message(stored.id) == stored
    finally:
        await database.dispose()


async def test_sqlite_lock_held_by_another_process_fails_the_call_then_clears(
    sqlite_url: str,
) -> None:
    database = open_database(sqlite_url, pool_size=1)
    store = SqlConversationStore(database)
    path = make_url(sqlite_url).database
    assert path is not None
    # Another process (`zapa migrate`, say) holding SQLite's write lock.
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable):
            await receive(store, inbound("while locked"))
        assert time.monotonic() - started >= SQLITE_BUSY_TIMEOUT_MS / 1000 * 0.9
        other.execute("ROLLBACK")

        stored = await receive(store, inbound("after the lock"))
        assert await store.get_message(stored.id) == stored
        assert await count(database, Message) == 1
    finally:
        other.close()
        await database.dispose()


class _Boom(Exception):
    pass


async def test_transaction_writes_nothing_when_its_work_fails(database: Database) -> None:
    def half_a_turn(connection: Connection) -> None:
        connection.execute(
            insert(User).values(platform="cli", platform_user_id="u", created_at=utcnow())
        )
        raise _Boom

    with pytest.raises(_Boom):
        await database.transaction(half_a_turn)

    assert await count(database, User) == 0


async def test_units_committed_together_fail_alone(database: Database) -> None:
    def add_user(connection: Connection, name: str, *, fail: bool = False) -> str:
        connection.execute(
            insert(User).values(platform="cli", platform_user_id=name, created_at=utcnow())
        )
        if fail:
            raise _Boom
        return name

    def refuse(connection: Connection) -> None:
        raise UnitRefused

    results = await asyncio.gather(
        database.batched(add_user, "first"),
        database.batched(add_user, "broken", fail=True),
        database.batched(refuse),
        database.batched(add_user, "last"),
        return_exceptions=True,
    )

    assert results[0] == "first" and results[3] == "last"
    assert isinstance(results[1], _Boom)
    assert isinstance(results[2], UnitRefused)
    names = await database.run(
        lambda connection: set(connection.scalars(select(User.platform_user_id)))
    )
    assert names == {"first", "last"}


async def test_sqlite_hot_path_writes_values_as_sqlalchemy_does(sqlite_url: str) -> None:
    database = open_database(sqlite_url, pool_size=1)
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # no microseconds: the tricky case
    route = {"chat_id": 1, "thread_id": None, "private": True}

    def write_through_sqlalchemy(connection: Connection) -> tuple[str, str]:
        times = {"created_at": when, "updated_at": when}
        user = connection.execute(
            insert(User).values(platform="cli", platform_user_id="u", created_at=when)
        ).inserted_primary_key
        conversation = connection.execute(
            insert(Conversation).values(platform="cli", external_key="k", **times)
        ).inserted_primary_key
        connection.execute(
            insert(Message).values(
                conversation_id=conversation[0],
                user_id=user[0],
                role="user",
                text="hi",
                status="received",
                route=route,
                **times,
            )
        )
        row = connection.exec_driver_sql("SELECT created_at, route FROM messages").one()
        return row[0], row[1]

    try:
        stored_time, stored_route = await database.transaction(write_through_sqlalchemy)
    finally:
        await database.dispose()
    assert stored_time == sqlite_time(when)
    assert stored_route == sqlite_json(route)


async def test_failed_statement_leaves_the_database_usable(
    store: SqlConversationStore, database: Database
) -> None:
    def duplicate_user(connection: Connection) -> None:
        for _ in range(2):
            connection.execute(
                insert(User).values(platform="cli", platform_user_id="u", created_at=utcnow())
            )

    with pytest.raises(IntegrityError):
        await database.transaction(duplicate_user)

    stored = await receive(store, inbound())
    assert await store.get_message(stored.id) == stored
    assert await count(database, User) == 1  # the message's sender; the pair rolled back


async def test_a_server_refusing_more_connections_is_unavailable_not_an_error(
    postgres_url: str,
) -> None:
    dsn = make_url(postgres_url).set(drivername="postgresql")
    admin = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        await admin.execute("DROP ROLE IF EXISTS zapa_full")
        await admin.execute("CREATE ROLE zapa_full LOGIN CONNECTION LIMIT 0")
        database = open_database(str(make_url(postgres_url).set(username="zapa_full")), 1)
        try:
            with pytest.raises(DependencyUnavailable, match="too many connections"):
                await SqlConversationStore(database).ping()
        finally:
            await database.dispose()
    finally:
        await admin.execute("DROP ROLE IF EXISTS zapa_full")
        await admin.close()
