"""Answering the calls made in one turn of the event loop together: one batch, one trip.

Under load, the webhooks handled in one turn of the event loop each ask the database or
Redis the same kind of question; asked together, they cost one round trip instead of one
each. Alone, a call waits for no one: its batch of one goes out in the next turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


class Coalescer(Generic[_T, _R]):
    """Answers the calls made in one turn of the event loop with one call of ``many``.

    ``many`` gets the calls' items in order and returns, in the same order, each call's
    result or the exception that call is to raise; if ``many`` itself raises, every call
    raises that.
    """

    def __init__(self, many: Callable[[list[_T]], Awaitable[list[_R | BaseException]]]) -> None:
        self._many = many
        self._pending: list[tuple[_T, asyncio.Future[_R]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def one(self, item: _T) -> _R:
        """The result for ``item``, from the batch it joins."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._answer(batch))
        self._running.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._running.discard)

    async def _answer(self, batch: list[tuple[_T, asyncio.Future[_R]]]) -> None:
        outcomes: list[_R | BaseException]
        try:
            outcomes = await self._many([item for item, _ in batch])
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller was cancelled; the work stands
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
