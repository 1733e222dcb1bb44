"""Slack set-up: the app manifest, Socket Mode, and the adapter's start-up checks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.slack import SlackAdapter, SlackSetupError
from adapters.slack_manifest import BOT_SCOPES
from bot.runtime import answering, open_runtime
from config import Settings
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import (
    APP_TOKEN,
    BOT_USER_ID,
    FakeSlack,
    app_mention,
    event_envelope,
    slash_command,
)
from tests.harness import settings

TOKEN = "xoxb-test"
URL = "https://bot.example.com/webhooks/slack"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(token=TOKEN) as server:
        yield server


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def config(slack: FakeSlack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": TOKEN,
        "slack_signing_secret": "signing-secret",
        "slack_api_url": slack.base_url,
        "slack_app_token": APP_TOKEN,
    }
    values.update(overrides)
    return settings(**values)


async def zapa(*args: str, cwd: Path, **variables: str) -> asyncio.subprocess.Process:
    """Start ``zapa ARGS`` in a child process with only the given Zapa variables."""
    prefixes = ("SLACK_", "DATABASE_", "OPENAI_", "REDIS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(variables)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process) -> tuple[int | None, str, str]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_manifest_is_yaml_with_the_url_command_events_and_scopes(tmp_path: Path) -> None:
    status, stdout, stderr = await finished(
        await zapa("slack", "manifest", "--url", URL, cwd=tmp_path, SLACK_COMMAND="/helpme")
    )
    assert status == 0, stderr
    manifest = yaml.safe_load(stdout)
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/helpme"
    assert command["url"] == URL
    events = manifest["settings"]["event_subscriptions"]
    assert events["request_url"] == URL
    assert set(events["bot_events"]) == {"app_mention", "message.im"}
    assert manifest["settings"]["interactivity"]["request_url"] == URL
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == set(BOT_SCOPES)
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True


async def test_socket_manifest_has_no_urls(tmp_path: Path) -> None:
    status, stdout, _ = await finished(await zapa("slack", "manifest", "--socket", cwd=tmp_path))
    assert status == 0
    manifest = yaml.safe_load(stdout)
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert "url" not in manifest["features"]["slash_commands"][0]
    assert "request_url" not in manifest["settings"]["event_subscriptions"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--url", "http://bot.example.com/webhooks/slack"), "https URLs only"),
        ((), "--url"),
    ],
)
async def test_manifest_without_an_https_url_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    status, stdout, stderr = await finished(await zapa("slack", "manifest", *args, cwd=tmp_path))
    assert status == 2
    assert stdout == ""
    assert error in stderr
    assert len(stderr.strip().splitlines()) == 1


async def test_socket_mode_answers_events_and_slash_commands(
    slack: FakeSlack, model: FakeOpenAI, sqlite_url: str
) -> None:
    config_ = config(slack, database_url=sqlite_url, openai_base_url=model.base_url)
    async with open_runtime(config_) as runtime:
        adapter = SlackAdapter(config_, runtime.engine, socket_mode=True)
        await adapter.start()
        stop = asyncio.Event()
        try:
            async with answering(runtime, concurrency=2):
                connected = asyncio.create_task(adapter.socket_mode(APP_TOKEN, stop))
                mention = event_envelope(app_mention(f"<@{BOT_USER_ID}> over the socket"))
                envelope = await slack.socket_send("events_api", mention)
                assert await slack.wait_for_socket_ack(envelope) == {"envelope_id": envelope}
                url = slack.response_url("socket")
                command = await slack.socket_send(
                    "slash_commands", slash_command("and by command", response_url=url)
                )
                ack = await slack.wait_for_socket_ack(command)
                assert ack["payload"]["text"] == "Thinking…"
                await slack.wait_for_responses(1)
                await slack.wait_for_calls("chat.update", 1)
                stop.set()
                await asyncio.wait_for(connected, 10)
        finally:
            await adapter.aclose()
    assert slack.updates()[-1]["text"] == "echo: over the socket"
    assert slack.responses[0][1]["text"] == "echo: and by command"


async def test_zapa_slack_socket_runs_until_interrupted(
    slack: FakeSlack, model: FakeOpenAI, tmp_path: Path
) -> None:
    process = await zapa(
        "slack",
        "socket",
        cwd=tmp_path,
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_API_URL=slack.base_url,
        OPENAI_BASE_URL=model.base_url,
        LOG_LEVEL="WARNING",
    )
    envelope = await slack.socket_send(
        "events_api", event_envelope(app_mention(f"<@{BOT_USER_ID}> from the CLI"))
    )
    await slack.wait_for_socket_ack(envelope)
    await slack.wait_for_calls("chat.update", 1)
    process.send_signal(signal.SIGINT)
    status, _, stderr = await finished(process)
    assert status == 0, stderr
    assert slack.updates()[-1]["text"] == "echo: from the CLI"


async def test_zapa_slack_socket_without_app_token_is_one_line_and_exit_2(
    slack: FakeSlack, tmp_path: Path
) -> None:
    status, _, stderr = await finished(
        await zapa("slack", "socket", cwd=tmp_path, SLACK_BOT_TOKEN=TOKEN)
    )
    assert status == 2
    assert "SLACK_APP_TOKEN" in stderr
    assert len(stderr.strip().splitlines()) == 1


async def test_refused_token_stops_the_start_with_a_clear_error(
    slack: FakeSlack, sqlite_url: str
) -> None:
    config_ = config(slack, slack_bot_token="xoxb-wrong", database_url=sqlite_url)
    async with open_runtime(config_) as runtime:
        adapter = SlackAdapter(config_, runtime.engine)
        try:
            with pytest.raises(SlackSetupError, match="invalid_auth"):
                await adapter.start()
        finally:
            await adapter.aclose()


async def test_serve_with_a_refused_token_exits_with_one_line(
    slack: FakeSlack, tmp_path: Path
) -> None:
    status, _, stderr = await finished(
        await zapa(
            "serve",
            "--port",
            "0",
            cwd=tmp_path,
            SLACK_BOT_TOKEN="xoxb-revoked",
            SLACK_SIGNING_SECRET="signing-secret",
            SLACK_API_URL=slack.base_url,
            LOG_LEVEL="CRITICAL",
        )
    )
    assert status == 1
    assert stderr.strip() == "zapa: Slack refused SLACK_BOT_TOKEN: invalid_auth"
