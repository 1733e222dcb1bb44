"""The generic-webhook benchmark: one ``zapa serve`` against a fake model answering in 100 ms.

It checks the issue's budgets on the SQLite default and on Postgres + Redis: the engine's own
time per turn (reply time minus model time) has a median under 5 ms, and one process answers
at least 200 generic-webhook conversations per second with none lost.

Every part runs in a process of its own: the fake model, the service (``python -m bot
serve``) and the load-generator workers, so the CPU each used shows what limited throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from bench.load import Plan, Sample, WorkerResult, run_worker
from config import Settings

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OVERHEAD_BUDGET = 0.005
OVERHEAD_TOP_BUCKET = 1.0  # the last finite bucket of zapa_engine_overhead_seconds
THROUGHPUT_BUDGET = 200.0
# Variables the service reads; the caller's own values must not leak into a run.
SERVICE_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)

EPILOG = """\
phases, per backend:
  warmup  closed loop, 16 connections, a few seconds (fills pools and caches)
  rate    open loop: --rate new conversations per second for --duration seconds;
          latency counts from each request's scheduled time; conv/s is answers
          divided by the time until the last one arrived
  max     closed loop: --concurrency connections for --duration seconds; conv/s
          (answers that arrived within --duration, divided by it) is the service's
          maximum throughput
Each phase starts once the service's reply queue is empty again.

"lost" is sent minus answered correctly (200 with a reply echoing the request's own text).
"overhead" is latency minus --model-latency as the client sees it; "srv overhead" is the
service's own zapa_engine_overhead_seconds histogram (mean, and median interpolated within
its buckets). Exit status 1 if the service fails to start or any request is lost.
"""


S = TypeVar("S")


class ServiceFailed(Exception):
    """The service or one of its helpers failed; the message carries their output."""


@dataclass
class LoadPhase:
    """One phase of load and what the load generators saw of it."""

    name: str
    mode: str
    offered_rate: float | None
    concurrency: int | None
    duration: float
    sent: int = 0
    ok: int = 0
    lost: int = 0
    duplicates: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    conversations_per_second: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    overhead_ms: dict[str, float] = field(default_factory=dict)
    max_send_lag_ms: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Phase(LoadPhase):
    """The measurements of one phase against one service, its own metrics included."""

    server_overhead_ms: dict[str, float] = field(default_factory=dict)
    server_overhead_within_budget: float | None = None
    server_model_latency_ms: float | None = None
    server_peak_rss_mb: float = 0.0


# -- processes -----------------------------------------------------------------------------


def _python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in SERVICE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def fake_model(latency: float) -> Iterator[tuple[str, int]]:
    """The fake OpenAI server in its own process: its base URL and pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_model", "--latency", str(latency)],
        cwd=ROOT,
        env=_python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url:
            raise ServiceFailed("the fake model did not start")
        yield base_url, process.pid
    finally:
        stop_process(process, 5)


@dataclass
class Service:
    """A running ``zapa serve``."""

    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
            body: bytes = response.read()
            return body

    def stderr_tail(self, lines: int = 20, width: int = 400) -> str:
        return log_tail(self.log, lines, width)

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Wait until the reply queue is empty, so no phase inherits another's backlog."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for family in text_string_to_metric_families(self.get("/metrics").decode()):
                if family.name == "zapa_queue_depth" and family.samples[0].value == 0:
                    return
            time.sleep(0.2)


def log_tail(log: Path, lines: int = 20, width: int = 400) -> str:
    """The last ``lines`` lines of a process's log, each cut at ``width`` characters."""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(line if len(line) <= width else line[:width] + " …" for line in tail)


@contextlib.contextmanager
def service(
    env: dict[str, str], workdir: Path, extra_args: Sequence[str] = (), name: str = "service"
) -> Iterator[Service]:
    """Start ``zapa serve [extra_args]``, wait until ``/health`` answers, stop it on exit.

    Its output goes to ``workdir/<name>.log``.
    """
    port = free_port()
    log = workdir / f"{name}.log"
    address = ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", *address, *extra_args],
            cwd=workdir,  # no stray .env file is read
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Service(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise ServiceFailed(
                    f"the service exited with status {process.returncode}:\n"
                    + running.stderr_tail()
                )
            with contextlib.suppress(OSError):
                running.get("/health")
                break
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    "the service did not answer /health in 60 s:\n" + running.stderr_tail()
                )
            time.sleep(0.1)
        yield running
    finally:
        stop_process(process, 15)


@contextlib.contextmanager
def backend_env(
    backend: str, args: argparse.Namespace, model_url: str, workdir: Path
) -> Iterator[dict[str, str]]:
    """The service's environment for ``backend``; a Postgres database made and dropped here."""
    env = _python_env(
        OPENAI_BASE_URL=model_url,
        OPENAI_API_KEY="x",
        WEBHOOK_TOKEN=TOKEN,
        RATE_LIMIT="1000000/minute",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
    )
    env.update(args.server_env)
    if backend == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'zapa.db'}"
        yield env
        return
    name = f"zapa_bench_{uuid.uuid4().hex[:12]}"
    try:
        client = redis.Redis.from_url(args.redis_url)
        try:
            client.flushdb()
        finally:
            client.close()
        asyncio.run(_postgres(args.postgres_url, f'CREATE DATABASE "{name}"'))
    except (OSError, SQLAlchemyError, redis.RedisError) as exc:
        raise ServiceFailed(
            f"cannot prepare Postgres and Redis: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        env["DATABASE_URL"] = (
            make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
        )
        env["REDIS_URL"] = args.redis_url
        migrate = subprocess.run(
            [sys.executable, "-m", "bot", "migrate"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode != 0:
            raise ServiceFailed("zapa migrate failed:\n" + migrate.stdout + migrate.stderr)
        yield env
    finally:
        asyncio.run(_postgres(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _postgres(url: str, statement: str) -> None:
    admin = create_async_engine(
        make_url(url).set(drivername="postgresql+asyncpg"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with admin.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await admin.dispose()


# -- measuring -----------------------------------------------------------------------------


def proc_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User plus system CPU seconds of a live process, from ``/proc/PID/stat``.

    With ``reaped_children``, those of its children that exited and were waited for, too.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_idle() -> tuple[int, int]:
    """Clock ticks all CPUs spent busy and idle since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, idle


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts, sum and count of one Prometheus histogram."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    @classmethod
    def scrape(cls, text: str, name: str) -> Histogram:
        buckets: list[tuple[float, float]] = []
        total = count = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value
        return cls(tuple(sorted(buckets)), total, count)

    def __sub__(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding the ``q`` quantile."""
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank and cumulative > below:
                if le == float("inf"):
                    return lower
                return lower + (le - lower) * (rank - below) / (cumulative - below)
            lower, below = le, cumulative
        return lower

    def fraction_within(self, bound: float) -> float | None:
        """The share of observations at or under a bucket bound."""
        counts = dict(self.buckets)
        return counts[bound] / self.count if self.count and bound in counts else None


@dataclass
class Snapshot:
    """Counters read before and after a phase."""

    at: float
    server_cpu: float
    fake_cpu: float
    machine: tuple[int, int]
    overhead: Histogram
    model: Histogram

    @classmethod
    def take(cls, running: Service, fake_pid: int) -> Snapshot:
        text = running.get("/metrics").decode()
        return cls(
            time.perf_counter(),
            proc_cpu_seconds(running.process.pid),
            proc_cpu_seconds(fake_pid),
            machine_busy_idle(),
            Histogram.scrape(text, "zapa_engine_overhead_seconds"),
            Histogram.scrape(text, "zapa_model_latency_seconds"),
        )


def percentiles(values: list[float], points: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """Percentiles ``p<point>`` and the maximum of ``values`` (seconds), in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    picked = {f"p{point}": round(pick(point / 100) * 1000, 2) for point in points}
    return picked | {"max": round(ordered[-1] * 1000, 2)}


def run_load(
    phase: LoadPhase,
    base_urls: Sequence[str],
    workers: int,
    tag: str,
    snapshot: Callable[[], S],
) -> tuple[list[WorkerResult], S, S]:
    """Run ``phase`` from ``workers`` load processes, sending to ``base_urls`` in turn.

    ``snapshot`` is taken once every load process is ready to start and again once all have
    reported; the load processes' results come back with both snapshots.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers + 1)
    results: multiprocessing.Queue[WorkerResult] = context.Queue()
    processes = []
    for worker in range(workers):
        share = (phase.concurrency or 0) // workers
        share += int(worker < (phase.concurrency or 0) % workers)
        plan = Plan(
            urls=tuple(url + "/webhooks/generic" for url in base_urls),
            token=TOKEN,
            tag=f"{tag}-{phase.name}",
            worker=worker,
            workers=workers,
            mode="rate" if phase.mode == "rate" else "closed",
            duration=phase.duration,
            rate=phase.offered_rate or 0.0,
            concurrency=max(1, share),
        )
        process = context.Process(target=run_worker, args=(plan, start, results), daemon=True)
        process.start()
        processes.append(process)
    start.wait(timeout=60)
    before = snapshot()
    outcomes = [results.get(timeout=phase.duration + 120) for _ in processes]
    after = snapshot()
    for process in processes:
        process.join(10)
    return outcomes, before, after


def tally(
    phase: LoadPhase,
    outcomes: list[WorkerResult],
    model_latency: float,
    points: Sequence[int] = (50, 90, 99),
) -> None:
    """Fill in what the load generators saw: answers, losses, rate, latency, send lag.

    ``points`` are the latency percentiles kept.
    """
    samples: list[Sample] = [s for outcome in outcomes for s in outcome.samples]
    wall = max(outcome.wall_seconds for outcome in outcomes)
    good = [s.latency for s in samples if s.ok]
    ids = Counter(s.message_id for s in samples if s.message_id is not None)
    phase.sent = len(samples)
    phase.ok = len(good)
    phase.lost = phase.sent - phase.ok
    phase.duplicates = sum(n - 1 for n in ids.values() if n > 1)
    phase.statuses = dict(Counter(s.status for s in samples))
    if phase.mode == "closed":
        # Answers that arrived within the phase: the drain after it would dilute the rate.
        done = sum(1 for s in samples if s.ok and s.finished <= phase.duration)
        phase.conversations_per_second = round(done / phase.duration, 1)
    else:
        phase.conversations_per_second = round(phase.ok / wall, 1) if wall else 0.0
    phase.latency_ms = percentiles(good, points)
    overheads = percentiles([latency - model_latency for latency in good])
    phase.overhead_ms = {k: overheads[k] for k in ("p50", "p99")} if overheads else {}
    phase.max_send_lag_ms = round(max(o.max_send_lag for o in outcomes) * 1000, 2)


def run_phase(
    running: Service,
    fake_pid: int,
    phase: Phase,
    args: argparse.Namespace,
    tag: str,
) -> Phase:
    """Run one phase with ``--workers`` load processes and fill in its measurements."""
    outcomes, before, after = run_load(
        phase, [running.base_url], args.workers, tag, lambda: Snapshot.take(running, fake_pid)
    )
    tally(phase, outcomes, args.model_latency)
    served = after.overhead - before.overhead
    if served.count:
        phase.server_overhead_ms = {
            "mean": round(served.total / served.count * 1000, 3),
            "p50": round(served.quantile(0.5) * 1000, 3),
            "p99": round(served.quantile(0.99) * 1000, 3),
        }
        within = served.fraction_within(OVERHEAD_BUDGET)
        phase.server_overhead_within_budget = None if within is None else round(within, 4)
    model = after.model - before.model
    if model.count:
        phase.server_model_latency_ms = round(model.total / model.count * 1000, 2)
    elapsed = after.at - before.at
    busy = after.machine[0] - before.machine[0]
    idle = after.machine[1] - before.machine[1]
    phase.cpu = {
        # In cores: 1.0 is one core kept fully busy for the whole phase.
        "server": round((after.server_cpu - before.server_cpu) / elapsed, 2),
        "fake_model": round((after.fake_cpu - before.fake_cpu) / elapsed, 2),
        "load_generator": round(sum(o.cpu_seconds for o in outcomes) / elapsed, 2),
        "machine_busy_percent": round(100 * busy / (busy + idle), 1) if busy + idle else 0.0,
    }
    phase.server_peak_rss_mb = round(_peak_rss_mb(running.process.pid), 1)
    return phase


def run_backend(
    backend: str, args: argparse.Namespace, model_url: str, fake_pid: int
) -> tuple[list[Phase], str | None]:
    """All phases against one fresh service; the service's log tail if anything was lost."""
    warmup = 1.5 if args.quick else 3.0
    phases = [
        Phase("warmup", "closed", None, 16, warmup),
        Phase("rate", "rate", args.rate, None, args.duration),
        Phase("max", "closed", None, args.concurrency, args.duration),
    ]
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with (
        tempfile.TemporaryDirectory(prefix="zapa-bench-") as tmp,
        backend_env(backend, args, model_url, Path(tmp)) as env,
        service(env, Path(tmp)) as running,
    ):
        for phase in phases:
            try:
                run_phase(running, fake_pid, phase, args, tag)
                running.wait_idle()
            except OSError as exc:  # the service stopped answering /metrics, or died
                raise ServiceFailed(f"{exc}\n{running.stderr_tail()}") from exc
        lost = any(phase.lost for phase in phases)
        return phases, running.stderr_tail() if lost else None


# -- reporting -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, or ``-`` for none."""
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(backend: str, phases: list[Phase]) -> None:
    """Two aligned tables: requests and latency, then resources."""
    print(f"\n== {backend} ==")
    head = (
        f"{'phase':<7} {'sent':>6} {'ok':>6} {'lost':>4} {'dup':>3} {'conv/s':>7} "
        f"{'p50':>7} {'p90':>7} {'p99':>7} {'ovh p50':>7} {'ovh p99':>7} "
        f"{'srv ovh mean':>12} {'~p50':>6} {'<=5ms':>6}  non-200"
    )
    print(head + "\n" + "-" * len(head))
    for p in phases:
        median = fmt(p.server_overhead_ms.get("p50"), 2)
        if p.server_overhead_ms.get("p50", 0) >= OVERHEAD_TOP_BUCKET * 1000:
            median = f">={median[:-3]}"  # past the histogram's last finite bucket
        within = p.server_overhead_within_budget
        within = None if within is None else 100 * within
        others = ", ".join(f"{k}: {v}" for k, v in p.statuses.items() if k != "200") or "-"
        print(
            f"{p.name:<7} {p.sent:>6} {p.ok:>6} {p.lost:>4} {p.duplicates:>3} "
            f"{p.conversations_per_second:>7.1f} "
            f"{fmt(p.latency_ms.get('p50')):>7} {fmt(p.latency_ms.get('p90')):>7} "
            f"{fmt(p.latency_ms.get('p99')):>7} {fmt(p.overhead_ms.get('p50')):>7} "
            f"{fmt(p.overhead_ms.get('p99')):>7} "
            f"{fmt(p.server_overhead_ms.get('mean'), 2):>12} "
            f"{median:>6} "
            f"{fmt(within, 0):>5}%"
            f"  {others}"
        )
    print(
        "(latencies in ms; ovh = latency - model latency; srv ovh = zapa_engine_overhead_seconds)"
    )
    head = (
        f"{'phase':<7} {'offered':>8} {'conns':>5} {'server':>7} {'loadgen':>7} {'fake':>6} "
        f"{'machine':>8} {'srv RSS':>8} {'model ms':>8} {'send lag':>8}"
    )
    print(head + "\n" + "-" * len(head))
    for p in phases:
        print(
            f"{p.name:<7} {fmt(p.offered_rate, 0):>8} {fmt(p.concurrency, 0):>5} "
            f"{p.cpu['server']:>7.2f} {p.cpu['load_generator']:>7.2f} "
            f"{p.cpu['fake_model']:>6.2f} {p.cpu['machine_busy_percent']:>7.1f}% "
            f"{p.server_peak_rss_mb:>6.1f}MB {fmt(p.server_model_latency_ms, 1):>8} "
            f"{p.max_send_lag_ms:>8.1f}"
        )
    print(
        f"(CPU in cores of {os.cpu_count()}; machine = all CPUs busy; model ms = mean model "
        "latency the service measured; send lag = worst open-loop lateness, ms)"
    )


def budgets(phases: list[Phase]) -> dict[str, Any]:
    """The issue's budgets, judged on the rate phase (overhead) and the max phase (throughput)."""
    by_name = {p.name: p for p in phases}
    rate, top = by_name["rate"], by_name["max"]
    overhead = rate.server_overhead_ms.get("p50")
    return {
        "engine_overhead_median_ms": overhead,
        "engine_overhead_median_under_5ms": overhead is not None and overhead < 5,
        "client_overhead_median_ms": rate.overhead_ms.get("p50"),
        "max_conversations_per_second": top.conversations_per_second,
        "at_least_200_per_second": top.conversations_per_second >= THROUGHPUT_BUDGET,
        "none_lost": not any(p.lost for p in phases),
    }


def print_budgets(verdict: dict[str, Any]) -> None:
    def mark(passed: bool) -> str:
        return "PASS" if passed else "FAIL"

    print(
        f"{mark(verdict['engine_overhead_median_under_5ms'])}  engine overhead median < 5 ms: "
        f"{fmt(verdict['engine_overhead_median_ms'], 2)} ms in the service "
        f"({fmt(verdict['client_overhead_median_ms'], 2)} ms as the client sees it)"
    )
    print(
        f"{mark(verdict['at_least_200_per_second'])}  >= 200 conversations/s: "
        f"{verdict['max_conversations_per_second']:.1f} at most"
    )
    print(f"{mark(verdict['none_lost'])}  no conversation lost")


# -- command line --------------------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair, for argparse."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def command_parser(prog: str, doc: str, epilog: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring's first two paragraphs, then ``epilog``."""
    paragraphs = doc.split("\n\n")
    return argparse.ArgumentParser(
        prog=prog,
        description=paragraphs[0] + "\n\n" + paragraphs[1],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench", __doc__, EPILOG)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="storage to run on: the SQLite default, Postgres + Redis, or both (default)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s phases: the whole run in under a minute"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="conversations/s of the rate phase (200)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of the rate and max phases (10; 3 with --quick)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=128, help="connections of the max phase (128)"
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument(
        "--model-latency",
        type=float,
        default=0.1,
        help="seconds the fake model waits before answering (0.1)",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="Postgres server on which a throwaway database is created and dropped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="Redis database for the Postgres run; it is FLUSHED first (default: %(default)s)",
    )
    parser.add_argument(
        "--server-env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service, e.g. WORKER_CONCURRENCY=200 (repeatable)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where generic-<backend>.json is written (default: bench/results)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    args.server_env = dict(args.server_env)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if the service failed or any request was lost."""
    args = parse_args(argv)
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    failed = False
    print(
        f"zapa generic-webhook benchmark: model latency {args.model_latency * 1000:.0f} ms, "
        f"rate phase {args.rate:.0f}/s x {args.duration:.0f} s, max phase "
        f"{args.concurrency} connections x {args.duration:.0f} s, {args.workers} load workers, "
        f"{os.cpu_count()} CPUs"
    )
    with fake_model(args.model_latency) as (model_url, fake_pid):
        for backend in backends:
            try:
                phases, log_tail = run_backend(backend, args, model_url, fake_pid)
            except ServiceFailed as exc:
                print(f"\n== {backend} ==\nFAILED: {exc}", file=sys.stderr)
                failed = True
                continue
            print_table(backend, phases)
            verdict = budgets(phases)
            print_budgets(verdict)
            _write(args, backend, phases, verdict)
            if log_tail is not None:
                failed = True
                print(f"requests were lost; the service's log ends with:\n{log_tail}")
    return 1 if failed else 0


def _write(
    args: argparse.Namespace, backend: str, phases: list[Phase], verdict: dict[str, Any]
) -> None:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"generic-{backend}.json"
    report = {
        "benchmark": "generic-webhook",
        "backend": backend,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "model_latency_s": args.model_latency,
            "rate": args.rate,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "server_env": args.server_env,
        },
        "phases": [asdict(phase) for phase in phases],
        "budgets": verdict,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
