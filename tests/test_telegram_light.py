"""The webhook's shortcut for private text messages gives what the full ``Update`` path gives."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from telegram import Update

from adapters.telegram import TelegramAdapter
from adapters.telegram_light import private_text
from bot.runtime import open_runtime
from tests.fake_telegram import FakeTelegram, text_update
from tests.harness import settings


@pytest.fixture
async def adapter(sqlite_url: str) -> AsyncIterator[TelegramAdapter]:
    async with FakeTelegram() as fake:
        config = settings(
            database_url=sqlite_url,
            telegram_bot_token="123:abc",
            telegram_webhook_secret="s3cret",
            telegram_api_url=fake.root,
        )
        async with open_runtime(config) as runtime:
            made = TelegramAdapter(config, runtime.engine)
            await made.start()
            try:
                yield made
            finally:
                await made.aclose()


def with_last_name(update: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(update)
    changed["message"]["from"]["last_name"] = "Lovelace"
    return changed


PRIVATE = [
    text_update("hello", update_id=1),
    text_update("/reset", update_id=2),
    text_update("/usage@zapa_test_bot", update_id=3),
    text_update("topic question", update_id=4, message_thread_id=77),
    text_update("ünïcödé 🙂 text", update_id=5, first_name="Zoë", username=None),
    with_last_name(text_update("with a last name", update_id=6)),
    text_update("", update_id=7),
]


@pytest.mark.parametrize("data", PRIVATE)
async def test_a_private_text_reads_the_same_both_ways(
    adapter: TelegramAdapter, data: dict[str, Any]
) -> None:
    light = private_text(data)
    assert light is not None
    update = Update.de_json(data, adapter.bot)
    assert update is not None and update.message is not None
    full = adapter._normalize(update.update_id, update.message, "r-1")
    assert adapter._light_inbound(light, "r-1") == full


def group_message() -> dict[str, Any]:
    return text_update("@zapa_test_bot hi", update_id=8, chat_id=-100123, user_id=5)


def edited() -> dict[str, Any]:
    data = text_update("fixed", update_id=9)
    return {"update_id": 9, "edited_message": data["message"]}


def from_a_bot() -> dict[str, Any]:
    data = text_update("beep", update_id=10)
    data["message"]["from"]["is_bot"] = True
    return data


def a_photo() -> dict[str, Any]:
    data = text_update("", update_id=11)
    del data["message"]["text"]
    data["message"]["photo"] = [{"file_id": "x", "file_unique_id": "y", "width": 1, "height": 1}]
    return data


def bad_types() -> dict[str, Any]:
    data = text_update("hi", update_id=12)
    data["message"]["chat"]["id"] = "1001"
    return data


def a_boolean_id() -> dict[str, Any]:
    data = text_update("hi")
    data["update_id"] = True
    return data


@pytest.mark.parametrize(
    "data",
    [group_message(), edited(), from_a_bot(), a_photo(), bad_types(), a_boolean_id(), [], None],
)
def test_anything_else_takes_the_full_path(data: Any) -> None:
    assert private_text(data) is None
