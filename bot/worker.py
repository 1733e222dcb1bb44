"""Workers: take jobs from the queue, let the engine answer them, acknowledge or retry."""

from __future__ import annotations

import asyncio
import random

import structlog

from bot.engine import Engine
from bot.errors import DependencyUnavailable
from bot.ports import Job, Queue

logger = structlog.get_logger(__name__)

# The share of the slots that take jobs even while the webhooks go first.
STEADY_SHARE = 0.1


class Worker:
    """Runs up to ``concurrency`` jobs at once (one per conversation, as the queue hands out).

    A job that raises is handed back with exponential backoff; after ``max_attempts`` the
    engine closes it as failed so the user hears back and nothing waits forever. An
    unavailable database or Redis is waited out instead: the job is not at fault.

    While the engine is busy accepting a flood of messages, only a tenth of the slots
    (:data:`STEADY_SHARE`, at least one) take new jobs, so replies go on, more slowly,
    while the webhooks are acknowledged first.
    """

    def __init__(
        self,
        engine: Engine,
        queue: Queue,
        *,
        concurrency: int,
        max_attempts: int = 5,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self._engine = engine
        self._queue = queue
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._stopping = False

    def start(self) -> None:
        """Start the worker tasks on the running loop."""
        steady = max(1, int(self._concurrency * STEADY_SHARE))
        self._tasks = [
            asyncio.create_task(self._loop(steady=n < steady), name=f"zapa-worker-{n}")
            for n in range(self._concurrency)
        ]

    async def stop(self, grace: float) -> None:
        """Stop taking jobs, let jobs in flight finish within ``grace`` seconds, then cancel.

        A cancelled job is not lost: its message is still unfinished in the store.
        """
        self._stopping = True
        for task in self._tasks:
            if task not in self._busy:
                task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if pending:
                logger.warning("worker_stopped_with_jobs_in_flight", count=len(pending))
        self._tasks = []

    async def _loop(self, *, steady: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            if not steady:
                await self._engine.calm()
            job = await self._queue.get()
            self._busy.add(task)
            try:
                await self._run(job)
            finally:
                self._busy.discard(task)

    async def _run(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(
            request_id=job.request_id, message_id=job.message_id
        ):
            try:
                await self._engine.process(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(job, exc)
            else:
                await self._queue.ack(job)

    async def _failed(self, job: Job, exc: Exception) -> None:
        # An outage of the database or Redis says nothing about the job: it waits the outage
        # out (at most ``retry_max`` between tries) instead of using up its attempts.
        outage = isinstance(exc, DependencyUnavailable)
        if job.attempt < self._max_attempts or outage:
            delay = min(self._retry_max, self._retry_base * 2 ** (job.attempt - 1))
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
            logger.warning(
                "job_failed_will_retry", attempt=job.attempt, delay=round(delay, 2), error=repr(exc)
            )
            await self._queue.retry(job, delay)
            return
        try:
            await self._engine.give_up(job, exc)
        except Exception as final:
            logger.error("job_give_up_failed", error=repr(final))
        await self._queue.bury(job, repr(exc))
