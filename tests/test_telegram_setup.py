"""Telegram set-up commands and long polling, against the fake Bot API."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters import telegram
from adapters.telegram import TelegramAdapter, TelegramSetupError
from adapters.telegram_format import visible_text
from bot.runtime import open_runtime
from bot.worker import Worker
from config import Settings
from tests.fake_openai import FakeOpenAI
from tests.fake_telegram import FakeTelegram, text_update
from tests.harness import settings

TOKEN = "123456:test-token"


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


def config(fake_telegram: FakeTelegram, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": TOKEN,
        "telegram_webhook_secret": "tg-secret",
        "telegram_api_url": fake_telegram.base_url.removesuffix("/bot"),
    }
    values.update(overrides)
    return settings(**values)


async def test_set_webhook_sends_secret_updates_and_commands_then_info_and_delete(
    fake_telegram: FakeTelegram,
) -> None:
    said = await telegram.set_webhook(
        config(fake_telegram), "https://bot.example/webhooks/telegram"
    )
    assert "https://bot.example/webhooks/telegram" in said
    assert fake_telegram.webhook["url"] == "https://bot.example/webhooks/telegram"
    assert fake_telegram.webhook["secret_token"] == "tg-secret"
    assert fake_telegram.webhook["allowed_updates"] == ["message"]
    assert [c["command"] for c in fake_telegram.commands] == ["start", "help", "reset", "usage"]
    fake_telegram.webhook["last_error_message"] = "Connection refused"
    info = await telegram.webhook_info(config(fake_telegram))
    assert "url: https://bot.example/webhooks/telegram" in info
    assert "pending updates: 0" in info
    assert "Connection refused" in info
    assert await telegram.delete_webhook(config(fake_telegram)) == "webhook deleted"
    assert fake_telegram.webhook["url"] == ""


async def test_set_webhook_needs_the_secret(fake_telegram: FakeTelegram) -> None:
    with pytest.raises(TelegramSetupError, match="TELEGRAM_WEBHOOK_SECRET"):
        await telegram.set_webhook(
            config(fake_telegram, telegram_webhook_secret=None), "https://x/y"
        )
    assert fake_telegram.calls == []


async def test_telegram_refusal_is_a_setup_error(fake_telegram: FakeTelegram) -> None:
    with pytest.raises(TelegramSetupError, match="Telegram answered"):
        await telegram.set_webhook(config(fake_telegram), "http://not-https.example/hook")


async def test_polling_answers_an_update_fetched_with_get_updates(
    fake_telegram: FakeTelegram, sqlite_url: str
) -> None:
    async with FakeOpenAI() as model:
        settings_ = config(
            fake_telegram,
            telegram_webhook_secret=None,
            database_url=sqlite_url,
            openai_base_url=model.base_url,
            telegram_streaming=False,
        )
        async with open_runtime(settings_) as runtime:
            adapter = TelegramAdapter(settings_, runtime.engine)
            await adapter.start()
            worker = Worker(runtime.engine, runtime.queue, concurrency=2)
            worker.start()
            stop = asyncio.Event()
            polling = asyncio.create_task(telegram.poll(adapter, stop))
            try:
                fake_telegram.queue_update(text_update("polled hello", update_id=500))
                await fake_telegram.wait_for_calls("sendMessage", 1)
                await fake_telegram.wait_for_calls("getUpdates", 2)
            finally:
                stop.set()
                await asyncio.wait_for(polling, 5)
                await worker.stop(1.0)
                await adapter.aclose()
    assert visible_text(fake_telegram.sent()[0]["text"]) == "echo: polled hello"
    offsets = [
        params.get("offset") for method, params in fake_telegram.calls if method == "getUpdates"
    ]
    assert offsets[1] == 501  # the next fetch acknowledges update 500


async def test_polling_refuses_while_a_webhook_is_set(
    fake_telegram: FakeTelegram, sqlite_url: str
) -> None:
    fake_telegram.webhook["url"] = "https://bot.example/webhooks/telegram"
    settings_ = config(fake_telegram, database_url=sqlite_url)
    async with open_runtime(settings_) as runtime:
        adapter = TelegramAdapter(settings_, runtime.engine)
        await adapter.start()
        try:
            with pytest.raises(TelegramSetupError, match="delete-webhook"):
                await telegram.poll(adapter, asyncio.Event())
        finally:
            await adapter.aclose()


async def zapa_telegram(action: str, cwd: Path, **variables: str) -> tuple[int | None, str, str]:
    """Run ``zapa telegram ACTION`` in a child process; its status, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "DATABASE_"))}
    env.update(variables)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "telegram",
        action,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_info_prints_the_webhook(fake_telegram: FakeTelegram, tmp_path: Path) -> None:
    fake_telegram.webhook["url"] = "https://bot.example/webhooks/telegram"
    status, stdout, stderr = await zapa_telegram(
        "info",
        tmp_path,
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=fake_telegram.base_url.removesuffix("/bot"),
        LOG_LEVEL="WARNING",
    )
    assert status == 0, stderr
    assert "url: https://bot.example/webhooks/telegram" in stdout


async def test_cli_without_token_is_one_line_and_exit_2(tmp_path: Path) -> None:
    status, _, stderr = await zapa_telegram("info", tmp_path)
    assert status == 2
    assert stderr.strip() == "zapa: TELEGRAM_BOT_TOKEN is not set"
