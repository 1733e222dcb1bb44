"""The fake Slack server, driven by the real ``slack_sdk`` clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.fake_slack import (
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    TEAM_ID,
    FakeSlack,
    app_mention,
    direct_message,
    event_envelope,
    sign,
    slash_command,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=BOT_TOKEN, base_url=fake.base_url)


async def test_auth_test_names_the_bot_and_its_team(client: AsyncWebClient) -> None:
    auth = await client.auth_test()
    assert (auth["team_id"], auth["user_id"], auth["bot_id"]) == (TEAM_ID, BOT_USER_ID, BOT_ID)
    assert auth["url"] == "https://zapa-test.slack.com/"


async def test_post_then_update_changes_the_stored_message(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    first = await client.chat_postMessage(channel="C0CHAN", text="thinking…")
    second = await client.chat_postMessage(channel="C0CHAN", text="another")
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["user"] == BOT_USER_ID

    updated = await client.chat_update(channel="C0CHAN", ts=first["ts"], text="the answer")

    assert (updated["ts"], updated["text"]) == (first["ts"], "the answer")
    assert [(m["ts"], m["text"]) for m in fake.messages["C0CHAN"]] == [
        (first["ts"], "the answer"),
        (second["ts"], "another"),
    ]
    assert [p["text"] for p in fake.updates(channel="C0CHAN")] == ["the answer"]
    assert [p["text"] for p in fake.posted("C0CHAN")] == ["thinking…", "another"]


async def test_form_encoded_posts_are_read_like_json_ones(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    await client.api_call(
        "chat.postMessage", data={"channel": "C0CHAN", "text": "hi", "blocks": json.dumps(blocks)}
    )
    assert fake.posted("C0CHAN")[0]["blocks"] == blocks
    assert fake.messages["C0CHAN"][0]["blocks"] == blocks


async def test_replies_keep_their_thread(fake: FakeSlack, client: AsyncWebClient) -> None:
    parent = await client.chat_postMessage(channel="C0CHAN", text="parent")
    reply = await client.chat_postMessage(channel="C0CHAN", text="reply", thread_ts=parent["ts"])

    assert reply["message"]["thread_ts"] == parent["ts"]
    assert [p["text"] for p in fake.posted(thread_ts=parent["ts"])] == ["reply"]
    assert [p["text"] for p in fake.posted(thread_ts=None)] == ["parent"]
    assert fake.messages["C0CHAN"][1]["thread_ts"] == parent["ts"]


@pytest.mark.parametrize(
    ("channel", "text", "error"),
    [("C0CHAN", "x" * 40001, "msg_too_long"), ("", "hi", "channel_not_found")],
)
async def test_invalid_posts_are_refused(
    fake: FakeSlack, client: AsyncWebClient, channel: str, text: str, error: str
) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel=channel, text=text)
    assert (caught.value.response.status_code, caught.value.response["error"]) == (200, error)
    assert fake.posted() == []
    assert len(fake.calls) == 1


async def test_a_post_without_text_or_blocks_is_refused(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    with (
        pytest.warns(UserWarning, match="`text` argument is missing"),
        pytest.raises(SlackApiError) as caught,
    ):
        await client.chat_postMessage(channel="C0CHAN", text="")
    assert caught.value.response["error"] == "no_text"
    assert fake.messages == {}


async def test_updating_an_unknown_message_fails(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C0CHAN", ts="1700000000.000001", text="x")
    assert caught.value.response["error"] == "message_not_found"


async def test_a_wrong_token_is_refused(fake: FakeSlack) -> None:
    client = AsyncWebClient(token="xoxb-wrong", base_url=fake.base_url)
    for call in (client.auth_test(), client.chat_postMessage(channel="C0CHAN", text="hi")):
        with pytest.raises(SlackApiError) as caught:
            await call
        assert caught.value.response["error"] == "invalid_auth"
    assert fake.messages == {}


async def test_users_info_answers_registered_users_only(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.add_user("U0ALICE", display_name="alice", real_name="Alice Liddell")
    info = await client.users_info(user="U0ALICE")
    assert info["user"]["profile"]["display_name"] == "alice"
    assert info["user"]["real_name"] == "Alice Liddell"
    with pytest.raises(SlackApiError) as caught:
        await client.users_info(user="U0NOBODY")
    assert caught.value.response["error"] == "user_not_found"
    assert fake.calls[-1] == ("users.info", {"user": "U0NOBODY"})


async def test_unknown_methods_answer_unknown_method(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client.api_call("chat.teleport", json={"channel": "C0CHAN"})
    assert caught.value.response["error"] == "unknown_method"


async def test_a_scripted_429_is_retried_after_retry_after(fake: FakeSlack) -> None:
    client = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=fake.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake.fail_next("chat.postMessage", status=429, retry_after=1)

    posted = await client.chat_postMessage(channel="C0CHAN", text="hi")

    assert posted["ok"]
    first, second = fake.times_of("chat.postMessage")
    assert second - first >= 1.0
    assert [m["text"] for m in fake.messages["C0CHAN"]] == ["hi"]


async def test_a_scripted_429_without_a_retry_handler_raises(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C0CHAN", text="hi")
    response = caught.value.response
    assert (response.status_code, response["error"]) == (429, "ratelimited")
    assert response.headers["Retry-After"] == "7"
    # Only the next call fails.
    assert (await client.chat_postMessage(channel="C0CHAN", text="hi"))["ok"]


async def test_scripted_slack_errors_and_outages(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("chat.update", status=200, error="cant_update_message")
    fake.fail_next("auth.test", status=503)
    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C0CHAN", ts="1.2", text="x")
    assert caught.value.response["error"] == "cant_update_message"
    with pytest.raises(SlackApiError) as caught:
        await client.auth_test()
    assert caught.value.response.status_code == 503


async def test_latency_delays_every_answer(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.latency = 0.3
    started = time.monotonic()
    await client.auth_test()
    assert time.monotonic() - started >= 0.3


async def test_wait_for_calls_sees_a_later_call(fake: FakeSlack, client: AsyncWebClient) -> None:
    waiter = asyncio.create_task(fake.wait_for_calls("chat.postMessage", 2, seconds=5))
    await client.chat_postMessage(channel="C0CHAN", text="one")
    assert not waiter.done()
    await client.chat_postMessage(channel="C0CHAN", text="two")
    await waiter


async def test_response_url_posts_are_recorded(fake: FakeSlack) -> None:
    url = fake.response_url()
    waiter = asyncio.create_task(fake.wait_for_responses(1, seconds=5))
    response = await AsyncWebhookClient(url).send(text="hello", response_type="in_channel")
    await waiter
    assert (response.status_code, response.body) == (200, "ok")
    assert fake.responses == [(url, {"text": "hello", "response_type": "in_channel"})]


async def test_a_response_url_429_is_retried(fake: FakeSlack) -> None:
    url = fake.response_url()
    fake.fail_response_url(status=429, retry_after=1)
    webhook = AsyncWebhookClient(url, retry_handlers=[AsyncRateLimitErrorRetryHandler()])

    response = await webhook.send(text="late")

    assert response.status_code == 200
    assert [body["text"] for _, body in fake.responses] == ["late"]
    (_, refused, first), (_, accepted, second) = fake.response_attempts
    assert (refused, accepted) == (429, 200)
    assert second - first >= 1.0


async def test_a_response_url_takes_five_posts(fake: FakeSlack) -> None:
    webhook = AsyncWebhookClient(fake.response_url())
    for n in range(5):
        assert (await webhook.send(text=str(n))).status_code == 200
    sixth = await webhook.send(text="6")
    assert (sixth.status_code, sixth.body) == (404, "used_url")
    assert len(fake.responses) == 5
    # Another command's URL is unaffected.
    assert (await AsyncWebhookClient(fake.response_url("2")).send(text="x")).status_code == 200


async def test_an_expired_response_url_answers_404(fake: FakeSlack) -> None:
    fake.fail_response_url(status=404)
    response = await AsyncWebhookClient(fake.response_url()).send(text="too late")
    assert (response.status_code, response.body) == (404, "expired_url")
    assert fake.responses == []


def test_signed_bodies_verify_and_tampered_ones_do_not() -> None:
    body = urlencode(slash_command("hi", response_url="http://127.0.0.1:1/commands/T/1/x"))
    headers = sign(body, SECRET)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert verifier.is_valid_request(body.encode(), sign(body.encode(), SECRET))
    assert not verifier.is_valid_request(body + "&x=1", headers)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)
    stale = sign(body, SECRET, timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(body, stale)


def test_event_builders_make_distinct_deliveries() -> None:
    mention = app_mention(f"<@{BOT_USER_ID}> hi", thread_ts="1700000000.000001")
    first, second = event_envelope(mention), event_envelope(app_mention("again"))
    assert first["event_id"] != second["event_id"]
    assert first["event"]["ts"] != second["event"]["ts"]
    assert first["event"]["thread_ts"] == "1700000000.000001"
    assert first["authorizations"][0]["user_id"] == BOT_USER_ID
    own = direct_message("echo", bot_id=BOT_ID, subtype="bot_message")
    assert (own["channel_type"], own["bot_id"], own["subtype"]) == ("im", BOT_ID, "bot_message")
    assert "client_msg_id" not in own
    assert "client_msg_id" in direct_message("hi")
