"""The service as an operator sees it: health, readiness, metrics, outages, restarts, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest
from sqlalchemy.engine import make_url

from storage.db import open_database
from storage.repository import SqlConversationStore
from tests.fake_openai import FakeOpenAI
from tests.harness import CLOSED_PORT, Receiver, bearer, message, running, settings, zapa

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_health_ready_and_metrics(
    postgres_url: str, redis_url: str, fake: FakeOpenAI
) -> None:
    config = settings(database_url=postgres_url, redis_url=redis_url, openai_base_url=fake.base_url)
    async with running(config) as client:
        assert (await (await client.get("/health")).json()) == {"status": "ok"}
        await client.post("/webhooks/generic", json=message("count me"), headers=bearer())
        ready = await client.get("/ready")
        body = await ready.json()
        assert ready.status == 200
        assert body["status"] == "ok"
        assert {name: check["status"] for name, check in body["checks"].items()} == {
            "database": "ok",
            "redis": "ok",
            "llm": "ok",
        }
        assert all(check["duration_ms"] >= 0 for check in body["checks"].values())
        text = await (await client.get("/metrics")).text()
    assert 'zapa_webhook_requests_total{platform="webhook",status="200"}' in text
    assert "zapa_model_latency_seconds_bucket" in text
    assert 'zapa_turns_total{outcome="answered"}' in text
    assert "zapa_queue_depth" in text


async def test_echo_model_answers_offline_and_ready_says_so(sqlite_url: str) -> None:
    async with running(settings(database_url=sqlite_url)) as client:
        response = await client.post(
            "/webhooks/generic", json=message("anyone there?"), headers=bearer()
        )
        body = await response.json()
        ready = await (await client.get("/ready")).json()
    assert response.status == 200
    assert "anyone there?" in body["reply"]
    assert "echo" in body["reply"].lower()
    assert body["model"] == "echo"
    assert ready["checks"]["llm"]["status"] == "echo"
    assert ready["checks"]["redis"]["status"] == "disabled"


async def test_disabled_adapters_and_unknown_routes_are_json_404(sqlite_url: str) -> None:
    async with running(
        settings(database_url=sqlite_url, webhook_token=None, webhook_secret=None)
    ) as client:
        for path in ("/webhooks/generic", "/webhooks/telegram", "/webhooks/slack"):
            response = await client.post(path, json=message())
            assert response.status == 404
            assert (await response.json())["error"] == "adapter_disabled"
        missing = await client.get("/nope")
        assert missing.status == 404
        assert (await missing.json())["error"] == "not_found"
        wrong_method = await client.get("/webhooks/generic")
        assert wrong_method.status == 405
        assert "POST" in wrong_method.headers["Allow"]


async def test_database_down_means_503_not_accepted_and_ready_says_which(redis_url: str) -> None:
    config = settings(
        database_url=f"postgresql://postgres@127.0.0.1:{CLOSED_PORT}/none", redis_url=redis_url
    )
    async with running(config) as client:
        response = await client.post("/webhooks/generic", json=message("lost?"), headers=bearer())
        assert response.status == 503
        assert (await response.json())["error"] == "unavailable"
        assert "Retry-After" in response.headers
        ready = await client.get("/ready")
        body = await ready.json()
    assert ready.status == 503
    assert body["checks"]["database"]["status"] == "unavailable"
    assert body["checks"]["redis"]["status"] == "ok"


async def _cut_off(postgres_url: str, *, allow: bool) -> None:
    """Refuse (or allow again) new connections to the test database, dropping the open ones."""
    url = make_url(postgres_url).set(drivername="postgresql")
    # From another database: a database cannot close its doors to the session altering it.
    admin = await asyncpg.connect(url.set(database="postgres").render_as_string(False))
    try:
        await admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {allow}')
        if not allow:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                url.database,
            )
    finally:
        await admin.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "event-stream"])
async def test_database_lost_while_a_caller_waits_is_a_503_naming_the_stored_message(
    postgres_url: str, redis_url: str, fake: FakeOpenAI, stream: bool
) -> None:
    fake.stall(30, times=None)  # the reply is not coming while the database is away
    config = settings(
        database_url=postgres_url,
        redis_url=redis_url,
        openai_base_url=fake.base_url,
        shutdown_grace_seconds=0.2,
    )
    headers = {**bearer(), **({"Accept": "text/event-stream"} if stream else {})}
    try:
        async with running(config) as client:
            waiting = asyncio.ensure_future(
                client.post("/webhooks/generic", json=message("still there?"), headers=headers)
            )
            await fake.wait_for_requests(1)  # stored, queued, and the model asked
            await _cut_off(postgres_url, allow=False)
            # The caller's wait asks the store every few seconds, in case a reply's event
            # was missed: now it cannot.
            response = await asyncio.wait_for(waiting, 20)
            text = await response.text()
    finally:
        await _cut_off(postgres_url, allow=True)
    if stream:
        assert response.status == 200  # the stream had begun
        event, data = text.strip().split("\n")[-2:]
        assert event == "event: error"
        body = orjson.loads(data.removeprefix("data: "))
    else:
        assert response.status == 503
        assert "Retry-After" in response.headers
        body = orjson.loads(text)
    assert body["error"] == "unavailable"
    assert isinstance(body["message_id"], int)


async def test_redis_down_means_503(sqlite_url: str) -> None:
    config = settings(database_url=sqlite_url, redis_url=f"redis://127.0.0.1:{CLOSED_PORT}/0")
    async with running(config) as client:
        response = await client.post("/webhooks/generic", json=message("lost?"), headers=bearer())
        assert response.status == 503
        ready = await (await client.get("/ready")).json()
    assert ready["checks"]["redis"]["status"] == "unavailable"
    assert ready["checks"]["database"]["status"] == "ok"


async def test_message_unanswered_at_shutdown_is_answered_after_restart(
    database_url: str, fake: FakeOpenAI
) -> None:
    fake.stall(60, times=None)
    async with Receiver() as receiver:
        config = settings(
            database_url=database_url, openai_base_url=fake.base_url, shutdown_grace_seconds=0.2
        )
        async with running(config) as client:
            response = await client.post(
                "/webhooks/generic",
                json=message("don't lose me", callback_url=receiver.url),
                headers=bearer(),
            )
            assert response.status == 202
            message_id = (await response.json())["message_id"]
            await fake.wait_for_requests(1)
        assert receiver.received == []
        fake.heal()
        async with running(config):
            [body] = await receiver.wait_for(1)
    assert body["message_id"] == message_id
    assert body["reply"] == "echo: don't lose me"


async def test_failed_turn_is_stored_as_failed(sqlite_url: str, fake: FakeOpenAI) -> None:
    fake.fail(503, times=None)
    config = settings(database_url=sqlite_url, openai_base_url=fake.base_url, llm_max_attempts=1)
    async with running(config) as client:
        response = await client.post("/webhooks/generic", json=message("fail"), headers=bearer())
        message_id = (await response.json())["message_id"]
    database = open_database(sqlite_url, 1)
    try:
        stored = await SqlConversationStore(database).get_message(message_id)
    finally:
        await database.dispose()
    assert stored is not None
    assert stored.status == "failed"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "nonsense"),
        ("DATABASE_URL", "mysql://x/y"),
        ("RATE_LIMIT", "5/fortnight"),
        ("PORT", "http"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    variable: str, value: str, tmp_path: Path
) -> None:
    result = zapa("migrate", env={variable: value}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_migrate_then_chat_in_the_terminal(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'chat.db'}", "LOG_LEVEL": "WARNING"}
    migrated = zapa("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    chat = zapa("chat", env=env, stdin="hello there\n/usage\n/reset\n", cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
    assert "hello there" in chat.stdout  # the echo model repeats it
    assert "of 20 this minute" in chat.stdout
    assert "forgotten" in chat.stdout


def test_help_explains_each_command() -> None:
    result = zapa("--help", env={})
    assert result.returncode == 0
    for command in ("serve", "migrate", "chat"):
        assert command in result.stdout
    serve = zapa("serve", "--help", env={})
    assert "--no-worker" in serve.stdout
    assert "--port" in serve.stdout


async def test_serve_on_embedded_defaults_answers_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "OPENAI_", "REDIS_"))
    }
    env.update({"WEBHOOK_TOKEN": "cli-token", "LOG_FORMAT": "json"})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"{base}/health") as health:
                            if health.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            async with http.post(
                f"{base}/webhooks/generic",
                json=message("first words"),
                headers={"Authorization": "Bearer cli-token"},
            ) as response:
                assert response.status == 200
                body = await response.json()
        assert "first words" in body["reply"]
        assert (tmp_path / "zapa.db").exists()  # the embedded default, migrated on start
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    lines = [orjson.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "request" and line.get("request_id") for line in lines)


def test_serve_without_worker_needs_the_shared_queue(tmp_path: Path) -> None:
    result = zapa("serve", "--no-worker", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr
    assert "zapa worker" in result.stderr
    assert not (tmp_path / "zapa.db").exists()
