"""Real Zapa processes for scale-out tests: ``zapa serve --no-worker`` and ``zapa worker``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

_OWN_PREFIXES = ("DATABASE_", "REDIS_", "OPENAI_", "WEBHOOK_", "TELEGRAM_", "SLACK_", "QUEUE_")
START_SECONDS = 30.0


class Process:
    """One ``python -m bot …`` child, its output in a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    def output(self) -> str:
        """What the process wrote so far."""
        return self.log.read_text(errors="replace")

    async def wait_for_output(self, text: str, seconds: float = START_SECONDS) -> None:
        """Wait until the log contains ``text``; fail if the process exits first."""
        async with asyncio.timeout(seconds):
            while text not in self.output():
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
                await asyncio.sleep(0.05)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, seconds: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), seconds)


class Cluster:
    """Web and worker processes sharing one database and one Redis, stopped on close."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self._workdir = workdir
        self._env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        self._env.update(
            {
                "LOG_LEVEL": "INFO",
                "LOG_FORMAT": "json",
                "CALLBACK_ALLOW_PRIVATE": "true",
                "RATE_LIMIT": "1000/minute",
                **env,
            }
        )
        self.processes: list[Process] = []

    async def web(self, **env: str) -> str:
        """Start ``zapa serve --no-worker`` on a free port; its base URL once it serves."""
        port = _free_port()
        process = await self._start(
            "web", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port), **env
        )
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(START_SECONDS), aiohttp.ClientSession() as session:
            while True:
                if process.process.returncode is not None:
                    raise RuntimeError(f"web exited early:\n{process.output()[-3000:]}")
                try:
                    async with session.get(f"{url}/health") as response:
                        if response.status == 200:
                            return url
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def worker(self, concurrency: int = 10, **env: str) -> Process:
        """Start ``zapa worker`` and wait until it takes jobs."""
        process = await self._start("worker", "worker", "--concurrency", str(concurrency), **env)
        await process.wait_for_output('"worker_started"')
        return process

    async def command(self, *args: str) -> tuple[int, str]:
        """Run a ``zapa`` command to its end; its status and standard output."""
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            *args,
            cwd=self._workdir,
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode is not None
        return child.returncode, stdout.decode() + stderr.decode()

    async def close(self) -> None:
        """Stop what still runs: SIGTERM, then SIGKILL."""
        for process in self.processes:
            if process.process.returncode is None:
                try:
                    await process.stop(signal.SIGTERM, 15)
                except TimeoutError:
                    await process.stop(signal.SIGKILL, 5)

    async def _start(self, name: str, *args: str, **env: str) -> Process:
        log = self._workdir / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as output:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                *args,
                cwd=self._workdir,
                env={**self._env, **env},
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
        process = Process(name, child, log)
        self.processes.append(process)
        return process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    """Wait until ``check`` answers true, asking it five times a second."""
    async with asyncio.timeout(seconds):
        while True:
            if await check():
                return
            await asyncio.sleep(0.2)


def conversation_of(request: dict[str, Any]) -> str:
    """The conversation a scale-out test's model request belongs to (``c7-m2`` → ``c7``)."""
    return str(request["messages"][-1]["content"]).split("-", 1)[0]
