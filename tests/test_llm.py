"""The model client against a fake OpenAI server, through the real ``openai`` client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import openai
import pytest

from bot import tokens
from bot.breaker import BreakerState, CircuitBreaker
from bot.errors import CircuitOpen, ModelUnavailable
from bot.llm import (
    PLACEHOLDER_API_KEY,
    EchoResponder,
    ModelCall,
    OpenAIResponder,
    build_responder,
)
from bot.messages import ChatTurn, Role, Usage
from config.settings import Settings
from tests.fake_openai import FakeOpenAI

SYSTEM = ChatTurn(Role.SYSTEM, "You are a test assistant.")
QUESTION = ChatTurn(Role.USER, "what is the capital of France")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Deltas:
    """An ``on_delta`` callback that keeps what it was given."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, text: str) -> None:
        self.pieces.append(text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


Factory = Callable[..., OpenAIResponder]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_responder(fake: FakeOpenAI, clock: FakeClock) -> AsyncIterator[Factory]:
    """Responders on the fake with fast backoff; closed after the test."""
    made: list[OpenAIResponder] = []

    def make(**overrides: Any) -> OpenAIResponder:
        options: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "api_key": "sk-test",
            "base_url": fake.base_url,
            "timeout": 5.0,
            "max_attempts": 4,
            "breaker": CircuitBreaker(threshold=100, reset_seconds=30.0, clock=clock),
            "backoff_base": 0.01,
            "backoff_max": 0.05,
        }
        options.update(overrides)
        responder = OpenAIResponder(**options)
        made.append(responder)
        return responder

    yield make
    for responder in made:
        await responder.aclose()


def _settings(**values: Any) -> Settings:
    values.setdefault("openai_api_key", None)
    values.setdefault("openai_base_url", None)
    return Settings(_env_file=None, **values)


# -- answering ---------------------------------------------------------------------------


async def test_streamed_pieces_join_into_the_answer_and_usage_is_reported(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    deltas = Deltas()

    completion = await make_responder().complete([SYSTEM, QUESTION], deltas)

    assert completion.text == f"echo: {QUESTION.content}"
    assert len(deltas.pieces) > 1
    assert deltas.text == completion.text
    assert completion.model == "gpt-4o-mini"
    assert completion.latency_ms > 0
    # The fake reports one completion token per streamed piece, prompt tokens as words.
    assert completion.usage == Usage(
        prompt_tokens=len(SYSTEM.content.split()) + len(QUESTION.content.split()),
        completion_tokens=len(deltas.pieces),
    )
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


async def test_prompt_holds_the_given_turns_in_order(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    prompt = [
        SYSTEM,
        ChatTurn(Role.USER, "My name is Ann."),
        ChatTurn(Role.ASSISTANT, "Hello Ann!"),
        ChatTurn(Role.USER, "What is my name?"),
    ]

    completion = await make_responder(model="gpt-test").complete(prompt)

    assert fake.requests[0]["model"] == "gpt-test"
    assert fake.requests[0]["messages"] == [
        {"role": turn.role.value, "content": turn.content} for turn in prompt
    ]
    assert completion.text == "echo: What is my name?"
    assert fake.request_headers[0]["Authorization"] == "Bearer sk-test"


async def test_missing_usage_is_estimated_from_the_text(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.send_usage = False
    prompt = [SYSTEM, QUESTION]

    completion = await make_responder().complete(prompt)

    assert completion.usage == Usage(
        prompt_tokens=tokens.count_prompt(prompt),
        completion_tokens=tokens.count_tokens(completion.text),
    )
    assert completion.usage.completion_tokens > 0


async def test_empty_answer_counts_as_model_unavailable(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.answer = lambda body: ""

    with pytest.raises(ModelUnavailable):
        await make_responder().complete([QUESTION])

    assert len(fake.requests) == 1


# -- retries -----------------------------------------------------------------------------


async def test_server_errors_are_retried_until_answered(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.fail(500, times=2)
    calls: list[ModelCall] = []

    completion = await make_responder(observer=calls.append).complete([QUESTION])

    assert completion.text == f"echo: {QUESTION.content}"
    assert len(fake.requests) == 3
    assert [(c.attempt, c.outcome, c.status_code) for c in calls] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "ok", None),
    ]


async def test_rate_limit_waits_for_retry_after_seconds(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.fail(429, retry_after=1)

    started = time.monotonic()
    completion = await make_responder().complete([QUESTION])
    elapsed = time.monotonic() - started

    assert completion.text == f"echo: {QUESTION.content}"
    assert len(fake.requests) == 2
    assert elapsed >= 0.9


async def test_retry_after_as_http_date_is_honoured(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    # HTTP dates have whole seconds, so "two seconds from now" is between 1 and 2 s away.
    when = datetime.now(UTC) + timedelta(seconds=2)
    fake.fail(503, retry_after=format_datetime(when, usegmt=True))

    started = time.monotonic()
    await make_responder().complete([QUESTION])

    assert time.monotonic() - started >= 0.9
    assert len(fake.requests) == 2


async def test_retry_after_in_milliseconds_is_honoured(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.fail(429, headers={"retry-after-ms": "600"})

    started = time.monotonic()
    await make_responder().complete([QUESTION])

    assert time.monotonic() - started >= 0.55
    assert len(fake.requests) == 2


@pytest.mark.parametrize("header", ["soon", "Mon, 01 Jan 2001 00:00:00 GMT"])
async def test_unreadable_or_past_retry_after_falls_back_to_backoff(
    fake: FakeOpenAI, make_responder: Factory, header: str
) -> None:
    fake.fail(503, retry_after=header)

    started = time.monotonic()
    await make_responder().complete([QUESTION])

    assert time.monotonic() - started < 0.5
    assert len(fake.requests) == 2


async def test_retry_after_beyond_the_cap_waits_only_the_cap(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.fail(429, retry_after=3600)

    started = time.monotonic()
    await make_responder(max_wait=0.2).complete([QUESTION])

    assert 0.15 <= time.monotonic() - started < 5
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_fail_at_once(
    fake: FakeOpenAI, make_responder: Factory, status: int
) -> None:
    fake.fail(status)
    responder = make_responder()

    with pytest.raises(ModelUnavailable) as caught:
        await responder.complete([QUESTION])

    assert isinstance(caught.value.__cause__, openai.APIStatusError)
    assert caught.value.__cause__.status_code == status
    assert len(fake.requests) == 1
    assert responder.status() == "ok"


async def test_persistent_server_error_gives_up_after_max_attempts(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.fail(500, times=None)

    with pytest.raises(ModelUnavailable) as caught:
        await make_responder(max_attempts=3).complete([QUESTION])

    assert len(fake.requests) == 3
    assert isinstance(caught.value.__cause__, openai.InternalServerError)
    assert not isinstance(caught.value, CircuitOpen)


async def test_exhausted_rate_limit_reports_the_wait_asked_for(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.fail(429, times=None, retry_after="0.05")

    with pytest.raises(ModelUnavailable) as caught:
        await make_responder(max_attempts=2).complete([QUESTION])

    assert caught.value.retry_after == pytest.approx(0.05)
    assert len(fake.requests) == 2


async def test_timeout_is_retried(fake: FakeOpenAI, make_responder: Factory) -> None:
    fake.stall(10.0)

    started = time.monotonic()
    completion = await make_responder(timeout=0.3).complete([QUESTION])

    assert completion.text == f"echo: {QUESTION.content}"
    assert len(fake.requests) == 2
    assert time.monotonic() - started < 5


async def test_unreachable_endpoint_fails_after_every_attempt(make_responder: Factory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: every connection is refused.
    responder = make_responder(base_url=f"http://127.0.0.1:{port}/v1", max_attempts=2)

    with pytest.raises(ModelUnavailable) as caught:
        await responder.complete([QUESTION])

    assert isinstance(caught.value.__cause__, openai.APIConnectionError)


async def test_broken_stream_before_any_text_was_passed_on_is_retried(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.break_stream(after_chunks=1)

    completion = await make_responder().complete([QUESTION])

    assert completion.text == f"echo: {QUESTION.content}"
    assert len(fake.requests) == 2


async def test_broken_stream_after_text_reached_the_user_fails_without_retry(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.break_stream(after_chunks=2)
    deltas = Deltas()

    with pytest.raises(ModelUnavailable) as caught:
        await make_responder().complete([QUESTION], deltas)

    assert len(fake.requests) == 1
    assert deltas.pieces and f"echo: {QUESTION.content}".startswith(deltas.text)
    assert deltas.text != f"echo: {QUESTION.content}"
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)


async def test_error_event_in_the_stream_before_any_text_is_retried(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    # OpenAI-compatible servers report a failure after the 200 as an event of its own.
    fake.send_event('{"error": {"message": "overloaded", "type": "server_error"}}', after_chunks=0)
    deltas = Deltas()

    completion = await make_responder().complete([QUESTION], deltas)

    assert completion.text == deltas.text == f"echo: {QUESTION.content}"
    assert len(fake.requests) == 2


async def test_chunk_that_is_not_a_completion_chunk_makes_the_model_unavailable(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    fake.send_event("[1, 2, 3]", after_chunks=1, times=None)
    deltas = Deltas()

    with pytest.raises(ModelUnavailable) as caught:
        await make_responder().complete([QUESTION], deltas)

    # The first word had reached the user, so the turn is not tried again.
    assert len(fake.requests) == 1
    assert deltas.text == "echo: "
    assert isinstance(caught.value.__cause__, ValueError)


async def test_failing_delta_callback_propagates_unchanged_without_retry(
    fake: FakeOpenAI, make_responder: Factory
) -> None:
    class PlatformDown(Exception):
        pass

    async def on_delta(text: str) -> None:
        raise PlatformDown(text)

    responder = make_responder()
    with pytest.raises(PlatformDown):
        await responder.complete([QUESTION], on_delta)

    assert len(fake.requests) == 1
    assert responder.breaker.failures == 0


# -- the circuit breaker -----------------------------------------------------------------


async def test_breaker_opens_after_failed_turns_then_fails_instantly(
    fake: FakeOpenAI, make_responder: Factory, clock: FakeClock
) -> None:
    fake.fail(503, times=None)
    breaker = CircuitBreaker(threshold=2, reset_seconds=30.0, clock=clock)
    calls: list[ModelCall] = []
    responder = make_responder(max_attempts=2, breaker=breaker, observer=calls.append)

    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            await responder.complete([QUESTION])
    assert len(fake.requests) == 4
    assert responder.status() == "circuit_open"

    clock.advance(10)
    started = time.monotonic()
    with pytest.raises(CircuitOpen) as caught:
        await responder.complete([QUESTION])

    assert time.monotonic() - started < 0.5
    assert len(fake.requests) == 4
    assert caught.value.retry_after == pytest.approx(20.0)
    assert calls[-1].outcome == "rejected"


async def test_breaker_half_opens_after_reset_and_closes_on_success(
    fake: FakeOpenAI, make_responder: Factory, clock: FakeClock
) -> None:
    fake.fail(500, times=None)
    breaker = CircuitBreaker(threshold=1, reset_seconds=30.0, clock=clock)
    responder = make_responder(max_attempts=1, breaker=breaker)
    with pytest.raises(ModelUnavailable):
        await responder.complete([QUESTION])
    assert responder.status() == "circuit_open"

    fake.heal()
    clock.advance(30)
    assert breaker.state is BreakerState.HALF_OPEN
    completion = await responder.complete([QUESTION])

    assert completion.text == f"echo: {QUESTION.content}"
    assert len(fake.requests) == 2
    assert breaker.failures == 0
    assert responder.status() == "ok"


async def test_failed_trial_reopens_the_breaker(
    fake: FakeOpenAI, make_responder: Factory, clock: FakeClock
) -> None:
    fake.fail(500, times=None)
    breaker = CircuitBreaker(threshold=1, reset_seconds=30.0, clock=clock)
    responder = make_responder(max_attempts=2, breaker=breaker)
    with pytest.raises(ModelUnavailable):
        await responder.complete([QUESTION])

    clock.advance(31)
    with pytest.raises(ModelUnavailable) as trial:
        await responder.complete([QUESTION])
    assert not isinstance(trial.value, CircuitOpen)
    assert len(fake.requests) == 4

    with pytest.raises(CircuitOpen):
        await responder.complete([QUESTION])
    assert len(fake.requests) == 4
    assert responder.status() == "circuit_open"


async def test_half_open_breaker_lets_one_trial_through_at_a_time(
    fake: FakeOpenAI, make_responder: Factory, clock: FakeClock
) -> None:
    fake.fail(500)
    breaker = CircuitBreaker(threshold=1, reset_seconds=30.0, clock=clock)
    responder = make_responder(max_attempts=1, breaker=breaker)
    with pytest.raises(ModelUnavailable):
        await responder.complete([QUESTION])
    clock.advance(30)
    fake.latency = 0.3

    results = await asyncio.gather(
        responder.complete([QUESTION]), responder.complete([QUESTION]), return_exceptions=True
    )

    assert sum(isinstance(r, CircuitOpen) for r in results) == 1
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert len(fake.requests) == 2


async def test_cancelled_trial_lets_the_next_call_try(
    fake: FakeOpenAI, make_responder: Factory, clock: FakeClock
) -> None:
    fake.fail(500)
    breaker = CircuitBreaker(threshold=1, reset_seconds=30.0, clock=clock)
    responder = make_responder(max_attempts=1, breaker=breaker)
    with pytest.raises(ModelUnavailable):
        await responder.complete([QUESTION])
    clock.advance(30)

    fake.latency = 10.0
    trial = asyncio.create_task(responder.complete([QUESTION]))
    await fake.wait_for_requests(2)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial

    fake.latency = 0.0
    completion = await responder.complete([QUESTION])
    assert completion.text == f"echo: {QUESTION.content}"
    assert breaker.state is BreakerState.CLOSED


def test_breaker_counts_only_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, reset_seconds=5.0, clock=clock)

    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.acquire() is False
    assert breaker.failures == 2

    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    clock.advance(5.0)
    assert breaker.acquire() is True


# -- choosing a responder ----------------------------------------------------------------


async def test_echo_model_answers_offline_and_says_so() -> None:
    responder = build_responder(_settings())
    deltas = Deltas()

    try:
        completion = await responder.complete([SYSTEM, QUESTION], deltas)
    finally:
        await responder.aclose()

    assert isinstance(responder, EchoResponder)
    assert completion.text.startswith("Echo (no model configured)")
    assert completion.text.endswith(QUESTION.content)
    assert len(deltas.pieces) > 1
    assert deltas.text == completion.text
    assert completion.model == "echo"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert responder.status() == "echo"


async def test_base_url_alone_uses_the_endpoint_with_a_placeholder_key(fake: FakeOpenAI) -> None:
    responder = build_responder(_settings(openai_base_url=fake.base_url, openai_model="llama3"))
    try:
        completion = await responder.complete([QUESTION])
    finally:
        await responder.aclose()

    assert isinstance(responder, OpenAIResponder)
    assert completion.text == f"echo: {QUESTION.content}"
    assert completion.model == "llama3"
    assert fake.requests[0]["model"] == "llama3"
    assert fake.request_headers[0]["Authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


async def test_settings_set_attempts_and_breaker(fake: FakeOpenAI) -> None:
    fake.fail(502, times=None)
    clock = FakeClock()
    settings = _settings(
        openai_api_key="sk-from-settings",
        openai_base_url=fake.base_url,
        llm_max_attempts=2,
        llm_breaker_threshold=1,
        llm_breaker_reset_seconds=60,
    )
    responder = OpenAIResponder.from_settings(settings, clock=clock, backoff_base=0.01)
    try:
        with pytest.raises(ModelUnavailable):
            await responder.complete([QUESTION])
        with pytest.raises(CircuitOpen) as caught:
            await responder.complete([QUESTION])
    finally:
        await responder.aclose()

    assert len(fake.requests) == 2
    assert caught.value.retry_after == pytest.approx(60.0)
    assert fake.request_headers[0]["Authorization"] == "Bearer sk-from-settings"
