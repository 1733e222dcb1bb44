"""The ``zapa`` command line (also ``python -m bot``)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog

from bot import texts
from bot.engine import Outcome
from bot.errors import ZapaError
from bot.heap import freeze_startup_objects
from bot.logs import configure_logging
from bot.messages import InboundMessage, Reply, StoredMessage, parse_command
from bot.ports import ReplyStream
from config import ConfigError, Settings, load_settings

logger = structlog.get_logger(__name__)

DESCRIPTION = """\
Zapa puts an LLM where people already chat: Telegram, Slack and HTTP webhooks.
Configuration comes from environment variables and a .env file (see the README)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zapa", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the web service: webhooks, /health, /ready, /metrics",
        description="Run the web service. It answers webhooks, /health, /ready and /metrics, "
        "and replies in-process unless --no-worker is given. On the embedded SQLite "
        "database it applies pending migrations first.",
    )
    serve.add_argument("--host", help="listen address (default: HOST, else 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default: PORT, else 8080)")
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="only accept webhooks; separate workers send the replies (needs REDIS_URL)",
    )

    worker = commands.add_parser(
        "worker",
        help="answer messages from the shared Redis queue (needs REDIS_URL)",
        description="Reply processing alone: take jobs from the queue shared through Redis, "
        "answer them and deliver the replies. Run as many as load needs, on any number of "
        "machines. SIGTERM stops taking jobs, finishes or hands back those in flight "
        "within SHUTDOWN_GRACE_SECONDS, and exits 0.",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        help="conversations answered at once (default: WORKER_CONCURRENCY, else 100)",
    )
    queue = commands.add_parser(
        "queue",
        help="inspect the shared Redis queue, or requeue its dead letters",
        description="The shared Redis queue (needs REDIS_URL).",
    )
    queue_actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = queue_actions.add_parser(
        "stats", help="jobs waiting and in flight, dead letters, oldest age, queue wait"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    queue_actions.add_parser(
        "retry-dead", help="queue the dead-lettered jobs again (a stored reply is only delivered)"
    )
    admin = commands.add_parser(
        "admin",
        help="manage the operators who sign in to the admin",
        description="Admin accounts. There are no default credentials: create the first "
        "admin with `zapa admin create NAME`.",
    )
    admin_actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = admin_actions.add_parser(
        "create",
        help="create an admin, or set a new password for one; the password comes from a "
        "prompt, or from the first line of standard input when it is not a terminal",
    )
    create.add_argument("username", help="1-64 letters, digits, '.', '_', '-' or '@'")
    commands.add_parser(
        "migrate",
        help="apply database migrations (alembic upgrade head) to DATABASE_URL",
        description="Apply every pending database migration to DATABASE_URL.",
    )
    commands.add_parser(
        "chat",
        help="talk to the bot in this terminal, through the same engine",
        description="A conversation in the terminal, through the same engine, history and "
        "model as the web service (platform 'cli'). Type /reset for a fresh context, "
        "/usage for your quota; Ctrl-D or /quit ends it.",
    )
    telegram = commands.add_parser(
        "telegram",
        help="set up Telegram: register or delete the webhook, show it, or poll",
        description="Telegram set-up, with TELEGRAM_BOT_TOKEN (and TELEGRAM_WEBHOOK_SECRET "
        "for the webhook).",
    )
    actions = telegram.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_hook = actions.add_parser(
        "set-webhook",
        help="register URL (https) with the secret token and the bot's command list",
    )
    set_hook.add_argument("url", help="the public https URL of /webhooks/telegram")
    actions.add_parser("delete-webhook", help="remove the webhook (to poll instead)")
    actions.add_parser("info", help="show the webhook: URL, pending updates, last error")
    actions.add_parser(
        "poll",
        help="answer updates fetched by long polling, for local work without a public URL",
    )
    slack = commands.add_parser(
        "slack",
        help="set up Slack: print the app manifest, or connect through Socket Mode",
        description="Slack set-up. `manifest` needs no token; `socket` needs SLACK_BOT_TOKEN "
        "and SLACK_APP_TOKEN.",
    )
    slack_actions = slack.add_subparsers(dest="action", required=True, metavar="ACTION")
    manifest = slack_actions.add_parser(
        "manifest",
        help="print a Slack app manifest (YAML) for 'Create app from manifest'",
    )
    manifest.add_argument("--url", help="the public https URL of /webhooks/slack")
    manifest.add_argument(
        "--socket", action="store_true", help="a manifest for Socket Mode (no public URL)"
    )
    manifest.add_argument("--name", default="Zapa", help="the app's name (default: Zapa)")
    slack_actions.add_parser(
        "socket",
        help="answer Slack through Socket Mode, for local work without a public URL",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; exit status 2 with one line on bad configuration."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"zapa: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level
    if args.command == "chat" and level == "INFO":
        level = "WARNING"  # the conversation, not the service's chatter, belongs on screen
    configure_logging(level, settings.log_format)
    try:
        if args.command == "serve":
            return _serve(settings, args.host, args.port, no_worker=args.no_worker)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command in ("worker", "queue"):
            from bot import worker_cli

            if settings.redis_url is None:
                print(f"zapa: {args.command} needs REDIS_URL (the shared queue)", file=sys.stderr)
                return 2
            if args.command == "worker":
                return worker_cli.run_worker(settings, args.concurrency)
            return asyncio.run(
                worker_cli.queue_command(
                    settings, args.action, as_json=args.json if args.action == "stats" else False
                )
            )
        if args.command == "telegram":
            return asyncio.run(_telegram(settings, args))
        if args.command == "slack":
            return _slack(settings, args)
        if args.command == "admin":
            from bot.admin.cli import create_admin

            return asyncio.run(create_admin(settings, args.username))
        return asyncio.run(_chat(settings))
    except KeyboardInterrupt:
        return 130
    except (ZapaError, OSError) as exc:
        print(f"zapa: {exc}", file=sys.stderr)
        return 1


async def _telegram(settings: Settings, args: argparse.Namespace) -> int:
    from adapters import telegram

    try:
        if args.action == "set-webhook":
            print(await telegram.set_webhook(settings, args.url))
        elif args.action == "delete-webhook":
            print(await telegram.delete_webhook(settings))
        elif args.action == "info":
            print(await telegram.webhook_info(settings))
        else:
            await _telegram_poll(settings)
    except telegram.TelegramSetupError as exc:
        print(f"zapa: {exc}", file=sys.stderr)
        return 2
    return 0


async def _telegram_poll(settings: Settings) -> None:
    from adapters.telegram import TelegramAdapter, poll
    from bot.runtime import answering, open_runtime

    stop = stop_on_signals()
    async with open_runtime(settings, migrate=settings.is_sqlite) as runtime:
        adapter = TelegramAdapter(settings, runtime.engine)
        await adapter.start()
        try:
            async with answering(runtime):
                logger.info("telegram_polling", username=adapter.bot.username)
                await poll(adapter, stop)
        finally:
            await adapter.aclose()


def _slack(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.slack_manifest import ManifestError, manifest_yaml

    if args.action == "manifest":
        try:
            text = manifest_yaml(
                command=settings.slack_command,
                url=args.url,
                name=args.name,
                socket_mode=args.socket,
            )
        except ManifestError as exc:
            print(f"zapa: {exc}", file=sys.stderr)
            return 2
        print(text, end="")
        return 0
    from adapters.slack import SlackSetupError

    try:
        asyncio.run(_slack_socket(settings))
    except SlackSetupError as exc:
        print(f"zapa: {exc}", file=sys.stderr)
        return 2
    return 0


async def _slack_socket(settings: Settings) -> None:
    from adapters.slack import SlackAdapter, SlackSetupError
    from bot.runtime import answering, open_runtime

    if settings.slack_app_token is None:
        raise SlackSetupError("SLACK_APP_TOKEN (xapp-…) is not set; Socket Mode needs it")
    stop = stop_on_signals()
    async with open_runtime(settings, migrate=settings.is_sqlite) as runtime:
        adapter = SlackAdapter(settings, runtime.engine, socket_mode=True)
        try:
            await adapter.start()
            async with answering(runtime):
                logger.info("slack_socket_mode", bot_user_id=adapter.bot_user_id)
                await adapter.socket_mode(settings.slack_app_token.get_secret_value(), stop)
        finally:
            await adapter.aclose()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for commands that run until told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _migrate(settings: Settings) -> int:
    from storage.migrate import upgrade_head

    upgrade_head(settings.database_url)
    print("database is up to date")
    return 0


def _serve(settings: Settings, host: str | None, port: int | None, *, no_worker: bool) -> int:
    from aiohttp import web

    from bot.app import create_app

    if no_worker and settings.redis_url is None:
        # Without the shared queue nothing would ever answer what this process accepts.
        print(
            "zapa: --no-worker needs REDIS_URL: workers (`zapa worker`) take the jobs from "
            "the queue shared through Redis",
            file=sys.stderr,
        )
        return 2
    app = create_app(settings, run_worker=not no_worker, migrate=settings.is_sqlite)

    async def freeze_heap(_: web.Application) -> None:
        freeze_startup_objects()

    # After every resource has opened (on_startup runs after the cleanup contexts).
    app.on_startup.append(freeze_heap)
    web.run_app(
        app,
        host=host or settings.host,
        port=port or settings.port,
        access_log=None,
        print=lambda text: logger.info("listening", detail=str(text).strip()),
        shutdown_timeout=settings.shutdown_grace_seconds,
        loop=new_event_loop(),
    )
    return 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop for serve: uvloop where it is installed, else asyncio's own.

    The service spends much of its time in the loop itself; uvloop's costs less per
    callback and per socket operation.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _TerminalStream:
    live = True

    def __init__(self) -> None:
        self.streamed = False

    async def delta(self, text: str) -> None:
        self.streamed = True
        sys.stdout.write(text)
        sys.stdout.flush()

    async def finish(self, reply: Reply) -> None:
        sys.stdout.write("\n" if self.streamed else reply.text + "\n")
        sys.stdout.flush()


class _TerminalSender:
    def __init__(self) -> None:
        self.done: dict[int, asyncio.Event] = {}

    @asynccontextmanager
    async def reply_stream(self, message: StoredMessage) -> AsyncIterator[ReplyStream]:
        sys.stdout.write("zapa> ")
        yield _TerminalStream()
        self.done.setdefault(message.id, asyncio.Event()).set()


async def _chat(settings: Settings) -> int:
    from bot.runtime import answering, open_runtime

    user = getpass.getuser()
    sender = _TerminalSender()
    async with open_runtime(settings, migrate=settings.is_sqlite) as runtime:
        runtime.engine.register_sender("cli", sender)
        print(f"Talking to {runtime.responder.model}. /reset starts over, Ctrl-D ends.")
        async with answering(runtime, concurrency=1):
            while True:
                line = await asyncio.to_thread(_read_line)
                if line is None or line.strip() in ("/quit", "/exit"):
                    break
                if not line.strip():
                    continue
                accepted = await runtime.engine.accept(
                    InboundMessage(
                        platform="cli",
                        conversation_key=f"terminal:{user}",
                        user_id=user,
                        text=line,
                        user_name=user,
                        command=parse_command(line),
                    )
                )
                if accepted.queued:
                    await sender.done.setdefault(accepted.message_id, asyncio.Event()).wait()
                elif accepted.outcome is Outcome.RATE_LIMITED:
                    print(
                        texts.RATE_LIMITED.format(wait=texts.humanize_seconds(accepted.retry_after))
                    )
    return 0


def _read_line() -> str | None:
    try:
        return input("you> ")
    except EOFError:
        print()
        return None
