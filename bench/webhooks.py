"""The webhook acknowledgement benchmark: Zapa's webhook routes against their baselines.

With one load generator and the same settings (wrk: --threads threads, --connections
connections, --duration seconds each, after a --warmup), it measures side by side: a bare
aiohttp handler that reads the JSON body and answers 200 (the ceiling), python-telegram-bot's
own webhook server and slack-bolt's aiohttp adapter with no-op handlers, and Zapa's
/webhooks/telegram, /webhooks/slack and /webhooks/generic on the SQLite default and on
Postgres + Redis. Then, for Zapa, an open-loop phase at half the capacity just measured, end
to end: from sending a webhook to the fake platform receiving the reply.

Every part runs in a process of its own: the fake model (bench/fake_model.py), the fake
Telegram and Slack APIs (bench/platforms.py), each baseline (bench/baselines.py), each
`zapa serve`, and wrk, so the CPU each used shows what limited throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from adapters.telegram import SECRET_HEADER
from bench.baselines import SLACK_PATH, TELEGRAM_PATH
from bench.baselines import missing as baseline_missing
from bench.generic import (
    ROOT,
    TOKEN,
    LoadPhase,
    Service,
    ServiceFailed,
    _peak_rss_mb,
    _postgres,
    _python_env,
    backend_env,
    command_parser,
    fake_model,
    fmt,
    free_port,
    key_value,
    log_tail,
    machine_busy_idle,
    percentiles,
    proc_cpu_seconds,
    run_load,
    service,
    stop_process,
    tally,
)
from bench.platforms import (
    SLACK_TOKEN,
    TELEGRAM_BOT_TOKEN,
    Platforms,
    Shown,
    fake_platforms,
    slack_user,
)
from bench.scale import CpuSnapshot
from bot import keys
from tests.fake_slack import BOT_USER_ID, app_mention, event_envelope, sign
from tests.fake_telegram import text_update

WRK_DIR = Path(__file__).resolve().parent / "wrk"
TELEGRAM_SECRET = "bench-telegram-secret"
SLACK_SIGNING_SECRET = "bench-slack-signing-secret"
SLACK_CHANNELS = 64
KINDS = ("telegram", "slack", "generic")
# Postgres + Redis in the scaled-out set-up: `zapa serve --no-worker` and one `zapa worker`.
SPLIT = "pg-split"
PATHS = {"telegram": TELEGRAM_PATH, "slack": SLACK_PATH, "generic": "/webhooks/generic"}
LIBRARIES = {"telegram": "python-telegram-bot", "slack": "slack-bolt"}
# python-telegram-bot's AIORateLimiter, which Zapa's Telegram client uses, lets through at
# most 30 Bot API requests a second that name a chat (Telegram's own flood limit), and a
# reply in a private chat takes up to three: "typing…", the streamed preview (when the
# answer takes over half a second), the final message.
TELEGRAM_REQUESTS_PER_SECOND = 30
TELEGRAM_REQUESTS_PER_REPLY = 3
# An end-to-end phase whose replies/s stay under this share of its rate was over capacity.
OVER_CAPACITY = 0.9

EPILOG = """\
what runs, in order:
  baselines  bare aiohttp (once per body kind), python-telegram-bot, slack-bolt
  zapa       per backend and webhook kind: a fresh database and `zapa serve` (in-process
             worker, so replies are made meanwhile, as in production), wrk warm-up, wrk
             measurement; then the end-to-end phase (Telegram and Slack on a fresh
             database and service again, the generic webhook on the same one)

ack table (wrk, closed loop, --connections connections for --duration seconds):
  2xx/s      responses with a 2xx status per second of wrk's run (only those count)
  non-2xx    responses with any other status, and socket errors (connect/read/timeout…)
  p50, p99   wrk's latency distribution over all responses, ms
  srv, wrk   CPU of the server process and of wrk, in cores (1.0 = one core busy
             throughout); fakes = fake model + fake platforms; db = every postgres and
             redis-server process on the machine; machine = all CPUs busy
  RSS        the server process's peak resident memory (VmHWM), MB
  replied/s  Zapa: replies it made meanwhile (its in-process worker shares the process:
             the generic webhook's are its responses, Telegram's are held to ~10/s by
             the Bot API rate limiter, Slack's compete with the acks at full speed)
  reused     Slack bodies wrk had to send twice (the file ran out): Zapa sees duplicates

end-to-end table (Zapa only; open loop at --e2e-fraction of that row's 2xx/s, for
--e2e-duration seconds, one new conversation per request, from this process):
  overhead   time from a webhook's scheduled send to the fake platform receiving the
             message that first holds the whole reply, minus the model's latency
             (generic: the synchronous response, minus the model's latency)
  lost       accepted webhooks with no reply once the service drained
  dup        replies beyond one per accepted webhook (another message holding the reply)
  Telegram's rate is also capped at --telegram-e2e-rate (see the note it prints).

Exit status 1 if a target failed, a reply was lost or duplicated, wrk reused a Slack
body, or Zapa saw a duplicate or rate-limited webhook during an ack run.
"""


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One webhook request: the conversation the platform sees, the text its reply holds."""

    key: str
    token: str
    body: bytes
    headers: dict[str, str]


def telegram_item(n: int, tag: str) -> Item:
    """A private chat's text message; chat, user and update id are all ``n``."""
    text = f"ping {tag}n{n}e"
    body = orjson.dumps(text_update(text, chat_id=n, update_id=n))
    headers = {SECRET_HEADER: TELEGRAM_SECRET, "Content-Type": "application/json"}
    return Item(str(n), text, body, headers)


def slack_item(n: int, tag: str, users: int) -> Item:
    """A signed ``app_mention`` at the top of a channel: a new thread, a new event id."""
    channel = f"C0BENCH{n % SLACK_CHANNELS:03d}"
    ts = f"{1700000000 + n // 1_000_000}.{n % 1_000_000:06d}"
    text = f"ping {tag}n{n}e"
    event = app_mention(
        f"<@{BOT_USER_ID}> {text}", channel=channel, user=slack_user(n % users), ts=ts
    )
    body = orjson.dumps(event_envelope(event, event_id=f"Ev{tag.upper()}{n}"))
    headers = {**sign(body, SLACK_SIGNING_SECRET), "Content-Type": "application/json"}
    return Item(f"{channel}:{ts}", text, body, headers)


def generic_item(n: int, tag: str) -> Item:
    text = f"ping {tag}n{n}e"
    conversation = f"{tag}-{n}"
    body = orjson.dumps({"conversation_id": conversation, "user_id": conversation, "text": text})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return Item(conversation, text, body, headers)


def write_slack_file(path: Path, first: int, count: int, tag: str, users: int) -> None:
    """``count`` signed Slack requests, one a line, as ``bench/wrk/slack.lua`` reads them."""
    with path.open("wb") as out:
        for n in range(first, first + count):
            item = slack_item(n, tag, users)
            stamp = item.headers["X-Slack-Request-Timestamp"].encode()
            signature = item.headers["X-Slack-Signature"].encode()
            out.write(stamp + b"\t" + signature + b"\t" + item.body + b"\n")


# -- wrk -----------------------------------------------------------------------------------


@dataclass
class WrkRun:
    """What wrk saw of one run (latencies in ms)."""

    seconds: float = 0.0
    responses: int = 0
    ok: int = 0
    ok_per_second: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    reused_bodies: int = 0

    @property
    def not_ok(self) -> int:
        """Non-2xx responses and socket errors (a timed-out request is one of the latter)."""
        bad = sum(n for code, n in self.statuses.items() if not code.startswith("2"))
        return bad + sum(self.socket_errors.values())


def wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).splitlines()[0].split(" Copyright")[0].strip()


class Wrk:
    """Runs wrk with the benchmark's settings; numbers every request uniquely across runs."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.runs = 0
        self.tag = uuid.uuid4().hex[:6]

    def script(
        self, kind: str, seconds: int, expected: float | None = None
    ) -> tuple[Path, list[str]]:
        """The Lua script for ``kind`` and its arguments, for a run of ``seconds``."""
        self.runs += 1
        first = 1_000_000_000 + self.runs * 10_000_000  # ids of this run: first + k
        threads = str(self.args.threads)
        if kind == "telegram":
            return WRK_DIR / "telegram.lua", [str(first), threads, TELEGRAM_SECRET]
        if kind == "generic":
            return WRK_DIR / "generic.lua", [f"w{self.tag}r{self.runs}", threads, TOKEN]
        # wrk runs a little past its duration, and faster once warm (on Postgres, once the
        # new database's first pages and plans are in place: 1.6 times the warm-up's rate
        # was seen): leave room to spare.
        rate = 3 * expected if expected else self.args.slack_bodies_per_second
        count = max(2000, math.ceil((seconds + 0.5) * rate))
        path = self.workdir / f"slack-{self.runs}.tsv"
        write_slack_file(path, first, count, f"w{self.tag}", self.args.slack_users)
        return WRK_DIR / "slack.lua", [str(path), threads]

    def run(
        self,
        url: str,
        kind: str,
        seconds: int,
        expected: float | None = None,
        snapshot: Callable[[], CpuSnapshot] | None = None,
        pace_ms: int | None = None,
    ) -> WrkTimed:
        """One wrk run against ``url``: its result, wrk's CPU seconds and two snapshots.

        ``expected`` is about how many requests a second the target takes (from its
        warm-up), to size the file of signed Slack bodies. ``snapshot`` is taken when wrk
        says it is running (its Lua scripts have read their files, its threads started)
        and again once it has exited, so the CPU in between is the load's; wrk's own CPU
        leaves out what it used before that, too.
        """
        script, script_args = self.script(kind, seconds, expected)
        take = snapshot or (lambda: CpuSnapshot.take({}))
        # Line-buffered, so "Running …" arrives when wrk prints it rather than at exit.
        unbuffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        command = [
            *unbuffered,
            "wrk",
            f"-t{self.args.threads}",
            f"-c{self.args.connections}",
            f"-d{seconds}s",
            f"--timeout={self.args.wrk_timeout}s",
            f"-s{script}",
            url,
            "--",
            *script_args,
        ]
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = take()
        startup_cpu = 0.0
        env = {**os.environ, "WRK_PACE_MS": str(pace_ms)} if pace_ms else None
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert process.stdout is not None and process.stderr is not None
        output: list[str] = []
        for printed in process.stdout:
            output.append(printed)
            if printed.startswith("Running ") and len(output) == 1:
                with contextlib.suppress(OSError):
                    startup_cpu = proc_cpu_seconds(process.pid)
                before = take()
        errors = process.stderr.read()
        process.wait()
        after = take()
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (done.ru_utime - usage.ru_utime) + (done.ru_stime - usage.ru_stime) - startup_cpu
        if script.name == "slack.lua":
            Path(script_args[0]).unlink(missing_ok=True)
        stdout = "".join(output)
        line = next((x for x in output if x.startswith("WRK_RESULT ")), None)
        if process.returncode != 0 or line is None:
            raise ServiceFailed(f"wrk failed ({process.returncode}):\n{stdout}\n{errors}")
        raw = json.loads(line.removeprefix("WRK_RESULT "))
        seconds_run = raw["duration_us"] / 1e6
        statuses = {str(k): int(v) for k, v in sorted(raw["statuses"].items())}
        ok = sum(n for code, n in statuses.items() if code.startswith("2"))
        socket_errors = {k: int(v) for k, v in raw["errors"].items() if k != "status" and v}
        latency = raw["latency_us"]
        result = WrkRun(
            seconds=round(seconds_run, 3),
            responses=int(raw["requests"]),
            ok=ok,
            ok_per_second=round(ok / seconds_run, 1) if seconds_run else 0.0,
            statuses=statuses,
            socket_errors=socket_errors,
            latency_ms={
                k: round(float(latency[k]) / 1000, 2) for k in ("p50", "p90", "p99", "max")
            },
            reused_bodies=int(raw["wrapped"]),
        )
        return WrkTimed(result, max(cpu, 0.0), before, after)


@dataclass(frozen=True)
class WrkTimed:
    """A wrk run, the CPU seconds wrk used while it ran, and snapshots around that."""

    run: WrkRun
    cpu: float
    before: CpuSnapshot
    after: CpuSnapshot


# -- results -------------------------------------------------------------------------------


@dataclass
class Ack:
    """One target's acknowledgement run."""

    target: str  # "bare", "python-telegram-bot", "slack-bolt", "zapa"
    kind: str  # the requests sent: telegram, slack, generic
    backend: str | None  # Zapa's storage; None for the baselines
    wrk: WrkRun = field(default_factory=WrkRun)
    warmup_ok: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    # Zapa only: its turns closed during the measured run, by outcome (zapa_turns_total);
    # "duplicate" or "rate_limited" would mean the run did not measure the normal path.
    turns: dict[str, int] = field(default_factory=dict)
    # Zapa only: the Bot / Web API calls its platform got since the service started.
    platform_calls: dict[str, int] = field(default_factory=dict)
    # Zapa's Telegram and Slack: a paced wrk run at half the 2xx/s above, on a fresh
    # service after a warm-up at that pace: the rate it offered and reached, and its
    # latency (ms), the warm-up's too (warmup_*).
    half_rate: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def replies_per_second(self) -> float | None:
        """Replies Zapa made meanwhile (its worker shares the process), per second."""
        if not self.turns or not self.wrk.seconds:
            return None
        return round(self.turns.get("answered", 0) / self.wrk.seconds, 1)

    @property
    def label(self) -> str:
        if self.target == "bare":
            return f"bare aiohttp ({self.kind})"
        if self.target == "zapa":
            return f"zapa {self.kind}"
        return self.target


@dataclass
class EndToEnd:
    """Zapa's open-loop phase for one webhook kind on one backend."""

    kind: str
    backend: str
    rate: float
    duration: float
    rate_note: str = ""
    sent: int = 0
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    replies: int = 0
    lost: int = 0
    duplicated: int = 0
    stray: int = 0
    overhead_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    replies_per_second: float = 0.0
    drain_seconds: float = 0.0
    max_send_lag_ms: float = 0.0
    platform_calls: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    # An earlier phase at half the ack rate that the replies could not keep up with: its
    # rate, replies/s and overhead; this phase then ran at half those replies/s.
    over_capacity: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def cpu_cores(before: CpuSnapshot, after: CpuSnapshot, extra: dict[str, float]) -> dict[str, float]:
    """Cores used by each kind of process between two snapshots, and the machine's share."""
    elapsed = after.at - before.at
    cores = {kind: round(sum(after.cores_since(before, kind)), 2) for kind in after.seconds}
    fakes = cores.pop("fake_model", 0.0) + cores.pop("platforms", 0.0)
    db = cores.pop("postgres", 0.0) + cores.pop("redis", 0.0)
    busy = after.machine[0] - before.machine[0]
    idle = after.machine[1] - before.machine[1]
    return {
        **cores,
        **{name: round(seconds / elapsed, 2) for name, seconds in extra.items()},
        "fakes": round(fakes, 2),
        "db": round(db, 2),
        "machine_busy_percent": round(100 * busy / (busy + idle), 1) if busy + idle else 0.0,
    }


# -- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything shared by the runs: settings, fake upstreams, the load generator."""

    args: argparse.Namespace
    workdir: Path
    model_url: str
    model_pid: int
    platforms: Platforms
    wrk: Wrk
    databases: int = 0
    worker_pid: int | None = None  # the split set-up's `zapa worker`, while it runs

    def own(self, server_pid: int) -> dict[str, list[int]]:
        own = {
            "server": [server_pid],
            "fake_model": [self.model_pid],
            "platforms": [self.platforms.pid],
        }
        if self.worker_pid is not None:
            own["worker"] = [self.worker_pid]
        return own

    def measure_ack(
        self, ack: Ack, base_url: str, server_pid: int, zapa: Service | None = None
    ) -> Ack:
        """Warm up, then the measured wrk run against ``base_url``; fills in ``ack``."""
        url = base_url + PATHS[ack.kind]
        expected = None
        if self.args.warmup > 0:
            warm = self.wrk.run(url, ack.kind, self.args.warmup).run
            ack.warmup_ok = warm.ok
            expected = warm.ok_per_second
        own = self.own(server_pid)
        turns = zapa_turns(zapa) if zapa is not None else {}
        timed = self.wrk.run(
            url, ack.kind, self.args.duration, expected, lambda: CpuSnapshot.take(own)
        )
        if zapa is not None:
            after = zapa_turns(zapa)
            ack.turns = {k: int(v - turns.get(k, 0)) for k, v in after.items()}
            if ack.kind in LIBRARIES:
                ack.platform_calls = self.platforms.record(ack.kind).methods
        ack.wrk = timed.run
        ack.cpu = cpu_cores(timed.before, timed.after, {"wrk": timed.cpu})
        ack.peak_rss_mb = round(_peak_rss_mb(server_pid), 1)
        return ack

    # -- baselines -------------------------------------------------------------------------

    @contextlib.contextmanager
    def baseline(self, kind: str) -> Iterator[tuple[str, int]]:
        """Start ``python -m bench.baselines kind``: its base URL and pid."""
        port = free_port()
        command = [sys.executable, "-m", "bench.baselines", kind, "--port", str(port)]
        if kind == "ptb":
            command += ["--telegram-api", self.platforms.telegram_root]
            command += ["--telegram-token", TELEGRAM_BOT_TOKEN, "--secret", TELEGRAM_SECRET]
        elif kind == "bolt":
            command += ["--slack-api", self.platforms.slack_api_url, "--slack-token", SLACK_TOKEN]
            command += ["--secret", SLACK_SIGNING_SECRET]
        log = self.workdir / f"baseline-{kind}.log"
        with log.open("w") as sink:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_python_env(),
                stdout=subprocess.PIPE,
                stderr=sink,
                text=True,
            )
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                process.wait(10)
                raise ServiceFailed(f"{kind} did not start:\n{log_tail(log)}")
            yield f"http://127.0.0.1:{port}", process.pid
        finally:
            stop_process(process, 5)

    def run_baseline(self, target: str, kind: str) -> Ack:
        ack = Ack(target, kind, None)
        process_kind = {"bare": "bare", "python-telegram-bot": "ptb", "slack-bolt": "bolt"}[target]
        problem = baseline_missing(process_kind)
        if problem is not None:
            ack.error = problem
            return ack
        try:
            with self.baseline(process_kind) as (base_url, pid):
                return self.measure_ack(ack, base_url, pid)
        except ServiceFailed as exc:
            ack.error = str(exc)
            return ack
        finally:
            self.platforms.reset()

    # -- Zapa ------------------------------------------------------------------------------

    def zapa_env(self) -> dict[str, str]:
        """What the service is told on top of ``backend_env``'s model and storage."""
        return {
            "RATE_LIMIT": self.args.rate_limit,
            "TELEGRAM_BOT_TOKEN": TELEGRAM_BOT_TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
            "TELEGRAM_API_URL": self.platforms.telegram_root,
            "SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
            "SLACK_API_URL": self.platforms.slack_api_url,
            **self.args.server_env,
        }

    @contextlib.contextmanager
    def fresh_database(self, backend: str, base: dict[str, str]) -> Iterator[dict[str, str]]:
        """``base`` with a database of its own: a new SQLite file, or a copy of the migrated
        Postgres database (``CREATE DATABASE … TEMPLATE``) with the Redis database flushed.
        """
        self.databases += 1
        env = dict(base)
        if backend == "sqlite":
            env["DATABASE_URL"] = f"sqlite:///{self.workdir / f'zapa-{self.databases}.db'}"
            yield env
            return
        template = make_url(base["DATABASE_URL"])
        name = f"{template.database}_{self.databases}"
        asyncio.run(
            _postgres(
                self.args.postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{template.database}"'
            )
        )
        try:
            client = redis.Redis.from_url(self.args.redis_url)
            try:
                client.flushdb()
            finally:
                client.close()
            env["DATABASE_URL"] = template.set(database=name).render_as_string(hide_password=False)
            yield env
        finally:
            asyncio.run(
                _postgres(self.args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )

    @contextlib.contextmanager
    def zapa(self, backend: str, base: dict[str, str], name: str) -> Iterator[Service]:
        split = backend == SPLIT
        with (
            self.fresh_database(backend, base) as env,
            service(env, self.workdir, ["--no-worker"] if split else [], name=name) as running,
        ):
            worker = self.start_worker(env, name) if split else None
            self.worker_pid = worker.pid if worker is not None else None
            if worker is not None:
                self.wait_for_worker(worker, name)
            try:
                yield running
            finally:
                # Its database is thrown away next, with any replies still queued (after an
                # ack run, Telegram's take minutes): no graceful stop needed.
                for process in (running.process, worker):
                    if process is not None:
                        process.kill()
                        process.wait()
                self.worker_pid = None
                self.platforms.reset()

    def wait_for_worker(self, worker: subprocess.Popen[bytes], name: str) -> None:
        """Until the worker is listed in the queue's consumer group: ready to take jobs."""
        client = redis.Redis.from_url(self.args.redis_url)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    raise ServiceFailed(
                        f"zapa worker exited:\n{log_tail(self.workdir / f'{name}-worker.log')}"
                    )
                with contextlib.suppress(redis.RedisError):
                    if client.xinfo_consumers(keys.QUEUE_READY, keys.QUEUE_GROUP):
                        return
                time.sleep(0.1)
            raise ServiceFailed("zapa worker did not join the queue in 60 s")
        finally:
            client.close()

    def start_worker(self, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        """``zapa worker`` beside a ``zapa serve --no-worker`` (the scaled-out set-up)."""
        with (self.workdir / f"{name}-worker.log").open("wb") as sink:
            return subprocess.Popen(
                [sys.executable, "-m", "bot", "worker"],
                cwd=self.workdir,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def run_zapa(self, backend: str, base: dict[str, str], kind: str) -> tuple[Ack, EndToEnd]:
        """The ack run, then the end-to-end phase, of one webhook kind on one backend."""
        ack = Ack("zapa", kind, backend)
        e2e = EndToEnd(kind, backend, 0.0, self.args.e2e_duration)
        try:
            with self.zapa(backend, base, f"{backend}-{kind}-ack") as running:
                self.measure_ack(ack, running.base_url, running.process.pid, running)
                self.set_rate(e2e, ack)
                if kind == "generic":  # answered in the response: nothing is left queued
                    running.wait_idle()
                    self.generic_e2e(e2e, running)
                    return ack, e2e
        except (ServiceFailed, OSError) as exc:
            if ack.wrk.responses:  # the end-to-end phase failed
                e2e.error = str(exc)
            else:
                ack.error = str(exc)
                e2e.error = "no ack measurement"
            return ack, e2e
        # Replies to the ack run's webhooks were still queued: start afresh, for the ack
        # latency at half that rate, then for the end-to-end phase.
        try:
            with self.zapa(backend, base, f"{backend}-{kind}-half") as running:
                self.half_rate(ack, running)
        except (ServiceFailed, OSError) as exc:
            print(f"    half-rate run failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        try:
            with self.zapa(backend, base, f"{backend}-{kind}-e2e") as running:
                self.platform_e2e(e2e, running)
        except (ServiceFailed, OSError) as exc:
            e2e.error = str(exc)
            return ack, e2e
        if kind == "slack" and e2e.replies_per_second < OVER_CAPACITY * e2e.rate:
            # Acknowledging outruns answering (the webhooks go first under load): half the
            # ack rate is over the turn capacity, so measure again at half the replies/s.
            again = EndToEnd(kind, backend, 0.0, self.args.e2e_duration)
            again.rate = round(max(e2e.replies_per_second * self.args.e2e_fraction, 1.0), 1)
            again.rate_note = f"{self.args.e2e_fraction:g} x {e2e.replies_per_second:.0f} replies/s"
            again.over_capacity = {
                "rate": e2e.rate,
                "replies_per_second": e2e.replies_per_second,
                "overhead_p50_ms": e2e.overhead_ms.get("p50", math.nan),
            }
            try:
                with self.zapa(backend, base, f"{backend}-{kind}-e2e2") as running:
                    self.platform_e2e(again, running)
            except (ServiceFailed, OSError) as exc:
                again.error = str(exc)
            e2e = again
        return ack, e2e

    def half_rate(self, ack: Ack, running: Service) -> None:
        """wrk at half the ack run's 2xx/s (each connection paced by ``delay()``)."""
        rate = ack.wrk.ok_per_second * 0.5
        if rate < 1:
            return
        pace_ms = max(1, round(self.args.connections * 1000 / rate))
        url = running.base_url + PATHS[ack.kind]
        cold: dict[str, float] = {}
        if self.args.warmup > 0:
            # Paced as the measured run, as the ack run has its warm-up: the first second of
            # a fresh service (connections opened, a hundred worker slots starting at once)
            # is reported apart.
            warm = self.wrk.run(url, ack.kind, self.args.warmup, rate, pace_ms=pace_ms).run
            cold = {f"warmup_{k}_ms": v for k, v in warm.latency_ms.items()}
        run = self.wrk.run(url, ack.kind, self.args.duration, rate, pace_ms=pace_ms).run
        ack.half_rate = {
            "offered_per_second": round(self.args.connections * 1000 / pace_ms, 1),
            "ok_per_second": run.ok_per_second,
            "not_ok": run.not_ok,
            **{f"{k}_ms": v for k, v in run.latency_ms.items()},
            **cold,
        }

    def set_rate(self, e2e: EndToEnd, ack: Ack) -> None:
        rate = ack.wrk.ok_per_second * self.args.e2e_fraction
        e2e.rate_note = f"{self.args.e2e_fraction:g} x {ack.wrk.ok_per_second:.0f}/s"
        if e2e.kind == "telegram" and rate > self.args.telegram_e2e_rate:
            rate = self.args.telegram_e2e_rate
            e2e.rate_note = "--telegram-e2e-rate (Bot API rate limiter)"
        e2e.rate = round(max(rate, 1.0), 1)

    def generic_e2e(self, e2e: EndToEnd, running: Service) -> None:
        """The synchronous webhook: bench/load.py's open loop; the reply is the response."""
        phase = LoadPhase("e2e", "rate", e2e.rate, None, e2e.duration)
        own = self.own(running.process.pid)
        outcomes, before, after = run_load(
            phase, [running.base_url], 1, f"e2e{self.wrk.tag}", lambda: CpuSnapshot.take(own)
        )
        tally(phase, outcomes, self.args.model_latency, points=(50, 99))
        loadgen = sum(o.cpu_seconds for o in outcomes)
        e2e.cpu = cpu_cores(before, after, {"load_generator": loadgen})
        e2e.sent, e2e.accepted = phase.sent, phase.ok
        e2e.statuses = phase.statuses
        e2e.replies = phase.ok
        e2e.lost = phase.lost
        e2e.duplicated = phase.duplicates
        e2e.overhead_ms = phase.overhead_ms
        e2e.latency_ms = phase.latency_ms
        e2e.replies_per_second = phase.conversations_per_second
        e2e.max_send_lag_ms = phase.max_send_lag_ms

    def platform_e2e(self, e2e: EndToEnd, running: Service) -> None:
        """Telegram or Slack: send on a schedule, then wait for the replies to drain."""
        count = max(1, round(e2e.rate * e2e.duration))
        tag = f"e{uuid.uuid4().hex[:6]}"
        first = 2_000_000_000 + self.databases * 10_000_000
        if e2e.kind == "telegram":
            items = [telegram_item(first + k, tag) for k in range(count)]
        else:
            items = [slack_item(first + k, tag, self.args.slack_users) for k in range(count)]
        url = running.base_url + PATHS[e2e.kind]
        own = self.own(running.process.pid)
        self.platforms.reset()
        before = CpuSnapshot.take(own)
        cpu_before = _self_cpu()
        began = time.monotonic()
        sent, lag = asyncio.run(open_loop(url, items, e2e.rate))
        loadgen = _self_cpu() - cpu_before
        accepted = {s.key: s for s in sent if s.status.startswith("2")}
        expected = {item.key: item.token for item in items if item.key in accepted}
        deadline = time.monotonic() + self.args.drain_timeout
        record = self.platforms.record(e2e.kind)
        while len(first_replies(record.shown, expected)[0]) < len(expected):
            if time.monotonic() > deadline or running.process.poll() is not None:
                break
            time.sleep(0.1)
            record = self.platforms.record(e2e.kind)
        drained = time.monotonic()
        after = CpuSnapshot.take(own)
        # Anything still queued would be a duplicate in the making: wait for an idle queue.
        running.wait_idle(timeout=30)
        time.sleep(self.args.settle)
        record = self.platforms.record(e2e.kind)
        replies, stray = first_replies(record.shown, expected)
        e2e.cpu = cpu_cores(before, after, {"load_generator": loadgen})
        e2e.sent = len(sent)
        e2e.accepted = len(accepted)
        e2e.statuses = dict(Counter(s.status for s in sent))
        e2e.replies = sum(len(times) for times in replies.values())
        e2e.lost = len(expected) - len(replies)
        e2e.duplicated = sum(len(times) - 1 for times in replies.values())
        e2e.stray = stray
        e2e.platform_calls = dict(sorted(record.methods.items()))
        e2e.drain_seconds = round(drained - began - e2e.duration, 2)
        e2e.max_send_lag_ms = round(lag * 1000, 2)
        latencies = [min(times) - accepted[key].due for key, times in replies.items()]
        e2e.latency_ms = _pick(percentiles(latencies, (50, 99)))
        model = self.args.model_latency
        e2e.overhead_ms = _pick(percentiles([x - model for x in latencies], (50, 99)))
        if replies:
            last = max(max(times) for times in replies.values())
            e2e.replies_per_second = round(len(replies) / max(last - began, 1e-9), 1)


def zapa_turns(running: Service) -> dict[str, float]:
    """The service's ``zapa_turns_total`` by outcome."""
    turns: dict[str, float] = {}
    for family in text_string_to_metric_families(running.get("/metrics").decode()):
        if family.name == "zapa_turns":
            for sample in family.samples:
                if sample.name == "zapa_turns_total":
                    turns[sample.labels["outcome"]] = sample.value
    return turns


def _pick(values: dict[str, float]) -> dict[str, float]:
    return {k: values[k] for k in ("p50", "p99", "max") if k in values}


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def first_replies(
    shown: Sequence[Shown], expected: dict[str, str]
) -> tuple[dict[str, list[float]], int]:
    """Replies to the expected conversations, and how many shown messages were others'.

    A reply is one message (by its platform id) that came to hold the conversation's whole
    reply text (``expected[key]``, which the fake model echoes); its time is when it first
    did. Previews and placeholders that do not hold it yet are not replies; a second message
    that holds it is a duplicate.
    """
    first: dict[tuple[str, str], float] = {}
    stray = 0
    for at, key, message, text in shown:
        token = expected.get(key)
        if token is None:
            stray += 1
        elif token in text and (key, message) not in first:
            first[(key, message)] = at
    replies: dict[str, list[float]] = {}
    for (key, _), at in first.items():
        replies.setdefault(key, []).append(at)
    return replies, stray


@dataclass(frozen=True, slots=True)
class Sent:
    key: str
    due: float  # time.monotonic() the request was scheduled for
    status: str


async def open_loop(url: str, items: list[Item], rate: float) -> tuple[list[Sent], float]:
    """Send ``items`` evenly spaced at ``rate`` a second, whatever the answers do.

    Latency counts from each request's scheduled time, so a stalled server cannot hide its
    queueing (as bench/load.py does). Returns what was sent and the worst lateness.
    """
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(item: Item, due: float) -> Sent:
            try:
                async with session.post(url, data=item.body, headers=item.headers) as response:
                    await response.read()
                    return Sent(item.key, due, str(response.status))
            except TimeoutError:
                return Sent(item.key, due, "timeout")
            except aiohttp.ClientError as exc:
                return Sent(item.key, due, type(exc).__name__)

        began = time.monotonic()
        tasks: list[asyncio.Task[Sent]] = []
        lag = 0.0
        for k, item in enumerate(items):
            due = began + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, time.monotonic() - due)
            tasks.append(asyncio.create_task(post(item, due)))
        return list(await asyncio.gather(*tasks)), lag


# -- reporting -----------------------------------------------------------------------------


def machine(args: argparse.Namespace) -> dict[str, Any]:
    """The machine and software the run measured."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in ("aiohttp", "uvloop", "python-telegram-bot", "tornado", "slack_bolt", "slack_sdk"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version(),
        "packages": packages,
    }
    if "postgres" in args.backends or SPLIT in args.backends:
        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(args.redis_url)
            try:
                info["redis"] = client.info("server")["redis_version"]
            finally:
                client.close()
        with contextlib.suppress(Exception):
            info["postgres"] = asyncio.run(_postgres_version(args.postgres_url))
    return info


async def _postgres_version(url: str) -> str:
    import asyncpg  # type: ignore[import-untyped]

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def ratios(acks: list[Ack]) -> dict[str, dict[str, float | None]]:
    """2xx/s of each Zapa row divided by its baselines', per backend."""
    by = {(a.target, a.kind, a.backend): a for a in acks if a.error is None}

    def rate(target: str, kind: str, backend: str | None) -> float | None:
        found = by.get((target, kind, backend))
        return found.wrk.ok_per_second if found is not None else None

    def divide(top: float | None, bottom: float | None) -> float | None:
        return round(top / bottom, 3) if top is not None and bottom else None

    bare_kinds = [a.kind for a in acks if a.target == "bare" and a.error is None]
    table: dict[str, dict[str, float | None]] = {}
    for backend in sorted({a.backend for a in acks if a.backend is not None}):
        for kind in KINDS:
            # Without a bare run on this kind's bodies (--quick), the one there was.
            bare = kind if kind in bare_kinds or not bare_kinds else bare_kinds[0]
            name = f"zapa {kind} / bare" + ("" if bare == kind else f" ({bare} bodies)")
            table.setdefault(name, {})[backend] = divide(
                rate("zapa", kind, backend), rate("bare", bare, None)
            )
        for kind, library in LIBRARIES.items():
            table.setdefault(f"zapa {kind} / {library}", {})[backend] = divide(
                rate("zapa", kind, backend), rate(library, kind, None)
            )
    return table


def print_ack(acks: list[Ack], args: argparse.Namespace) -> None:
    head = (
        f"{'target':<28} {'backend':<8} {'2xx/s':>8} {'non-2xx':>7} {'p50':>7} {'p99':>7} "
        f"{'srv':>5} {'wrk':>5} {'fakes':>5} {'db':>5} {'machine':>7} {'RSS MB':>7} "
        f"{'replied/s':>9} {'reused':>6}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for a in acks:
        backend = a.backend or "-"
        if a.error is not None:
            print(f"{a.label:<28} {backend:<8} FAILED: {a.error.splitlines()[0][:80]}")
            continue
        w, c = a.wrk, a.cpu
        print(
            f"{a.label:<28} {backend:<8} {w.ok_per_second:>8.1f} {w.not_ok:>7} "
            f"{fmt(w.latency_ms.get('p50'), 2):>7} {fmt(w.latency_ms.get('p99'), 2):>7} "
            f"{c['server']:>5.2f} {c['wrk']:>5.2f} {c['fakes']:>5.2f} {c['db']:>5.2f} "
            f"{c['machine_busy_percent']:>6.1f}% {a.peak_rss_mb:>7.1f} "
            f"{fmt(a.replies_per_second):>9} {w.reused_bodies:>6}"
        )
        if "worker" in a.cpu:
            print(f"{'':<28} ^ and its zapa worker process: {a.cpu['worker']:.2f} cores")
        odd = {k: n for k, n in a.turns.items() if k not in ("answered",) and n}
        if odd:
            print(f"{'':<28} ^ turns other than answered: {odd}")
    print(
        f"(wrk {args.threads} threads, {args.connections} connections, {args.duration:g} s after "
        f"{args.warmup:g} s warm-up; latency in ms; CPU in cores of {os.cpu_count()})"
    )
    paced = [a for a in acks if a.half_rate]
    if paced:
        head = (
            f"{'at half the 2xx/s':<28} {'backend':<8} {'offered':>8} {'2xx/s':>8} "
            f"{'p50':>7} {'p99':>7} {'warm-up p99':>11}"
        )
        print("\n" + head + "\n" + "-" * len(head))
        for a in paced:
            h = a.half_rate
            print(
                f"{a.label:<28} {a.backend or '-':<8} {fmt(h.get('offered_per_second')):>8} "
                f"{fmt(h.get('ok_per_second')):>8} {fmt(h.get('p50_ms'), 2):>7} "
                f"{fmt(h.get('p99_ms'), 2):>7} {fmt(h.get('warmup_p99_ms'), 2):>11}"
            )
        print(
            f"(a fresh service; wrk's connections each paced with delay(), {args.duration:g} s "
            f"after {args.warmup:g} s warm-up at the same pace; latency in ms)"
        )


def print_e2e(runs: list[EndToEnd]) -> None:
    head = (
        f"{'zapa':<9} {'backend':<8} {'rate/s':>7} {'sent':>6} {'2xx':>6} {'replies':>7} "
        f"{'lost':>4} {'dup':>3} {'ovh p50':>8} {'ovh p99':>8} {'replies/s':>9} {'drain s':>7} "
        f"{'srv':>5}  rate from"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for e in runs:
        if e.error is not None:
            print(f"{e.kind:<9} {e.backend:<8} FAILED: {e.error.splitlines()[0][:80]}")
            continue
        print(
            f"{e.kind:<9} {e.backend:<8} {e.rate:>7.1f} {e.sent:>6} {e.accepted:>6} "
            f"{e.replies:>7} {e.lost:>4} {e.duplicated:>3} "
            f"{fmt(e.overhead_ms.get('p50'), 2):>8} {fmt(e.overhead_ms.get('p99'), 2):>8} "
            f"{e.replies_per_second:>9.1f} {e.drain_seconds:>7.2f} {e.cpu.get('server', 0):>5.2f}"
            f"  {e.rate_note}"
        )
    print(
        "(open loop; ovh = webhook sent -> reply at the fake platform, minus the model's "
        "latency, ms; drain s = time after the last send until every reply had arrived)"
    )
    for e in runs:
        if e.over_capacity:
            o = e.over_capacity
            print(
                f"note: {e.kind} on {e.backend} first ran at {o['rate']:.0f}/s (half its ack "
                f"rate), over its turn capacity: {o['replies_per_second']:.0f} replies/s, "
                f"overhead p50 {fmt(o['overhead_p50_ms'], 0)} ms (queueing); the row above "
                "is at half those replies/s"
            )


def print_ratios(table: dict[str, dict[str, float | None]]) -> None:
    backends = sorted({b for row in table.values() for b in row})
    head = f"{'2xx/s ratio':<38} " + " ".join(f"{b:>9}" for b in backends)
    print("\n" + head + "\n" + "-" * len(head))
    for name, row in table.items():
        print(f"{name:<38} " + " ".join(f"{fmt(row.get(b), 3):>9}" for b in backends))


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench.webhooks", __doc__, EPILOG)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs (1 s wrk runs after 1 s warm-up, 0.5 s end to end; bare aiohttp "
        "once): under a minute",
    )
    parser.add_argument("--duration", type=int, help="seconds of each wrk run (10)")
    parser.add_argument(
        "--warmup", type=int, help="seconds of wrk warm-up before each run, 0 for none (2)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument(
        "--wrk-timeout", type=int, default=10, help="wrk's per-request timeout, s (10)"
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", SPLIT, "both", "all"),
        default="both",
        help="Zapa's storage: the SQLite default, Postgres + Redis, Postgres + Redis with "
        f"the worker in its own process ({SPLIT}: `zapa serve --no-worker` and `zapa worker`), "
        "both of the first two (default), or all three",
    )
    parser.add_argument(
        "--targets",
        default="bare,ptb,bolt,zapa",
        help="comma-separated subset of bare,ptb,bolt,zapa (default: all)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="Zapa webhooks to measure, comma-separated (default: telegram,slack,generic)",
    )
    parser.add_argument(
        "--model-latency",
        type=float,
        default=0.1,
        help="seconds the fake model waits before answering (0.1)",
    )
    parser.add_argument(
        "--e2e-duration", type=float, help="seconds of sending in each end-to-end phase (10)"
    )
    parser.add_argument(
        "--e2e-fraction",
        type=float,
        default=0.5,
        help="end-to-end rate as a share of the same row's 2xx/s (0.5)",
    )
    parser.add_argument(
        "--telegram-e2e-rate",
        type=float,
        default=TELEGRAM_REQUESTS_PER_SECOND / TELEGRAM_REQUESTS_PER_REPLY * 0.8,
        help="cap on Telegram's end-to-end rate, replies/s (8: 80%% of the 30 requests/s "
        "PTB's AIORateLimiter lets through, at up to 3 requests a reply)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="how long to wait for the replies after the last send, s (120)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="wait after the drain (and an empty reply queue) before counting duplicates, "
        "s (1; 0.2 with --quick)",
    )
    parser.add_argument(
        "--rate-limit",
        default="1000000/second",
        help="Zapa's RATE_LIMIT for the run (default: %(default)s, so that no request is "
        "refused; Telegram and generic requests also come from a new user each)",
    )
    parser.add_argument(
        "--slack-users",
        type=int,
        default=200,
        help="Slack requests come from this many users in turn, known to the fake "
        "users.info (200; Zapa caches their names)",
    )
    parser.add_argument(
        "--slack-bodies-per-second",
        type=int,
        default=6000,
        help="signed Slack bodies written per second of a run without warm-up (6000; "
        "after one, 1.5 times the warm-up's rate); wrk reuses bodies, and reports it, if "
        "they run out",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="Postgres server on which throwaway databases are created and dropped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/12",
        help="Redis database for the Postgres runs; it is FLUSHED (default: %(default)s)",
    )
    parser.add_argument(
        "--server-env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for zapa serve (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON report file (default: bench/results/webhooks-<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.e2e_duration is None:
        args.e2e_duration = 0.5 if args.quick else 10.0
    if args.settle is None:
        args.settle = 0.2 if args.quick else 1.0
    args.server_env = dict(args.server_env)
    args.backends = {
        "both": ("sqlite", "postgres"),
        "all": ("sqlite", "postgres", SPLIT),
    }.get(args.backend, (args.backend,))
    args.targets = _choices(parser, "--targets", args.targets, ("bare", "ptb", "bolt", "zapa"))
    args.kinds = _choices(parser, "--kinds", args.kinds, KINDS)
    return args


def _choices(
    parser: argparse.ArgumentParser, option: str, text: str, allowed: Sequence[str]
) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        parser.error(f"{option}: choose among {','.join(allowed)}")
    return chosen


def baseline_plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    plan: list[tuple[str, str]] = []
    if "bare" in args.targets:
        kinds = ("telegram",) if args.quick else args.kinds
        plan += [("bare", kind) for kind in kinds]
    if "ptb" in args.targets:
        plan.append(("python-telegram-bot", "telegram"))
    if "bolt" in args.targets:
        plan.append(("slack-bolt", "slack"))
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    started = time.monotonic()
    busy = _busy_percent(0.3)
    print(
        f"zapa webhook benchmark: wrk {args.threads} threads x {args.connections} connections, "
        f"{args.duration:g} s runs after {args.warmup:g} s warm-up; model latency "
        f"{args.model_latency * 1000:.0f} ms; RATE_LIMIT={args.rate_limit}; Telegram and "
        f"generic requests from a new user each, Slack from {args.slack_users} users in turn; "
        f"{os.cpu_count()} CPUs ({busy:.0f}% busy before the start)"
    )
    if busy > 25:
        print("warning: the machine is busy; the numbers will show it", file=sys.stderr)
    acks: list[Ack] = []
    e2es: list[EndToEnd] = []
    notes = [
        f"RATE_LIMIT={args.rate_limit} for every Zapa run; Telegram and generic requests each "
        f"come from a new user, Slack ones from {args.slack_users} users in turn",
        f"Zapa's Telegram replies go through python-telegram-bot's AIORateLimiter: at most "
        f"{TELEGRAM_REQUESTS_PER_SECOND} Bot API requests/s; a private-chat reply takes up to "
        f"{TELEGRAM_REQUESTS_PER_REPLY} (typing, a preview if the answer takes over 0.5 s, the "
        f"final message) while few calls wait, one under a backlog; the end-to-end phase "
        f"offers {args.telegram_e2e_rate:g}/s, where the courtesies still fit",
    ]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zapa-webhooks-")))
        with _stderr_to(tmp / "fake-model.log"):  # it logs every request cut short
            model_url, model_pid = stack.enter_context(fake_model(args.model_latency))
        platforms = stack.enter_context(
            fake_platforms(args.slack_users, _python_env(), tmp / "platforms.log", str(ROOT))
        )
        bench = Bench(args, tmp, model_url, model_pid, platforms, Wrk(args, tmp))
        for target, kind in baseline_plan(args):
            print(f"  {target} ({kind})…", flush=True)
            began = time.monotonic()
            acks.append(bench.run_baseline(target, kind))
            _progress(acks[-1], began)
        if "zapa" in args.targets:
            args.server_env = bench.zapa_env()
            for backend in args.backends:
                try:
                    base = stack.enter_context(backend_env(backend, args, model_url, tmp))
                except ServiceFailed as exc:
                    for kind in args.kinds:
                        acks.append(Ack("zapa", kind, backend, error=str(exc)))
                    continue
                for kind in args.kinds:
                    print(f"  zapa {kind} on {backend}…", flush=True)
                    began = time.monotonic()
                    ack, e2e = bench.run_zapa(backend, base, kind)
                    acks.append(ack)
                    e2es.append(e2e)
                    _progress(ack, began, e2e)
    print_ack(acks, args)
    if e2es:
        print_e2e(e2es)
    table = ratios(acks)
    if table:
        print_ratios(table)
    for note in notes:
        print(f"note: {note}")
    path = _write(args, acks, e2es, table, notes)
    print(
        f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
        f"({time.monotonic() - started:.0f} s)"
    )
    failed = any(
        a.error is not None
        or a.wrk.reused_bodies
        or a.turns.get("duplicate")
        or a.turns.get("rate_limited")
        for a in acks
    )
    failed |= any(e.error is not None or e.lost or e.duplicated for e in e2es)
    return 1 if failed else 0


def _progress(ack: Ack, began: float, e2e: EndToEnd | None = None) -> None:
    took = f" ({time.monotonic() - began:.1f} s)"
    if ack.error is not None:
        print(f"    FAILED{took}: {ack.error}", flush=True)
        return
    line = f"    {ack.wrk.ok_per_second:.1f} 2xx/s, p99 {fmt(ack.wrk.latency_ms.get('p99'), 2)} ms"
    if e2e is not None:
        if e2e.error is not None:
            line += f"; end to end FAILED: {e2e.error}"
        else:
            line += (
                f"; end to end at {e2e.rate:g}/s: {e2e.replies}/{e2e.accepted} replies, "
                f"overhead p50 {fmt(e2e.overhead_ms.get('p50'), 2)} ms"
            )
    print(line + took, flush=True)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` meanwhile: processes started here inherit it."""
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        sys.stderr.flush()
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(target)
        os.close(saved)


def _busy_percent(seconds: float) -> float:
    before = machine_busy_idle()
    time.sleep(seconds)
    after = machine_busy_idle()
    busy, idle = after[0] - before[0], after[1] - before[1]
    return 100 * busy / (busy + idle) if busy + idle else 0.0


def _write(
    args: argparse.Namespace,
    acks: list[Ack],
    e2es: list[EndToEnd],
    table: dict[str, dict[str, float | None]],
    notes: list[str],
) -> Path:
    path = (
        args.out or ROOT / "bench" / "results" / f"webhooks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "server_env") and not k.startswith("_")
    }
    secrets = re.compile(r"TOKEN|SECRET|KEY", re.IGNORECASE)
    settings["server_env"] = {
        k: ("…" if secrets.search(k) else v) for k, v in args.server_env.items()
    }
    report = {
        "benchmark": "webhooks",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(args),
        "settings": settings,
        "ack": [{**asdict(a), "label": a.label, "non_2xx_or_error": a.wrk.not_ok} for a in acks],
        "end_to_end": [asdict(e) for e in e2es],
        "ratios_2xx_per_second": table,
        "notes": notes,
    }
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
