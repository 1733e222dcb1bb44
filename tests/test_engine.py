"""The engine, queue and worker with a real store and model client, and a recording sender."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from bot.engine import Engine, EngineConfig, Outcome
from bot.errors import DependencyUnavailable
from bot.llm import OpenAIResponder
from bot.messages import InboundMessage, MessageStatus
from bot.ports import Job, RateDecision, RateLimiter, WindowUsage
from bot.queue import MemoryQueue
from bot.ratelimit import LimitsRateLimiter
from bot.worker import Worker
from storage.admin_queries import SqlAdminQueries
from storage.db import open_database
from storage.repository import SqlConversationStore
from tests.cluster import eventually
from tests.fake_openai import FakeOpenAI
from tests.fakes import RecordingSender


@dataclass
class Rig:
    engine: Engine
    store: SqlConversationStore
    queue: MemoryQueue
    sender: RecordingSender
    fake: FakeOpenAI
    worker: Worker


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@asynccontextmanager
async def running_rig(
    sqlite_url: str,
    fake: FakeOpenAI,
    *,
    history_max_tokens: int = 4000,
    limiter: RateLimiter | None = None,
    cached_messages: int = 1000,
    busy_accepts: int = 16,
    calm_accepts: int = 4,
) -> AsyncIterator[Rig]:
    db = open_database(sqlite_url, 5)
    store = SqlConversationStore(db)
    responder = OpenAIResponder(
        model="gpt-test",
        base_url=fake.base_url,
        max_attempts=2,
        backoff_base=0.01,
        backoff_max=0.02,
    )
    queue = MemoryQueue(cached_messages=cached_messages)
    engine = Engine(
        store=store,
        limiter=limiter or LimitsRateLimiter.in_memory([(100, "minute")]),
        responder=responder,
        queue=queue,
        config=EngineConfig(
            system_prompt="sys",
            history_max_tokens=history_max_tokens,
            busy_accepts=busy_accepts,
            calm_accepts=calm_accepts,
        ),
    )
    sender = RecordingSender()
    engine.register_sender("test", sender)
    worker = Worker(engine, queue, concurrency=4, max_attempts=3, retry_base=0.01, retry_max=0.05)
    worker.start()
    try:
        yield Rig(engine, store, queue, sender, fake, worker)
    finally:
        await worker.stop(1.0)
        await queue.aclose()
        await responder.aclose()
        await db.dispose()


@pytest.fixture
async def rig(sqlite_url: str, fake: FakeOpenAI) -> AsyncIterator[Rig]:
    async with running_rig(sqlite_url, fake) as started:
        yield started


def inbound(
    text: str, conversation: str = "c1", *, user_id: str = "u1", **extra: object
) -> InboundMessage:
    return InboundMessage(
        platform="test",
        conversation_key=conversation,
        user_id=user_id,
        text=text,
        **extra,  # type: ignore[arg-type]
    )


async def test_queue_hands_out_one_job_per_conversation_in_order() -> None:
    queue = MemoryQueue()
    for n in range(3):
        await queue.put(Job(message_id=n, conversation_id=1))
    await queue.put(Job(message_id=10, conversation_id=2))
    first = await queue.get()
    other = await queue.get()
    assert (first.message_id, other.message_id) == (0, 10)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await queue.get()  # conversation 1 is busy, conversation 2 is busy
    await queue.ack(first)
    assert (await queue.get()).message_id == 1
    assert await queue.depth() == 3  # one waiting, two in flight


async def test_retried_job_comes_back_first_after_its_delay() -> None:
    queue = MemoryQueue()
    await queue.put(Job(message_id=1, conversation_id=7))
    await queue.put(Job(message_id=2, conversation_id=7))
    job = await queue.get()
    await queue.retry(job, 0.05)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await queue.get()
    again = await queue.get()
    assert (again.message_id, again.attempt) == (1, 2)
    await queue.aclose()


async def test_queue_keeps_order_and_depth_across_single_and_multi_job_lanes() -> None:
    queue = MemoryQueue()
    for n in (1, 2, 3):
        await queue.put(Job(message_id=n, conversation_id=5))
    assert not await queue.put(Job(message_id=2, conversation_id=5))  # queued already
    assert await queue.depth() == 3
    handed = []
    for _ in range(3):
        job = await queue.get()
        handed.append(job.message_id)
        if job.message_id == 2:
            await queue.retry(job, 0.0)  # back to the head of the lane
            job = await queue.get()
            assert (job.message_id, job.attempt) == (2, 2)
        await queue.ack(job)
    assert handed == [1, 2, 3]
    assert await queue.depth() == 0
    await queue.aclose()


async def test_a_backlog_beyond_the_cached_messages_is_answered_in_order(
    sqlite_url: str, fake: FakeOpenAI
) -> None:
    async with running_rig(sqlite_url, fake, cached_messages=1) as rig:
        await rig.worker.stop(1.0)  # let a backlog build
        for n in range(4):
            await rig.engine.accept(inbound(f"question {n}", conversation=f"c{n % 2}"))
        assert await rig.queue.depth() == 4
        worker = Worker(rig.engine, rig.queue, concurrency=4, max_attempts=3)
        worker.start()
        try:
            replies = await rig.sender.wait_for(4)
        finally:
            await worker.stop(1.0)

    assert sorted(reply.text for reply in replies) == [f"echo: question {n}" for n in range(4)]
    for conversation in ("c0", "c1"):
        texts = [r.text for r in replies if r.inbound.conversation_key == conversation]
        assert texts == sorted(texts)


class HeldLimiter:
    """The in-memory limiter, except that the user ``held`` waits for ``release``."""

    def __init__(self) -> None:
        self._inner = LimitsRateLimiter.in_memory([(100, "minute")])
        self.release = asyncio.Event()

    async def hit(self, key: str, windows: str | None = None) -> RateDecision:
        if key.endswith(":held"):
            await self.release.wait()
        return await self._inner.hit(key, windows)

    async def usage(self, key: str, windows: str | None = None) -> list[WindowUsage]:
        return await self._inner.usage(key, windows)

    async def ping(self) -> None:
        await self._inner.ping()


@pytest.mark.parametrize(("awaited", "slots"), [(False, 1), (True, 3)], ids=["acked", "awaited"])
async def test_while_a_flood_is_accepted_only_the_steady_slots_take_jobs(
    sqlite_url: str,
    fake: FakeOpenAI,
    awaited: bool,
    slots: int,
) -> None:
    # A message whose caller waits for its reply (awaited) is no flood to give way to.
    limiter = HeldLimiter()
    fake.stall(0.5, times=None)
    async with running_rig(
        sqlite_url, fake, limiter=limiter, busy_accepts=1, calm_accepts=0
    ) as rig:
        await rig.worker.stop(1.0)
        flood = asyncio.create_task(
            rig.engine.accept(inbound("held", "c-held", user_id="held"), awaited=awaited)
        )
        await asyncio.sleep(0.01)  # the flood is being accepted from now on
        for n in range(3):
            await rig.engine.accept(inbound(f"question {n}", f"c{n}", user_id=f"u{n}"))
        worker = Worker(rig.engine, rig.queue, concurrency=10)  # one steady slot
        worker.start()
        try:
            await fake.wait_for_requests(slots)
            await asyncio.sleep(0.2)
            assert len(fake.requests) == slots

            limiter.release.set()
            await flood
            await fake.wait_for_requests(4)
            assert len(await rig.sender.wait_for(4)) == 4
        finally:
            await worker.stop(1.0)


async def test_undelivered_reply_is_redelivered_without_asking_the_model_again(rig: Rig) -> None:
    rig.sender.fail_times = 2
    accepted = await rig.engine.accept(inbound("deliver me"))
    [reply] = await rig.sender.wait_for(1)
    assert reply.text == "echo: deliver me"
    assert rig.sender.attempts == 3
    assert len(rig.fake.requests) == 1

    async def recorded() -> bool:  # bookkeeping after the send, not before it
        stored = await rig.store.reply_for(accepted.message_id)
        return stored is not None and stored.delivered

    await eventually(recorded, seconds=5)


async def test_reply_undeliverable_after_every_attempt_is_delivered_on_recovery(rig: Rig) -> None:
    rig.sender.fail_times = 3  # the worker's three attempts all fail
    accepted = await rig.engine.accept(inbound("unlucky"))
    await rig.sender.wait_for_attempts(3)
    await asyncio.sleep(0.1)
    assert rig.sender.delivered == []
    message = await rig.store.get_message(accepted.message_id)
    assert message is not None and message.status is MessageStatus.ANSWERED
    # The platform is back; on the next start the stored answer goes out, the model is not asked.
    assert await rig.engine.recover() == 1
    [reply] = await rig.sender.wait_for(1)
    assert reply.text == "echo: unlucky"
    assert len(rig.fake.requests) == 1


async def test_model_failure_is_an_apology_and_a_failed_turn(rig: Rig) -> None:
    rig.fake.fail(500, times=None)
    accepted = await rig.engine.accept(inbound("anyone?"))
    [reply] = await rig.sender.wait_for(1)
    assert reply.status is MessageStatus.FAILED
    assert reply.text.startswith("Sorry")
    message = await rig.store.get_message(accepted.message_id)
    assert message is not None and message.status is MessageStatus.FAILED


async def test_deltas_reach_the_sender_before_the_reply(rig: Rig) -> None:
    rig.fake.answer = lambda body: "alpha beta gamma"
    accepted = await rig.engine.accept(inbound("stream"))
    [reply] = await rig.sender.wait_for(1)
    assert "".join(rig.sender.deltas[accepted.message_id]) == reply.text == "alpha beta gamma"


async def test_duplicate_event_is_answered_once(rig: Rig) -> None:
    first = await rig.engine.accept(inbound("hello", event_id="e-1"))
    again = await rig.engine.accept(inbound("hello", event_id="e-1"))
    assert first.outcome is Outcome.QUEUED
    assert again.outcome is Outcome.DUPLICATE
    assert again.message_id == first.message_id
    await rig.sender.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(rig.sender.delivered) == 1
    assert len(rig.fake.requests) == 1


async def test_history_is_trimmed_to_the_token_budget(sqlite_url: str, fake: FakeOpenAI) -> None:
    async with running_rig(sqlite_url, fake, history_max_tokens=200) as small:
        for n in range(6):
            await small.engine.accept(inbound(f"{n} " + "word " * 30))
        await small.sender.wait_for(6)
    last = fake.requests[-1]["messages"]
    assert last[0] == {"role": "system", "content": "sys"}
    assert last[-1]["content"].startswith("5 ")
    # Only the newest turns that fit: fewer than the five earlier ones, newest kept.
    kept = [m["content"].split()[0] for m in last[1:-1] if m["role"] == "user"]
    assert [m["role"] for m in last[1:-1]] == ["user", "assistant"] * len(kept)
    assert 0 < len(kept) < 5
    assert kept == [str(n) for n in range(5 - len(kept), 5)]


async def test_an_outage_is_waited_out_without_using_up_the_attempts(rig: Rig) -> None:
    rig.sender.failure = lambda detail: DependencyUnavailable("database", detail)  # type: ignore[assignment]
    rig.sender.fail_times = 6  # twice the worker's attempts
    accepted = await rig.engine.accept(inbound("patience"))
    [reply] = await rig.sender.wait_for(1)
    assert reply.text == "echo: patience"
    assert rig.sender.attempts == 7
    message = await rig.store.get_message(accepted.message_id)
    assert message is not None and message.status is MessageStatus.ANSWERED


async def test_unknown_platform_job_fails_after_attempts_and_worker_survives(rig: Rig) -> None:
    accepted = await rig.engine.accept(
        InboundMessage(platform="nowhere", conversation_key="x", user_id="u", text="hi")
    )
    await asyncio.sleep(0.5)
    message = await rig.store.get_message(accepted.message_id)
    assert message is not None and message.status is MessageStatus.FAILED
    # The worker keeps serving other conversations.
    await rig.engine.accept(inbound("still alive?"))
    [reply] = await rig.sender.wait_for(1)
    assert reply.text == "echo: still alive?"


async def test_recovery_leaves_messages_of_platforms_not_served_here_untouched(rig: Rig) -> None:
    # A process that serves only some platforms (zapa chat, telegram poll, a server with
    # an adapter turned off) must not give up on the others' pending messages.
    elsewhere = await rig.store.store_inbound(
        InboundMessage(platform="nowhere", conversation_key="x", user_id="u", text="later"),
        MessageStatus.RECEIVED,
        dedup_seconds=60,
    )
    mine = await rig.store.store_inbound(
        inbound("pending here"), MessageStatus.RECEIVED, dedup_seconds=60
    )
    assert await rig.engine.recover() == 1
    [reply] = await rig.sender.wait_for(1)
    assert reply.inbound.id == mine.id
    await asyncio.sleep(0.5)  # time enough for a doomed job to be retried and abandoned
    stored = await rig.store.get_message(elsewhere.id)
    assert stored is not None and stored.status is MessageStatus.RECEIVED


async def set_user(sqlite_url: str, user_id: int, **changes: object) -> None:
    database = open_database(sqlite_url, 1)
    try:
        await SqlAdminQueries(database).update_user(
            user_id,
            banned=changes.get("banned"),  # type: ignore[arg-type]
            rate_limit=changes.get("rate_limit"),  # type: ignore[arg-type]
            set_rate_limit="rate_limit" in changes,
        )
    finally:
        await database.dispose()


async def test_a_banned_user_is_told_once_and_the_model_is_not_asked(
    rig: Rig, sqlite_url: str
) -> None:
    first = await rig.engine.accept(inbound("hi"))
    await rig.sender.wait_for(1)
    stored = await rig.store.get_message(first.message_id)
    assert stored is not None
    await set_user(sqlite_url, stored.user_id, banned=True)

    outcomes = [await rig.engine.accept(inbound(text)) for text in ("a", "b", "/help")]

    assert [o.outcome for o in outcomes] == [Outcome.BANNED] * 3
    assert [o.queued for o in outcomes] == [True, False, False]
    delivered = await rig.sender.wait_for(2)
    await asyncio.sleep(0.1)
    assert len(rig.sender.delivered) == 2
    assert "blocked" in delivered[1].text
    assert len(rig.fake.requests) == 1  # only the message before the ban
    for accepted in outcomes:
        message = await rig.store.get_message(accepted.message_id)
        assert message is not None and message.status is MessageStatus.BANNED


async def test_a_users_own_limit_replaces_the_default_for_them_only(
    rig: Rig, sqlite_url: str
) -> None:
    first = await rig.engine.accept(inbound("hi"))
    stored = await rig.store.get_message(first.message_id)
    assert stored is not None
    await set_user(sqlite_url, stored.user_id, rate_limit="2/minute")

    # The new windows count from the change on.
    outcomes = [(await rig.engine.accept(inbound(text))).outcome for text in ("1", "2", "3")]
    other = await rig.engine.accept(
        InboundMessage(platform="test", conversation_key="c9", user_id="u2", text="me too")
    )
    assert outcomes == [Outcome.QUEUED, Outcome.QUEUED, Outcome.RATE_LIMITED]
    assert other.outcome is Outcome.QUEUED
    [window] = await rig.engine.usage("test", "u1")
    assert (window.limit, window.period, window.remaining) == (2, "minute", 0)
