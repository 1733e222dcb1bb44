"""Starting Zapa for end-to-end tests: the real app on a real port, with fake upstreams."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from bot.app import create_app
from config import Settings
from storage.db import open_database
from storage.models import Message
from tests.fake_server import FakeServer

ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT = 9  # discard: nothing listens there
TOKEN = "test-token-123"
SECRET = "whsec_" + base64.b64encode(b"zapa-test-secret-0123456789abcdef").decode()


def settings(**overrides: Any) -> Settings:
    """Settings for a test app; no `.env` is read."""
    values: dict[str, Any] = {
        "webhook_token": TOKEN,
        "webhook_secret": SECRET,
        "callback_allow_private": True,
        "log_level": "WARNING",
        "shutdown_grace_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running(
    config: Settings, *, run_worker: bool = True
) -> AsyncIterator[TestClient[Any, Any]]:
    """The app serving on a free port, closed (and drained) on exit."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, run_worker=run_worker)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def message(
    text: str = "Hello", conversation: str = "ticket-42", user: str = "u-7", **extra: Any
) -> dict[str, Any]:
    """A generic-channel request body."""
    return {
        "conversation_id": conversation,
        "user_id": user,
        "user_name": "Ann",
        "text": text,
        **extra,
    }


def bearer(**headers: str) -> dict[str, str]:
    """Headers authenticating with the bearer token."""
    return {"Authorization": f"Bearer {TOKEN}", **headers}


def signed(
    body: bytes, msg_id: str = "msg_1", *, at: datetime | None = None, secret: str = SECRET
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``."""
    when = at or datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
        "Content-Type": "application/json",
    }


class Receiver(FakeServer):
    """A callback endpoint on a free port recording what it receives."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        self.arrived = asyncio.Condition()

    @property
    def url(self) -> str:
        """The callback URL to give Zapa."""
        return f"{self.root}/callback"

    def add_routes(self, app: web.Application) -> None:
        """The one callback route."""
        app.router.add_post("/callback", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        if status < 300:
            async with self.arrived:
                self.received.append((dict(request.headers), await request.read()))
                self.arrived.notify_all()
        return web.Response(status=status)

    async def wait_for(self, count: int, seconds: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``count`` callbacks arrived; their JSON bodies, in arrival order."""
        async with asyncio.timeout(seconds), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return [orjson.loads(body) for _, body in self.received]


async def stored_texts(database_url: str) -> list[str]:
    """The text of every stored message, in order."""
    db = open_database(database_url, 1)
    try:
        query = select(Message.text).order_by(Message.id)
        return list(await db.run(lambda connection: connection.scalars(query).all()))
    finally:
        await db.dispose()


def zapa(
    *args: str, env: dict[str, str], stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bot ARGS`` with only the given Zapa variables; its result."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "OPENAI_", "REDIS_"))
    }
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=60,
    )
