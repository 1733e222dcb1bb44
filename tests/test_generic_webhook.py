"""The generic webhook channel end to end: HTTP in, fake model, HTTP (or callback) out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from tests.fake_openai import FakeOpenAI
from tests.harness import SECRET, Receiver, bearer, message, running, settings, signed


@pytest.fixture(params=["embedded", "postgres+redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every test here runs on SQLite with in-process limits, and on Postgres with Redis."""
    if request.param == "embedded":
        return {"database_url": request.getfixturevalue("sqlite_url")}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": request.getfixturevalue("redis_url"),
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def config(backend: dict[str, Any], fake: FakeOpenAI, **overrides: Any) -> Any:
    return settings(openai_base_url=fake.base_url, openai_api_key="sk-test", **backend, **overrides)


async def test_bearer_request_gets_the_reply_in_the_response(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    async with running(config(backend, fake, system_prompt="Be brief.")) as client:
        response = await client.post("/webhooks/generic", json=message("Hello"), headers=bearer())
        body = await response.json()
    assert response.status == 200
    assert body["reply"] == "echo: Hello"
    assert body["conversation_id"] == "ticket-42"
    assert isinstance(body["message_id"], int)
    assert body["model"] == "gpt-4o-mini"
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert fake.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]


async def test_signed_request_is_answered(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    body = orjson.dumps(message("Signed hello"))
    async with running(config(backend, fake)) as client:
        response = await client.post("/webhooks/generic", data=body, headers=signed(body))
        assert response.status == 200
        assert (await response.json())["reply"] == "echo: Signed hello"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-auth"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param("bad-signature", id="bad-signature"),
        pytest.param("stale", id="stale-timestamp"),
        pytest.param("other-secret", id="other-secret"),
    ],
)
async def test_unauthenticated_request_is_refused_and_nothing_happens(
    backend: dict[str, Any], fake: FakeOpenAI, headers: Any
) -> None:
    body = orjson.dumps(message("sneaky"))
    if headers == "bad-signature":
        headers = {**signed(body), "webhook-signature": "v1,AAAA"}
    elif headers == "stale":
        headers = signed(body, at=datetime.now(tz=UTC) - timedelta(minutes=6))
    elif headers == "other-secret":
        headers = signed(body, secret="whsec_" + "b3RoZXItc2VjcmV0LTAxMjM0NTY3ODk=")
    async with running(config(backend, fake)) as client:
        response = await client.post("/webhooks/generic", data=body, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"
        # The same conversation, properly authenticated, has no trace of the refused one.
        ok = await client.post("/webhooks/generic", json=message("legit"), headers=bearer())
        assert ok.status == 200
    assert len(fake.requests) == 1
    assert [m["content"] for m in fake.requests[0]["messages"][1:]] == ["legit"]


async def test_repeated_webhook_id_returns_first_result_and_calls_model_once(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    body = orjson.dumps(message("once"))
    async with running(config(backend, fake)) as client:
        first = await client.post("/webhooks/generic", data=body, headers=signed(body, "msg_abc"))
        again = await client.post("/webhooks/generic", data=body, headers=signed(body, "msg_abc"))
        assert first.status == again.status == 200
        assert await first.json() == await again.json()
    assert len(fake.requests) == 1


async def test_idempotency_key_with_bearer_calls_model_once(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    async with running(config(backend, fake)) as client:
        results = []
        for _ in range(3):
            response = await client.post(
                "/webhooks/generic",
                json=message("pay"),
                headers=bearer(**{"Idempotency-Key": "k-1"}),
            )
            results.append(await response.json())
        other = await client.post(
            "/webhooks/generic", json=message("pay"), headers=bearer(**{"Idempotency-Key": "k-2"})
        )
        assert other.status == 200
    assert results[0] == results[1] == results[2]
    assert len(fake.requests) == 2


async def test_event_stream_deltas_join_to_the_final_reply(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    fake.answer = lambda body: "one two three four five"
    async with running(config(backend, fake)) as client:
        response = await client.post(
            "/webhooks/generic",
            json=message("stream please"),
            headers=bearer(Accept="text/event-stream"),
        )
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "X-Request-ID" in response.headers
        raw = (await response.read()).decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    parsed = [
        (lines[0].removeprefix("event: "), orjson.loads(lines[1].removeprefix("data: ")))
        for lines in events
    ]
    deltas = [data["text"] for name, data in parsed if name == "delta"]
    assert len(deltas) >= 2
    assert parsed[-1][0] == "done"
    assert "".join(deltas) == parsed[-1][1]["reply"] == "one two three four five"


async def test_callback_gets_the_signed_reply(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    async with Receiver() as receiver, running(config(backend, fake)) as client:
        response = await client.post(
            "/webhooks/generic",
            json=message("call me back", callback_url=receiver.url),
            headers=bearer(),
        )
        assert response.status == 202
        accepted = await response.json()
        assert accepted["status"] == "queued"
        [body] = await receiver.wait_for(1)
    headers, raw = receiver.received[0]
    Webhook(SECRET).verify(raw, headers)  # raises if the signature is wrong
    assert body["reply"] == "echo: call me back"
    assert body["message_id"] == accepted["message_id"]


async def test_failed_callback_is_retried(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    async with Receiver(statuses=[503, 500]) as receiver, running(config(backend, fake)) as client:
        response = await client.post(
            "/webhooks/generic",
            json=message("retry me", callback_url=receiver.url),
            headers=bearer(),
        )
        assert response.status == 202
        [body] = await receiver.wait_for(1, seconds=30)
    assert body["reply"] == "echo: retry me"
    assert receiver.statuses == []  # both failures were served before the success


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "ftp://example.com/x",
    ],
)
async def test_private_or_odd_callback_url_is_refused(
    backend: dict[str, Any], fake: FakeOpenAI, url: str
) -> None:
    async with running(config(backend, fake, callback_allow_private=False)) as client:
        response = await client.post(
            "/webhooks/generic", json=message("x", callback_url=url), headers=bearer()
        )
        assert response.status == 400
        assert (await response.json())["field"] == "callback_url"
    assert fake.requests == []


async def test_over_the_limit_gets_429_with_retry_after_and_no_model_call(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    async with running(config(backend, fake, rate_limit="2/minute")) as client:
        for text in ("a", "b"):
            assert (
                await client.post("/webhooks/generic", json=message(text), headers=bearer())
            ).status == 200
        refused = await client.post("/webhooks/generic", json=message("c"), headers=bearer())
        assert refused.status == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert (await refused.json())["error"] == "rate_limited"
        other_user = await client.post(
            "/webhooks/generic", json=message("d", user="u-8"), headers=bearer()
        )
        assert other_user.status == 200
    assert len(fake.requests) == 3


async def test_model_failing_twice_then_succeeding_still_answers(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    fake.fail(500, times=2)
    async with running(config(backend, fake)) as client:
        response = await client.post("/webhooks/generic", json=message("persist"), headers=bearer())
        assert response.status == 200
        assert (await response.json())["reply"] == "echo: persist"
    assert len(fake.requests) == 3


async def test_model_always_failing_gives_apology_503_and_service_stays_healthy(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    fake.fail(500, times=None)
    async with running(config(backend, fake, llm_max_attempts=2)) as client:
        response = await client.post("/webhooks/generic", json=message("doomed"), headers=bearer())
        assert response.status == 503
        body = await response.json()
        assert body["error"] == "model_unavailable"
        assert body["reply"].startswith("Sorry")
        assert (await client.get("/health")).status == 200
        # The failed turn stays out of the next prompt.
        fake.heal()
        ok = await client.post("/webhooks/generic", json=message("again"), headers=bearer())
        assert ok.status == 200
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["again"]


async def test_history_survives_a_restart(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    async with running(config(backend, fake)) as client:
        assert (
            await client.post("/webhooks/generic", json=message("my name is Ann"), headers=bearer())
        ).status == 200
    async with running(config(backend, fake)) as client:
        assert (
            await client.post(
                "/webhooks/generic", json=message("what is my name?"), headers=bearer()
            )
        ).status == 200
    assert [(m["role"], m["content"]) for m in fake.requests[-1]["messages"][1:]] == [
        ("user", "my name is Ann"),
        ("assistant", "echo: my name is Ann"),
        ("user", "what is my name?"),
    ]


async def test_twenty_quick_messages_are_answered_in_order_with_full_history(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    texts = [f"message {n}" for n in range(20)]
    async with (
        Receiver() as receiver,
        running(config(backend, fake, rate_limit="100/minute")) as client,
    ):
        for text in texts:
            response = await client.post(
                "/webhooks/generic", json=message(text, callback_url=receiver.url), headers=bearer()
            )
            assert response.status == 202
        bodies = await receiver.wait_for(20, seconds=40)
    assert [b["reply"] for b in bodies] == [f"echo: {t}" for t in texts]
    for n, request in enumerate(fake.requests):
        users = [m["content"] for m in request["messages"] if m["role"] == "user"]
        assistants = [m["content"] for m in request["messages"] if m["role"] == "assistant"]
        assert users == texts[: n + 1]
        assert assistants == [f"echo: {t}" for t in texts[:n]]


async def test_reset_starts_a_fresh_context(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    async with running(config(backend, fake)) as client:
        await client.post("/webhooks/generic", json=message("remember 42"), headers=bearer())
        reset = await client.post("/webhooks/generic", json=message("/reset"), headers=bearer())
        assert reset.status == 200
        assert "forgotten" in (await reset.json())["reply"]
        await client.post("/webhooks/generic", json=message("what number?"), headers=bearer())
    assert len(fake.requests) == 2  # /reset itself does not reach the model
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["what number?"]


async def test_usage_command_reports_remaining_quota(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    async with running(config(backend, fake, rate_limit="5/minute;50/day")) as client:
        await client.post("/webhooks/generic", json=message("hi"), headers=bearer())
        usage = await client.post("/webhooks/generic", json=message("/usage"), headers=bearer())
        text = (await usage.json())["reply"]
    assert "4 of 5 this minute" in text
    assert "49 of 50 this day" in text


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (b"{not json", "malformed_json", None),
        (b"[1, 2]", "malformed_json", None),
        (
            orjson.dumps({"conversation_id": "c", "user_id": "u", "text": ""}),
            "invalid_request",
            "text",
        ),
        (
            orjson.dumps({"conversation_id": "c" * 201, "user_id": "u", "text": "x"}),
            "invalid_request",
            "conversation_id",
        ),
        (orjson.dumps({"user_id": "u", "text": "x"}), "invalid_request", "conversation_id"),
    ],
)
async def test_malformed_body_gets_400_with_json_error(
    backend: dict[str, Any], fake: FakeOpenAI, body: bytes, error: str, field: str | None
) -> None:
    async with running(config(backend, fake)) as client:
        response = await client.post(
            "/webhooks/generic", data=body, headers=bearer(**{"Content-Type": "application/json"})
        )
        assert response.status == 400
        payload = await response.json()
    assert payload["error"] == error
    assert payload.get("field") == field
    assert payload["detail"]
    assert fake.requests == []


async def test_oversized_body_gets_413(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    async with running(config(backend, fake, max_body_bytes=4096)) as client:
        response = await client.post(
            "/webhooks/generic", json=message("x" * 5000), headers=bearer()
        )
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert fake.requests == []


async def test_request_id_is_echoed_and_process_time_reported(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    async with running(config(backend, fake)) as client:
        response = await client.post(
            "/webhooks/generic", json=message("hi"), headers=bearer(**{"X-Request-ID": "req-abc-1"})
        )
        fresh = await client.get("/health")
    assert response.headers["X-Request-ID"] == "req-abc-1"
    assert float(response.headers["X-Process-Time"]) > 0
    assert len(fresh.headers["X-Request-ID"]) >= 16
    assert float(fresh.headers["X-Process-Time"]) >= 0


async def test_repeat_asking_for_a_stream_gets_the_first_result_as_done(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    key = {"Idempotency-Key": "stream-repeat"}
    async with running(config(backend, fake)) as client:
        first = await client.post("/webhooks/generic", json=message("once"), headers=bearer(**key))
        again = await client.post(
            "/webhooks/generic",
            json=message("once"),
            headers=bearer(Accept="text/event-stream", **key),
        )
        raw = (await again.read()).decode()
        assert again.status == 200
        first_body = await first.json()
    name, data = raw.strip().split("\n")
    assert name == "event: done"
    assert orjson.loads(data.removeprefix("data: ")) == first_body
    assert len(fake.requests) == 1


async def test_repeat_of_a_refused_message_is_refused_again(
    backend: dict[str, Any], fake: FakeOpenAI
) -> None:
    async with running(config(backend, fake, rate_limit="1/minute")) as client:
        assert (
            await client.post("/webhooks/generic", json=message("a"), headers=bearer())
        ).status == 200
        key = {"Idempotency-Key": "refused-1"}
        refused = await client.post("/webhooks/generic", json=message("b"), headers=bearer(**key))
        again = await client.post("/webhooks/generic", json=message("b"), headers=bearer(**key))
        assert refused.status == again.status == 429
        assert "Retry-After" in again.headers
    assert len(fake.requests) == 1


async def test_oversized_chunked_body_gets_413(backend: dict[str, Any], fake: FakeOpenAI) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    async with running(config(backend, fake, max_body_bytes=4096)) as client:
        response = await client.post("/webhooks/generic", data=chunks(), headers=bearer())
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert fake.requests == []
