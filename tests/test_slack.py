"""The Slack adapter end to end: signed requests in, Web API calls to a fake Slack out."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from storage.db import open_database
from storage.models import User
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import (
    BOT_ID,
    BOT_USER_ID,
    FakeSlack,
    app_mention,
    direct_message,
    event_envelope,
    sign,
    slash_command,
)
from tests.harness import CLOSED_PORT, running, settings, stored_texts

TOKEN = "xoxb-test"
SIGNING_SECRET = "slack-signing-secret-123"
CHANNEL = "C0CHAN"
_ts = itertools.count(1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=TOKEN) as server:
        server.add_user("U0ALICE", display_name="alice", real_name="Alice Liddell")
        server.add_user("U0BOB", display_name="", real_name="Bob Stone")
        yield server


def config(database_url: str, fake: FakeOpenAI, slack: FakeSlack, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "database_url": database_url,
        "openai_base_url": fake.base_url,
        "slack_bot_token": TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.base_url,
    }
    values.update(overrides)
    return settings(**values)


@pytest.fixture
async def client(
    database_url: str, fake: FakeOpenAI, slack: FakeSlack
) -> AsyncIterator[TestClient[Any, Any]]:
    async with running(config(database_url, fake, slack)) as started:
        yield started


def ts() -> str:
    return f"1700000{next(_ts):03d}.000200"


async def post_event(
    client: TestClient[Any, Any],
    body: dict[str, Any],
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    **headers: str,
) -> Any:
    raw = orjson.dumps(body)
    signed = sign(raw, secret, timestamp=timestamp)
    return await client.post(
        "/webhooks/slack",
        data=raw,
        headers={**signed, "Content-Type": "application/json", **headers},
    )


async def post_command(client: TestClient[Any, Any], fields: dict[str, str]) -> Any:
    raw = urlencode(fields)
    return await client.post(
        "/webhooks/slack",
        data=raw,
        headers={**sign(raw, SIGNING_SECRET), "Content-Type": "application/x-www-form-urlencoded"},
    )


def mention(text: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("ts", ts())
    return event_envelope(app_mention(f"<@{BOT_USER_ID}> {text}", **kwargs))


async def bot_replies(slack: FakeSlack, channel: str, count: int) -> list[dict[str, Any]]:
    """Wait until the bot has ``count`` answered messages in the channel and Slack has been
    called by no one for a moment (so no edit is still on its way); return them."""
    async with asyncio.timeout(20):
        while True:
            mine = [m for m in slack.messages.get(channel, []) if m["text"] != "Thinking…"]
            quiet = not slack.call_times or time.monotonic() - slack.call_times[-1] > 0.3
            if len(mine) >= count and quiet:
                return mine
            await asyncio.sleep(0.05)


async def test_url_verification_answers_the_challenge(client: TestClient[Any, Any]) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = {"token": "legacy", "challenge": challenge, "type": "url_verification"}
    response = await post_event(client, body)
    assert response.status == 200
    assert (await response.json())["challenge"] == body["challenge"]


@pytest.mark.parametrize(
    ("secret", "age"),
    [("wrong-secret", 0), (SIGNING_SECRET, 6 * 60)],
    ids=["bad-signature", "stale-timestamp"],
)
async def test_bad_signature_or_stale_timestamp_is_refused_and_nothing_happens(
    database_url: str,
    client: TestClient[Any, Any],
    fake: FakeOpenAI,
    slack: FakeSlack,
    secret: str,
    age: int,
) -> None:
    response = await post_event(
        client, mention("sneaky"), secret=secret, timestamp=int(time.time()) - age
    )
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"
    unsigned = await client.post("/webhooks/slack", data=orjson.dumps(mention("no signature")))
    assert unsigned.status == 401
    garbled = await post_event(
        client, mention("odd timestamp"), **{"X-Slack-Request-Timestamp": "soon"}
    )
    assert garbled.status == 401
    await asyncio.sleep(0.3)
    assert fake.requests == []
    assert slack.posted() == []
    assert await stored_texts(database_url) == []


async def test_slash_command_is_acknowledged_at_once_and_answered_in_channel(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    fake.latency = 1.0  # the model is slow; the acknowledgement must not wait for it
    url = slack.response_url("ask-1")
    started = time.perf_counter()
    response = await post_command(client, slash_command("what is a haiku?", response_url=url))
    elapsed = time.perf_counter() - started
    assert response.status == 200
    assert elapsed < 3.0
    ack = await response.json()
    assert ack["text"] == "Thinking…"
    assert ack.get("response_type", "ephemeral") == "ephemeral"
    await slack.wait_for_responses(1)
    [(posted_to, answer)] = slack.responses
    assert posted_to == url
    assert answer["text"] == "echo: what is a haiku?"
    assert answer["response_type"] == "in_channel"


async def test_slash_command_without_text_gets_usage_help(
    database_url: str, client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    response = await post_command(client, slash_command("", response_url=slack.response_url()))
    assert response.status == 200
    assert "/ask reset" in (await response.json())["text"]
    await asyncio.sleep(0.3)
    assert fake.requests == []
    assert slack.responses == []
    assert await stored_texts(database_url) == []


async def test_slash_reset_and_usage_mirror_the_commands(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    for n, text in enumerate(["remember 7", "reset", "what number?", "usage"]):
        response = await post_command(
            client, slash_command(text, response_url=slack.response_url(f"turn-{n}"))
        )
        assert response.status == 200
        await slack.wait_for_responses(len(slack.responses) + 1)
    answers = [body for _, body in slack.responses]
    assert "forgotten" in answers[1]["text"]
    assert answers[1]["response_type"] == "ephemeral"
    assert "of 20 this minute" in answers[3]["text"]
    assert answers[3]["response_type"] == "ephemeral"
    # The prompt after the reset holds no trace of the earlier exchange.
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["what number?"]


async def test_mention_is_answered_in_its_thread_and_the_thread_keeps_its_history(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    root = ts()
    assert (await post_event(client, mention("my name is Ada", ts=root))).status == 200
    [first] = await bot_replies(slack, CHANNEL, 1)
    assert first["thread_ts"] == root
    assert first["text"] == "echo: my name is Ada"
    follow_up = mention("what is my name?", ts=ts(), thread_ts=root)
    assert (await post_event(client, follow_up)).status == 200
    replies = await bot_replies(slack, CHANNEL, 2)
    assert all(reply["thread_ts"] == root for reply in replies)
    assert replies[1]["text"] == "echo: what is my name?"
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
    ]
    # A placeholder appears first and becomes the answer: one message per reply.
    assert [p["text"] for p in slack.posted(channel=CHANNEL)] == ["Thinking…", "Thinking…"]


async def test_the_model_gets_the_text_as_typed_not_as_slack_encodes_it(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    body = mention("does <@U0BOB|bob> think 1 &lt; 2? see <https://example.com|the docs>")
    assert (await post_event(client, body)).status == 200
    await bot_replies(slack, CHANNEL, 1)
    assert fake.requests[-1]["messages"][-1]["content"] == (
        "does @bob think 1 < 2? see the docs (https://example.com)"
    )


async def test_another_thread_is_another_conversation(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    assert (await post_event(client, mention("first thread"))).status == 200
    await bot_replies(slack, CHANNEL, 1)
    assert (await post_event(client, mention("second thread"))).status == 200
    await bot_replies(slack, CHANNEL, 2)
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["second thread"]


async def test_direct_message_is_answered_in_the_dm(
    client: TestClient[Any, Any], slack: FakeSlack
) -> None:
    body = event_envelope(direct_message("hello there", ts=ts()))
    assert (await post_event(client, body)).status == 200
    [reply] = await bot_replies(slack, "D0DM", 1)
    assert reply["text"] == "echo: hello there"
    assert reply.get("thread_ts") is None


@pytest.mark.parametrize(
    "event",
    [
        direct_message("from a bot", bot_id="B0OTHER"),
        direct_message("bot message", subtype="bot_message", bot_id="B0OTHER"),
        direct_message("my own words", user=BOT_USER_ID, bot_id=BOT_ID),
        {**direct_message("edited"), "subtype": "message_changed"},
        {**direct_message(""), "subtype": "message_deleted"},
        {**direct_message("in a channel", channel=CHANNEL), "channel_type": "channel"},
    ],
    ids=["bot", "bot-subtype", "own", "edit", "deletion", "channel-message"],
)
async def test_messages_not_from_a_person_to_the_bot_are_ignored(
    database_url: str,
    client: TestClient[Any, Any],
    fake: FakeOpenAI,
    slack: FakeSlack,
    event: dict[str, Any],
) -> None:
    assert (await post_event(client, event_envelope(event))).status == 200
    await asyncio.sleep(0.3)
    assert fake.requests == []
    assert slack.posted() == []
    assert await stored_texts(database_url) == []


async def test_retried_event_is_answered_once(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    body = mention("once please", ts=ts())
    assert (await post_event(client, body)).status == 200
    retry = await post_event(
        client, body, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    assert retry.status == 200
    await bot_replies(slack, CHANNEL, 1)
    await asyncio.sleep(0.3)
    assert len(slack.posted()) == 1
    assert len(fake.requests) == 1


async def test_long_reply_is_split_into_messages_in_the_same_thread(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    paragraphs = [f"Paragraph {n}. " + "word " * 400 for n in range(5)]
    original = "\n\n".join(p.strip() for p in paragraphs)
    fake.answer = lambda body: original
    root = ts()
    assert (await post_event(client, mention("tell me a lot", ts=root))).status == 200
    parts = await bot_replies(slack, CHANNEL, 3)
    assert len(original) > 10_000
    assert all(len(part["text"]) <= 4000 for part in parts)
    assert all(part["thread_ts"] == root for part in parts)
    assert " ".join(part["text"] for part in parts).split() == original.split()


async def test_markdown_is_rendered_as_mrkdwn_with_special_characters_escaped(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    fake.answer = lambda body: (
        "**Bold** & <b>not a tag</b> <!channel>, see [the docs](https://example.com/a)\n\n"
        "- one\n- _two_"
    )
    assert (await post_event(client, mention("format"))).status == 200
    [reply] = await bot_replies(slack, CHANNEL, 1)
    text = reply["text"]
    assert "*Bold* &amp; &lt;b&gt;not a tag&lt;/b&gt; &lt;!channel&gt;" in text
    assert "<https://example.com/a|the docs>" in text
    assert "• one\n• _two_" in text


async def test_slack_429_delays_but_does_not_lose_the_reply(
    client: TestClient[Any, Any], slack: FakeSlack
) -> None:
    slack.fail_next("chat.update", status=429, retry_after=1)
    assert (await post_event(client, mention("patience"))).status == 200
    [reply] = await bot_replies(slack, CHANNEL, 1)
    assert reply["text"] == "echo: patience"
    first, second = slack.times_of("chat.update")[:2]
    assert second - first >= 0.9


async def test_reply_streams_into_the_placeholder_at_most_once_a_second(
    sqlite_url: str, fake: FakeOpenAI, slack: FakeSlack
) -> None:
    words = [f"word{n}" for n in range(12)]
    fake.answer = lambda body: " ".join(words) + " **done**"
    fake.chunk_delay = 0.25  # about three seconds of generation
    async with running(config(sqlite_url, fake, slack)) as client:
        assert (await post_event(client, mention("stream it"))).status == 200
        await slack.wait_for_calls("chat.update", 3)
        [reply] = await bot_replies(slack, CHANNEL, 1)
        await asyncio.sleep(0.5)
    [placeholder] = slack.posted()
    updates = slack.updates()
    assert placeholder["text"] == "Thinking…"
    assert all(update["ts"] == reply["ts"] for update in updates)
    assert updates[0]["text"].startswith("word0")  # text showed before the model finished
    assert updates[-1]["text"] == " ".join(words) + " *done*"
    previews = slack.times_of("chat.update")[:-1]
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(previews))


async def test_identity_and_names_are_asked_once_and_names_are_stored(
    database_url: str, client: TestClient[Any, Any], slack: FakeSlack
) -> None:
    for n in range(3):
        assert (await post_event(client, mention(f"question {n}"))).status == 200
    body = event_envelope(direct_message("hi", user="U0BOB", ts=ts()))
    assert (await post_event(client, body)).status == 200
    await bot_replies(slack, CHANNEL, 3)
    await bot_replies(slack, "D0DM", 1)
    assert len(slack.times_of("auth.test")) == 1
    assert len(slack.times_of("users.info")) == 2  # Alice once, Bob once
    db = open_database(database_url, 1)
    try:
        query = select(User.platform_user_id, User.name).order_by(User.platform_user_id)
        users = await db.run(lambda connection: connection.execute(query).all())
    finally:
        await db.dispose()
    assert [tuple(row) for row in users] == [("U0ALICE", "alice"), ("U0BOB", "Bob Stone")]


async def test_unknown_event_types_and_malformed_bodies(
    client: TestClient[Any, Any], slack: FakeSlack
) -> None:
    reaction = event_envelope(
        {"type": "reaction_added", "user": "U0ALICE", "reaction": "tada", "event_ts": ts()}
    )
    assert (await post_event(client, reaction)).status == 200
    raw = b'{"type": "event_callback", '
    response = await client.post(
        "/webhooks/slack",
        data=raw,
        headers={**sign(raw, SIGNING_SECRET), "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "malformed_body"


async def test_channel_the_bot_left_is_not_retried(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    slack.fail_next("chat.postMessage", status=200, error="not_in_channel", times=3)
    assert (await post_event(client, mention("anyone?"))).status == 200
    await slack.wait_for_calls("chat.postMessage", 2)
    await asyncio.sleep(1.5)  # a retry would come within the worker's first backoff
    assert len(slack.times_of("chat.postMessage")) == 2  # placeholder, then the answer
    assert len(fake.requests) == 1


async def test_team_id_is_part_of_the_conversation(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    root = ts()
    assert (await post_event(client, mention("in team one", ts=root))).status == 200
    await bot_replies(slack, CHANNEL, 1)
    other = event_envelope(
        app_mention(f"<@{BOT_USER_ID}> in team two", ts=ts(), thread_ts=root),
        team_id="T0OTHER",
    )
    assert (await post_event(client, other)).status == 200
    await bot_replies(slack, CHANNEL, 2)
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["in team two"]


async def test_slack_away_at_start_is_asked_again_by_the_first_request(
    sqlite_url: str, fake: FakeOpenAI, slack: FakeSlack
) -> None:
    slack.fail_next("auth.test", status=503)
    async with running(config(sqlite_url, fake, slack)) as client:
        assert (await post_event(client, mention("are you there?"))).status == 200
        [reply] = await bot_replies(slack, CHANNEL, 1)
    assert reply["text"] == "echo: are you there?"
    assert len(slack.times_of("auth.test")) == 2


async def test_redis_down_means_503_for_events_and_an_apology_for_commands(
    sqlite_url: str, fake: FakeOpenAI, slack: FakeSlack
) -> None:
    closed = f"redis://127.0.0.1:{CLOSED_PORT}/0"
    async with running(config(sqlite_url, fake, slack, redis_url=closed)) as client:
        response = await post_event(client, mention("lost?"))
        assert response.status == 503  # Slack delivers the event again later
        assert (await response.json())["error"] == "unavailable"
        assert "Retry-After" in response.headers
        command = await post_command(
            client, slash_command("lost too?", response_url=slack.response_url())
        )
        assert command.status == 200  # Slack never retries a command: the person is told
        assert "can't take your question" in (await command.json())["text"]
    assert slack.posted() == []
    assert await stored_texts(sqlite_url) == []


async def test_a_part_that_failed_is_sent_again_without_repeating_the_others(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    paragraphs = [f"Paragraph {n}. " + "word " * 400 for n in range(5)]
    original = "\n\n".join(p.strip() for p in paragraphs)
    fake.answer = lambda body: original
    fake.latency = 0.5  # time to script the failure once the placeholder is up
    assert (await post_event(client, mention("tell me a lot"))).status == 200
    await slack.wait_for_calls("chat.postMessage", 1)
    slack.fail_next("chat.postMessage", status=500)  # the second part's post
    async with asyncio.timeout(20):
        while True:
            parts = await bot_replies(slack, CHANNEL, 1)
            if " ".join(part["text"] for part in parts).split() == original.split():
                break
            await asyncio.sleep(0.1)
    assert len(parts) >= 3
    # Every part once: the placeholder (now the first part) and the others, posted once each.
    assert len(slack.posted()) == len(parts)
    assert len(slack.times_of("chat.postMessage")) == len(parts) + 1  # and the failed attempt
    assert len(fake.requests) == 1  # the stored answer is delivered, not asked again


async def test_slash_answer_longer_than_five_messages_ends_at_the_fifth(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    fake.answer = lambda body: "\n\n".join("word " * 700 for _ in range(8))
    url = slack.response_url()
    assert (await post_command(client, slash_command("essay", response_url=url))).status == 200
    await slack.wait_for_responses(5)
    await asyncio.sleep(0.5)
    posts = [body["text"] for _, body in slack.responses]
    assert len(posts) == 5
    assert posts[-1].endswith(" …")
    assert all(len(post) <= 4000 for post in posts)


async def test_expired_response_url_is_not_retried(
    client: TestClient[Any, Any], fake: FakeOpenAI, slack: FakeSlack
) -> None:
    slack.fail_response_url(status=404)
    url = slack.response_url()
    assert (await post_command(client, slash_command("late", response_url=url))).status == 200
    await slack.wait_for_responses(1, rejected_too=True)
    await asyncio.sleep(1.5)  # a retry would come within the worker's first backoff
    assert [status for _, status, _ in slack.response_attempts] == [404]
    assert len(fake.requests) == 1


async def test_response_url_429_delays_but_does_not_lose_the_answer(
    client: TestClient[Any, Any], slack: FakeSlack
) -> None:
    slack.fail_response_url(status=429, retry_after=1)
    url = slack.response_url()
    assert (await post_command(client, slash_command("wait", response_url=url))).status == 200
    await slack.wait_for_responses(1)
    [(_, first, at_first), (_, second, at_second)] = slack.response_attempts
    assert (first, second) == (429, 200)
    assert at_second - at_first >= 0.9
    assert slack.responses[0][1]["text"] == "echo: wait"


async def test_interactivity_is_acknowledged(client: TestClient[Any, Any]) -> None:
    action = {
        "type": "block_actions",
        "team": {"id": "T0TEAM"},
        "user": {"id": "U0ALICE"},
        "api_app_id": "A0APP",
        "trigger_id": "1.2.abc",
        "actions": [{"action_id": "vote", "block_id": "b1", "type": "button", "value": "up"}],
    }
    raw = urlencode({"payload": orjson.dumps(action).decode()})
    response = await client.post(
        "/webhooks/slack",
        data=raw,
        headers={**sign(raw, SIGNING_SECRET), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
