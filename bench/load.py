"""The load generator: worker processes with aiohttp clients posting generic webhooks.

Every request is a new conversation with its own text, so a reply proves it answered that
request. Two modes: ``rate`` sends on a fixed schedule whatever the answers do (open loop;
latency counts from the scheduled time, so a stalled server cannot hide its queueing), and
``closed`` keeps ``concurrency`` requests in flight for ``duration`` seconds. A worker sends
its requests to its plan's URLs in turn, so several web processes share the load evenly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import resource
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Literal

import aiohttp
import orjson


@dataclass(frozen=True, slots=True)
class Plan:
    """What one worker process sends in one phase."""

    urls: tuple[str, ...]  # webhook URLs; request ``k`` of a worker goes to ``urls[k % len]``
    token: str
    tag: str  # makes conversation ids unique across runs, phases and workers
    worker: int
    workers: int
    mode: Literal["rate", "closed"]
    duration: float
    rate: float = 0.0  # conversations per second over all workers (rate mode)
    concurrency: int = 1  # requests in flight in this worker (closed mode)
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: seconds to the answer, ``"200"``/``"503"``/``"timeout"``…, its verdict.

    ``finished`` is when the answer arrived, in seconds since the worker's phase began.
    """

    latency: float
    status: str
    ok: bool
    message_id: int | None
    finished: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """Everything one worker saw in one phase."""

    samples: list[Sample]
    cpu_seconds: float
    wall_seconds: float
    max_send_lag: float


def run_worker(plan: Plan, start: Barrier, results: Queue[WorkerResult]) -> None:
    """Process entry point: wait for the others at ``start``, run the plan, report."""
    results.put(asyncio.run(_run(plan, start)))


async def _run(plan: Plan, start: Barrier) -> WorkerResult:
    limit = plan.concurrency if plan.mode == "closed" else 0
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start.wait()
        cpu_before = _cpu_seconds()
        began = time.perf_counter()
        if plan.mode == "rate":
            samples, lag = await _open_loop(session, plan)
        else:
            samples, lag = await _closed_loop(session, plan), 0.0
        wall = time.perf_counter() - began
        samples = [dataclasses.replace(s, finished=s.finished - began) for s in samples]
        return WorkerResult(samples, _cpu_seconds() - cpu_before, wall, lag)


async def _open_loop(session: aiohttp.ClientSession, plan: Plan) -> tuple[list[Sample], float]:
    """Worker ``i`` of ``n`` sends requests ``i, i+n, i+2n…`` of one evenly spaced schedule."""
    began = time.perf_counter()
    tasks: list[asyncio.Task[Sample]] = []
    max_lag = 0.0
    for k in itertools.count():
        offset = (k * plan.workers + plan.worker) / plan.rate
        if offset >= plan.duration:
            break
        due = began + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, time.perf_counter() - due)
        tasks.append(asyncio.create_task(_converse(session, plan, k, due)))
    return list(await asyncio.gather(*tasks)), max_lag


async def _closed_loop(session: aiohttp.ClientSession, plan: Plan) -> list[Sample]:
    deadline = time.perf_counter() + plan.duration
    numbers = itertools.count()

    async def connection() -> list[Sample]:
        samples: list[Sample] = []
        while time.perf_counter() < deadline:
            samples.append(await _converse(session, plan, next(numbers), time.perf_counter()))
        return samples

    batches = await asyncio.gather(*(connection() for _ in range(plan.concurrency)))
    return [sample for batch in batches for sample in batch]


async def _converse(
    session: aiohttp.ClientSession, plan: Plan, number: int, since: float
) -> Sample:
    """Post one new conversation's first message and judge the answer."""
    conversation = f"{plan.tag}-{plan.worker}-{number}"
    text = f"hello from {conversation}"
    body = orjson.dumps({"conversation_id": conversation, "user_id": conversation, "text": text})
    headers = {"Authorization": f"Bearer {plan.token}", "Content-Type": "application/json"}
    url = plan.urls[number % len(plan.urls)]
    try:
        async with session.post(url, data=body, headers=headers) as response:
            status = response.status
            payload = await response.read()
    except TimeoutError:
        return _failed(since, "timeout")
    except aiohttp.ClientError as exc:
        return _failed(since, type(exc).__name__)
    if status != 200:
        return _failed(since, str(status))
    try:
        answer = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _failed(since, "200 not json")
    now = time.perf_counter()
    # The fake model echoes the message, so the reply must carry this request's own text.
    ok = answer.get("conversation_id") == conversation and text in str(answer.get("reply"))
    message_id = answer.get("message_id")
    return Sample(
        now - since,
        "200" if ok else "200 wrong reply",
        ok,
        message_id if isinstance(message_id, int) else None,
        finished=now,
    )


def _failed(since: float, status: str) -> Sample:
    now = time.perf_counter()
    return Sample(now - since, status, False, None, finished=now)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
