"""The Slack adapter (SPEC §4.2): Events API, slash commands and interactivity on one URL.

This is the only module that imports ``slack_bolt`` and ``slack_sdk``. Requests go through
Bolt's ``AsyncApp``, which verifies their signature (5-minute window), answers
``url_verification``, and routes them to the handlers here; a handler normalizes the event,
hands it to the engine (stored before Slack gets its 2xx), and acknowledges. Replies go out
through ``AsyncWebClient``: a placeholder message in the thread, updated as the answer
streams in, or the slash command's ``response_url``. Slack's 429 ``Retry-After`` is honoured
by the SDK's rate-limit retry handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack_format import from_mrkdwn, split_mrkdwn, to_mrkdwn
from bot import texts
from bot.engine import Engine, Outcome
from bot.errors import DependencyUnavailable, RecipientUnreachable, SetupError
from bot.http import error_response, json_response
from bot.messages import Command, InboundMessage, MessageStatus, Reply, StoredMessage, parse_command
from config import Settings

logger = structlog.get_logger(__name__)

PLATFORM = "slack"
EDIT_EVERY_SECONDS = 1.0  # chat.update is rate-limited per workspace; one edit a second is safe
RATE_LIMIT_RETRIES = 3
API_TIMEOUT_SECONDS = 10
NAME_LOOKUP_SECONDS = 1.0  # a name is a nicety; the 3-second ack is not
NAME_TTL_SECONDS = 3600.0
CACHE_SIZE = 10_000
RESPONSE_URL_POSTS = 5  # Slack accepts five posts to one response_url
RETRY_AFTER_SECONDS = 5

# The words that act as commands in mentions, direct messages and after the slash command.
WORD_COMMANDS = {
    "reset": Command.RESET,
    "usage": Command.USAGE,
    "help": Command.HELP,
    "start": Command.START,
}
# Errors after which no retry can get the message through.
UNREACHABLE_ERRORS = frozenset(
    {"channel_not_found", "not_in_channel", "is_archived", "account_inactive", "user_disabled"}
)
# auth.test errors that mean the token itself is wrong: no retry can help.
TOKEN_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)


class SlackSetupError(SetupError):
    """A set-up command cannot go on; the message says what to do."""


def create_client(settings: Settings, session: aiohttp.ClientSession | None) -> AsyncWebClient:
    """A Web API client for ``SLACK_BOT_TOKEN`` at ``SLACK_API_URL`` that waits out 429s."""
    if settings.slack_bot_token is None:
        raise SlackSetupError("SLACK_BOT_TOKEN is not set")
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url.rstrip("/") + "/",
        timeout=API_TIMEOUT_SECONDS,
        session=session,
        retry_handlers=_retry_handlers(),
    )


def _retry_handlers() -> list[Any]:
    return [
        AsyncConnectionErrorRetryHandler(),
        AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
    ]


def _command_word(text: str) -> Command | None:
    """``reset``/``usage``/``help`` typed alone, or a slash command such as ``/reset``."""
    word = WORD_COMMANDS.get(text.strip().lower())
    return word if word is not None else parse_command(text)


@dataclass(slots=True)
class _Progress:
    """How far the delivery of one reply got, so a retry neither repeats nor loses parts."""

    placeholder: str | None = None
    sent: int = 0


class _Bounded(OrderedDict[Any, Any]):
    """A dict that forgets its oldest entries beyond ``CACHE_SIZE``."""

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


class SlackSender:
    """Sends replies: in the thread (placeholder, streamed edits) or to the ``response_url``."""

    def __init__(self, client: AsyncWebClient, session: aiohttp.ClientSession) -> None:
        self._client = client
        self._session = session
        self._progress = _Bounded()

    @asynccontextmanager
    async def reply_stream(self, message: StoredMessage) -> AsyncIterator[_ThreadStream | _Command]:
        """A streamed reply in the conversation's thread, or a slash command's answer."""
        progress: _Progress = self._progress.get(message.id) or _Progress()
        self._progress.remember(message.id, progress)
        if message.route.get("response_url"):
            yield _Command(self, message, progress)
            return
        stream = _ThreadStream(self, message, progress)
        try:
            yield stream
        finally:
            await stream.close()

    def done(self, message: StoredMessage) -> None:
        """The reply is delivered; forget its progress."""
        self._progress.pop(message.id, None)

    async def post(self, route: Mapping[str, Any], text: str) -> str:
        """Post ``text`` in the route's channel (and thread); the new message's ``ts``."""
        with _translated(route):
            response = await self._client.chat_postMessage(
                channel=route["channel"], thread_ts=route.get("thread_ts"), text=text
            )
        return str(response["ts"])

    async def update(self, route: Mapping[str, Any], ts: str, text: str) -> None:
        """Replace the text of the bot's message ``ts``."""
        with _translated(route):
            await self._client.chat_update(channel=route["channel"], ts=ts, text=text)

    async def respond(self, url: str, text: str, response_type: str) -> bool:
        """Post to a ``response_url``; false when Slack no longer takes posts there.

        Raises:
            ConnectionError: Slack answered with a server error, or kept answering 429.
        """
        webhook = AsyncWebhookClient(
            url,
            timeout=API_TIMEOUT_SECONDS,
            session=self._session,
            retry_handlers=_retry_handlers(),
        )
        response = await webhook.send(text=text, response_type=response_type)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            # expired_url (after 30 minutes) or used_url (after five posts): nothing will get
            # through, and posting elsewhere would surprise the channel.
            logger.warning("slack_response_url_closed", body=response.body)
            return False
        raise ConnectionError(f"Slack answered {response.status_code}: {response.body}")


@contextlib.contextmanager
def _translated(route: Mapping[str, Any]) -> Any:
    try:
        yield
    except SlackApiError as exc:
        error = str(exc.response.get("error", ""))
        logger.warning("slack_send_failed", channel=route.get("channel"), error=error)
        if error in UNREACHABLE_ERRORS:
            raise RecipientUnreachable(error) from exc
        raise


class _ThreadStream:
    """A reply in the conversation: a placeholder at once, edited as text arrives."""

    live = True

    def __init__(self, sender: SlackSender, message: StoredMessage, progress: _Progress) -> None:
        self._sender = sender
        self._message = message
        self._route = message.route
        self._progress = progress
        self._text = ""
        self._shown = ""
        # The placeholder shows at once; the first edit waits its turn like the others, so an
        # answer quicker than that costs one post and one update.
        self._last_edit = time.monotonic()
        self._preview: asyncio.Task[None] | None = None
        self._placeholder: asyncio.Task[str | None] = asyncio.create_task(self._post_placeholder())

    async def _post_placeholder(self) -> str | None:
        if self._progress.placeholder is None and self._progress.sent == 0:
            try:
                self._progress.placeholder = await self._sender.post(
                    self._route, texts.SLACK_THINKING
                )
            except (SlackApiError, RecipientUnreachable, aiohttp.ClientError) as exc:
                logger.debug("slack_placeholder_failed", error=str(exc))
        return self._progress.placeholder

    async def delta(self, text: str) -> None:
        """Show the text so far, at most once every ``EDIT_EVERY_SECONDS``, never waiting."""
        self._text += text
        busy = self._preview is not None and not self._preview.done()
        if not busy and time.monotonic() - self._last_edit >= EDIT_EVERY_SECONDS:
            self._last_edit = time.monotonic()
            self._preview = asyncio.create_task(self._show(self._text))

    async def _show(self, text: str) -> None:
        # The first message's worth, cut where the final split would cut it.
        parts = split_mrkdwn(to_mrkdwn(text))
        preview = parts[0] if parts else ""
        ts = await self._placeholder
        if ts is None or not preview or preview == self._shown:
            return
        self._shown = preview
        try:
            await self._sender.update(self._route, ts, preview)
        except (SlackApiError, RecipientUnreachable, aiohttp.ClientError) as exc:
            logger.debug("slack_preview_failed", error=str(exc))  # the final text still goes

    async def finish(self, reply: Reply) -> None:
        """Put the first part in the placeholder and post the rest in the same thread."""
        if self._preview is not None:
            # Let an edit in flight land first, so it cannot overwrite the final text.
            with contextlib.suppress(Exception):
                await self._preview
        ts = await self._placeholder
        chunks = split_mrkdwn(to_mrkdwn(reply.text)) or [texts.APOLOGY]
        for number, chunk in enumerate(chunks):
            if number < self._progress.sent:
                continue  # delivered by an earlier attempt
            if number == 0 and ts is not None:
                await self._sender.update(self._route, ts, chunk)
            else:
                await self._sender.post(self._route, chunk)
            self._progress.sent = number + 1
        self._sender.done(self._message)

    async def close(self) -> None:
        """Stop the placeholder and preview tasks if the turn ended without ``finish``."""
        for task in (self._preview, self._placeholder):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class _Command:
    """A slash command's answer, posted to its ``response_url``.

    Answers to questions are ``in_channel``, so the channel sees question and answer; command
    answers, notices and apologies are for the person who asked only.
    """

    live = False

    def __init__(self, sender: SlackSender, message: StoredMessage, progress: _Progress) -> None:
        self._sender = sender
        self._message = message
        self._progress = progress

    async def delta(self, text: str) -> None:
        """Slash-command answers arrive whole; nothing to show meanwhile."""

    async def finish(self, reply: Reply) -> None:
        """Post the reply in up to five parts, the most one ``response_url`` takes."""
        public = reply.status is MessageStatus.ANSWERED and self._message.command is None
        chunks = split_mrkdwn(to_mrkdwn(reply.text)) or [texts.APOLOGY]
        if len(chunks) > RESPONSE_URL_POSTS:
            chunks = [*chunks[: RESPONSE_URL_POSTS - 1], chunks[RESPONSE_URL_POSTS - 1] + " …"]
        url = str(self._message.route["response_url"])
        for number, chunk in enumerate(chunks):
            if number < self._progress.sent:
                continue
            if not await self._sender.respond(url, chunk, "in_channel" if public else "ephemeral"):
                break
            self._progress.sent = number + 1
        self._sender.done(self._message)


class _Names:
    """Display names from ``users.info``, cached for an hour."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._cache = _Bounded()

    async def get(self, user_id: str) -> str | None:
        cached = self._cache.get(user_id)
        if cached is not None and cached[1] > time.monotonic():
            return str(cached[0]) if cached[0] is not None else None
        try:
            async with asyncio.timeout(NAME_LOOKUP_SECONDS):
                response = await self._client.users_info(user=user_id)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("slack_name_unknown", user=user_id, error=str(exc) or "timeout")
            return None
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
        )
        self._cache.remember(user_id, (name, time.monotonic() + NAME_TTL_SECONDS))
        return str(name) if name else None


class SlackAdapter:
    """Verifies and normalizes Slack requests, over HTTP or Socket Mode."""

    platform = PLATFORM
    path = "/webhooks/slack"

    def __init__(self, settings: Settings, engine: Engine, *, socket_mode: bool = False) -> None:
        secret = settings.slack_signing_secret
        if secret is None and not socket_mode:
            raise SlackSetupError("SLACK_SIGNING_SECRET is not set; Zapa refuses unsigned requests")
        self._engine = engine
        self._command = settings.slack_command
        self._verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        self._session = aiohttp.ClientSession()
        self._client = create_client(settings, self._session)
        self._names = _Names(self._client)
        self._identity: AuthorizeResult | None = None
        self._identity_lock = asyncio.Lock()
        self._sender = SlackSender(self._client, self._session)

        async def authorize() -> AuthorizeResult:  # Bolt passes arguments by their names
            return await self._authorize()

        self._app = AsyncApp(
            # Without a token of its own Bolt takes the identity from ``authorize`` (one
            # ``auth.test`` for the process) instead of calling ``auth.test`` itself.
            client=AsyncWebClient(
                base_url=self._client.base_url, timeout=API_TIMEOUT_SECONDS, session=self._session
            ),
            signing_secret=secret.get_secret_value() if secret else None,
            request_verification_enabled=not socket_mode,
            authorize=authorize,
            process_before_response=True,  # stored before Slack gets its 2xx
            name="zapa",
        )
        self._app.event("app_mention")(self._on_mention)
        self._app.event("message")(self._on_message)
        self._app.command(self._command)(self._on_command)
        # Interactivity shares the URL; nothing interactive is posted yet, so only acknowledge.
        self._app.action(re.compile(".*"))(self._acknowledge)
        engine.register_sender(PLATFORM, self._sender)

    @property
    def sender(self) -> SlackSender:
        """How replies reach Slack."""
        return self._sender

    @property
    def bot_user_id(self) -> str | None:
        """The bot's user id, once ``auth.test`` told it."""
        return self._identity.bot_user_id if self._identity is not None else None

    async def start(self) -> None:
        """Learn the bot's identity (``auth.test``); asked again on first use if Slack is away.

        Raises:
            SlackSetupError: Slack refused the token.
        """
        try:
            await self._authorize()
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            if error in TOKEN_ERRORS:
                raise SlackSetupError(f"Slack refused SLACK_BOT_TOKEN: {error}") from exc
            logger.warning("slack_unreachable", error=error or str(exc))
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("slack_unreachable", error=str(exc) or type(exc).__name__)
            return
        logger.info("slack_ready", bot_user_id=self.bot_user_id)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def socket_mode(self, app_token: str, stop: asyncio.Event) -> None:
        """Take requests over a Socket Mode connection until ``stop`` is set."""
        handler = AsyncSocketModeHandler(self._app, app_token)
        await handler.connect_async()  # type: ignore[no-untyped-call]
        try:
            await stop.wait()
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Dispatch the request through Bolt; its answers become the service's JSON errors.

        A person's plain message event (see :meth:`_plain_event`) skips Bolt's dispatch,
        which costs more than storing the message: it is verified and taken here, and
        reaches the same :meth:`_take_event` as through Bolt.
        """
        stamp = request.headers.get("X-Slack-Request-Timestamp")
        if self._verifier is not None and stamp is not None and not stamp.isdigit():
            # Bolt's verification would fail on it with an error of its own (a 500).
            return error_response(401, "unauthorized", "missing, wrong or stale signature")
        plain = await self._plain_event(request)
        if plain is not None:
            body, event, thread = plain
            refusal = await self._take_event(body, event, thread=thread)
            return await to_aiohttp_response(refusal or BoltResponse(status=200, body=""))
        try:
            bolt_request = await to_bolt_request(request)
        except ValueError:
            if not self._signed(request, await request.text()):
                return error_response(401, "unauthorized", "missing, wrong or stale signature")
            return error_response(400, "malformed_body", "the body is not a Slack request")
        response = await self._app.async_dispatch(bolt_request)
        if response.status == 401:
            return error_response(401, "unauthorized", "missing, wrong or stale signature")
        if response.status == 404:
            # A request no handler takes (an event type not subscribed to): Slack retries
            # and eventually disables a URL that fails, so it is acknowledged and dropped.
            logger.info("slack_unhandled", body_type=bolt_request.body.get("type"))
            return json_response({})
        if response.status >= 500 and not response.body:
            return error_response(500, "internal_error", "an unexpected error occurred")
        return await to_aiohttp_response(response)

    async def _plain_event(
        self, request: web.Request
    ) -> tuple[dict[str, Any], dict[str, Any], str | None] | None:
        """A correctly signed mention or direct message from a person: body, event, thread.

        ``None`` for anything else (a bad signature, another event, an edit, a bot's
        message, before the bot knows its own id…), which then goes through Bolt, so what
        the bot does never depends on the shortcut.
        """
        if self._verifier is None or self._identity is None:
            return None
        if request.content_type != "application/json":
            return None
        raw = await request.read()
        headers = request.headers
        try:
            signed = self._verifier.is_valid(
                raw, headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
            )
            body = orjson.loads(raw) if signed else None
        except ValueError:  # a body that is not JSON (handle() refused a non-numeric timestamp)
            return None
        if not isinstance(body, dict) or body.get("type") != "event_callback":
            return None
        event = body.get("event")
        if not isinstance(event, dict):
            return None
        if not (
            self._from_person(event, self._identity.bot_user_id)
            and isinstance(event.get("text"), str)
            and isinstance(event.get("channel"), str)
            and isinstance(event.get("ts"), str)
        ):
            return None
        thread = event.get("thread_ts")
        if thread is not None and not isinstance(thread, str):
            return None
        if event.get("type") == "app_mention":
            return body, event, thread or event["ts"]
        if event.get("type") == "message" and event.get("channel_type") == "im":
            return body, event, thread or None
        return None

    def _signed(self, request: web.Request, body: str) -> bool:
        if self._verifier is None:
            return False
        return self._verifier.is_valid_request(body, dict(request.headers))

    async def _authorize(self) -> AuthorizeResult:
        """The bot's identity for Bolt: ``auth.test`` once, then the cached answer."""
        if self._identity is None:
            async with self._identity_lock:
                if self._identity is None:
                    response = await self._client.auth_test()
                    self._identity = AuthorizeResult.from_auth_test_response(
                        auth_test_response=response, bot_token=self._client.token
                    )
        return self._identity

    async def _acknowledge(self, ack: AsyncAck) -> None:
        await ack()

    async def _on_mention(
        self, ack: AsyncAck, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> BoltResponse | None:
        if not self._from_person(event, context.bot_user_id):
            await ack()
            return None
        thread = str(event.get("thread_ts") or event["ts"])
        return await self._accept_event(ack, body, event, thread=thread)

    async def _on_message(
        self, ack: AsyncAck, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> BoltResponse | None:
        # Channel messages that mention the bot arrive as app_mention; here only DMs count.
        if event.get("channel_type") != "im" or not self._from_person(event, context.bot_user_id):
            await ack()
            return None
        thread = event.get("thread_ts")
        return await self._accept_event(ack, body, event, thread=str(thread) if thread else None)

    def _from_person(self, event: dict[str, Any], bot_user_id: str | None) -> bool:
        """A person's new message: not a bot's (ours included), an edit or a deletion."""
        return (
            not event.get("subtype")
            and not event.get("bot_id")
            and bool(event.get("user"))
            and event.get("user") != bot_user_id
            and bool(event.get("text"))
        )

    async def _accept_event(
        self, ack: AsyncAck, body: dict[str, Any], event: dict[str, Any], *, thread: str | None
    ) -> BoltResponse | None:
        refusal = await self._take_event(body, event, thread=thread)
        if refusal is None:
            await ack()
        return refusal

    async def _take_event(
        self, body: dict[str, Any], event: dict[str, Any], *, thread: str | None
    ) -> BoltResponse | None:
        """Hand a person's message to the engine; ``None``, or the 503 for Slack to retry."""
        team = str(body.get("team_id") or event.get("team") or "")
        channel = str(event["channel"])
        user = str(event["user"])
        text = from_mrkdwn(str(event["text"]), bot_user_id=self.bot_user_id)
        if not text:
            return None
        inbound = InboundMessage(
            platform=PLATFORM,
            # A thread is one conversation; a direct message outside threads is the person's
            # conversation in that DM, shared with the slash command used there.
            conversation_key=f"{team}:{channel}:{thread or user}",
            user_id=user,
            text=text,
            event_id=str(body.get("event_id") or "") or None,
            user_name=await self._names.get(user),
            platform_message_id=str(event["ts"]),
            command=_command_word(text),
            route={"channel": channel, "thread_ts": thread},
            raw=body,
        )
        try:
            await self._engine.accept(inbound)
        except DependencyUnavailable as exc:
            # Slack retries an event that does not get a 2xx, and the retry is deduplicated.
            logger.warning("slack_unavailable", error=str(exc))
            return _unavailable(str(exc))
        return None

    async def _on_command(self, ack: AsyncAck, command: dict[str, Any]) -> None:
        text = from_mrkdwn(str(command.get("text") or ""), bot_user_id=self.bot_user_id)
        word = _command_word(text) if text else Command.HELP
        if word in (Command.HELP, Command.START):
            await ack(
                text=texts.SLACK_COMMAND_USAGE.format(command=self._command),
                response_type="ephemeral",
            )
            return None
        user = str(command["user_id"])
        channel = str(command["channel_id"])
        inbound = InboundMessage(
            platform=PLATFORM,
            conversation_key=f"{command.get('team_id', '')}:{channel}:{user}",
            user_id=user,
            text=text,
            event_id=str(command.get("trigger_id") or "") or None,
            user_name=await self._names.get(user) or command.get("user_name"),
            command=word,
            route={"channel": channel, "response_url": command["response_url"]},
            raw=command,
        )
        try:
            accepted = await self._engine.accept(inbound)
        except DependencyUnavailable as exc:
            # Slack does not retry a slash command: tell the person rather than fail silently.
            logger.warning("slack_unavailable", error=str(exc))
            await ack(text=texts.SLACK_UNAVAILABLE, response_type="ephemeral")
            return None
        if accepted.outcome is Outcome.QUEUED and word is None:
            await ack(text=texts.SLACK_THINKING, response_type="ephemeral")
        else:
            await ack()
        return None


def _unavailable(detail: str) -> BoltResponse:
    return BoltResponse(
        status=503,
        body=orjson.dumps({"error": "unavailable", "detail": detail}).decode(),
        headers={"content-type": "application/json", "retry-after": str(RETRY_AFTER_SECONDS)},
    )
