"""What the webhook benchmark compares Zapa with, each served by a process of its own.

* ``bare``: an aiohttp handler that reads the JSON body and answers 200 ``{}``, on any path:
  the most a Python web process on this event loop can acknowledge.
* ``ptb``: python-telegram-bot's own webhook server (``Updater.start_webhook``, the machinery
  of ``Application.run_webhook``: tornado's ``WebhookServer`` and ``WebhookAppClass``) at
  ``/webhooks/telegram``, secret token checked, every update handed to a no-op handler.
  Needs tornado (``pip install "python-telegram-bot[webhooks]"``).
* ``bolt``: slack-bolt's ``AsyncApp`` behind its aiohttp adapter (``to_bolt_request`` /
  ``to_aiohttp_response``) at ``/webhooks/slack``, request verification on, a no-op
  ``app_mention`` listener.

All serve on 127.0.0.1 with uvloop (as ``zapa serve`` does) where it is installed. Run as
``python -m bench.baselines KIND --port P [...]``: prints ``ready`` on a line once it
listens, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

KINDS = ("bare", "ptb", "bolt")
TELEGRAM_PATH = "/webhooks/telegram"
SLACK_PATH = "/webhooks/slack"


def missing(kind: str) -> str | None:
    """Why ``kind`` cannot run here (a module it needs is not installed), or ``None``."""
    if kind == "ptb" and importlib.util.find_spec("tornado") is None:
        return 'tornado is not installed: pip install "python-telegram-bot[webhooks]"'
    return None


def _ready() -> None:
    print("ready", flush=True)


async def _serve_aiohttp(app: web.Application, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    _ready()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def bare(args: argparse.Namespace, stop: asyncio.Event) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    await _serve_aiohttp(app, args.port, stop)


async def ptb(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from telegram import Update
    from telegram.ext import Application, ContextTypes, MessageHandler, filters

    root = args.telegram_api.rstrip("/")
    application = (
        Application.builder()
        .token(args.telegram_token)
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .build()
    )

    async def noop(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        return None

    application.add_handler(MessageHandler(filters.ALL, noop))
    async with application:  # initialize (getMe) … shutdown
        assert application.updater is not None
        await application.updater.start_webhook(
            listen="127.0.0.1",
            port=args.port,
            url_path=TELEGRAM_PATH.lstrip("/"),
            secret_token=args.secret,
            # start_webhook always calls setWebhook; the fake Bot API takes any https URL.
            webhook_url=f"https://bench.invalid{TELEGRAM_PATH}",
        )
        await application.start()
        _ready()
        try:
            await stop.wait()
        finally:
            await application.updater.stop()
            await application.stop()


async def bolt(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    app = AsyncApp(
        client=AsyncWebClient(token=args.slack_token, base_url=args.slack_api),
        signing_secret=args.secret,
        request_verification_enabled=True,
    )

    @app.event("app_mention")
    async def noop(event: dict[str, Any]) -> None:
        return None

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    server = web.Application()
    server.router.add_post(SLACK_PATH, handle)
    await _serve_aiohttp(server, args.port, stop)


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    serve = {"bare": bare, "ptb": ptb, "bolt": bolt}[args.kind]
    await serve(args, stop)


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baselines", description="Serve one baseline for bench.webhooks."
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default="", help="Telegram secret token / Slack signing secret")
    parser.add_argument("--telegram-api", default="", help="Bot API root (ptb)")
    parser.add_argument("--telegram-token", default="", help="bot token (ptb)")
    parser.add_argument("--slack-api", default="", help="Web API URL, ending in /api/ (bolt)")
    parser.add_argument("--slack-token", default="", help="bot token (bolt)")
    args = parser.parse_args(argv)
    problem = missing(args.kind)
    if problem is not None:
        parser.exit(2, f"{args.kind}: {problem}\n")
    _run(run(args))


if __name__ == "__main__":
    main()
