"""A fake Telegram Bot API server speaking the real wire format, for tests.

Start it on a free port, point the real ``telegram.Bot`` at ``base_url``, then assert on what
it recorded::

    async with FakeTelegram() as fake, Bot("123:abc", base_url=fake.base_url) as bot:
        await bot.send_message(chat_id=42, text="hi")
        fake.sent(chat_id=42)[-1]["text"]    # "hi"

Requests are ``GET`` or ``POST /bot<token>/<method>`` with parameters in the query string,
a form body (what python-telegram-bot sends: strings as-is, everything else JSON-encoded),
a multipart body, or a JSON body. Answers are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": "...", "parameters": {"retry_after": S}}``.

Methods: ``getMe``, ``sendMessage``, ``editMessageText``, ``deleteMessage``,
``sendChatAction``, ``setWebhook``, ``deleteWebhook``, ``getWebhookInfo``, ``setMyCommands``,
``getMyCommands`` and ``getUpdates``; others answer 404 "Not Found", as Telegram does.

Scripting and inspection:

* ``fake.fail_next("sendMessage", status=429, retry_after=1)`` — the next call of that
  method fails (``times=`` for more); 400/403/5xx with ``description=`` likewise.
* ``fake.queue_update(update)`` — served by ``getUpdates`` (``update_id`` filled in if
  missing); ``text_update(...)`` builds a realistic private-chat text message update.
* ``fake.calls`` — ``(method, params)`` of every request, failed ones included, and
  ``fake.call_times`` their ``time.monotonic()`` arrival times, in the same order;
  ``fake.sent(chat_id)``, ``fake.edits()`` and ``fake.times_of(method)`` filter them.
* ``fake.webhook`` — the state ``setWebhook`` keeps; set ``last_error_message`` to mimic a
  failing delivery. ``fake.commands`` — the last ``setMyCommands`` list.

Differences from Telegram kept on purpose: message text is echoed as sent (no entity parsing
for ``parse_mode``), replies to unknown messages get a stub ``reply_to_message``, and
``deleteMessage`` always succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fake_server import FakeServer

_INTEGER = re.compile(r"-?\d+")

# Parameters Telegram types as String: never decode them as JSON, so a text of "123" or
# "true" stays a string.
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "action",
        "url",
        "secret_token",
        "ip_address",
        "inline_message_id",
        "language_code",
        "business_connection_id",
        "message_effect_id",
    }
)

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    description: str
    retry_after: int | None


class TelegramApiError(Exception):
    """An error answer to send, raised inside a method handler."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


def text_update(
    text: str,
    *,
    chat_id: int = 1001,
    user_id: int | None = None,
    message_id: int = 1,
    update_id: int | None = None,
    first_name: str = "Ada",
    username: str | None = "ada",
    message_thread_id: int | None = None,
) -> dict[str, Any]:
    """A ``message`` update as Telegram sends it for a user's text in a private chat.

    ``user_id`` defaults to ``chat_id`` (in private chats they are equal). A negative
    ``chat_id`` makes the chat a supergroup instead.
    """
    sender: dict[str, Any] = {
        "id": chat_id if user_id is None else user_id,
        "is_bot": False,
        "first_name": first_name,
        "language_code": "en",
    }
    if username is not None:
        sender["username"] = username
    message: dict[str, Any] = {
        "message_id": message_id,
        "from": sender,
        "chat": _chat(chat_id),
        "date": int(time.time()),
        "text": text,
    }
    if message_thread_id is not None:
        message["message_thread_id"] = message_thread_id
        message["is_topic_message"] = True
    update: dict[str, Any] = {"message": message}
    if update_id is not None:
        update["update_id"] = update_id
    return update


def _chat(chat_id: Any) -> dict[str, Any]:
    if isinstance(chat_id, str) and chat_id.startswith("@"):
        return {"id": -1001000000000, "type": "channel", "title": chat_id, "username": chat_id[1:]}
    try:
        chat_id = int(chat_id)
    except (TypeError, ValueError):
        raise TelegramApiError(400, "Bad Request: chat not found") from None
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Ada", "username": "ada"}
    return {"id": chat_id, "type": "supergroup", "title": "Test group", "is_forum": True}


def _decode(name: str, value: str) -> Any:
    """Undo python-telegram-bot's form encoding: non-string values arrive as JSON text."""
    if name in _STRING_PARAMS:
        return value
    if value in ("true", "false"):
        return value == "true"
    if _INTEGER.fullmatch(value):
        return int(value)
    if value[:1] in ("{", "["):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


class FakeTelegram(FakeServer):
    """A fake Telegram Bot API on ``127.0.0.1`` and a free port (see the module docstring).

    Attributes:
        calls: ``(method, params)`` of every request in arrival order; method names are as
            sent (``"sendMessage"``), params decoded to JSON types.
        call_times: ``time.monotonic()`` of each request's arrival, parallel to ``calls``.
        tokens: the bot token of each request, parallel to ``calls``.
        webhook: what ``setWebhook`` stored (``url``, ``secret_token``, ``allowed_updates``,
            ``max_connections``, ``last_error_message``, ``last_error_date``).
        commands: the commands of the last ``setMyCommands``.
        latency: seconds to wait before answering every request.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        bot_id: int = 7000000001,
        username: str = "zapa_test_bot",
        first_name: str = "Zapa",
        latency: float = 0.0,
    ) -> None:
        """Configure the fake bot.

        Args:
            token: if set, requests with any other token get 401 "Unauthorized".
            bot_id: the bot user's id, as ``getMe`` reports it.
            username: the bot's username, without the ``@``.
            first_name: the bot's display name.
            latency: seconds to wait before answering every request.
        """
        super().__init__()
        self.token = token
        self.bot_user: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": first_name,
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.latency = latency
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.call_times: list[float] = []
        self.tokens: list[str] = []
        self.webhook: dict[str, Any] = {
            "url": "",
            "secret_token": None,
            "allowed_updates": None,
            "max_connections": 40,
            "last_error_message": None,
            "last_error_date": None,
        }
        self.commands: list[dict[str, Any]] = []
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._message_ids = itertools.count(100)
        self._update_ids = itertools.count(500000)
        self._updates: deque[dict[str, Any]] = deque()
        self._update_arrived = asyncio.Event()
        self._failures: dict[str, deque[_Failure]] = {}
        self._arrived = asyncio.Condition()

    # -- scripting and inspection ----------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 500,
        *,
        retry_after: int | None = None,
        description: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with an error.

        Args:
            method: the Bot API method name, e.g. ``"sendMessage"`` (case-insensitive).
            status: the HTTP status and ``error_code``.
            retry_after: seconds for ``parameters.retry_after``; defaults to 1 for a 429.
            description: the error text; defaults to Telegram's text for the status.
            times: how many consecutive calls fail.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if status == 429
                else _DEFAULT_DESCRIPTIONS.get(status, "Internal Server Error")
            )
        failures = self._failures.setdefault(method.lower(), deque())
        failures.extend([_Failure(status, description, retry_after)] * times)

    def queue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for ``getUpdates``; returns it with its ``update_id`` set."""
        update = dict(update)
        if "update_id" not in update:
            update["update_id"] = next(self._update_ids)
        self._updates.append(update)
        self._update_arrived.set()
        return update

    def sent(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        """The params of every ``sendMessage`` call (to ``chat_id`` only, if given)."""
        return [
            params
            for method, params in self.calls
            if method.lower() == "sendmessage"
            and (chat_id is None or str(params.get("chat_id")) == str(chat_id))
        ]

    def edits(self) -> list[dict[str, Any]]:
        """The params of every ``editMessageText`` call."""
        return [params for method, params in self.calls if method.lower() == "editmessagetext"]

    def times_of(self, method: str) -> list[float]:
        """The monotonic arrival times of the calls of ``method``, to check pacing."""
        return [
            at
            for (name, _), at in zip(self.calls, self.call_times, strict=True)
            if name.lower() == method.lower()
        ]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """The current state of a message the bot sent, or ``None`` if unknown."""
        return self._messages.get((int(chat_id), int(message_id)))

    async def wait_for_calls(self, method: str, count: int = 1) -> None:
        """Wait (up to 10 s) until ``method`` has been called ``count`` times in all."""
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: len(self.times_of(method)) >= count)

    async def wait_until(self, done: Callable[[], bool], seconds: float = 10.0) -> None:
        """Wait until ``done()`` holds, checked after every call that arrives."""
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(done)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The value for ``Bot(token, base_url=...)``: ``http://127.0.0.1:PORT/bot``."""
        return f"{self.root}/bot"

    @property
    def base_file_url(self) -> str:
        """The value for ``Bot(token, base_file_url=...)``; no files are served."""
        return f"{self.root}/file/bot"

    def add_routes(self, app: web.Application) -> None:
        """Every Bot API method, as ``/bot<token>/<method>``."""
        app.router.add_route("*", "/bot{token}/{method}", self._handle)

    def _wake_waiters(self) -> None:
        self._update_arrived.set()  # a waiting getUpdates then sees the closing

    # -- transport -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ValueError:
            return _error(400, "Bad Request: can't parse JSON object")
        self.calls.append((method, params))
        self.call_times.append(time.monotonic())
        self.tokens.append(token)
        async with self._arrived:
            self._arrived.notify_all()

        await self._pause(self.latency)
        if self.token is not None and token != self.token:
            return _error(401, "Unauthorized")
        failures = self._failures.get(method.lower())
        if failures:
            failure = failures.popleft()
            return _error(failure.status, failure.description, failure.retry_after)
        handler = self._methods().get(method.lower())
        if handler is None:
            return _error(404, "Not Found")
        try:
            result = await handler(params)
        except TelegramApiError as exc:
            return _error(exc.status, exc.description, exc.retry_after)
        return web.json_response({"ok": True, "result": result})

    def _methods(self) -> dict[str, Any]:
        return {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "deletemessage": self._delete_message,
            "sendchataction": self._send_chat_action,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "getupdates": self._get_updates,
        }

    # -- methods ---------------------------------------------------------------------

    async def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _required(params, "chat_id")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TelegramApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise TelegramApiError(400, "Bad Request: message is too long")
        chat = _chat(chat_id)
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": {k: self.bot_user[k] for k in ("id", "is_bot", "first_name", "username")},
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if params.get("message_thread_id") is not None:
            message["message_thread_id"] = params["message_thread_id"]
            message["is_topic_message"] = True
        reply_to = _reply_target(params)
        if reply_to is not None:
            stored = self._messages.get((chat["id"], reply_to))
            message["reply_to_message"] = stored or {
                "message_id": reply_to,
                "chat": chat,
                "date": message["date"],
            }
        if params.get("reply_markup") is not None:
            message["reply_markup"] = params["reply_markup"]
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    async def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any] | bool:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TelegramApiError(400, "Bad Request: message text is empty")
        if params.get("inline_message_id") is not None:
            return True
        chat = _chat(_required(params, "chat_id"))
        key = (chat["id"], int(_required(params, "message_id")))
        message = self._messages.get(key)
        if message is None:
            raise TelegramApiError(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        if message["text"] == text and message.get("reply_markup") == markup:
            raise TelegramApiError(400, NOT_MODIFIED)
        edited = {**message, "text": text, "edit_date": int(time.time())}
        if markup is None:
            edited.pop("reply_markup", None)
        else:
            edited["reply_markup"] = markup
        self._messages[key] = edited
        return edited

    async def _delete_message(self, params: dict[str, Any]) -> bool:
        chat = _chat(_required(params, "chat_id"))
        self._messages.pop((chat["id"], int(_required(params, "message_id"))), None)
        return True

    async def _send_chat_action(self, params: dict[str, Any]) -> bool:
        _required(params, "chat_id")
        _required(params, "action")
        return True

    async def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        if url and not url.startswith("https://"):
            raise TelegramApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided")
        self.webhook.update(
            url=url,
            secret_token=params.get("secret_token"),
            allowed_updates=params.get("allowed_updates"),
            max_connections=params.get("max_connections", 40),
        )
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _delete_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook.update(url="", secret_token=None, allowed_updates=None)
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook["url"],
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook["url"]:
            info["max_connections"] = self.webhook["max_connections"]
            if self.webhook["allowed_updates"] is not None:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        if self.webhook["last_error_message"]:
            info["last_error_message"] = self.webhook["last_error_message"]
            info["last_error_date"] = self.webhook["last_error_date"] or int(time.time())
        return info

    async def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = _required(params, "commands")
        if not isinstance(commands, list):
            raise TelegramApiError(400, "Bad Request: can't parse commands JSON object")
        self.commands = commands
        return True

    async def _get_my_commands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.commands

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook["url"]:
            raise TelegramApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        # A positive offset confirms every update before it: Telegram forgets them.
        while self._updates and offset > 0 and self._updates[0]["update_id"] < offset:
            self._updates.popleft()
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while not self._updates and not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._update_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._update_arrived.wait(), remaining)
        return list(itertools.islice(self._updates, limit))


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Parameters from the query string and the body, as Telegram accepts them."""
    params: dict[str, Any] = {name: _decode(name, value) for name, value in request.query.items()}
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the JSON body is not an object")
        params.update(body)
        return params
    form = await request.post()
    for name, value in form.items():
        if isinstance(value, str):
            params[name] = _decode(name, value)
        elif isinstance(value, web.FileField):  # an upload: keep what a test can check
            params[name] = {"filename": value.filename, "size": len(value.file.read())}
        else:
            params[name] = {"filename": None, "size": len(value)}
    return params


def _required(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise TelegramApiError(400, f"Bad Request: {name} is empty")
    return value


def _reply_target(params: dict[str, Any]) -> int | None:
    reply = params.get("reply_parameters")
    if isinstance(reply, dict) and reply.get("message_id") is not None:
        return int(reply["message_id"])
    if params.get("reply_to_message_id") is not None:
        return int(params["reply_to_message_id"])
    return None


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)
