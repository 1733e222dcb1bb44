"""The model: any OpenAI-compatible chat endpoint, or an offline echo model.

:class:`OpenAIResponder` streams from the endpoint with the official ``openai`` client,
retries transient failures with tenacity (exponential backoff with jitter, honouring
``Retry-After``) and guards the endpoint with a :class:`~bot.breaker.CircuitBreaker`.
Every failure leaves it as :class:`bot.errors.ModelUnavailable`, raised ``from`` the
client's own error. :class:`EchoResponder` answers when no endpoint is configured.
:func:`build_responder` picks one from the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import openai
import structlog
from openai.types.chat import ChatCompletionMessageParam
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from bot import texts, tokens
from bot.breaker import BreakerState, CircuitBreaker
from bot.errors import CircuitOpen, ModelUnavailable
from bot.messages import ChatTurn, Completion, Role, Usage
from bot.ports import DeltaCallback
from config.settings import Settings

logger = structlog.get_logger(__name__)

ECHO_MODEL = "echo"
PLACEHOLDER_API_KEY = "not-needed"
"""Sent when only ``OPENAI_BASE_URL`` is set: local servers ignore the key, the client wants one."""

# 408/409 are what OpenAI's own client retries besides 429 and 5xx.
_TRANSIENT_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One attempt at the endpoint, reported to an observer (for metrics).

    Attributes:
        model: the model asked.
        attempt: 1 for the first attempt of a turn.
        outcome: ``ok``; ``retry`` (failed, another attempt follows); ``failed`` (failed,
            the turn gives up); ``rejected`` (the breaker stopped it, attempt 0).
        seconds: how long the attempt took.
        status_code: the HTTP status of a failed attempt, when there was one.
    """

    model: str
    attempt: int
    outcome: Literal["ok", "retry", "failed", "rejected"]
    seconds: float
    status_code: int | None = None


Observer = Callable[[ModelCall], None]


class _DeltaFailed(Exception):
    """``on_delta`` raised: the caller's failure, passed on as is, never retried."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class _Turn:
    """What one ``complete()`` call has done so far, shared by its attempts."""

    def __init__(self) -> None:
        self.delivered = False
        self.attempt = 0
        self.attempt_started = 0.0

    def attempt_seconds(self) -> float:
        """How long the latest attempt has taken."""
        return time.perf_counter() - self.attempt_started if self.attempt else 0.0


def retry_after_seconds(error: BaseException) -> float | None:
    """The wait an error response asks for, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date. Returns ``None`` when the error carries
    no such header, or it cannot be read.
    """
    if not isinstance(error, openai.APIStatusError):
        return None
    headers = error.response.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def is_transient(error: BaseException) -> bool:
    """Whether another attempt may succeed: 408, 409, 429, 5xx, timeouts, lost connections.

    Other 4xx (400, 401, 403, 404, 422) mean the request itself is wrong and fail at once.
    """
    if isinstance(error, openai.APIStatusError):
        return error.status_code in _TRANSIENT_STATUSES or error.status_code >= 500
    # APIConnectionError and APITimeoutError, and an error event inside a stream.
    return isinstance(error, openai.APIError)


def _status_code(error: BaseException) -> int | None:
    return error.status_code if isinstance(error, openai.APIStatusError) else None


def _to_messages(prompt: Sequence[ChatTurn]) -> list[ChatCompletionMessageParam]:
    messages: list[ChatCompletionMessageParam] = []
    for turn in prompt:
        if turn.role is Role.SYSTEM:
            messages.append({"role": "system", "content": turn.content})
        elif turn.role is Role.ASSISTANT:
            messages.append({"role": "assistant", "content": turn.content})
        else:
            messages.append({"role": "user", "content": turn.content})
    return messages


class OpenAIResponder:
    """A :class:`bot.ports.Responder` backed by an OpenAI-compatible endpoint.

    Args:
        model: the chat model to ask.
        api_key: the endpoint's key; ``None`` sends a placeholder (local servers).
        base_url: the API root; ``None`` for OpenAI itself.
        timeout: seconds per request (connect, and each wait for data).
        max_attempts: attempts per turn, the first included.
        breaker: the circuit breaker; a default one (5 failures, 30 s) when ``None``.
        backoff_base: the first retry's backoff in seconds; it doubles per attempt, plus
            up to as much again of random jitter.
        backoff_max: the largest backoff.
        max_wait: the longest wait between attempts, even when ``Retry-After`` asks more.
        observer: called after every attempt, e.g. to feed metrics; must not raise.
    """

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 4,
        breaker: CircuitBreaker | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_wait: float = 30.0,
        observer: Observer | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._model = model
        # max_retries=0: tenacity alone retries, so attempts and backoff are ours to count.
        self._client = openai.AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            # aiohttp's transport spends about a third less CPU per call than httpx's own.
            http_client=openai.DefaultAioHttpClient(timeout=timeout),
        )
        self._max_attempts = max_attempts
        self._breaker = breaker or CircuitBreaker(threshold=5, reset_seconds=30.0)
        self._backoff = wait_exponential(multiplier=backoff_base, max=backoff_max) + wait_random(
            0, backoff_base
        )
        self._max_wait = max_wait
        self._observer = observer

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        observer: Observer | None = None,
    ) -> OpenAIResponder:
        """Build from ``OPENAI_*`` and ``LLM_*`` settings."""
        key = settings.openai_api_key
        return cls(
            model=settings.openai_model,
            api_key=key.get_secret_value() if key is not None else None,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout_seconds,
            max_attempts=settings.llm_max_attempts,
            breaker=CircuitBreaker(
                settings.llm_breaker_threshold, settings.llm_breaker_reset_seconds, clock
            ),
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            observer=observer,
        )

    @property
    def model(self) -> str:
        """The configured model name."""
        return self._model

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding the endpoint."""
        return self._breaker

    def status(self) -> str:
        """``circuit_open`` while the breaker is open, else ``ok``."""
        return "circuit_open" if self._breaker.state is BreakerState.OPEN else "ok"

    async def complete(
        self, prompt: Sequence[ChatTurn], on_delta: DeltaCallback | None = None
    ) -> Completion:
        """Stream an answer to ``prompt``, passing each piece of text to ``on_delta``.

        Transient failures are retried while no text has reached ``on_delta``; once some
        has, a failure ends the turn rather than repeat text to the user. An exception
        raised by ``on_delta`` itself propagates unchanged.

        Raises:
            CircuitOpen: the breaker is open; the endpoint was not called.
            ModelUnavailable: every attempt failed, or the request was refused (4xx).
        """
        started = time.perf_counter()
        try:
            trial = self._breaker.acquire()
        except CircuitOpen:
            self._observe(0, "rejected", 0.0, None)
            raise
        turn = _Turn()
        messages = _to_messages(prompt)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: not turn.delivered and is_transient(exc)),
            before_sleep=lambda state: self._before_sleep(turn, state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    text, usage = await self._attempt(turn, messages, on_delta)
        except _DeltaFailed as exc:
            self._breaker.release(trial)
            raise exc.error from None
        except (openai.OpenAIError, ValueError) as exc:
            # ValueError: a body that is not the JSON the client expects (a misbehaving proxy).
            self._observe(turn.attempt, "failed", turn.attempt_seconds(), _status_code(exc))
            if isinstance(exc, openai.APIStatusError) and not is_transient(exc):
                # The endpoint is up and answered; it refused this request (a 4xx).
                self._breaker.record_success()
            else:
                self._breaker.record_failure()
            logger.warning(
                "model_unavailable",
                model=self._model,
                attempts=turn.attempt,
                status_code=_status_code(exc),
                error=type(exc).__name__,
                delivered=turn.delivered,
            )
            raise ModelUnavailable(
                f"the model failed after {turn.attempt} attempt(s): {type(exc).__name__}",
                retry_after=retry_after_seconds(exc),
            ) from exc
        except BaseException:
            # Cancelled (shutdown) or a bug of ours: no verdict on the endpoint.
            self._breaker.release(trial)
            raise
        self._breaker.record_success()
        self._observe(turn.attempt, "ok", turn.attempt_seconds(), None)
        if not text.strip():
            # An empty message cannot be delivered on any platform; the user gets the apology.
            logger.warning("model_empty_answer", model=self._model)
            raise ModelUnavailable("the model returned an empty answer")
        if usage is None:
            usage = Usage(
                prompt_tokens=tokens.count_prompt(prompt),
                completion_tokens=tokens.count_tokens(text),
            )
        return Completion(
            text=text,
            model=self._model,
            usage=usage,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def _attempt(
        self,
        turn: _Turn,
        messages: list[ChatCompletionMessageParam],
        on_delta: DeltaCallback | None,
    ) -> tuple[str, Usage | None]:
        turn.attempt += 1
        turn.attempt_started = time.perf_counter()
        # The request goes through the client's generic ``post``: ``chat.completions.create``
        # first rewrites the whole prompt through its typed-dict transformer, which cost
        # 3-4 ms of CPU per call with a ten-message history, four times the rest of the call.
        # The wire format, errors, timeouts and headers are the client's all the same.
        body: dict[str, object] = {"model": self._model, "messages": messages}
        if on_delta is None:
            # Nobody watches the text arrive: one JSON answer costs far less to parse than
            # a stream of chunks.
            answer = await self._client.post("/chat/completions", body=body, cast_to=object)
            return _answer_text(answer), _answer_usage(answer)
        parts: list[str] = []
        usage: Usage | None = None
        # The chunks are read as the JSON they are (``AsyncStream[object]``): building a
        # ``ChatCompletionChunk`` model per chunk cost about 0.4 ms of CPU each, most of a
        # streamed call. The client still decodes the events and raises on an error event.
        stream = await self._client.post(
            "/chat/completions",
            body={**body, "stream": True, "stream_options": {"include_usage": True}},
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        async with stream:
            async for chunk in stream:
                usage = _answer_usage(chunk) or usage
                piece = _chunk_text(chunk)
                if not piece:
                    continue
                parts.append(piece)
                turn.delivered = True
                try:
                    await on_delta(piece)
                except Exception as exc:
                    raise _DeltaFailed(exc) from exc
        return "".join(parts), usage

    def _wait(self, state: RetryCallState) -> float:
        """Backoff with jitter, or longer when the endpoint says so, within ``max_wait``."""
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after_seconds(error) if error is not None else None
        return min(max(backoff, asked or 0.0), self._max_wait)

    def _before_sleep(self, turn: _Turn, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        status_code = _status_code(error) if error is not None else None
        self._observe(turn.attempt, "retry", turn.attempt_seconds(), status_code)
        logger.info(
            "model_retry",
            model=self._model,
            attempt=turn.attempt,
            status_code=status_code,
            error=type(error).__name__ if error is not None else None,
            wait=round(state.upcoming_sleep, 3),
        )

    def _observe(
        self,
        attempt: int,
        outcome: Literal["ok", "retry", "failed", "rejected"],
        seconds: float,
        status_code: int | None,
    ) -> None:
        if self._observer is not None:
            self._observer(ModelCall(self._model, attempt, outcome, seconds, status_code))

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()


class EchoResponder:
    """The offline model used when no endpoint is configured: it repeats the user.

    It says that it is an echo, so nobody mistakes it for a real answer.
    """

    @property
    def model(self) -> str:
        """Always ``"echo"``."""
        return ECHO_MODEL

    def status(self) -> str:
        """Always ``"echo"``."""
        return "echo"

    async def complete(
        self, prompt: Sequence[ChatTurn], on_delta: DeltaCallback | None = None
    ) -> Completion:
        """Answer with the last user message, streamed word by word."""
        started = time.perf_counter()
        question = next((t.content for t in reversed(prompt) if t.role is Role.USER), "")
        text = texts.ECHO_PREFIX + question
        if on_delta is not None:
            words = text.split(" ")
            for index, word in enumerate(words):
                await on_delta(word if index == len(words) - 1 else word + " ")
        return Completion(
            text=text,
            model=ECHO_MODEL,
            usage=Usage(
                prompt_tokens=tokens.count_prompt(prompt),
                completion_tokens=tokens.count_tokens(text),
            ),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def aclose(self) -> None:
        """Nothing to close."""


def build_responder(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: Observer | None = None,
) -> OpenAIResponder | EchoResponder:
    """The responder the settings ask for: the endpoint when configured, else the echo.

    The result satisfies :class:`bot.ports.Responder`; close it with ``aclose()``.
    """
    if settings.llm_configured:
        responder = OpenAIResponder.from_settings(settings, clock=clock, observer=observer)
        logger.info(
            "responder_ready",
            model=responder.model,
            endpoint=urlsplit(settings.openai_base_url).hostname
            if settings.openai_base_url
            else "api.openai.com",
            token_counter=tokens.encoding_name(),
        )
        return responder
    logger.warning("responder_echo", reason="neither OPENAI_API_KEY nor OPENAI_BASE_URL is set")
    return EchoResponder()


def _answer_text(answer: object) -> str:
    """The assistant's text in a chat-completion body ("" when there is none)."""
    try:
        content = answer["choices"][0]["message"].get("content")  # type: ignore[index]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("the endpoint's answer has no choices[0].message") from None
    return content if isinstance(content, str) else ""


def _chunk_text(chunk: object) -> str:
    """The text a streamed chunk adds ("" for the role, usage and finish chunks).

    Raises:
        ValueError: the chunk is not a chat-completion chunk.
    """
    choices = chunk.get("choices", []) if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        raise ValueError("a streamed chunk is not a chat.completion.chunk object")
    if not choices:
        return ""
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _answer_usage(answer: object) -> Usage | None:
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None
    try:
        return Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None
