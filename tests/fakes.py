"""In-memory fakes of the engine's outbound port, typed against the Protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.messages import Reply, StoredMessage
from bot.ports import ReplyStream, Sender


class RecordingSender:
    """Records every delivered reply; fails the first ``fail_times`` deliveries."""

    def __init__(self, fail_times: int = 0, *, live: bool = True) -> None:
        self.live = live
        self.failure: type[Exception] = ConnectionError
        self.delivered: list[Reply] = []
        self.deltas: dict[int, list[str]] = {}
        self.attempts = 0
        self.fail_times = fail_times
        self.changed = asyncio.Condition()

    @asynccontextmanager
    async def reply_stream(self, message: StoredMessage) -> AsyncIterator[ReplyStream]:
        yield _Stream(self, message)

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Reply]:
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: len(self.delivered) >= count)
        return self.delivered

    async def wait_for_attempts(self, count: int, seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: self.attempts >= count)


class _Stream:
    def __init__(self, sender: RecordingSender, message: StoredMessage) -> None:
        self._sender = sender
        self._message = message

    @property
    def live(self) -> bool:
        return self._sender.live

    async def delta(self, text: str) -> None:
        self._sender.deltas.setdefault(self._message.id, []).append(text)

    async def finish(self, reply: Reply) -> None:
        async with self._sender.changed:
            self._sender.attempts += 1
            self._sender.changed.notify_all()
            if self._sender.fail_times > 0:
                self._sender.fail_times -= 1
                raise self._sender.failure("the platform is down")
            self._sender.delivered.append(reply)


_: type[Sender] = RecordingSender
