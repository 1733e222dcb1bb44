"""A fake OpenAI chat-completions server speaking the real wire format, for tests.

Start it on a free port, point the real client at ``base_url``, then assert on what it
recorded::

    async with FakeOpenAI() as fake:
        client = AsyncOpenAI(api_key="test", base_url=fake.base_url)
        ...                               # answers "echo: <last user message>"
        fake.requests[-1]["messages"]     # the prompt the client sent

Scripting (each call queues failures served before normal answers, in order):

* ``fake.fail(503, times=2)`` — error responses in OpenAI's error format; ``retry_after=``
  adds a ``Retry-After`` header, ``headers=`` any others; ``times=None`` fails every
  request until ``heal()``.
* ``fake.stall(5.0)`` — waits that long before answering (longer than a client timeout).
* ``fake.break_stream(after_chunks=2)`` — sends that many content chunks, then drops the
  connection without finishing the response.
* ``fake.send_event('{"error": {...}}', after_chunks=1)`` — sends that many content chunks,
  then ``data: <the given text>`` and ends the stream there (an error event, or garbage).
* ``fake.answer = lambda body: "..."`` — what to reply (default: ``"echo: <text>"``).
* ``fake.latency = 0.1`` — seconds before every response starts.
* ``fake.chunk_delay = 0.1`` — seconds between the content chunks of a stream.
* ``fake.send_usage = False`` — leave ``usage`` out, as some OpenAI-compatible servers do.

``await fake.wait_for_requests(n)`` waits until ``n`` requests have arrived, e.g. to act
while a response is still pending.

Usage it reports: ``completion_tokens`` is the number of content chunks (one per word),
``prompt_tokens`` the number of whitespace-separated words in the messages.
``GET /v1/models`` lists ``fake.model_ids`` and is not recorded or failed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from tests.fake_server import FakeServer

AnswerFn = Callable[[dict[str, Any]], str]

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def echo_answer(body: dict[str, Any]) -> str:
    """The default answer: ``"echo: "`` and the last user message's text."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return f"echo: {_text_of(message.get('content'))}"
    return "echo: "


def _text_of(content: Any) -> str:
    if isinstance(content, list):  # the content-parts form
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: Literal["status", "stall", "break", "event"]
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    message: str | None = None
    seconds: float = 0.0
    after_chunks: int = 1
    event: str = ""


class FakeOpenAI(FakeServer):
    """A fake OpenAI server on ``127.0.0.1`` and a free port (see the module docstring).

    Attributes:
        requests: parsed JSON bodies of every ``POST /v1/chat/completions``, in order.
        request_headers: the headers of those requests, in the same order.
        answer: the reply text for a request body.
        latency: seconds to wait before every response.
        send_usage: whether responses carry ``usage``.
        model_ids: the models ``GET /v1/models`` lists.
    """

    def __init__(
        self,
        *,
        answer: AnswerFn = echo_answer,
        latency: float = 0.0,
        send_usage: bool = True,
        model_ids: tuple[str, ...] = ("gpt-4o-mini",),
    ) -> None:
        super().__init__()
        self.answer = answer
        self.latency = latency
        self.chunk_delay = 0.0
        self.send_usage = send_usage
        self.model_ids = model_ids
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self._failures: deque[_Failure] = deque()
        self._always: _Failure | None = None
        self._ids = itertools.count(1)
        self._arrived = asyncio.Condition()

    # -- scripting -------------------------------------------------------------------

    def fail(
        self,
        status: int = 500,
        *,
        times: int | None = 1,
        retry_after: float | str | None = None,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (every one, if ``None``) with ``status``.

        ``retry_after`` becomes the ``Retry-After`` header: seconds, or an HTTP date string;
        ``headers`` are sent too (e.g. OpenAI's ``retry-after-ms``).
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        failure = _Failure("status", status=status, headers=tuple(extra.items()), message=message)
        self._queue(failure, times)

    def stall(self, seconds: float, *, times: int | None = 1) -> None:
        """Wait ``seconds`` before answering the next ``times`` requests normally."""
        self._queue(_Failure("stall", seconds=seconds), times)

    def break_stream(self, *, after_chunks: int = 1, times: int | None = 1) -> None:
        """Drop the connection after ``after_chunks`` content chunks of the next responses."""
        self._queue(_Failure("break", after_chunks=after_chunks), times)

    def send_event(self, data: str, *, after_chunks: int = 1, times: int | None = 1) -> None:
        """End the next streams with ``data: <data>`` after ``after_chunks`` content chunks."""
        self._queue(_Failure("event", after_chunks=after_chunks, event=data), times)

    def heal(self) -> None:
        """Forget every scripted failure: answer normally from now on."""
        self._failures.clear()
        self._always = None

    def _queue(self, failure: _Failure, times: int | None) -> None:
        if times is None:
            self._always = failure
        else:
            self._failures.extend([failure] * times)

    def _next_failure(self) -> _Failure | None:
        if self._failures:
            return self._failures.popleft()
        return self._always

    async def wait_for_requests(self, count: int) -> None:
        """Wait (up to 10 s) until ``count`` completion requests have arrived in all."""
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API root to give a client, like ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root}/v1"

    def add_routes(self, app: web.Application) -> None:
        """The chat-completions and models endpoints."""
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)

    # -- handlers --------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "fake"}
            for model in self.model_ids
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is a required property")
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        async with self._arrived:
            self._arrived.notify_all()

        failure = self._next_failure()
        await self._pause(self.latency)
        if failure is not None and failure.kind == "status":
            return _error(failure.status, failure.message, headers=dict(failure.headers))
        if failure is not None and failure.kind == "stall":
            await self._pause(failure.seconds)
        if self._closing.is_set():
            return _error(503, "The server is shutting down.")

        text = self.answer(body)
        pieces = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
        model = str(body.get("model", "gpt-4o-mini"))
        counted = {
            "prompt_tokens": sum(len(_text_of(m.get("content")).split()) for m in body["messages"]),
            "completion_tokens": len(pieces),
        }
        counted["total_tokens"] = counted["prompt_tokens"] + counted["completion_tokens"]
        usage: dict[str, int] | None = counted if self.send_usage else None
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        broken = failure is not None and failure.kind in ("break", "event")
        broken_after = failure.after_chunks if failure is not None and broken else None
        event = failure.event if failure is not None and failure.kind == "event" else None

        if body.get("stream"):
            stream_options = body.get("stream_options") or {}
            if not stream_options.get("include_usage"):
                usage = None
            return await self._stream(
                request, completion_id, model, pieces, usage, broken_after, event
            )
        if broken_after is not None:
            _drop_connection(request)
            return web.Response()
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        completion_id: str,
        model: str,
        pieces: list[str],
        usage: dict[str, int] | None,
        broken_after: int | None,
        event: str | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if usage is not None:
                data["usage"] = None
            return f"data: {json.dumps(data)}\n\n".encode()

        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        for index, piece in enumerate(pieces):
            if broken_after is not None and index >= broken_after:
                break
            if index and self.chunk_delay:
                await self._pause(self.chunk_delay)
            await response.write(chunk({"content": piece}))
        if event is not None:
            await response.write(f"data: {event}\n\n".encode())
            await response.write_eof()
            return response
        if broken_after is not None:
            _drop_connection(request)
            return response
        await response.write(chunk({}, "stop"))
        if usage is not None:
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage,
            }
            await response.write(f"data: {json.dumps(final)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _drop_connection(request: web.Request) -> None:
    """Close the socket mid-response, as a crashed upstream or a proxy timeout does."""
    if request.transport is not None:
        request.transport.close()


def _error(
    status: int, message: str | None, *, headers: dict[str, str] | None = None
) -> web.Response:
    error_type, code = _ERROR_TYPES.get(status, ("server_error", None))
    body = {
        "error": {
            "message": message or f"Fake error {status}.",
            "type": error_type,
            "param": None,
            "code": code,
        }
    }
    return web.json_response(body, status=status, headers=headers)
