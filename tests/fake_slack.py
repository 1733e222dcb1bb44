"""A fake Slack Web API server speaking the real wire format, for tests.

Start it on a free port, point the real ``AsyncWebClient`` at ``base_url``, then assert on
what it recorded::

    async with FakeSlack() as fake:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.base_url)
        await client.chat_postMessage(channel="C0CHAN", text="hi")
        fake.posted(channel="C0CHAN")[-1]["text"]    # "hi"

Requests are ``GET`` or ``POST /api/<method>`` with ``Authorization: Bearer <token>`` and
parameters in the query string, a form body or a JSON body (``slack_sdk`` sends
``chat.*`` as JSON, ``auth.test`` and ``users.info`` as query strings). Answers are HTTP 200
with ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``, even for errors; only rate
limits (429 with ``Retry-After``) and outages (5xx) change the status.

Methods: ``auth.test``, ``chat.postMessage``, ``chat.update`` and ``users.info``; others
answer ``unknown_method``. A missing token answers ``not_authed``, a wrong one
``invalid_auth``.

Slash commands' response URLs are served too: ``fake.response_url()`` makes one that
takes JSON posts (what ``AsyncWebhookClient`` sends) and answers 200 ``ok``, up to five
times; the sixth answers 404 ``used_url``.

Scripting and inspection:

* ``fake.fail_next("chat.postMessage", status=429, retry_after=1)`` — the next call of that
  method fails (``times=`` for more); ``status=200, error="not_in_channel"`` answers a Slack
  error, a 5xx answers an HTML page as a proxy in front of Slack does.
* ``fake.fail_response_url(status=429)`` — likewise for the next response URL posts; 404
  answers ``expired_url``.
* ``fake.add_user("U0ALICE", display_name="alice")`` — known to ``users.info``.
* ``fake.latency`` — seconds to wait before answering every request.
* ``fake.calls`` — ``(method, params)`` of every Web API request, failed ones included,
  and ``fake.call_times`` their ``time.monotonic()`` arrival times; ``fake.posted()``,
  ``fake.updates()`` and ``fake.times_of(method)`` filter them. ``fake.messages`` — what
  each channel shows now. ``fake.responses`` — accepted response URL posts.
* ``event_envelope``, ``app_mention``, ``direct_message``, ``slash_command`` and ``sign``
  build what Slack sends to the app, signed as Slack signs it.

Differences from Slack kept on purpose: any channel id exists and the bot is in it, text is
stored as sent (no mrkdwn parsing, no truncation), user events carry no ``blocks``, and an
unknown response URL answers as an expired one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.fake_server import FakeServer

BOT_TOKEN = "xoxb-test"
TEAM_ID = "T0TEAM"
TEAM_DOMAIN = "zapa-test"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
APP_ID = "A0APP"
VERIFICATION_TOKEN = "zapa-verification-token"
APP_TOKEN = "xapp-1-test"

MAX_TEXT = 40000
MAX_RESPONSE_POSTS = 5

# Parameters a form body carries as JSON text; JSON bodies carry them as JSON already.
_JSON_PARAMS = frozenset({"blocks", "attachments", "metadata"})

_GATEWAY_PAGE = "<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"

_event_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    error: str
    retry_after: int | None


class _MethodError(Exception):
    """An ``{"ok": false, "error": ...}`` answer to send, raised inside a method handler."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


# -- payload builders ----------------------------------------------------------------


def event_envelope(
    event: dict[str, Any], *, event_id: str | None = None, team_id: str = TEAM_ID
) -> dict[str, Any]:
    """The ``event_callback`` body Slack posts to the Events API request URL."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "context_team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_urlsafe(16)}",
    }


def app_mention(
    text: str,
    *,
    channel: str = "C0CHAN",
    user: str = "U0ALICE",
    ts: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """An ``app_mention`` event; write the mention into ``text`` as ``<@U0BOT>``."""
    return _user_message("app_mention", text, channel, user, ts, thread_ts)


def direct_message(
    text: str,
    *,
    channel: str = "D0DM",
    user: str = "U0ALICE",
    ts: str | None = None,
    thread_ts: str | None = None,
    subtype: str | None = None,
    bot_id: str | None = None,
) -> dict[str, Any]:
    """A ``message`` event in a direct message channel (``channel_type: "im"``).

    ``subtype`` and ``bot_id`` mark messages an app must ignore, such as its own posts.
    """
    event = _user_message("message", text, channel, user, ts, thread_ts)
    event["channel_type"] = "im"
    if subtype is not None or bot_id is not None:
        del event["client_msg_id"]  # only messages a person typed carry one
    if subtype is not None:
        event["subtype"] = subtype
    if bot_id is not None:
        event["bot_id"] = bot_id
    return event


def _user_message(
    kind: str, text: str, channel: str, user: str, ts: str | None, thread_ts: str | None
) -> dict[str, Any]:
    ts = ts or f"{int(time.time())}.{next(_event_counter):06d}"
    event: dict[str, Any] = {
        "type": kind,
        "client_msg_id": str(uuid.uuid4()),
        "user": user,
        "text": text,
        "team": TEAM_ID,
        "channel": channel,
        "ts": ts,
        "event_ts": ts,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def slash_command(
    text: str,
    *,
    response_url: str,
    command: str = "/ask",
    channel: str = "C0CHAN",
    user: str = "U0ALICE",
    user_name: str = "alice",
    trigger_id: str | None = None,
) -> dict[str, str]:
    """The form fields Slack posts for a slash command; the caller url-encodes them."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": TEAM_ID,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel,
        "channel_name": "directmessage" if channel.startswith("D") else "general",
        "user_id": user,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or f"{int(time.time())}.{secrets.token_hex(16)}",
    }


def sign(body: bytes | str, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The ``X-Slack-Request-Timestamp`` and ``X-Slack-Signature`` headers for ``body``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}


# -- the server ----------------------------------------------------------------------


class FakeSlack(FakeServer):
    """A fake Slack Web API on ``127.0.0.1`` and a free port (see the module docstring).

    Attributes:
        calls: ``(method, params)`` of every Web API request in arrival order.
        call_times: ``time.monotonic()`` of each request's arrival, parallel to ``calls``.
        messages: channel id → the bot's messages there (``ts``, ``text`` after updates,
            ``thread_ts`` for replies), in posting order.
        responses: ``(url, body)`` of every accepted response URL post.
        response_attempts: ``(url, status, time.monotonic())`` of every response URL post,
            rejected ones included.
        users: user id → the ``users.info`` user object.
        latency: seconds to wait before answering every request.
    """

    def __init__(
        self, *, token: str = BOT_TOKEN, app_token: str = APP_TOKEN, latency: float = 0.0
    ) -> None:
        """Configure the fake workspace.

        Args:
            token: the bot token requests must carry as ``Authorization: Bearer``.
            app_token: the app-level token ``apps.connections.open`` takes (Socket Mode).
            latency: seconds to wait before answering every request.
        """
        super().__init__()
        self.token = token
        self.app_token = app_token
        self.socket_acks: list[dict[str, Any]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self.latency = latency
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.call_times: list[float] = []
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.responses: list[tuple[str, Any]] = []
        self.response_attempts: list[tuple[str, int, float]] = []
        self.users: dict[str, dict[str, Any]] = {}
        self._accepted: list[tuple[str, dict[str, Any]]] = []
        self._ts = itertools.count(100)
        self._failures: dict[str, deque[_Failure]] = {}
        self._response_failures: deque[_Failure] = deque()
        self._response_urls: dict[str, int] = {}
        self._arrived = asyncio.Condition()
        self.add_user(BOT_USER_ID, display_name="zapa", real_name="Zapa", is_bot=True)

    # -- scripting and inspection ----------------------------------------------------

    def add_user(
        self,
        user_id: str,
        *,
        display_name: str = "",
        real_name: str = "",
        is_bot: bool = False,
    ) -> dict[str, Any]:
        """Make ``user_id`` known to ``users.info``; returns the user object it answers."""
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": display_name or user_id.lower(),
            "deleted": False,
            "real_name": real_name,
            "is_bot": is_bot,
            "profile": {
                "display_name": display_name,
                "real_name": real_name,
                "team": TEAM_ID,
            },
        }
        self.users[user_id] = user
        return user

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int = 1,
        error: str = "ratelimited",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with an error.

        Args:
            method: the Web API method name, e.g. ``"chat.postMessage"``.
            status: 429 answers ``Retry-After``; 5xx answers an HTML page; any other
                status answers ``{"ok": false, "error": error}``.
            retry_after: seconds for the ``Retry-After`` header of a 429.
            error: the ``error`` field of the JSON answer.
            times: how many consecutive calls fail.
        """
        failure = _Failure(status, error, retry_after if status == 429 else None)
        self._failures.setdefault(method, deque()).extend([failure] * times)

    def fail_response_url(
        self, *, status: int = 429, retry_after: int = 1, body: str | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` response URL posts with ``status``.

        The body defaults to ``expired_url`` for a 404 and ``rate_limited`` otherwise.
        Rejected posts do not count towards a URL's five.
        """
        if body is None:
            body = "expired_url" if status == 404 else "rate_limited"
        failure = _Failure(status, body, retry_after if status == 429 else None)
        self._response_failures.extend([failure] * times)

    def response_url(self, name: str = "1") -> str:
        """A fresh response URL, like Slack puts in a slash command's ``response_url``."""
        path = f"/commands/{TEAM_ID}/{name}/{secrets.token_urlsafe(12)}"
        self._response_urls[path] = 0
        return f"{self.root}{path}"

    def posted(
        self, channel: str | None = None, thread_ts: str | EllipsisType | None = ...
    ) -> list[dict[str, Any]]:
        """The params of every accepted ``chat.postMessage``.

        Args:
            channel: only posts to this channel, if given.
            thread_ts: only replies in this thread, if given; ``None`` for top-level posts.
        """
        return [
            params
            for method, params in self._accepted
            if method == "chat.postMessage"
            and (channel is None or params.get("channel") == channel)
            and (thread_ts is ... or params.get("thread_ts") == thread_ts)
        ]

    def updates(self, channel: str | None = None, ts: str | None = None) -> list[dict[str, Any]]:
        """The params of every accepted ``chat.update`` (of one channel or message, if given)."""
        return [
            params
            for method, params in self._accepted
            if method == "chat.update"
            and (channel is None or params.get("channel") == channel)
            and (ts is None or params.get("ts") == ts)
        ]

    def times_of(self, method: str) -> list[float]:
        """The monotonic arrival times of the calls of ``method``, to check pacing."""
        return [
            at for (name, _), at in zip(self.calls, self.call_times, strict=True) if name == method
        ]

    async def wait_for_calls(self, method: str, count: int = 1, seconds: float = 20) -> None:
        """Wait until ``method`` has been called ``count`` times in all."""
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(lambda: len(self.times_of(method)) >= count)

    async def wait_for_responses(
        self, count: int = 1, seconds: float = 20, *, rejected_too: bool = False
    ) -> None:
        """Wait until ``count`` response URL posts have been accepted in all (or made at all)."""
        seen = self.response_attempts if rejected_too else self.responses
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(lambda: len(seen) >= count)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The value for ``AsyncWebClient(base_url=...)``: ``http://127.0.0.1:PORT/api/``."""
        return f"{self.root}/api/"

    def add_routes(self, app: web.Application) -> None:
        """Every Web API method, as ``/api/<method>``, and the response URLs."""
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_post("/commands/{team}/{name}/{secret}", self._handle_response_url)
        app.router.add_get("/socket", self._handle_socket)

    # -- transport -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ValueError:
            params = None
        self.calls.append((method, params or {}))
        self.call_times.append(time.monotonic())
        await self._notify()

        await self._pause(self.latency)
        if params is None:
            return _ok_false("invalid_json")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _ok_false("not_authed")
        if token != (self.app_token if method == "apps.connections.open" else self.token):
            return _ok_false("invalid_auth")
        failures = self._failures.get(method)
        if failures:
            failure = failures.popleft()
            if failure.status >= 500:
                return _gateway_page(failure.status)
            return _ok_false(failure.error, failure.status, _retry_after(failure))
        handler = self._methods().get(method)
        if handler is None:
            return _ok_false("unknown_method")
        try:
            result = handler(params)
        except _MethodError as exc:
            return _ok_false(exc.error)
        self._accepted.append((method, params))
        return web.json_response({"ok": True, **result})

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        await self._pause(self.latency)
        response = await self._answer_response_url(request)
        self.response_attempts.append((f"{self.root}{request.path}", response.status, arrived))
        await self._notify()
        return response

    async def _answer_response_url(self, request: web.Request) -> web.Response:
        if self._response_failures:
            failure = self._response_failures.popleft()
            if failure.status >= 500:
                return _gateway_page(failure.status)
            return web.Response(
                status=failure.status, text=failure.error, headers=_retry_after(failure)
            )
        used = self._response_urls.get(request.path)
        if used is None:
            return web.Response(status=404, text="expired_url")
        if used >= MAX_RESPONSE_POSTS:
            return web.Response(status=404, text="used_url")
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        self._response_urls[request.path] = used + 1
        self.responses.append((f"{self.root}{request.path}", body))
        return web.Response(text="ok")

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    def _methods(self) -> dict[str, Any]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "users.info": self._users_info,
            "apps.connections.open": self._connections_open,
        }

    # -- methods ---------------------------------------------------------------------

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "Zapa Test",
            "user": "zapa",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            raise _MethodError("channel_not_found")
        text = _checked_text(params)
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "text": text,
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "ts": ts,
        }
        if params.get("thread_ts"):
            message["thread_ts"] = params["thread_ts"]
        if params.get("blocks"):
            message["blocks"] = params["blocks"]
        self.messages.setdefault(channel, []).append(message)
        return {"channel": channel, "ts": ts, "message": dict(message)}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            raise _MethodError("channel_not_found")
        ts = params.get("ts")
        found = [m for m in self.messages.get(channel, []) if m["ts"] == ts]
        if not found:
            raise _MethodError("message_not_found")
        text = _checked_text(params)
        message = found[0]
        message["text"] = text
        if params.get("blocks"):
            message["blocks"] = params["blocks"]
        message["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        return {"channel": channel, "ts": ts, "text": text, "message": dict(message)}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(params.get("user") or ""))
        if user is None:
            raise _MethodError("user_not_found")
        return {"user": user}

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"{self.root.replace('http', 'ws', 1)}/socket?ticket={uuid.uuid4()}"}

    # -- Socket Mode -----------------------------------------------------------------

    async def socket_send(self, kind: str, payload: dict[str, Any], seconds: float = 20) -> str:
        """Send an envelope (``events_api``, ``slash_commands``…) to the connected app.

        Waits for the app to connect first; returns the envelope id the ack will carry.
        """
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(lambda: bool(self._sockets))
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
        }
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def wait_for_socket_ack(self, envelope_id: str, seconds: float = 20) -> dict[str, Any]:
        """The app's acknowledgement of an envelope, once it arrives."""

        def acked() -> bool:
            return any(ack.get("envelope_id") == envelope_id for ack in self.socket_acks)

        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(acked)
        return next(ack for ack in self.socket_acks if ack.get("envelope_id") == envelope_id)

    async def _handle_socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        hello = {
            "type": "hello",
            "num_connections": len(self._sockets) + 1,
            "connection_info": {"app_id": APP_ID},
            "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
        }
        await socket.send_str(json.dumps(hello))
        self._sockets.append(socket)
        await self._notify()
        try:
            async for frame in socket:
                if frame.type == web.WSMsgType.TEXT:
                    self.socket_acks.append(json.loads(frame.data))
                    await self._notify()
        finally:
            self._sockets.remove(socket)
        return socket

    async def close(self) -> None:
        """Close Socket Mode connections, then stop serving."""
        for socket in list(self._sockets):
            await socket.close()
        await super().close()

    def _next_ts(self) -> str:
        n = next(self._ts)
        return f"{1700000000 + n}.{n:06d}"


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Parameters from the query string and the body, as the Web API accepts them."""
    params: dict[str, Any] = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the JSON body is not an object")
        params.update(body)
        return params
    for name, value in (await request.post()).items():
        if not isinstance(value, str):
            continue  # an upload: no method of this fake takes files
        params[name] = value
        if name in _JSON_PARAMS:
            with contextlib.suppress(ValueError):
                params[name] = json.loads(value)
    return params


def _checked_text(params: dict[str, Any]) -> str:
    text = str(params.get("text") or "")
    if not text.strip() and not params.get("blocks") and not params.get("attachments"):
        raise _MethodError("no_text")
    if len(text) > MAX_TEXT:
        raise _MethodError("msg_too_long")
    return text


def _ok_false(error: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"ok": False, "error": error}, status=status, headers=headers)


def _gateway_page(status: int) -> web.Response:
    """What a proxy in front of Slack answers when Slack is down: HTML, not JSON."""
    page = _GATEWAY_PAGE.format(status=status)
    return web.Response(status=status, text=page, content_type="text/html")


def _retry_after(failure: _Failure) -> dict[str, str]:
    return {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
