"""The Telegram adapter (SPEC §4.1): webhook updates in, Bot API messages out.

This is the only module that imports ``telegram`` (python-telegram-bot). Updates are
verified by their secret token before parsing, turned into the normalized message, and
handed to the engine; replies are rendered as Telegram HTML, split to Telegram's limit
and sent through PTB's ``ExtBot`` with its ``AIORateLimiter`` (per-chat and global limits,
429 ``retry_after`` honoured).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from aiohttp import web
from telegram import BotCommand, Message, MessageEntity, ReplyParameters, Update
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import AIORateLimiter, ExtBot

from adapters.telegram_format import (
    TELEGRAM_TEXT_LIMIT,
    split_html,
    to_telegram_html,
    visible_text,
)
from adapters.telegram_http import AiohttpRequest
from adapters.telegram_light import PrivateText, private_text
from bot import texts
from bot.engine import Engine
from bot.errors import DependencyUnavailable, RecipientUnreachable, SetupError
from bot.http import REQUEST_ID, error_response, json_response
from bot.messages import Command, InboundMessage, Reply, StoredMessage, parse_command
from bot.ports import ReplyStream
from config import Settings

# PTB 22.2+ warns on every RetryAfter unless durations are timedeltas; opting in is the
# supported way. PTB reads this variable itself; Zapa's own settings never do.
os.environ.setdefault("PTB_TIMEDELTA", "true")

logger = structlog.get_logger(__name__)

PLATFORM = "telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
TYPING_EVERY_SECONDS = 4.0
EDIT_EVERY_SECONDS = 1.0  # Telegram allows about one message (or edit) a second per chat
# A reply whose text is whole within this long of its first words needs no preview: it is
# sent once, formatted, instead of a preview and an edit (and twice the wait).
FIRST_PREVIEW_SECONDS = 0.5
COURTESY_MAX_IN_FLIGHT = 8
"""Bot API calls waiting or under way above which "typing…" and previews are skipped.

Telegram lets a bot make about 30 calls a second in all (the rate limiter holds the rest
back), and a streamed reply takes three or more. Under a backlog those courtesies would
take the budget from the replies themselves, so then only replies are sent.
"""


COMMANDS = (
    ("start", "Say hello"),
    ("help", "What I can do"),
    ("reset", "Start a fresh conversation"),
    ("usage", "How many messages you have left"),
)
ALLOWED_UPDATES = ("message",)
POLL_TIMEOUT_SECONDS = 30


class TelegramSetupError(SetupError):
    """A set-up command cannot go on; the message says what to do."""


def create_bot(settings: Settings) -> ExtBot[Any]:
    """A Bot API client for ``TELEGRAM_BOT_TOKEN`` at ``TELEGRAM_API_URL``, rate-limited."""
    if settings.telegram_bot_token is None:
        raise TelegramSetupError("TELEGRAM_BOT_TOKEN is not set")
    root = settings.telegram_api_url.rstrip("/")
    return ExtBot(
        settings.telegram_bot_token.get_secret_value(),
        base_url=f"{root}/bot",
        base_file_url=f"{root}/file/bot",
        # Long polling keeps PTB's own httpx request; every other call goes over aiohttp.
        request=AiohttpRequest(),
        rate_limiter=AIORateLimiter(max_retries=3),
    )


@contextlib.contextmanager
def _setup_errors() -> Iterator[None]:
    try:
        yield
    except TelegramError as exc:
        raise TelegramSetupError(f"Telegram answered: {exc}") from exc


async def set_webhook(settings: Settings, url: str) -> str:
    """Register ``url`` with the secret token, the updates we handle, and the command list."""
    if settings.telegram_webhook_secret is None:
        raise TelegramSetupError(
            "TELEGRAM_WEBHOOK_SECRET is not set; Zapa refuses unsigned updates"
        )
    with _setup_errors():
        async with create_bot(settings) as bot:
            await bot.set_webhook(
                url,
                secret_token=settings.telegram_webhook_secret.get_secret_value(),
                allowed_updates=list(ALLOWED_UPDATES),
            )
            await bot.set_my_commands([BotCommand(name, text) for name, text in COMMANDS])
    return f"webhook set to {url}"


async def delete_webhook(settings: Settings) -> str:
    """Remove the webhook, so updates can be fetched by polling."""
    with _setup_errors():
        async with create_bot(settings) as bot:
            await bot.delete_webhook()
    return "webhook deleted"


async def webhook_info(settings: Settings) -> str:
    """``getWebhookInfo`` as a few readable lines."""
    with _setup_errors():
        async with create_bot(settings) as bot:
            info = await bot.get_webhook_info()
    lines = [
        f"url: {info.url or '(none: updates wait for polling)'}",
        f"pending updates: {info.pending_update_count}",
    ]
    if info.last_error_message:
        lines.append(f"last error: {info.last_error_message} at {info.last_error_date}")
    return "\n".join(lines)


async def poll(adapter: TelegramAdapter, stop: asyncio.Event) -> None:
    """Fetch updates with long polling and accept them like webhook updates, until ``stop``.

    Raises:
        TelegramSetupError: a webhook is set (Telegram serves updates to one or the other).
    """
    bot = adapter.bot
    with _setup_errors():
        info = await bot.get_webhook_info()
    if info.url:
        raise TelegramSetupError(
            f"a webhook is set ({info.url}); run `zapa telegram delete-webhook` to poll instead"
        )
    offset: int | None = None
    while not stop.is_set():
        fetch = asyncio.ensure_future(
            bot.get_updates(
                offset=offset, timeout=POLL_TIMEOUT_SECONDS, allowed_updates=list(ALLOWED_UPDATES)
            )
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, TelegramError):
                await fetch
            break
        try:
            updates = fetch.result()
        except TelegramError as exc:
            logger.warning("telegram_poll_failed", error=str(exc))
            await asyncio.sleep(1)
            continue
        for update in updates:
            try:
                await adapter.accept_update(update)
            except DependencyUnavailable as exc:
                logger.warning("telegram_unavailable", error=str(exc))
                await asyncio.sleep(1)
                break  # fetch this update again
            offset = update.update_id + 1


class TelegramSender:
    """Sends replies: typing while the model works, then the formatted reply."""

    def __init__(self, bot: ExtBot[Any], *, streaming: bool) -> None:
        self._bot = bot
        self.streaming = streaming
        self._in_flight = 0

    @property
    def busy(self) -> bool:
        """Whether enough calls wait for the rate limiter that courtesies should give way."""
        return self._in_flight >= COURTESY_MAX_IN_FLIGHT

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    @asynccontextmanager
    async def reply_stream(self, message: StoredMessage) -> AsyncIterator[ReplyStream]:
        """Show "typing…" until the reply is delivered (or the turn ends)."""
        chat_id = message.route.get("chat_id")
        typing = asyncio.create_task(self._keep_typing(chat_id, message.route.get("thread_id")))
        try:
            yield _Stream(self, message)
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing

    async def _keep_typing(self, chat_id: Any, thread_id: Any) -> None:
        while True:
            if not self.busy:
                try:
                    with self._calling():
                        await self._bot.send_chat_action(
                            chat_id=chat_id, action=ChatAction.TYPING, message_thread_id=thread_id
                        )
                except TelegramError as exc:  # typing is a courtesy; the reply still goes out
                    logger.debug("typing_failed", chat_id=chat_id, error=str(exc))
            await asyncio.sleep(TYPING_EVERY_SECONDS)

    async def show(self, message: StoredMessage, text: str, shown_id: int | None) -> int:
        """Send or update the plain-text preview of a reply being generated; its id."""
        route = message.route
        with self._calling():
            if shown_id is None:
                sent = await self._bot.send_message(
                    chat_id=route["chat_id"], text=text, message_thread_id=route.get("thread_id")
                )
                return sent.message_id
            await self._bot.edit_message_text(text, chat_id=route["chat_id"], message_id=shown_id)
        return shown_id

    async def send(self, message: StoredMessage, text: str, *, replace: int | None = None) -> None:
        """Send ``text`` (Markdown from the model) as one or more HTML messages.

        With ``replace``, the first part takes the place of that preview message.
        """
        route = message.route
        chat_id = route["chat_id"]
        reply_to = route.get("reply_to")
        for chunk in split_html(to_telegram_html(text)) or [texts.APOLOGY]:
            reply_parameters = (
                ReplyParameters(message_id=int(reply_to), allow_sending_without_reply=True)
                if reply_to is not None
                else None
            )
            try:
                with self._calling():
                    if replace is not None:
                        await self._edit_chunk(chat_id, replace, chunk)
                    else:
                        await self._send_chunk(
                            chat_id, route.get("thread_id"), chunk, reply_parameters
                        )
            except Forbidden as exc:
                # Blocked by the user, or removed from the group: nothing will get through.
                logger.warning("telegram_forbidden", chat_id=chat_id, error=str(exc))
                raise RecipientUnreachable(str(exc)) from exc
            except TelegramError as exc:
                # 5xx, network, or 429 beyond the rate limiter's retries: the job is retried.
                logger.warning("telegram_send_failed", chat_id=chat_id, error=str(exc))
                raise
            reply_to = replace = None  # only the first part answers the user's message

    async def _edit_chunk(self, chat_id: Any, message_id: int, chunk: str) -> None:
        try:
            await self._bot.edit_message_text(
                chunk, chat_id=chat_id, message_id=message_id, parse_mode=ParseMode.HTML
            )
        except BadRequest as exc:
            error = str(exc).lower()
            if "not modified" in error:
                return  # the preview already shows exactly this
            if "parse entities" not in error:
                raise
            logger.warning("telegram_formatting_rejected", chat_id=chat_id, error=str(exc))
            await self._bot.edit_message_text(
                visible_text(chunk), chat_id=chat_id, message_id=message_id
            )

    async def _send_chunk(
        self, chat_id: Any, thread_id: Any, chunk: str, reply: ReplyParameters | None
    ) -> None:
        try:
            await self._bot.send_message(
                chat_id=chat_id,
                text=chunk,
                parse_mode=ParseMode.HTML,
                message_thread_id=thread_id,
                reply_parameters=reply,
            )
        except BadRequest as exc:
            if "parse entities" not in str(exc).lower():
                raise
            logger.warning("telegram_formatting_rejected", chat_id=chat_id, error=str(exc))
            await self._bot.send_message(
                chat_id=chat_id,
                text=visible_text(chunk),
                message_thread_id=thread_id,
                reply_parameters=reply,
            )


class _Stream:
    """One reply: in a private chat with streaming on, a message edited as text arrives."""

    def __init__(self, sender: TelegramSender, message: StoredMessage) -> None:
        self._sender = sender
        self._message = message
        self._text = ""
        self._shown = ""
        self._shown_id: int | None = None
        self._last_edit = 0.0
        self._started: float | None = None
        self.live = sender.streaming and message.route.get("private") is True

    async def delta(self, text: str) -> None:
        """Show the text so far, at most once every ``EDIT_EVERY_SECONDS``.

        The first preview waits ``FIRST_PREVIEW_SECONDS`` after the first words.
        """
        self._text += text
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if now - self._started >= FIRST_PREVIEW_SECONDS and now - self._last_edit >= (
            EDIT_EVERY_SECONDS
        ):
            await self._show(self._text)

    async def _show(self, text: str) -> None:
        preview = text.strip()[:TELEGRAM_TEXT_LIMIT]
        if not preview or preview == self._shown:
            return  # Telegram refuses edits that change nothing
        if self._sender.busy:
            return  # the reply itself comes first; it will show the whole text
        self._last_edit = time.monotonic()
        self._shown = preview
        try:
            self._shown_id = await self._sender.show(self._message, preview, self._shown_id)
        except TelegramError as exc:  # a preview is a courtesy; the reply still goes out
            logger.debug("telegram_preview_failed", error=str(exc))

    async def finish(self, reply: Reply) -> None:
        await self._sender.send(self._message, reply.text, replace=self._shown_id)


class TelegramAdapter:
    """Verifies and normalizes Telegram webhook updates."""

    platform = PLATFORM
    path = "/webhooks/telegram"

    def __init__(self, settings: Settings, engine: Engine) -> None:
        secret = settings.telegram_webhook_secret
        self._engine = engine
        # Without a secret (long polling) the webhook route refuses every request.
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self._bot = create_bot(settings)
        self._sender = TelegramSender(self._bot, streaming=settings.telegram_streaming)
        engine.register_sender(PLATFORM, self._sender)

    @property
    def bot(self) -> ExtBot[Any]:
        """The Bot API client."""
        return self._bot

    @property
    def sender(self) -> TelegramSender:
        """How replies reach Telegram."""
        return self._sender

    async def start(self) -> None:
        """Learn the bot's id and username (``getMe``) for mentions and replies."""
        await self._bot.initialize()
        logger.info("telegram_ready", username=self._bot.username)

    async def aclose(self) -> None:
        """Close the Bot API client."""
        await self._bot.shutdown()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Check the secret, parse the update, and accept what the bot should answer."""
        given = request.headers.get(SECRET_HEADER, "").encode()
        if self._secret is None or not hmac.compare_digest(given, self._secret):
            return error_response(401, "unauthorized", "missing or wrong secret token")
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            data = None
        light = private_text(data)
        update = None
        if light is None:
            try:
                update = Update.de_json(data, self._bot) if isinstance(data, dict) else None
            except (TypeError, KeyError, ValueError):
                update = None
            if update is None:
                return error_response(400, "malformed_json", "the body is not a Telegram update")
        try:
            if light is not None:
                await self._engine.accept(self._light_inbound(light, request.get(REQUEST_ID)))
            elif update is not None:
                await self.accept_update(update, request.get(REQUEST_ID))
        except DependencyUnavailable as exc:
            # Telegram retries a webhook that does not answer 2xx.
            logger.warning("telegram_unavailable", error=str(exc))
            return error_response(503, "unavailable", str(exc), retry_after=5)
        return json_response({})

    async def accept_update(self, update: Update, request_id: str | None = None) -> None:
        """Hand an update to the engine if the bot should answer it (webhook and polling).

        Raises:
            bot.errors.DependencyUnavailable: the database or Redis cannot take it now.
        """
        message = update.message
        if message is None:
            return  # edits, channel posts, polls…: nothing to answer
        if message.text is None:
            await self._text_only_notice(message)
            return
        inbound = self._normalize(update.update_id, message, request_id)
        if inbound is not None:
            await self._engine.accept(inbound)

    def _light_inbound(self, message: PrivateText, request_id: str | None) -> InboundMessage:
        """The normalized form of a private text message read without ``Update``.

        The same as :meth:`_normalize` gives for it (the tests hold the two together).
        """
        return _inbound(
            update_id=message.update_id,
            chat_id=message.chat_id,
            thread_id=message.thread_id,
            private=True,
            message_id=message.message_id,
            sender_id=message.sender_id,
            sender_name=message.sender_name,
            text=message.text,
            request_id=request_id,
            command=parse_command(message.text),
        )

    async def _text_only_notice(self, message: Message) -> None:
        media = message.photo or message.voice or message.document or message.audio
        if message.chat.type != ChatType.PRIVATE or not media:
            return
        try:
            await self._bot.send_message(chat_id=message.chat.id, text=texts.TEXT_ONLY)
        except TelegramError as exc:
            logger.warning("telegram_notice_failed", chat_id=message.chat.id, error=str(exc))

    def _normalize(
        self, update_id: int, message: Message, request_id: str | None
    ) -> InboundMessage | None:
        """The normalized message, or ``None`` when the bot should stay silent."""
        text = message.text or ""
        private = message.chat.type == ChatType.PRIVATE
        command = parse_command(text)
        if not private and not self._addressed(message, text):
            return None
        if not private:
            text = text.replace(f"@{self._bot.username}", "").strip() or text
        sender = message.from_user
        if sender is None or sender.is_bot:
            return None
        return _inbound(
            update_id=update_id,
            chat_id=message.chat.id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            private=private,
            message_id=message.message_id,
            sender_id=sender.id,
            sender_name=sender.full_name,
            text=text,
            request_id=request_id,
            command=command,
        )

    def _addressed(self, message: Message, text: str) -> bool:
        """In a group: a mention, a reply to the bot, or a command meant for it."""
        username = (self._bot.username or "").lower()
        if text.startswith("/"):
            target = text.split(maxsplit=1)[0].partition("@")[2].lower()
            return parse_command(text) is not None and target in ("", username)
        replied = message.reply_to_message
        author = replied.from_user if replied is not None else None
        if author is not None and author.id == self._bot.id:
            return True
        mentions = message.parse_entities([MessageEntity.MENTION]).values()
        return any(mention.lower() == f"@{username}" for mention in mentions)


def _inbound(
    *,
    update_id: int,
    chat_id: int,
    thread_id: int | None,
    private: bool,
    message_id: int,
    sender_id: int,
    sender_name: str,
    text: str,
    request_id: str | None,
    command: Command | None,
) -> InboundMessage:
    """A Telegram message in the engine's form; a topic is a conversation of its own."""
    return InboundMessage(
        platform=PLATFORM,
        conversation_key=str(chat_id) if thread_id is None else f"{chat_id}:{thread_id}",
        user_id=str(sender_id),
        text=text,
        event_id=str(update_id),
        user_name=sender_name,
        platform_message_id=str(message_id),
        command=command,
        route={
            "chat_id": chat_id,
            "thread_id": thread_id,
            "reply_to": None if private else message_id,
            "private": private,
        },
        request_id=request_id,
    )
