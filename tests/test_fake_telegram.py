"""The fake Telegram server, driven by the real python-telegram-bot ``Bot``."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from telegram import Bot, BotCommand, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, NetworkError, RetryAfter

from tests.fake_telegram import FakeTelegram, text_update

TOKEN = "123456:test-token"


@pytest.fixture(autouse=True)
def ptb_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB 22.2+ warns (PTBDeprecationWarning) whenever RetryAfter.retry_after is read as an
    # int, even inside its own constructor; opting in to timedelta periods is the supported
    # way to silence that, and it is what the product must do too.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url) as client:
        yield client


async def test_get_me_returns_the_configured_username() -> None:
    async with (
        FakeTelegram(username="other_bot", bot_id=99) as server,
        Bot(TOKEN, base_url=server.base_url) as client,
    ):
        me = await client.get_me()
        assert (me.username, me.id, me.is_bot) == ("other_bot", 99, True)
        assert client.username == "other_bot"  # initialize() already called getMe
        assert server.tokens[0] == TOKEN


async def test_send_message_returns_fresh_ids_and_records_reply_fields(
    fake: FakeTelegram, bot: Bot
) -> None:
    first = await bot.send_message(chat_id=42, text="hello")
    second = await bot.send_message(
        chat_id=-100123,
        text="*bold*",
        parse_mode=ParseMode.MARKDOWN_V2,
        reply_parameters=ReplyParameters(message_id=first.message_id),
        message_thread_id=7,
    )

    assert second.message_id != first.message_id
    assert (first.chat.id, first.text) == (42, "hello")
    assert second.message_thread_id == 7
    assert second.reply_to_message is not None
    assert second.reply_to_message.message_id == first.message_id
    recorded = fake.sent(chat_id=-100123)
    assert len(recorded) == 1
    assert recorded[0]["parse_mode"] == "MarkdownV2"
    assert recorded[0]["reply_parameters"] == {"message_id": first.message_id}
    assert recorded[0]["message_thread_id"] == 7
    assert [p["text"] for p in fake.sent()] == ["hello", "*bold*"]


async def test_numeric_text_stays_a_string(fake: FakeTelegram, bot: Bot) -> None:
    message = await bot.send_message(chat_id=42, text="123")
    assert message.text == "123"
    assert fake.sent(42)[0]["text"] == "123"


async def test_edit_message_text_changes_the_text(fake: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(chat_id=42, text="thinking")
    edited = await bot.edit_message_text(chat_id=42, message_id=sent.message_id, text="done")
    assert not isinstance(edited, bool)
    assert (edited.message_id, edited.text) == (sent.message_id, "done")
    assert edited.edit_date is not None
    assert fake.edits()[0]["text"] == "done"


async def test_edit_with_unchanged_text_raises_not_modified(bot: Bot) -> None:
    sent = await bot.send_message(chat_id=42, text="same")
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text(chat_id=42, message_id=sent.message_id, text="same")


async def test_scripted_429_raises_retry_after_with_its_delay(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", status=429, retry_after=3)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(chat_id=42, text="hi")
    assert caught.value.retry_after == dtm.timedelta(seconds=3)
    # Only the next call fails; the one after it goes through.
    assert (await bot.send_message(chat_id=42, text="hi")).text == "hi"
    assert len(fake.sent(42)) == 2


async def test_scripted_403_raises_forbidden(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", status=403, description="Forbidden: bot was blocked by the user")
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(chat_id=42, text="hi")


async def test_scripted_400_and_5xx_raise_bad_request_and_network_error(
    fake: FakeTelegram, bot: Bot
) -> None:
    fake.fail_next("sendMessage", 400, description="Bad Request: can't parse entities: oops")
    fake.fail_next("sendMessage", 502)
    with pytest.raises(BadRequest, match=r"(?i)can.t parse entities"):
        await bot.send_message(chat_id=42, text="*", parse_mode=ParseMode.MARKDOWN_V2)
    with pytest.raises(NetworkError, match="Bad Gateway"):
        await bot.send_message(chat_id=42, text="hi")


async def test_failures_answer_in_the_bot_api_error_format(fake: FakeTelegram) -> None:
    fake.fail_next("sendMessage", status=429, retry_after=5)
    async with aiohttp.ClientSession() as session:
        url = f"{fake.base_url}{TOKEN}/sendMessage"
        async with session.post(url, json={"chat_id": 1, "text": "x"}) as response:
            assert response.status == 429
            body = await response.json()
        async with session.get(f"{fake.base_url}wrong:token/getMe") as response:
            assert response.status == 401
    assert body == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 5",
        "parameters": {"retry_after": 5},
    }
    assert fake.calls[0] == ("sendMessage", {"chat_id": 1, "text": "x"})


async def test_webhook_settings_are_kept_and_reported(fake: FakeTelegram, bot: Bot) -> None:
    assert await bot.set_webhook(
        "https://zapa.example/telegram",
        secret_token="s3cret",
        allowed_updates=["message", "edited_message"],
    )
    assert fake.webhook["secret_token"] == "s3cret"
    fake.queue_update(text_update("hi"))
    fake.webhook["last_error_message"] = "Connection refused"

    info = await bot.get_webhook_info()
    assert info.url == "https://zapa.example/telegram"
    assert info.allowed_updates == ("message", "edited_message")
    assert info.pending_update_count == 1
    assert info.last_error_message == "Connection refused"

    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates()
    assert await bot.delete_webhook(drop_pending_updates=True)
    info = await bot.get_webhook_info()
    assert (info.url, info.pending_update_count) == ("", 0)


async def test_get_updates_returns_queued_updates(fake: FakeTelegram, bot: Bot) -> None:
    queued = fake.queue_update(text_update("hello", chat_id=42, message_id=9))
    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates] == [queued["update_id"]]
    update = updates[0]
    assert isinstance(update, Update)
    assert update.effective_message is not None
    assert update.effective_message.text == "hello"
    assert update.effective_chat is not None
    assert update.effective_chat.id == 42
    # Asking past an update confirms it: it is not delivered again.
    assert await bot.get_updates(offset=queued["update_id"] + 1, timeout=0) == ()


async def test_get_updates_waits_for_an_update_queued_later(fake: FakeTelegram, bot: Bot) -> None:
    async def queue_soon() -> None:
        await fake.wait_for_calls("getUpdates")
        await asyncio.sleep(0.2)
        fake.queue_update(text_update("late"))

    task = asyncio.create_task(queue_soon())
    started = time.monotonic()
    updates = await bot.get_updates(timeout=5)
    await task
    assert [u.message.text for u in updates if u.message] == ["late"]
    assert 0.15 < time.monotonic() - started < 4


async def test_get_updates_with_nothing_queued_answers_empty_after_the_timeout(
    bot: Bot,
) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert time.monotonic() - started >= 0.9


async def test_commands_actions_and_deletes_are_recorded_with_times(
    fake: FakeTelegram, bot: Bot
) -> None:
    assert await bot.set_my_commands([BotCommand("start", "Start"), BotCommand("new", "Reset")])
    assert await bot.send_chat_action(chat_id=42, action=ChatAction.TYPING)
    assert await bot.delete_message(chat_id=42, message_id=5)
    assert [c["command"] for c in fake.commands] == ["start", "new"]
    assert [(await bot.get_my_commands())[1].description] == ["Reset"]
    methods = [method for method, _ in fake.calls]
    assert methods[-4:] == ["setMyCommands", "sendChatAction", "deleteMessage", "getMyCommands"]
    assert fake.calls[-2][1] == {"chat_id": 42, "message_id": 5}
    assert fake.call_times == sorted(fake.call_times)
    assert len(fake.times_of("sendChatAction")) == 1
