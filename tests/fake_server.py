"""The common part of the fake upstream servers: an aiohttp app on a free local port."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from aiohttp import web


class FakeServer:
    """Serves :meth:`add_routes`' routes on ``127.0.0.1`` and a free port until closed.

    ``_closing`` is set first on close, so handlers that wait (stalls, long polls) can
    return at once instead of holding up the shutdown.
    """

    def __init__(self) -> None:
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._root: str | None = None

    def add_routes(self, app: web.Application) -> None:
        """Register the fake's routes."""
        raise NotImplementedError

    @property
    def root(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._root is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._root

    async def start(self) -> Self:
        """Listen on a free port of ``127.0.0.1``."""
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._root = f"http://{host}:{port}"
        return self

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when the server closes so shutdown never waits."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def _wake_waiters(self) -> None:
        """Called on close, after ``_closing`` is set; wake what waits on other events."""

    async def close(self) -> None:
        """Stop serving; waiting handlers are cut short."""
        self._closing.set()
        self._wake_waiters()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
