"""The deployment files: Dockerfile, docker-compose.yml, Procfile, the nginx config, make targets.

Docker is not needed: the files are parsed, every ``zapa`` command in them goes through the
real CLI parser, and the image's health check runs here against a small server.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from bot.cli import _parser
from config import Settings, load_settings
from tests.harness import CLOSED_PORT

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker")


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, arguments = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def _final_stage() -> dict[str, list[str]]:
    instructions = _instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    stage: dict[str, list[str]] = {}
    for keyword, arguments in instructions[start:]:
        stage.setdefault(keyword, []).append(arguments)
    return stage


def _healthcheck_command() -> str:
    (healthcheck,) = _final_stage()["HEALTHCHECK"]
    match = re.search(r"(?:^|\s)CMD\s+(.+)$", healthcheck)
    assert match, healthcheck
    return match.group(1)


def _healthcheck_snippet() -> str:
    """The Python source the health check's ``python -c`` runs."""
    argv = shlex.split(_healthcheck_command())
    assert argv[0] in ("python", "python3"), argv
    return argv[argv.index("-c") + 1]


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def _procfile() -> dict[str, str]:
    processes: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def _nginx() -> str:
    return (ROOT / "deploy" / "nginx.conf").read_text()


def _seconds(duration: str) -> float:
    """A Compose duration such as ``15s`` or ``1m30s``, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def _zapa_commands() -> list[Any]:
    commands: list[Any] = []
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if name in APP_SERVICES or (command and command[0] == "zapa"):
            commands.append(pytest.param(command, id=f"compose-{name}"))
    for name, line in _procfile().items():
        argv = ["8080" if word == "$PORT" else word for word in shlex.split(line)]
        commands.append(pytest.param(argv, id=f"procfile-{name}"))
    (cmd,) = _final_stage()["CMD"]
    commands.append(pytest.param(json.loads(cmd), id="dockerfile-cmd"))
    return commands


@pytest.mark.parametrize("argv", _zapa_commands())
def test_every_zapa_command_in_the_ops_files_is_accepted_by_the_cli(argv: list[str]) -> None:
    assert argv[0] == "zapa"
    args = _parser().parse_args(argv[1:])
    assert args.command == argv[1]


def test_image_runs_zapa_serve_as_a_fixed_non_root_user() -> None:
    stage = _final_stage()
    user = stage["USER"][-1].split(":")[0]
    # Numeric, so runtimes that enforce non-root (Kubernetes' runAsNonRoot) can verify it.
    assert user.isdigit() and int(user) != 0
    # Exec form, so SIGTERM reaches zapa itself rather than a shell that would not forward it.
    (cmd,) = stage["CMD"]
    assert json.loads(cmd) == ["zapa", "serve"]
    assert stage["STOPSIGNAL"] == ["SIGTERM"]


def test_image_stages_share_one_python_so_the_copied_virtualenv_works() -> None:
    bases = {arguments.split()[0] for keyword, arguments in _instructions() if keyword == "FROM"}
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.11-slim-\w+", bases.pop())


def test_image_port_and_health_check_port_are_the_apps_default() -> None:
    default_port = Settings.model_fields["port"].default
    assert _final_stage()["EXPOSE"] == [str(default_port)]
    assert f"${{PORT:-{default_port}}}" in _healthcheck_command()


def test_health_check_needs_only_the_standard_library() -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(_healthcheck_snippet())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported
    assert imported <= sys.stdlib_module_names


@asynccontextmanager
async def _health_server(status: int) -> AsyncIterator[int]:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if status == 200 else "down"}, status=status)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _run_health_check(port: int, tmp_path: Path) -> int:
    """Run the HEALTHCHECK command as Docker does (``/bin/sh -c``), with this Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        _healthcheck_command(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
async def test_health_check_reports_the_health_endpoint(
    status: int, exit_code: int, tmp_path: Path
) -> None:
    async with _health_server(status) as port:
        assert await _run_health_check(port, tmp_path) == exit_code


async def test_health_check_fails_when_nothing_listens(tmp_path: Path) -> None:
    assert await _run_health_check(CLOSED_PORT, tmp_path) == 1


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", "*.db", "bench/results", "admin-ui/node_modules"} <= ignored


def test_compose_runs_web_and_worker_replicas_after_migrating() -> None:
    compose = _compose()
    assert "version" not in compose
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "lb"} <= set(services)
    assert services["migrate"]["command"] == ["zapa", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["web"]["command"] == ["zapa", "serve", "--no-worker"]
    assert services["worker"]["command"] == ["zapa", "worker"]
    for name in ("web", "worker"):
        assert services[name]["deploy"]["replicas"] == 2
    for name in APP_SERVICES:
        assert services[name]["build"] == "."


def test_compose_starts_the_app_only_on_healthy_backing_services() -> None:
    services = _compose()["services"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }


def test_compose_app_environment_is_a_valid_shared_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of this checkout
    services = _compose()["services"]
    for name in APP_SERVICES:
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
        environment = services[name]["environment"]
        settings = load_settings(**{key.lower(): value for key, value in environment.items()})
        assert settings.database_url.startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in settings.database_url
        assert settings.redis_url is not None
        assert settings.redis_url.get_secret_value().startswith("redis://redis:6379")
        assert settings.log_format == "json"


def test_compose_lets_replies_in_flight_drain_before_killing() -> None:
    default_grace = Settings.model_fields["shutdown_grace_seconds"].default
    for name in ("web", "worker"):
        service = _compose()["services"][name]
        grace = float(service["environment"].get("SHUTDOWN_GRACE_SECONDS", default_grace))
        assert _seconds(service["stop_grace_period"]) > grace


def test_compose_publishes_only_the_load_balancer() -> None:
    services = _compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"lb"}
    assert services["lb"]["ports"] == ["8080:8080"]
    (mount,) = services["lb"]["volumes"]
    source, _, options = mount.partition(":")
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx.conf"
    assert options.endswith(":ro")
    # Workers and the one-off migration serve no HTTP; the image's /health check would fail.
    for name in ("worker", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}


def test_load_balancer_spreads_requests_over_the_web_replicas() -> None:
    config = _nginx()
    assert re.search(r"^\s*resolver\s+127\.0\.0\.11\b", config, re.MULTILINE)
    lb_port = _compose()["services"]["lb"]["ports"][0].split(":")[-1]
    assert re.search(rf"^\s*listen\s+{lb_port};", config, re.MULTILINE)
    # Through a variable, so nginx resolves `web` per request and finds every replica.
    proxy = re.search(r"proxy_pass\s+http://\$(\w+);", config)
    assert proxy, "proxy_pass must go through a variable"
    web_port = _compose()["services"]["web"]["environment"]["PORT"]
    assert re.search(rf"set\s+\${proxy.group(1)}\s+web:{web_port};", config)


def test_load_balancer_streams_events_and_waits_for_the_model() -> None:
    config = _nginx()
    assert re.search(r"proxy_set_header\s+X-Request-ID\s+\$", config)
    assert re.search(r"proxy_buffering\s+off;", config)
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", config)
    assert timeout
    fields = Settings.model_fields
    model_budget = fields["llm_timeout_seconds"].default * fields["llm_max_attempts"].default
    assert int(timeout.group(1)) > model_budget


def test_procfile_runs_a_pure_web_process_on_the_platform_port() -> None:
    processes = _procfile()
    assert set(processes) == {"web", "worker", "release"}
    web_argv = ["8080" if word == "$PORT" else word for word in shlex.split(processes["web"])]
    args = _parser().parse_args(web_argv[1:])
    assert args.no_worker
    assert args.port == 8080
    assert processes["release"] == "zapa migrate"


def test_make_lists_and_runs_the_stack_targets() -> None:
    listed = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    targets = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"up", "down", "logs", "migrate"} <= targets
    planned = subprocess.run(
        ["make", "-n", "up", "down", "logs", "migrate", "COMPOSE=podman compose"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "podman compose up -d --build" in planned
    assert "podman compose down" in planned
    assert "podman compose logs -f --tail=100" in planned
    assert any(line.endswith("/zapa migrate") for line in planned)
