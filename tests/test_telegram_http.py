"""The Bot API client's aiohttp transport, against the fake Bot API."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from telegram import ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, NetworkError, TimedOut
from telegram.ext import ExtBot

from adapters.telegram import create_bot
from adapters.telegram_http import AiohttpRequest
from tests.fake_telegram import FakeTelegram
from tests.harness import settings

TOKEN = "123456:test-token"


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


def bot_for(root: str, request: AiohttpRequest | None = None) -> ExtBot[None]:
    return ExtBot(TOKEN, base_url=f"{root}/bot", request=request or AiohttpRequest())


async def test_the_service_bot_sends_a_formatted_reply_and_reads_the_message_back(
    fake_telegram: FakeTelegram,
) -> None:
    api_root = fake_telegram.base_url.removesuffix("/bot")
    config = settings(telegram_bot_token=TOKEN, telegram_api_url=api_root)

    async with create_bot(config) as bot:
        sent = await bot.send_message(
            chat_id=42,
            text="<b>hi</b> ünïcode",
            parse_mode=ParseMode.HTML,
            reply_parameters=ReplyParameters(message_id=7, allow_sending_without_reply=True),
        )

    method, params = fake_telegram.calls[-1]
    assert method == "sendMessage"
    assert params["chat_id"] == 42
    assert params["text"] == "<b>hi</b> ünïcode"
    assert params["parse_mode"] == "HTML"
    assert params["reply_parameters"] == {"message_id": 7, "allow_sending_without_reply": True}
    assert sent.chat_id == 42 and sent.text == "<b>hi</b> ünïcode"


async def test_a_file_goes_as_multipart_with_the_other_parameters(
    fake_telegram: FakeTelegram,
) -> None:
    certificate = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 2000 + b"\n"

    async with bot_for(fake_telegram.root) as bot:
        await bot.set_webhook(
            "https://bot.example.org/webhooks/telegram",
            certificate=io.BytesIO(certificate),
            secret_token="s3cret",
        )

    method, params = fake_telegram.calls[-1]
    assert method == "setWebhook"
    assert params["url"] == "https://bot.example.org/webhooks/telegram"
    assert params["secret_token"] == "s3cret"
    assert params["certificate"]["size"] == len(certificate)


async def test_the_bot_api_refusal_is_ptbs_own_error(fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next("sendMessage", 400, description="Bad Request: chat not found")

    async with bot_for(fake_telegram.root) as bot:
        with pytest.raises(BadRequest, match=r"[Cc]hat not found"):
            await bot.send_message(chat_id=1, text="hello")


async def test_a_slow_answer_is_timed_out(fake_telegram: FakeTelegram) -> None:
    async with bot_for(fake_telegram.root, AiohttpRequest(read_timeout=0.2)) as bot:
        fake_telegram.latency = 0.5
        with pytest.raises(TimedOut):
            await bot.send_message(chat_id=1, text="hello")


async def test_a_call_may_ask_for_its_own_read_timeout(fake_telegram: FakeTelegram) -> None:
    async with bot_for(fake_telegram.root) as bot:  # 5 s by default
        fake_telegram.latency = 0.5
        with pytest.raises(TimedOut):
            await bot.send_message(chat_id=1, text="hello", read_timeout=0.05)
        fake_telegram.latency = 0.0
        sent = await bot.send_message(chat_id=1, text="again")

    assert sent.text == "again"


async def test_an_unreachable_api_is_a_network_error(fake_telegram: FakeTelegram) -> None:
    root = fake_telegram.root
    await fake_telegram.close()

    with pytest.raises(NetworkError, match="aiohttp"):
        async with bot_for(root):  # initialize() calls getMe
            pass


async def test_a_shut_down_request_opens_again() -> None:
    request = AiohttpRequest()
    await request.initialize()
    await request.shutdown()

    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request("http://127.0.0.1:9/", "GET")
    await request.initialize()
    await request.shutdown()
