"""The in-process job queue: one process, at-least-once, one job per conversation at a time.

Jobs live in memory only; durability comes from the store: every job stands for a message
stored as ``received``, and :meth:`bot.engine.Engine.recover` enqueues those again when the
process starts. The Redis-backed queue for several processes implements the same port.

A backlog (a burst, a slow model, a platform's rate limit) can hold tens of thousands of
jobs, and the garbage collector walks every container object they keep alive in each of
its full passes, which then pause the event loop for a tenth of a second and more. So a
waiting job costs one such object where it can: a conversation with one job waiting keeps
the job itself rather than a deque of one, and beyond the first ``cached_messages``
jobs waiting, a job drops its copy of the message (the worker reads it back, one indexed
read, when its turn comes).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque

from bot.ports import Job

# Jobs waiting beyond this many keep no copy of their message.
CACHED_MESSAGES = 1000

# A conversation's waiting jobs: the one job, or several in order.
_Lane = Job | deque[Job]


class MemoryQueue:
    """Per-conversation lanes; a lane is ready when it has jobs and none in flight.

    A conversation id sits in ``_ready`` exactly when its lane is non-empty and no job of it
    is in flight or waiting out a retry delay, so ``get`` never hands out two jobs of one
    conversation at once and keeps each lane's order.
    """

    def __init__(self, *, cached_messages: int = CACHED_MESSAGES) -> None:
        self._cached_messages = cached_messages
        self._queued: set[int] = set()  # message ids with a job waiting or in flight
        self.dead: deque[tuple[Job, str]] = deque(maxlen=1000)
        self._lanes: dict[int, _Lane] = {}
        self._busy: set[int] = set()
        self._ready: asyncio.Queue[int] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()

    async def put(self, job: Job) -> bool:
        """Append the job to its conversation's lane, unless its message is queued already."""
        if job.message_id in self._queued:
            return False
        if job.message is not None and len(self._queued) >= self._cached_messages:
            job = dataclasses.replace(job, message=None)
        self._queued.add(job.message_id)
        if self._add(job) and job.conversation_id not in self._busy:
            self._ready.put_nowait(job.conversation_id)
        return True

    async def get(self) -> Job:
        """Wait for the oldest job of a conversation that has nothing in flight."""
        conversation_id = await self._ready.get()
        self._busy.add(conversation_id)
        lane = self._lanes[conversation_id]
        if not isinstance(lane, deque):
            del self._lanes[conversation_id]
            return lane
        job = lane.popleft()
        if len(lane) == 1:
            self._lanes[conversation_id] = lane[0]
        return job

    async def ack(self, job: Job) -> None:
        """Release the job's conversation for its next job."""
        self._queued.discard(job.message_id)
        self._release(job.conversation_id)

    async def bury(self, job: Job, error: str) -> None:
        """Keep the last thousand given-up jobs for inspection, and release the conversation."""
        self.dead.append((job, error))
        await self.ack(job)

    async def retry(self, job: Job, delay: float) -> None:
        """Put the job back at the head of its lane, runnable again after ``delay`` seconds."""
        again = dataclasses.replace(job, attempt=job.attempt + 1)
        self._add(again, first=True)
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def release() -> None:
            self._timers.discard(handle)
            self._release(job.conversation_id)

        handle = loop.call_later(delay, release)
        self._timers.add(handle)

    async def depth(self) -> int:
        """Jobs waiting plus conversations with a job in flight."""
        waiting = sum(len(lane) if isinstance(lane, deque) else 1 for lane in self._lanes.values())
        return waiting + len(self._busy)

    async def aclose(self) -> None:
        """Cancel pending retry timers; the store still knows every unfinished message."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def _add(self, job: Job, *, first: bool = False) -> bool:
        """Put ``job`` at the end (or the head) of its lane; whether the lane was empty."""
        lane = self._lanes.get(job.conversation_id)
        if lane is None:
            self._lanes[job.conversation_id] = job
            return True
        if not isinstance(lane, deque):
            lane = self._lanes[job.conversation_id] = deque((lane,))
        if first:
            lane.appendleft(job)
        else:
            lane.append(job)
        return False

    def _release(self, conversation_id: int) -> None:
        self._busy.discard(conversation_id)
        if conversation_id in self._lanes:
            self._ready.put_nowait(conversation_id)
