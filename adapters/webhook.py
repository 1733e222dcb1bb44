"""The generic HTTP channel (SPEC §4.3): ``POST /webhooks/generic``.

Callers authenticate with a Standard Webhooks signature or a bearer token, post a message,
and get the reply in the response, as server-sent events, or later at their callback URL.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from adapters.callbacks import CallbackPoster, CallbackRefused, check_callback_url
from bot import texts
from bot.engine import Acceptance, Engine, Outcome
from bot.errors import DependencyUnavailable
from bot.http import REQUEST_ID, error_response, json_response
from bot.messages import InboundMessage, MessageStatus, Reply, StoredMessage, parse_command
from bot.ports import ReplyBus, ReplyEvent, ReplyStream
from config import Settings

logger = structlog.get_logger(__name__)

PLATFORM = "webhook"
# A waiting caller asks the store after this long without news, then twice as long each time
# up to the cap: a lost reply event is found within seconds, and under a backlog a thousand
# waiting callers do not keep the database busy asking.
STORE_POLL_SECONDS = 2.0
STORE_POLL_MAX_SECONDS = 30.0


class GenericRequest(BaseModel):
    """The request body of the generic channel."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str = Field(min_length=1, max_length=200)
    user_id: str = Field(min_length=1, max_length=200)
    user_name: str | None = Field(default=None, max_length=200)
    text: str = Field(min_length=1, max_length=32_000)
    callback_url: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] = Field(default_factory=dict)


class _Refused(Exception):
    """The request carries no valid authentication."""


class _Stream:
    def __init__(self, sender: WebhookSender, message: StoredMessage) -> None:
        self._sender = sender
        self._message = message
        # The caller asked for server-sent events when the message came in.
        self.live = message.route.get("stream") is True

    async def delta(self, text: str) -> None:
        await self._sender.bus.publish(ReplyEvent(self._message.id, delta=text))

    async def finish(self, reply: Reply) -> None:
        callback = self._message.route.get("callback_url")
        if callback and reply.status is not MessageStatus.RATE_LIMITED:
            await self._sender.poster.post(
                str(callback), f"msg_{self._message.id}", reply.as_result()
            )
        # Told even without a callback: a repeat of the request may be waiting on it.
        await self._sender.bus.publish(ReplyEvent(self._message.id, done=True, reply=reply))


class WebhookSender:
    """Delivers generic-channel replies: to waiting requests and to callback URLs."""

    def __init__(self, poster: CallbackPoster, bus: ReplyBus) -> None:
        self.poster = poster
        self.bus = bus

    @asynccontextmanager
    async def reply_stream(self, message: StoredMessage) -> AsyncIterator[ReplyStream]:
        """A stream that feeds waiting requests and finishes with the callback, if any."""
        yield _Stream(self, message)


class WebhookAdapter:
    """Verifies, parses and answers generic webhook requests."""

    platform = PLATFORM
    path = "/webhooks/generic"

    def __init__(self, settings: Settings, engine: Engine, bus: ReplyBus) -> None:
        self._engine = engine
        self._bus = bus
        self._token = (
            settings.webhook_token.get_secret_value().encode() if settings.webhook_token else None
        )
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self._verifier = Webhook(secret) if secret else None
        self._allow_private = settings.callback_allow_private
        self._max_body = settings.max_body_bytes
        # The web process waits this long for a reply: every model attempt, plus slack.
        self._wait_seconds = settings.llm_timeout_seconds * settings.llm_max_attempts + 30
        self.sender = WebhookSender(
            CallbackPoster(secret=secret, allow_private=settings.callback_allow_private), bus
        )
        engine.register_sender(PLATFORM, self.sender)

    async def start(self) -> None:
        """Nothing to learn from a platform."""

    async def aclose(self) -> None:
        """Close the callback client."""
        await self.sender.poster.aclose()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, validate, accept, then answer as the caller asked."""
        if request.content_length is not None and request.content_length > self._max_body:
            return error_response(413, "payload_too_large", "the body exceeds MAX_BODY_BYTES")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked), found out reading
            return error_response(413, "payload_too_large", "the body exceeds MAX_BODY_BYTES")
        try:
            event_id = self._authenticate(request, body)
        except _Refused:
            return error_response(401, "unauthorized", "missing or invalid webhook authentication")
        try:
            payload = GenericRequest.model_validate_json(body)
        except ValidationError as exc:
            return _validation_error(exc)
        if payload.callback_url is not None:
            try:
                await check_callback_url(payload.callback_url, allow_private=self._allow_private)
            except CallbackRefused as exc:
                return error_response(400, "invalid_request", str(exc), field="callback_url")
        streaming = "text/event-stream" in request.headers.get("Accept", "")
        route: dict[str, Any] = {}
        if payload.callback_url:
            route["callback_url"] = payload.callback_url
        elif streaming:
            route["stream"] = True
        inbound = InboundMessage(
            platform=PLATFORM,
            conversation_key=payload.conversation_id,
            user_id=payload.user_id,
            text=payload.text,
            event_id=event_id,
            user_name=payload.user_name,
            command=parse_command(payload.text),
            route=route,
            raw=payload.metadata,
            request_id=request.get(REQUEST_ID),
        )
        try:
            # A synchronous or streaming caller waits for the reply itself: holding replies
            # back for the webhooks would only hold its own response back.
            awaited = payload.callback_url is None
            accepted = await self._engine.accept(inbound, awaited=awaited)
        except DependencyUnavailable as exc:
            logger.warning("webhook_unavailable", error=str(exc))
            return error_response(503, "unavailable", str(exc), retry_after=5)
        if accepted.outcome is Outcome.DUPLICATE:
            # An outage here is the web layer's 503 (bot.app), as anywhere.
            first = await self._engine.message(accepted.message_id)
            if first is not None and first.status is MessageStatus.RATE_LIMITED:
                accepted = Acceptance(Outcome.RATE_LIMITED, first.id, retry_after=60)
            elif first is not None and first.status is MessageStatus.BANNED:
                accepted = Acceptance(Outcome.BANNED, first.id)
        if accepted.outcome is Outcome.BANNED:
            return error_response(403, "banned", texts.BANNED, message_id=accepted.message_id)
        if accepted.outcome is Outcome.RATE_LIMITED:
            return error_response(
                429,
                "rate_limited",
                "too many messages from this user; try again later",
                retry_after=accepted.retry_after,
            )
        if payload.callback_url is not None:
            return json_response({"message_id": accepted.message_id, "status": "queued"}, 202)
        # A fresh message's reply cannot exist yet: the in-process queue hands the job to a
        # worker only after this handler, which does not yield before it starts listening,
        # and a worker elsewhere needs a whole model call before it could publish. (Should
        # it ever be quicker, the store is asked anyway after STORE_POLL_SECONDS.) A repeat
        # may have finished long ago, so the store is asked first.
        fresh = accepted.outcome is Outcome.QUEUED
        if streaming:
            return await self._stream(request, accepted.message_id, fresh=fresh)
        return await self._wait(accepted.message_id, fresh=fresh)

    def _authenticate(self, request: web.Request, body: bytes) -> str | None:
        """The delivery id the caller vouches for (``webhook-id`` or ``Idempotency-Key``).

        Raises:
            _Refused: neither a valid bearer token nor a valid, fresh signature.
        """
        authorization = request.headers.get("Authorization", "")
        if self._token is not None and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip().encode()
            if not hmac.compare_digest(given, self._token):
                raise _Refused
            return request.headers.get("Idempotency-Key") or None
        if self._verifier is not None and "webhook-signature" in request.headers:
            try:
                self._verifier.verify(body, dict(request.headers), json_parse=False)
            except (WebhookVerificationError, ValueError):
                raise _Refused from None
            return request.headers["webhook-id"]
        raise _Refused

    async def _wait(self, message_id: int, *, fresh: bool) -> web.Response:
        poll = _Poll()
        async with self._bus.listen(message_id) as events:
            try:
                reply = None if fresh else await self._engine.result(message_id)
                async with asyncio.timeout(self._wait_seconds):
                    while reply is None:
                        reply = (await self._next(message_id, events, poll)).reply
            except TimeoutError:
                return error_response(
                    503,
                    "timeout",
                    "the reply is taking too long; it is still on its way",
                    retry_after=30,
                    message_id=message_id,
                )
            except DependencyUnavailable as exc:
                # The message is stored and will be answered; the same delivery id asked
                # again returns that answer.
                logger.warning("webhook_reply_unavailable", error=str(exc))
                return error_response(
                    503, "unavailable", str(exc), retry_after=5, message_id=message_id
                )
        return _result_response(reply)

    async def _stream(
        self, request: web.Request, message_id: int, *, fresh: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        poll = _Poll()
        async with self._bus.listen(message_id) as events:
            await response.prepare(request)
            try:
                reply = None if fresh else await self._engine.result(message_id)
                async with asyncio.timeout(self._wait_seconds):
                    while reply is None:
                        event = await self._next(message_id, events, poll)
                        if event.delta is not None:
                            await response.write(_sse("delta", {"text": event.delta}))
                        reply = event.reply
            except TimeoutError:
                await response.write(_sse("error", {"error": "timeout", "message_id": message_id}))
                return response
            except DependencyUnavailable as exc:
                logger.warning("webhook_reply_unavailable", error=str(exc))
                failure = {"error": "unavailable", "detail": str(exc), "message_id": message_id}
                await response.write(_sse("error", failure))
                return response
        name = "done" if reply.status is MessageStatus.ANSWERED else "error"
        await response.write(_sse(name, _result_body(reply)))
        await response.write_eof()
        return response

    async def _next(
        self, message_id: int, events: asyncio.Queue[ReplyEvent], poll: _Poll
    ) -> ReplyEvent:
        """The next event; a ``done`` one carries the reply, read from the store if need be.

        When replies come from other processes an event can be lost (Redis reconnecting),
        so the store is also asked after ``poll.seconds`` without news.
        """
        while True:
            try:
                if self._bus.local:
                    event = await events.get()
                else:
                    event = await asyncio.wait_for(events.get(), poll.seconds)
            except TimeoutError:
                poll.back_off()
                event = ReplyEvent(message_id, done=True)
            if not event.done or event.reply is not None:
                return event
            reply = await self._engine.result(message_id)
            if reply is not None:
                return ReplyEvent(message_id, done=True, reply=reply)


class _Poll:
    """How long a waiting caller goes without news before asking the store (again)."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = STORE_POLL_SECONDS

    def back_off(self) -> None:
        self.seconds = min(self.seconds * 2, STORE_POLL_MAX_SECONDS)


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_REFUSALS = {
    MessageStatus.RATE_LIMITED: ("rate_limited", "too many messages from this user"),
    MessageStatus.BANNED: ("banned", "an administrator has blocked this user"),
}


def _result_body(reply: Reply) -> dict[str, Any]:
    if reply.status is MessageStatus.ANSWERED:
        return reply.as_result()
    error, detail = _REFUSALS.get(
        reply.status, ("model_unavailable", "the model did not answer; try again later")
    )
    return {"error": error, "detail": detail, "message_id": reply.inbound.id, "reply": reply.text}


def _result_response(reply: Reply) -> web.Response:
    if reply.status is MessageStatus.ANSWERED:
        return json_response(reply.as_result())
    return json_response(_result_body(reply), 503, {"Retry-After": "30"})


def _validation_error(exc: ValidationError) -> web.Response:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid" or not first["loc"]:
        return error_response(400, "malformed_json", "the body is not a JSON object")
    field = ".".join(str(part) for part in first["loc"])
    return error_response(400, "invalid_request", f"{field}: {first['msg']}", field=field)
