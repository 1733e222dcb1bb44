"""The Telegram adapter end to end: webhook updates in, Bot API calls to a fake Telegram out."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from adapters.telegram import SECRET_HEADER
from adapters.telegram_format import visible_text
from storage.db import open_database
from storage.models import User
from tests.fake_openai import FakeOpenAI
from tests.fake_telegram import FakeTelegram, text_update
from tests.harness import running, settings

TOKEN = "123456:test-token"
SECRET = "tg-secret-123"
GROUP = -100555
_update_ids = itertools.count(1000)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


def config(database_url: str, fake: FakeOpenAI, telegram: FakeTelegram, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "database_url": database_url,
        "openai_base_url": fake.base_url,
        "telegram_bot_token": TOKEN,
        "telegram_webhook_secret": SECRET,
        "telegram_api_url": telegram.base_url.removesuffix("/bot"),
        # Most tests look at the messages sent; streaming (edits) has tests of its own.
        "telegram_streaming": False,
    }
    values.update(overrides)
    return settings(**values)


@pytest.fixture
async def client(
    database_url: str, fake: FakeOpenAI, telegram: FakeTelegram
) -> AsyncIterator[TestClient[Any, Any]]:
    async with running(config(database_url, fake, telegram)) as started:
        yield started


async def deliver(
    client: TestClient[Any, Any], update: dict[str, Any], secret: str | None = SECRET
) -> int:
    update.setdefault("update_id", next(_update_ids))
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    response = await client.post("/webhooks/telegram", json=update, headers=headers)
    return response.status


def mention(text: str, **kwargs: Any) -> dict[str, Any]:
    update = text_update(text, chat_id=GROUP, user_id=77, **kwargs)
    start = text.index("@zapa_test_bot")
    update["message"]["entities"] = [{"type": "mention", "offset": start, "length": 14}]
    return update


async def test_private_chat_is_answered_with_its_context(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    assert await deliver(client, text_update("my name is Ada", update_id=1, message_id=1)) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    assert await deliver(client, text_update("what is my name?", update_id=2, message_id=2)) == 200
    await telegram.wait_for_calls("sendMessage", 2)
    sent = telegram.sent(chat_id=1001)
    assert [visible_text(m["text"]) for m in sent] == [
        "echo: my name is Ada",
        "echo: what is my name?",
    ]
    assert all(m["parse_mode"] == "HTML" for m in sent)
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
    ]
    assert telegram.times_of("sendChatAction")  # "typing…" was shown


@pytest.mark.parametrize("secret", [None, "wrong"])
async def test_bad_or_missing_secret_is_refused_and_nothing_happens(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram, secret: str | None
) -> None:
    assert await deliver(client, text_update("sneaky"), secret=secret) == 401
    await asyncio.sleep(0.2)
    assert fake.requests == []
    assert telegram.sent() == []


async def test_duplicate_update_is_answered_once(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    update = text_update("once please", update_id=42)
    assert await deliver(client, update) == 200
    assert await deliver(client, update) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    await asyncio.sleep(0.3)
    assert len(telegram.sent()) == 1
    assert len(fake.requests) == 1


async def test_group_message_without_mention_is_ignored(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    assert await deliver(client, text_update("just chatting", chat_id=GROUP, user_id=77)) == 200
    assert (
        await deliver(
            client, text_update("/reset@other_bot", chat_id=GROUP, user_id=77, update_id=5)
        )
        == 200
    )
    await asyncio.sleep(0.3)
    assert fake.requests == []
    assert telegram.sent() == []


async def test_group_mention_is_answered_as_a_reply(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    assert await deliver(client, mention("@zapa_test_bot what is 2+2?", message_id=9)) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    [sent] = telegram.sent(chat_id=GROUP)
    assert visible_text(sent["text"]) == "echo: what is 2+2?"
    assert sent["reply_parameters"]["message_id"] == 9


async def test_reply_to_the_bot_in_a_group_is_answered(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    update = text_update("and then?", chat_id=GROUP, user_id=77, message_id=11)
    update["message"]["reply_to_message"] = {
        "message_id": 10,
        "from": {
            "id": 7000000001,
            "is_bot": True,
            "first_name": "Zapa",
            "username": "zapa_test_bot",
        },
        "chat": update["message"]["chat"],
        "date": int(time.time()),
        "text": "earlier answer",
    }
    assert await deliver(client, update) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    assert visible_text(telegram.sent(chat_id=GROUP)[0]["text"]) == "echo: and then?"


async def test_forum_topics_are_separate_conversations_answered_in_their_topic(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    first = mention("@zapa_test_bot topic one", message_thread_id=3, update_id=1)
    first["message"]["is_topic_message"] = True
    second = mention("@zapa_test_bot topic two", message_thread_id=4, update_id=2)
    second["message"]["is_topic_message"] = True
    assert await deliver(client, first) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    assert await deliver(client, second) == 200
    await telegram.wait_for_calls("sendMessage", 2)
    assert [m.get("message_thread_id") for m in telegram.sent(chat_id=GROUP)] == [3, 4]
    users = [m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "user"]
    assert users == ["topic two"]


async def test_reset_clears_the_context(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    for n, text in enumerate(["remember 7", "/reset", "what number?"], start=1):
        assert await deliver(client, text_update(text, update_id=n, message_id=n)) == 200
        await telegram.wait_for_calls("sendMessage", n)
    assert "forgotten" in visible_text(telegram.sent()[1]["text"])
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == ["what number?"]


async def test_long_reply_arrives_in_parts_that_join_to_the_original(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    paragraphs = [f"Paragraph {n}. " + "word " * 400 for n in range(5)]
    original = "\n\n".join(p.strip() for p in paragraphs)
    fake.answer = lambda body: original
    assert await deliver(client, text_update("tell me a lot")) == 200
    await telegram.wait_for_calls("sendMessage", 2)
    await asyncio.sleep(0.3)
    parts = [visible_text(m["text"]) for m in telegram.sent()]
    assert len(original) > 10_000
    assert len(parts) >= 3
    assert all(len(part.encode("utf-16-le")) // 2 <= 4096 for part in parts)
    assert "\n\n".join(parts).split() == original.split()


async def test_markdown_is_rendered_and_special_characters_escaped(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    fake.answer = lambda body: "**Bold** & <b>not a tag</b>\n\n```python\nif a < b:\n    pass\n```"
    assert await deliver(client, text_update("format")) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    html = telegram.sent()[0]["text"]
    assert "<b>Bold</b> &amp; &lt;b&gt;not a tag&lt;/b&gt;" in html
    assert '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>' in html


async def test_rejected_formatting_falls_back_to_plain_text(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    fake.answer = lambda body: "**important** note"
    telegram.fail_next(
        "sendMessage", status=400, description="Bad Request: can't parse entities: oops"
    )
    assert await deliver(client, text_update("hi")) == 200
    await telegram.wait_for_calls("sendMessage", 2)
    plain = telegram.sent()[-1]
    assert plain["text"] == "important note"
    assert "parse_mode" not in plain


async def test_telegram_429_delays_but_does_not_lose_the_reply(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    telegram.fail_next("sendMessage", status=429, retry_after=1)
    assert await deliver(client, text_update("patience")) == 200
    await telegram.wait_for_calls("sendMessage", 2)
    first, second = telegram.times_of("sendMessage")[:2]
    assert second - first >= 0.9
    assert visible_text(telegram.sent()[-1]["text"]) == "echo: patience"


async def test_private_photo_gets_the_text_only_notice(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    update = text_update("ignored")
    del update["message"]["text"]
    update["message"]["photo"] = [
        {"file_id": "p1", "file_unique_id": "u1", "width": 1, "height": 1}
    ]
    assert await deliver(client, update) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    assert "text only" in telegram.sent()[0]["text"]
    assert fake.requests == []


async def test_edited_message_and_malformed_body(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    edited = text_update("edited", update_id=8)
    edited["edited_message"] = edited.pop("message")
    assert await deliver(client, edited) == 200
    response = await client.post(
        "/webhooks/telegram", data=b"{nope", headers={SECRET_HEADER: SECRET}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "malformed_json"
    await asyncio.sleep(0.2)
    assert fake.requests == []
    assert telegram.sent() == []


async def test_private_reply_streams_into_one_message_edited_at_most_once_a_second(
    sqlite_url: str, fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    words = [f"word{n}" for n in range(12)]
    fake.answer = lambda body: " ".join(words) + " **done**"
    fake.chunk_delay = 0.25  # about three seconds of generation
    async with running(config(sqlite_url, fake, telegram, telegram_streaming=True)) as client:
        assert await deliver(client, text_update("stream it")) == 200
        await telegram.wait_for_calls("editMessageText", 3)
        await asyncio.sleep(1.5)
    [first] = telegram.sent()
    edits = telegram.edits()
    assert first["text"].startswith("word0")  # the preview appeared early, as plain text
    assert all(edit["message_id"] == edits[0]["message_id"] for edit in edits)
    final = edits[-1]
    assert final["parse_mode"] == "HTML"
    assert final["text"] == " ".join(words) + " <b>done</b>"
    times = [telegram.times_of("sendMessage")[0], *telegram.times_of("editMessageText")]
    previews = times[:-1]  # the final edit follows the last preview as soon as the text is whole
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(previews))
    texts = [first["text"], *(edit["text"] for edit in edits)]
    assert len(texts) == len(set(texts))  # no edit repeats what is already shown


async def test_a_reply_whole_within_half_a_second_is_sent_once_without_a_preview(
    sqlite_url: str, fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    fake.answer = lambda body: "quick **answer**"
    fake.chunk_delay = 0.02
    async with running(config(sqlite_url, fake, telegram, telegram_streaming=True)) as client:
        assert await deliver(client, text_update("be quick")) == 200
        await telegram.wait_for_calls("sendMessage", 1)
        await asyncio.sleep(0.3)
    [sent] = telegram.sent()
    assert sent["parse_mode"] == "HTML"
    assert sent["text"] == "quick <b>answer</b>"
    assert telegram.edits() == []


async def test_under_a_backlog_typing_and_previews_give_way_to_the_replies(
    sqlite_url: str, fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    chats = range(5001, 5031)
    fake.chunk_delay = 0.05  # the answers stream, so each one could show a preview
    telegram.latency = 0.3  # every Bot API call takes a while: calls pile up
    async with running(config(sqlite_url, fake, telegram, telegram_streaming=True)) as client:
        statuses = await asyncio.gather(
            *(deliver(client, text_update(f"question {chat}", chat_id=chat)) for chat in chats)
        )
        assert set(statuses) == {200}

        def answered() -> set[Any]:
            final = [m for m in [*telegram.sent(), *telegram.edits()] if m.get("parse_mode")]
            return {m["chat_id"] for m in final}

        await telegram.wait_until(lambda: len(answered()) == len(chats), seconds=20)
    assert answered() == set(chats)
    # With 30 replies under way, a "typing…" and a preview each would triple the calls;
    # past a few calls in flight those are skipped and the replies go first.
    typing = telegram.times_of("sendChatAction")
    previews = [m for m in telegram.sent() if not m.get("parse_mode")]
    assert len(typing) + len(previews) < len(chats)


async def test_streaming_off_sends_one_message(
    sqlite_url: str, fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    fake.chunk_delay = 0.1
    async with running(config(sqlite_url, fake, telegram, telegram_streaming=False)) as client:
        assert await deliver(client, text_update("no streaming")) == 200
        await telegram.wait_for_calls("sendMessage", 1)
        await asyncio.sleep(0.3)
    assert telegram.edits() == []
    assert visible_text(telegram.sent()[0]["text"]) == "echo: no streaming"


async def test_command_addressed_to_the_bot_in_a_group_is_answered(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    update = text_update("/usage@zapa_test_bot", chat_id=GROUP, user_id=77, message_id=21)
    assert await deliver(client, update) == 200
    await telegram.wait_for_calls("sendMessage", 1)
    [sent] = telegram.sent(chat_id=GROUP)
    assert "of 20 this minute" in visible_text(sent["text"])
    assert sent["reply_parameters"]["message_id"] == 21
    assert fake.requests == []  # commands never reach the model


async def test_user_who_blocked_the_bot_is_marked_and_not_retried(
    database_url: str, fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    telegram.fail_next(
        "sendMessage", status=403, description="Forbidden: bot was blocked by the user"
    )
    async with running(config(database_url, fake, telegram)) as client:
        assert await deliver(client, text_update("hello?", user_id=1001)) == 200
        await telegram.wait_for_calls("sendMessage", 1)
        await asyncio.sleep(1.5)  # a retry would come within the worker's first backoff
        assert len(telegram.times_of("sendMessage")) == 1
        assert await unreachable_users(database_url) == ["1001"]
        # Writing again means they unblocked the bot: the mark goes, the answer arrives.
        assert await deliver(client, text_update("back again", user_id=1001)) == 200
        await telegram.wait_for_calls("sendMessage", 2)
        assert await unreachable_users(database_url) == []


async def unreachable_users(database_url: str) -> list[str]:
    db = open_database(database_url, 1)
    try:
        query = select(User.platform_user_id).where(User.unreachable_at.is_not(None))
        return list(await db.run(lambda connection: connection.scalars(query).all()))
    finally:
        await db.dispose()


async def test_telegram_server_error_is_retried_until_the_reply_arrives(
    client: TestClient[Any, Any], fake: FakeOpenAI, telegram: FakeTelegram
) -> None:
    telegram.fail_next("sendMessage", status=502, description="Bad Gateway")
    assert await deliver(client, text_update("try again")) == 200
    await telegram.wait_for_calls("sendMessage", 2)
    assert visible_text(telegram.sent()[-1]["text"]) == "echo: try again"
    assert len(fake.requests) == 1  # the stored answer is sent again, not asked again
