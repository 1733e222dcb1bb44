"""Many processes: `zapa serve --no-worker` and `zapa worker`, sharing Postgres and Redis.

Every test runs real child processes against the real servers, the fake model and the
fake platforms, and looks only at what users and operators would see.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.cluster import Cluster, conversation_of, eventually
from tests.fake_openai import FakeOpenAI
from tests.fake_telegram import FakeTelegram, text_update
from tests.harness import TOKEN, Receiver, bearer, message, stored_texts
from tests.services import RedisProcess

TELEGRAM_TOKEN = "123456:scale-token"
TELEGRAM_SECRET = "scale-secret"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


def environment(database: str, redis: str, fake: FakeOpenAI) -> dict[str, str]:
    return {
        "DATABASE_URL": database,
        "REDIS_URL": redis,
        "OPENAI_BASE_URL": fake.base_url,
        "WEBHOOK_TOKEN": TOKEN,
        "QUEUE_LEASE_SECONDS": "3",
        "JOB_MAX_ATTEMPTS": "2",
        "JOB_RETRY_SECONDS": "0.2",
        "SHUTDOWN_GRACE_SECONDS": "10",
    }


@pytest.fixture
async def cluster(
    tmp_path: Path, postgres_url: str, redis_url: str, fake: FakeOpenAI
) -> AsyncIterator[Cluster]:
    running = Cluster(tmp_path, **environment(postgres_url, redis_url, fake))
    try:
        yield running
    finally:
        await running.close()


async def post(
    session: aiohttp.ClientSession, web: str, body: dict[str, Any], **headers: str
) -> aiohttp.ClientResponse:
    async with session.post(
        f"{web}/webhooks/generic", json=body, headers=bearer(**headers)
    ) as response:
        await response.read()
        return response


async def queue_stats(cluster: Cluster) -> dict[str, Any]:
    status, output = await cluster.command("queue", "stats", "--json")
    assert status == 0, output
    stats: dict[str, Any] = orjson.loads(output.strip().splitlines()[-1])
    return stats


async def test_two_workers_answer_every_message_once_each_conversation_in_order(
    cluster: Cluster, fake: FakeOpenAI, receiver: Receiver
) -> None:
    fake.latency = 0.05
    web = await cluster.web()
    # Each worker asks for a model of its own name, so the prompts show who did the work.
    await cluster.worker(concurrency=20, OPENAI_MODEL="model-a")
    await cluster.worker(concurrency=20, OPENAI_MODEL="model-b")
    conversations, turns = 50, 5

    async def converse(session: aiohttp.ClientSession, n: int) -> None:
        for k in range(turns):
            body = message(f"c{n}-m{k}", conversation=f"conv-{n}", callback_url=receiver.url)
            assert (await post(session, web, body)).status == 202

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(converse(session, n) for n in range(conversations)))
    callbacks = await receiver.wait_for(conversations * turns, seconds=60)
    await asyncio.sleep(1.0)  # a duplicate would arrive now

    assert len(receiver.received) == conversations * turns
    assert len({callback["message_id"] for callback in callbacks}) == conversations * turns
    replies: dict[str, list[str]] = defaultdict(list)
    for callback in callbacks:
        replies[callback["conversation_id"]].append(callback["reply"])
    for n in range(conversations):
        assert replies[f"conv-{n}"] == [f"echo: c{n}-m{k}" for k in range(turns)]
    prompts: dict[str, list[list[str]]] = defaultdict(list)
    for request in fake.requests:
        prompts[conversation_of(request)].append([m["content"] for m in request["messages"][1:]])
    for n in range(conversations):
        history: list[str] = []
        for k, prompt in enumerate(prompts[f"c{n}"]):
            assert prompt == [*history, f"c{n}-m{k}"]  # every earlier turn, in order
            history += [f"c{n}-m{k}", f"echo: c{n}-m{k}"]
        assert len(prompts[f"c{n}"]) == turns
    models = {request["model"] for request in fake.requests}
    assert models == {"model-a", "model-b"}
    stats = await queue_stats(cluster)
    assert stats["jobs"] == 0
    assert stats["dead"] == 0
    assert stats["wait_p50_ms"] is not None


async def test_synchronous_and_streaming_requests_are_answered_by_a_worker_elsewhere(
    cluster: Cluster, fake: FakeOpenAI
) -> None:
    fake.chunk_delay = 0.05
    web = await cluster.web()
    await cluster.worker(concurrency=4)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{web}/webhooks/generic", json=message("wait for me"), headers=bearer()
        ) as response:
            assert response.status == 200
            assert (await response.json())["reply"] == "echo: wait for me"
        async with session.post(
            f"{web}/webhooks/generic",
            json=message("stream to me", conversation="sse"),
            headers=bearer(Accept="text/event-stream"),
        ) as response:
            assert response.status == 200
            stream = (await response.read()).decode()
    events = [block for block in stream.split("\n\n") if block.strip()]
    assert sum(block.startswith("event: delta") for block in events) >= 2
    assert events[-1].startswith("event: done")
    assert '"reply":"echo: stream to me"' in events[-1]


async def test_a_waiting_caller_gets_its_reply_even_when_the_reply_event_is_lost(
    cluster: Cluster, fake: FakeOpenAI, redis_url: str
) -> None:
    fake.latency = 1.0
    web = await cluster.web()
    await cluster.worker(concurrency=2)
    redis = aioredis.Redis.from_url(redis_url)

    async def cut_reply_events() -> None:
        # The web process's subscription to reply events drops again and again, as on a
        # flaky network to Redis, while the worker publishes the reply.
        for _ in range(125):
            await redis.client_kill_filter(_type="pubsub")
            await asyncio.sleep(0.02)

    try:
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.ensure_future(
                session.post(f"{web}/webhooks/generic", json=message("find me"), headers=bearer())
            )
            await fake.wait_for_requests(1)
            await cut_reply_events()
            async with asyncio.timeout(15):  # the wait itself would go on for minutes
                response = await waiting
                body = await response.json()
    finally:
        await redis.aclose()
    # The event never reached the web process; the reply was read from the store.
    [web_process] = [p for p in cluster.processes if p.name == "web"]
    assert "reply_bus_disconnected" in web_process.output()
    assert response.status == 200
    assert body["reply"] == "echo: find me"


async def test_worker_killed_mid_reply_leaves_the_job_to_another_that_answers_once(
    cluster: Cluster, fake: FakeOpenAI, receiver: Receiver
) -> None:
    fake.stall(60)  # the first worker's model call hangs until it is killed
    web = await cluster.web()
    doomed = await cluster.worker(concurrency=2)
    async with aiohttp.ClientSession() as session:
        body = message("survive this", callback_url=receiver.url)
        assert (await post(session, web, body)).status == 202
    await fake.wait_for_requests(1)
    assert await doomed.stop(signal.SIGKILL) == -signal.SIGKILL
    await cluster.worker(concurrency=2)  # claims the job once its lease (3 s) runs out
    [callback] = await receiver.wait_for(1, seconds=30)
    await asyncio.sleep(2.0)
    assert len(receiver.received) == 1
    assert callback["reply"] == "echo: survive this"
    assert len(fake.requests) == 2  # the dead worker's call, and the one that answered


async def test_sigterm_finishes_the_reply_in_flight_and_hands_back_the_rest(
    cluster: Cluster, fake: FakeOpenAI, receiver: Receiver
) -> None:
    fake.latency = 2.0
    web = await cluster.web()
    first = await cluster.worker(concurrency=1)
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            body = message(f"drain {n}", conversation=f"d{n}", callback_url=receiver.url)
            assert (await post(session, web, body)).status == 202
    await fake.wait_for_requests(1)
    assert await first.stop(signal.SIGTERM) == 0
    assert "worker_stopped" in first.output()
    [finished] = await receiver.wait_for(1, seconds=5)  # delivered before the exit
    assert finished["reply"].startswith("echo: drain")
    fake.latency = 0.0
    await cluster.worker(concurrency=4)
    callbacks = await receiver.wait_for(3, seconds=30)
    assert sorted(callback["reply"] for callback in callbacks) == [
        f"echo: drain {n}" for n in range(3)
    ]
    await asyncio.sleep(1.0)
    assert len(receiver.received) == 3


async def test_poison_job_goes_to_the_dead_letters_and_can_be_retried(
    cluster: Cluster, fake: FakeOpenAI
) -> None:
    async with FakeTelegram(token=TELEGRAM_TOKEN) as telegram:
        platform = {
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
            "TELEGRAM_API_URL": telegram.base_url.removesuffix("/bot"),
            "TELEGRAM_STREAMING": "false",
        }
        web = await cluster.web(**platform)
        # A worker without the Telegram set-up cannot deliver: every attempt fails.
        misconfigured = await cluster.worker(concurrency=2)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{web}/webhooks/telegram",
                json=text_update("poison", update_id=7),
                headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
            ) as response,
        ):
            assert response.status == 200

        async def dead_letter() -> bool:
            return bool((await queue_stats(cluster))["dead"] >= 1)

        await eventually(dead_letter)
        stats = await queue_stats(cluster)
        assert (stats["dead"], stats["jobs"]) == (1, 0)
        status, readable = await cluster.command("queue", "stats")
        assert status == 0
        assert "dead letters:            1" in readable

        assert await misconfigured.stop() == 0
        await cluster.worker(concurrency=2, **platform)  # the set-up is fixed
        status, output = await cluster.command("queue", "retry-dead")
        assert (status, output.strip().splitlines()[-1]) == (0, "requeued 1 dead-lettered job")
        await telegram.wait_for_calls("sendMessage", 1)
        assert (await queue_stats(cluster))["dead"] == 0
    # The turn was closed as failed when the job died: the person gets the apology.
    assert "Sorry" in telegram.sent()[0]["text"]


async def test_redis_outage_means_503_loses_no_accepted_message_and_heals_itself(
    tmp_path: Path, postgres_url: str, fake: FakeOpenAI, receiver: Receiver
) -> None:
    redis = RedisProcess()
    redis.start()
    cluster = Cluster(tmp_path, **environment(postgres_url, redis.url, fake))
    try:
        fake.latency = 1.5
        web = await cluster.web()
        await cluster.worker(concurrency=1)
        async with aiohttp.ClientSession() as session:
            for name in ("before-a", "before-b"):  # b waits in Redis behind a
                body = message(name, conversation=name, callback_url=receiver.url)
                assert (await post(session, web, body)).status == 202
            await fake.wait_for_requests(1)
            redis.stop()  # b's job is gone with Redis's data; the database still has b
            during = await post(
                session, web, message("during", conversation="during", callback_url=receiver.url)
            )
            assert during.status == 503
            assert during.headers["Retry-After"]
            async with session.get(f"{web}/ready") as ready:
                assert ready.status == 503
                assert (await ready.json())["checks"]["redis"]["status"] == "unavailable"
            await asyncio.sleep(2.0)
            redis.start()  # the same port, empty
            fake.latency = 0.0
            body = message("after", conversation="after", callback_url=receiver.url)

            async def accepted() -> bool:  # the web process reconnects on its own
                response = await post(session, web, body, **{"Idempotency-Key": "k1"})
                return response.status == 202

            await eventually(accepted, 10)
        callbacks = await receiver.wait_for(3, seconds=30)
        await asyncio.sleep(1.0)
        assert sorted(callback["reply"] for callback in callbacks) == [
            "echo: after",
            "echo: before-a",
            "echo: before-b",
        ]
        assert len(receiver.received) == 3
        assert "during" not in await stored_texts(postgres_url)
    finally:
        await cluster.close()
        redis.close()


async def test_sigterm_to_a_web_process_lets_its_waiting_requests_finish(
    cluster: Cluster, fake: FakeOpenAI
) -> None:
    fake.latency = 2.0
    web = await cluster.web()
    await cluster.worker(concurrency=2)
    async with aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(
            session.post(f"{web}/webhooks/generic", json=message("hold on"), headers=bearer())
        )
        await fake.wait_for_requests(1)
        stopping = asyncio.create_task(cluster.processes[0].stop(signal.SIGTERM))
        response = await waiting
        assert response.status == 200
        assert (await response.json())["reply"] == "echo: hold on"
        assert await stopping == 0
