"""Fake Telegram Bot API and Slack Web API servers for the webhook benchmark, in one process.

They are the tests' fakes (``tests/fake_telegram.py``, ``tests/fake_slack.py``, speaking the
real wire formats), plus a record of every message the bot shows: each ``sendMessage`` /
``editMessageText`` (Telegram) and ``chat.postMessage`` / ``chat.update`` (Slack) that
succeeded, with its arrival time (``time.monotonic()``, comparable across processes on one
machine), the conversation it belongs to (Telegram: the chat id; Slack: ``channel:thread_ts``),
the message's id and its text. The benchmark matches these to the webhooks it sent.

Run as ``python -m bench.platforms [--slack-users N]``: prints one JSON line,
``{"telegram": ROOT, "slack": ROOT}``, then serves until SIGTERM or SIGINT. Each server also
answers ``GET /_bench/replies`` (the record, and how often each API method was called) and
``POST /_bench/reset`` (forgets both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tests.fake_slack import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.fake_slack import FakeSlack
from tests.fake_telegram import FakeTelegram

TELEGRAM_BOT_TOKEN = "7000000001:bench-token"
SLACK_TOKEN = SLACK_BOT_TOKEN
CLEAR_EVERY_SECONDS = 1.0

# (arrival time, conversation, message id, text)
Shown = tuple[float, str, str, str]


def slack_user(number: int) -> str:
    """The id of the fake Slack workspace's user ``number`` (known to ``users.info``)."""
    return f"U{number:08d}"


class _Recorder:
    """What the benchmark reads back: the messages shown, and API calls by method."""

    def __init__(self) -> None:
        self.shown: list[Shown] = []
        self.methods: Counter[str] = Counter()

    def routes(self, app: web.Application, calls: Callable[[], list[tuple[str, Any]]]) -> None:
        async def replies(request: web.Request) -> web.Response:
            counts = self.methods + Counter(method for method, _ in calls())
            body = {"shown": self.shown, "methods": dict(counts)}
            return web.Response(body=orjson.dumps(body), content_type="application/json")

        async def reset(request: web.Request) -> web.Response:
            self.shown.clear()
            self.methods.clear()
            calls().clear()
            return web.json_response({})

        app.router.add_get("/_bench/replies", replies)
        app.router.add_post("/_bench/reset", reset)


class BenchTelegram(FakeTelegram):
    """The tests' fake Bot API, recording every message the bot sends or edits."""

    def __init__(self) -> None:
        super().__init__()
        self.recorder = _Recorder()
        self._cached_methods: dict[str, Any] | None = None

    def add_routes(self, app: web.Application) -> None:
        self.recorder.routes(app, lambda: self.calls)
        super().add_routes(app)

    def _methods(self) -> dict[str, Any]:
        if self._cached_methods is None:
            methods = super()._methods()
            for name in ("sendmessage", "editmessagetext"):
                methods[name] = self._recording(methods[name])
            self._cached_methods = methods
        return self._cached_methods

    def _recording(
        self, method: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        async def record(params: dict[str, Any]) -> Any:
            result = await method(params)
            if isinstance(result, dict):  # not an inline message's ``True``
                self.recorder.shown.append(
                    (
                        time.monotonic(),
                        str(result["chat"]["id"]),
                        str(result["message_id"]),
                        str(result.get("text", "")),
                    )
                )
            return result

        return record

    def forget_calls(self) -> None:
        """Drop the per-call lists the tests read (counted by method first)."""
        self.recorder.methods.update(method for method, _ in self.calls)
        self.calls.clear()
        self.call_times.clear()
        self.tokens.clear()


class BenchSlack(FakeSlack):
    """The tests' fake Web API, recording every message the bot posts or updates."""

    def __init__(self, users: int) -> None:
        super().__init__(token=SLACK_TOKEN)
        self.recorder = _Recorder()
        self._threads: dict[str, str] = {}  # message ts -> "channel:thread_ts"
        self._cached_methods: dict[str, Any] | None = None
        for number in range(users):
            self.add_user(slack_user(number), display_name=f"user{number}")

    def add_routes(self, app: web.Application) -> None:
        self.recorder.routes(app, lambda: self.calls)
        super().add_routes(app)

    def _methods(self) -> dict[str, Any]:
        if self._cached_methods is None:
            methods = super()._methods()
            post, update = methods["chat.postMessage"], methods["chat.update"]

            def post_message(params: dict[str, Any]) -> dict[str, Any]:
                result: dict[str, Any] = post(params)
                thread = f"{result['channel']}:{params.get('thread_ts') or result['ts']}"
                self._threads[result["ts"]] = thread
                self._record(thread, result["ts"], result["message"]["text"])
                return result

            def update_message(params: dict[str, Any]) -> dict[str, Any]:
                result: dict[str, Any] = update(params)
                thread = self._threads.get(result["ts"], f"{result['channel']}:?")
                self._record(thread, result["ts"], result["text"])
                return result

            methods["chat.postMessage"] = post_message
            methods["chat.update"] = update_message
            self._cached_methods = methods
        return self._cached_methods

    def _record(self, thread: str, ts: str, text: str) -> None:
        self.recorder.shown.append((time.monotonic(), thread, ts, text))

    def forget_calls(self) -> None:
        """Drop the per-call lists the tests read (counted by method first)."""
        self.recorder.methods.update(method for method, _ in self.calls)
        self.calls.clear()
        self.call_times.clear()
        self._accepted.clear()


async def serve(slack_users: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with BenchTelegram() as telegram, BenchSlack(slack_users) as slack:
        print(orjson.dumps({"telegram": telegram.root, "slack": slack.root}).decode(), flush=True)
        while not stop.is_set():
            # The fakes keep every call for tests' asserts; keep only the counts, so a long
            # run does not grow the process.
            telegram.forget_calls()
            slack.forget_calls()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CLEAR_EVERY_SECONDS)


# -- the benchmark's side --------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What one fake platform recorded since its last reset."""

    shown: list[Shown]
    methods: dict[str, int]


@dataclass
class Platforms:
    """The running fake platforms' process."""

    process: subprocess.Popen[str]
    telegram_root: str
    slack_root: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def slack_api_url(self) -> str:
        return f"{self.slack_root}/api/"

    def _root(self, platform: str) -> str:
        return self.telegram_root if platform == "telegram" else self.slack_root

    def record(self, platform: str) -> Record:
        """The messages ``platform`` ("telegram" or "slack") was shown, and its calls."""
        url = f"{self._root(platform)}/_bench/replies"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = orjson.loads(response.read())
        shown: list[Shown] = [
            (at, str(key), str(msg), str(text)) for at, key, msg, text in body["shown"]
        ]
        return Record(shown, body["methods"])

    def reset(self) -> None:
        """Forget what both platforms recorded."""
        for platform in ("telegram", "slack"):
            request = urllib.request.Request(
                f"{self._root(platform)}/_bench/reset", method="POST", data=b""
            )
            with urllib.request.urlopen(request, timeout=10):
                pass


@contextlib.contextmanager
def fake_platforms(
    slack_users: int, env: dict[str, str], log: Path, cwd: str | None = None
) -> Iterator[Platforms]:
    """Start ``python -m bench.platforms`` with ``env``, its errors going to ``log``."""
    from bench.generic import ServiceFailed, log_tail, stop_process

    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.platforms", "--slack-users", str(slack_users)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line:
            process.wait(10)
            raise ServiceFailed(f"the fake platforms did not start:\n{log_tail(log)}")
        roots = orjson.loads(line)
        yield Platforms(process, roots["telegram"], roots["slack"])
    finally:
        stop_process(process, 5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serve fake Telegram and Slack APIs on free ports, recording replies."
    )
    parser.add_argument(
        "--slack-users",
        type=int,
        default=200,
        help="users U00000000… that users.info knows (default 200)",
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.slack_users))
    else:
        uvloop.run(serve(args.slack_users))


if __name__ == "__main__":
    main()
