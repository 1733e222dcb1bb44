"""The Redis queue against a real Redis: order, ownership, leases, dead letters, hand-back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from bot import keys
from bot.bus import RedisBus
from bot.errors import DependencyUnavailable
from bot.messages import MessageStatus, StoredMessage
from bot.ports import Job, ReplyEvent
from bot.redis_queue import RedisQueue
from bot.runtime import create_redis
from tests.harness import CLOSED_PORT

Queues = Callable[..., RedisQueue]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = create_redis(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
async def queues(client: aioredis.Redis) -> AsyncIterator[Queues]:
    made: list[RedisQueue] = []

    def make(**options: float) -> RedisQueue:
        queue = RedisQueue(client, **options)  # type: ignore[arg-type]
        made.append(queue)
        return queue

    try:
        yield make
    finally:
        for queue in made:
            await queue.aclose()


async def get(queue: RedisQueue, seconds: float = 5.0) -> Job:
    return await asyncio.wait_for(queue.get(), seconds)


async def nothing_for(queue: RedisQueue, seconds: float) -> bool:
    try:
        await asyncio.wait_for(queue.get(), seconds)
    except TimeoutError:
        return True
    return False


async def test_a_conversation_goes_to_one_worker_at_a_time_in_order(queues: Queues) -> None:
    web, first, second = queues(), queues(capacity=1), queues(capacity=1)
    for message_id in (1, 2, 3):
        assert await web.put(Job(message_id, conversation_id=10))
    await web.put(Job(4, conversation_id=20))
    taken = await get(first)
    other = await get(second)
    assert (taken.message_id, other.message_id) == (1, 4)  # never 2 while 1 is in flight
    await first.ack(taken)
    assert (await get(first)).message_id == 2  # the owner goes on with the lane, in order
    assert await nothing_for(second, 0.5)


async def test_putting_a_queued_message_again_changes_nothing(queues: Queues) -> None:
    queue = queues()
    assert await queue.put(Job(1, conversation_id=10))
    assert not await queue.put(Job(1, conversation_id=10))
    job = await get(queue)
    assert not await queue.put(Job(1, conversation_id=10))  # in flight counts as queued
    await queue.ack(job)
    assert await queue.depth() == 0
    assert await nothing_for(queue, 0.4)


async def test_jobs_put_together_are_each_queued_once_in_order(queues: Queues) -> None:
    queue = queues(capacity=1)
    jobs = [Job(1, conversation_id=10), Job(2, conversation_id=10), Job(1, conversation_id=10)]

    added = await asyncio.gather(*(queue.put(job) for job in jobs))

    assert added == [True, True, False]
    assert await queue.depth() == 2
    first = await get(queue)
    await queue.ack(first)
    second = await get(queue)
    assert (first.message_id, second.message_id) == (1, 2)


async def test_a_fresh_job_carries_its_message_and_a_reclaimed_one_does_not(
    queues: Queues, client: aioredis.Redis
) -> None:
    message = StoredMessage(
        id=1,
        conversation_id=10,
        user_id=3,
        platform="webhook",
        conversation_key="t-1",
        platform_user_id="u-1",
        text="hello",
        status=MessageStatus.RECEIVED,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        route={"callback_url": "https://example.com/hook"},
    )
    web, first = queues(), queues()
    await web.put(Job(1, 10, "req-1", message=message))
    fresh = await get(first)
    assert fresh.message == message
    assert fresh.request_id == "req-1"
    await first.ack(fresh)
    await first.pause()

    # A worker that took the next job and died: its entry stays pending, never renewed.
    await web.put(Job(2, 10, message=message))
    await client.xreadgroup(keys.QUEUE_GROUP, "dead-worker", {keys.QUEUE_READY: ">"}, count=1)
    survivor = queues(lease_seconds=1.0)
    reclaimed = await get(survivor, seconds=10)
    assert (reclaimed.message_id, reclaimed.attempt, reclaimed.message) == (2, 2, None)


async def test_a_lease_renewed_during_a_long_job_is_not_taken_over(queues: Queues) -> None:
    owner, other = queues(lease_seconds=1.0), queues(lease_seconds=1.0)
    await owner.put(Job(1, 10))
    job = await get(owner)
    assert await nothing_for(other, 3.0)  # three leases long
    await owner.ack(job)


async def test_a_retried_job_keeps_its_conversation_and_counts_the_attempt(
    queues: Queues,
) -> None:
    owner, other = queues(capacity=5), queues(capacity=5)
    await owner.put(Job(1, 10))
    await owner.put(Job(2, 10))
    job = await get(owner)
    await owner.retry(job, 0.3)
    assert await nothing_for(other, 0.2)
    again = await get(owner)
    assert (again.message_id, again.attempt) == (1, 2)


async def test_buried_jobs_are_counted_and_can_be_queued_again(queues: Queues) -> None:
    queue = queues()
    await queue.put(Job(1, 10))
    await queue.put(Job(2, 10))
    job = await get(queue)
    await queue.bury(job, "RuntimeError('poison')")
    assert (await get(queue)).message_id == 2  # the conversation goes on
    assert not await queue.put(Job(1, 10))  # recovery does not bring a dead job back
    stats = await queue.stats()
    assert (stats.dead, stats.jobs) == (1, 1)
    assert await queue.retry_dead() == 1
    stats = await queue.stats()
    assert (stats.dead, stats.jobs) == (0, 2)


async def test_closing_hands_owned_conversations_back_at_once(queues: Queues) -> None:
    leaving, staying = queues(capacity=2, lease_seconds=60), queues(lease_seconds=60)
    await leaving.put(Job(1, 10))
    assert (await get(leaving)).message_id == 1
    await leaving.aclose()
    assert (await get(staying, seconds=3)).message_id == 1  # no lease to wait out


async def test_stats_show_waiting_in_flight_and_queue_wait(queues: Queues) -> None:
    queue = queues(capacity=1)
    for conversation in (10, 20, 30):
        await queue.put(Job(conversation, conversation))
    job = await get(queue)
    stats = await queue.stats()
    assert stats.jobs == 3
    assert stats.in_flight_conversations == 1
    assert stats.waiting_conversations == 2
    assert stats.workers == 1
    assert stats.oldest_seconds >= 0
    await queue.ack(job)
    assert (await queue.stats()).wait_p50_ms is not None


async def test_unreachable_redis_refuses_the_job_as_unavailable() -> None:
    redis = create_redis(f"redis://127.0.0.1:{CLOSED_PORT}/0")
    try:
        with pytest.raises(DependencyUnavailable, match="redis"):
            await RedisQueue(redis).put(Job(1, 10))
    finally:
        await redis.aclose()


async def test_reply_events_reach_listeners_in_another_process(client: aioredis.Redis) -> None:
    web, worker = RedisBus(client), RedisBus(client)  # two processes' buses, one Redis
    try:
        async with web.listen(7) as events:
            await worker.publish(ReplyEvent(7, delta="hel"))
            await worker.publish(ReplyEvent(8, done=True))  # someone else's
            await worker.publish(ReplyEvent(7, done=True))
            first = await asyncio.wait_for(events.get(), 5)
            second = await asyncio.wait_for(events.get(), 5)
        assert (first.delta, first.done) == ("hel", False)
        assert (second.message_id, second.done, second.reply) == (7, True, None)
    finally:
        await web.aclose()
        await worker.aclose()
