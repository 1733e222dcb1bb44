"""The scale-out benchmark: web and worker processes sharing Postgres and Redis.

It measures the issue's budget with the fake model answering in 100 ms: answered
conversations per second of one worker, of two, and of two workers behind two web processes,
with none lost; and that at half of each one's measured capacity a message waits a median of
under 10 ms in the queue before a worker takes it.

Every part runs in a process of its own: the web processes (``python -m bot serve
--no-worker``), the workers (``python -m bot worker``), the fake model and the load
generators, so the CPU each used shows what limited throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.generic import (
    ROOT,
    LoadPhase,
    Service,
    ServiceFailed,
    backend_env,
    command_parser,
    fake_model,
    fmt,
    key_value,
    log_tail,
    machine_busy_idle,
    proc_cpu_seconds,
    run_load,
    service,
    stop_process,
    tally,
)
from bot import keys

QUEUE_WAIT_BUDGET_MS = 10.0
START_SECONDS = 60.0
# Shared servers whose CPU is counted too, by the command name of their processes.
SERVERS = {"postgres": "postgres", "redis": "redis-server"}

EPILOG = """\
topologies, each on a fresh database and a flushed Redis database:
  A  1 web process (zapa serve --no-worker) + 1 zapa worker
  B  1 web process + 2 workers
  C  2 web processes + 2 workers; the load generators send to both in turn
phases, per topology:
  warmup  closed loop, 16 connections, --warmup seconds
  max     closed loop: --concurrency connections for --duration seconds; its conv/s
          (answers that arrived within --duration, divided by it) is the capacity
  half    open loop at half that capacity for --duration seconds; latency counts from
          each request's scheduled time. Then `zapa queue stats --json` gives the median
          and p95 time a job waited in the queue for a worker (over the last 1000 jobs;
          the list of waits is emptied before the phase)
Each phase starts once the shared queue is empty again.

"lost" is sent minus answered correctly (200 with a reply echoing the request's own text).
CPU is in cores (1.0 = one core busy for the whole phase): web and worker are the sums over
their processes, "busiest" the busiest single worker; postgres and redis count every
process of those servers on this machine, whoever it serves; "other" is the rest of the
machine's busy time (the kernel, anything else running). Exit status 1 if a process fails
or any request is lost.
"""


@dataclass(frozen=True)
class Topology:
    """How many web and worker processes run."""

    name: str
    webs: int
    workers: int

    @property
    def label(self) -> str:
        plural = "s" if self.workers > 1 else ""
        return f"{self.name} {self.webs} web + {self.workers} worker{plural}"


TOPOLOGIES = {t.name: t for t in (Topology("A", 1, 1), Topology("B", 1, 2), Topology("C", 2, 2))}


@dataclass
class ScalePhase(LoadPhase):
    """One phase against one topology.

    ``busiest_cpu`` is the busiest single process of each kind, in cores; ``queue`` is what
    ``zapa queue stats --json`` printed after the phase, with ``wait_samples`` added.
    """

    busiest_cpu: dict[str, float] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """One topology's phases, or why it failed."""

    topology: Topology
    phases: list[ScalePhase] = field(default_factory=list)
    error: str | None = None

    def phase(self, name: str) -> ScalePhase | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.phases)


# -- processes -----------------------------------------------------------------------------


@dataclass
class Worker:
    """A running ``zapa worker``."""

    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def worker(env: dict[str, str], workdir: Path, concurrency: int, name: str) -> Iterator[Worker]:
    """Start ``zapa worker``; stop it on exit (it drains within SHUTDOWN_GRACE_SECONDS)."""
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "worker", "--concurrency", str(concurrency)],
            cwd=workdir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Worker(process, log)
    finally:
        stop_process(process, 15)


@dataclass
class Cluster:
    """The web and worker processes of one topology."""

    webs: list[Service]
    workers: list[Worker]

    def named(self) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
        """Each process and its log, by name (``web-1``, ``worker-2``…)."""
        named = {f"web-{i}": (w.process, w.log) for i, w in enumerate(self.webs, 1)}
        return named | {f"worker-{i}": (w.process, w.log) for i, w in enumerate(self.workers, 1)}

    def check(self) -> None:
        """Raise :class:`ServiceFailed` if any process has exited."""
        for name, (process, log) in self.named().items():
            if process.poll() is not None:
                raise ServiceFailed(
                    f"{name} exited with status {process.returncode}:\n{log_tail(log)}"
                )

    def tails(self, lines: int = 10) -> str:
        """The end of every process's log."""
        return "\n".join(
            f"--- {name}\n{log_tail(log, lines)}" for name, (_, log) in self.named().items()
        )


@contextlib.contextmanager
def cluster(
    topology: Topology, env: dict[str, str], workdir: Path, args: argparse.Namespace
) -> Iterator[Cluster]:
    """Start the topology's processes; yield once every web serves and every worker reads."""
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(worker(env, workdir, args.worker_concurrency, f"worker-{i}"))
            for i in range(1, topology.workers + 1)
        ]
        webs = [
            stack.enter_context(service(env, workdir, ["--no-worker"], f"web-{i}"))
            for i in range(1, topology.webs + 1)
        ]
        running = Cluster(webs, workers)
        _wait_for_workers(running, args.redis_url, topology.workers)
        yield running


def _wait_for_workers(running: Cluster, redis_url: str, count: int) -> None:
    """Wait until ``count`` connections read the queue's stream in our Redis database.

    Not the consumer group's consumers: Redis 7.0 makes a consumer only once a read returns
    an entry, so idle workers are not listed there.
    """
    client = redis.Redis.from_url(redis_url)
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            running.check()
            reading = sum(
                1
                for c in client.client_list()
                if int(c.get("db", -1)) == db and c.get("cmd") == "xreadgroup"
            )
            if reading >= count:
                return
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{count} workers did not read the queue within {START_SECONDS:.0f} s:\n"
                    + running.tails()
                )
            time.sleep(0.2)
    finally:
        client.close()


def queue_stats(env: dict[str, str], workdir: Path, redis_url: str) -> dict[str, Any]:
    """``zapa queue stats --json``, plus how many queue waits its percentiles cover."""
    done = subprocess.run(
        [sys.executable, "-m", "bot", "queue", "stats", "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceFailed("zapa queue stats failed:\n" + done.stdout + done.stderr)
    stats: dict[str, Any] = json.loads(done.stdout)
    client = redis.Redis.from_url(redis_url)
    try:
        stats["wait_samples"] = int(client.llen(keys.QUEUE_WAITS))
    finally:
        client.close()
    return stats


def clear_queue_waits(redis_url: str) -> None:
    """Empty the list of recent queue waits, so the next stats are the next phase's own."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(keys.QUEUE_WAITS)
    finally:
        client.close()


# -- measuring -----------------------------------------------------------------------------


def _cpu_of_command(command: str) -> dict[int, float]:
    """CPU seconds of every process named ``command``, by pid.

    Children that exited count with their parent: Postgres starts a backend per connection,
    and one opened and closed during a phase would otherwise be missed.
    """
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if (entry / "comm").read_text().strip() == command:
                found[int(entry.name)] = proc_cpu_seconds(int(entry.name), reaped_children=True)
    return found


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds by process kind and pid, and the machine's busy and idle ticks."""

    at: float
    seconds: dict[str, dict[int, float]]
    machine: tuple[int, int]

    @classmethod
    def take(cls, own: dict[str, list[int]]) -> CpuSnapshot:
        seconds = {kind: {pid: proc_cpu_seconds(pid) for pid in pids} for kind, pids in own.items()}
        for kind, command in SERVERS.items():
            seconds[kind] = _cpu_of_command(command)
        return cls(time.perf_counter(), seconds, machine_busy_idle())

    def cores_since(self, before: CpuSnapshot, kind: str) -> list[float]:
        """Cores each process of ``kind`` used since ``before``.

        A process started meanwhile counts whole. One that ended meanwhile is counted whole
        in its parent's reaped children (for the servers), so what it had used before is
        taken off again.
        """
        elapsed = self.at - before.at
        earlier = before.seconds.get(kind, {})
        now = self.seconds.get(kind, {})
        used = [(seconds - earlier.get(pid, 0.0)) / elapsed for pid, seconds in now.items()]
        ended = sum(seconds for pid, seconds in earlier.items() if pid not in now)
        return used + ([-ended / elapsed] if ended else [])


def run_phase(
    running: Cluster, fake_pid: int, phase: ScalePhase, args: argparse.Namespace, tag: str
) -> ScalePhase:
    """Run one phase against every web process; fill in answers, latency and CPU."""
    own = {
        "web": [w.process.pid for w in running.webs],
        "worker": [w.process.pid for w in running.workers],
        "fake_model": [fake_pid],
    }
    try:
        outcomes, before, after = run_load(
            phase,
            [w.base_url for w in running.webs],
            args.load_workers,
            tag,
            lambda: CpuSnapshot.take(own),
        )
        running.webs[0].wait_idle()  # the queue is shared: one web's depth is everyone's
    except OSError as exc:  # a process vanished, or a web process stopped answering
        raise ServiceFailed(f"{type(exc).__name__}: {exc}\n{running.tails()}") from exc
    running.check()
    tally(phase, outcomes, args.model_latency, points=(50, 95, 99))
    elapsed = after.at - before.at
    busy = after.machine[0] - before.machine[0]
    idle = after.machine[1] - before.machine[1]
    phase.cpu = {
        kind: round(sum(after.cores_since(before, kind)), 2)
        for kind in ("web", "worker", "fake_model", *SERVERS)
    }
    phase.cpu["load_generator"] = round(sum(o.cpu_seconds for o in outcomes) / elapsed, 2)
    share = busy / (busy + idle) if busy + idle else 0.0
    # Whatever else kept the machine busy: the kernel, and other work on a shared machine.
    phase.cpu["other"] = round(max(0.0, share * (os.cpu_count() or 1) - sum(phase.cpu.values())), 2)
    phase.cpu["machine_busy_percent"] = round(100 * share, 1)
    phase.busiest_cpu = {
        kind: round(max(after.cores_since(before, kind), default=0.0), 2)
        for kind in ("web", "worker")
    }
    return phase


def run_topology(
    topology: Topology, args: argparse.Namespace, model_url: str, fake_pid: int
) -> Outcome:
    """Warm-up, capacity and half-capacity phases on fresh processes, database and Redis."""
    outcome = Outcome(topology)
    tag = f"scale-{topology.name}-{uuid.uuid4().hex[:8]}"
    print(f"\n{topology.label}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="zapa-scale-") as tmp,
        backend_env("postgres", args, model_url, Path(tmp)) as env,
        cluster(topology, env, Path(tmp), args) as running,
    ):
        warmup = ScalePhase("warmup", "closed", None, 16, args.warmup)
        top = ScalePhase("max", "closed", None, args.concurrency, args.duration)
        for phase in (warmup, top):
            outcome.phases.append(run_phase(running, fake_pid, phase, args, tag))
            _progress(phase)
        if not top.conversations_per_second:
            raise ServiceFailed("nothing was answered at full load:\n" + running.tails())
        half_rate = round(top.conversations_per_second / 2, 1)
        half = ScalePhase("half", "rate", half_rate, None, args.duration)
        clear_queue_waits(args.redis_url)
        outcome.phases.append(run_phase(running, fake_pid, half, args, tag))
        half.queue = queue_stats(env, Path(tmp), args.redis_url)
        _progress(half)
        if outcome.lost:
            print(f"  requests were lost; the processes' logs end with:\n{running.tails()}")
    return outcome


# -- reporting -----------------------------------------------------------------------------


def _progress(phase: ScalePhase) -> None:
    wait = ""
    if phase.queue:
        wait = (
            f", queue wait p50 {fmt(phase.queue.get('wait_p50_ms'), 2)} ms"
            f" p95 {fmt(phase.queue.get('wait_p95_ms'), 2)} ms"
        )
    print(
        f"  {phase.name:<6} {phase.conversations_per_second:7.1f} conv/s, {phase.sent} sent, "
        f"{phase.lost} lost, p50 {fmt(phase.latency_ms.get('p50'))} ms{wait}",
        flush=True,
    )


def print_tables(outcomes: list[Outcome]) -> None:
    """Throughput, latency and queue waits per topology; then CPU per process kind."""
    head = (
        f"{'topology':<20} {'max/s':>7} {'p50':>6} {'p95':>6} │ {'half/s':>6} {'ok/s':>6} "
        f"{'p50':>6} {'p95':>6} {'wait50':>7} {'wait95':>7} │ {'sent':>6} {'lost':>4}"
    )
    print("\n" + head + "\n" + "─" * len(head))
    for outcome in outcomes:
        top, half = outcome.phase("max"), outcome.phase("half")
        if outcome.error is not None or top is None or half is None:
            print(f"{outcome.topology.label:<20} FAILED")
            continue
        sent = sum(p.sent for p in outcome.phases)
        print(
            f"{outcome.topology.label:<20} {top.conversations_per_second:>7.1f} "
            f"{fmt(top.latency_ms.get('p50')):>6} {fmt(top.latency_ms.get('p95')):>6} │ "
            f"{fmt(half.offered_rate):>6} {half.conversations_per_second:>6.1f} "
            f"{fmt(half.latency_ms.get('p50')):>6} {fmt(half.latency_ms.get('p95')):>6} "
            f"{fmt(half.queue.get('wait_p50_ms'), 2):>7} "
            f"{fmt(half.queue.get('wait_p95_ms'), 2):>7} │ {sent:>6} {outcome.lost:>4}"
        )
    print(
        "(max = closed loop at --concurrency connections; half = open loop at half of max/s; "
        "latency and queue waits in ms; lost over all phases)"
    )
    kinds = ("web", "worker", "fake_model", "load_generator", *SERVERS, "other")
    short = {"fake_model": "fake", "load_generator": "loadgen"}
    head = (
        f"{'topology':<20} {'phase':<5} "
        + " ".join(f"{short.get(kind, kind):>8}" for kind in kinds)
        + f" {'busiest':>8} {'machine':>8}"
    )
    print("\n" + head + "\n" + "─" * len(head))
    for outcome in outcomes:
        for phase in outcome.phases:
            if phase.name == "warmup":
                continue
            print(
                f"{outcome.topology.label:<20} {phase.name:<5} "
                + " ".join(f"{phase.cpu[kind]:>8.2f}" for kind in kinds)
                + f" {phase.busiest_cpu['worker']:>8.2f} {phase.cpu['machine_busy_percent']:>7.1f}%"
            )
    print(
        f"(CPU in cores of {os.cpu_count()}; web and worker summed over their processes; "
        "busiest = the busiest single worker; other = the rest of the busy time; "
        "machine = all CPUs)"
    )


def verdict(outcomes: list[Outcome]) -> dict[str, Any]:
    """The budget per topology: capacity, median queue wait at half of it, nothing lost."""
    base: float | None = None
    judged: dict[str, Any] = {}
    for outcome in outcomes:
        top, half = outcome.phase("max"), outcome.phase("half")
        if outcome.error is not None or top is None or half is None:
            judged[outcome.topology.name] = {"failed": True}
            continue
        wait = half.queue.get("wait_p50_ms")
        base = base or top.conversations_per_second
        judged[outcome.topology.name] = {
            "failed": False,
            "conversations_per_second": top.conversations_per_second,
            "times_first": round(top.conversations_per_second / base, 2),
            "queue_wait_p50_ms": wait,
            "queue_wait_p50_under_10ms": wait is not None and wait < QUEUE_WAIT_BUDGET_MS,
            "lost": outcome.lost,
        }
    return judged


def print_verdict(judged: dict[str, Any], outcomes: list[Outcome]) -> None:
    ran = {name: v for name, v in judged.items() if not v["failed"]}
    throughput = ", ".join(
        f"{name} {v['conversations_per_second']:.1f}/s ({v['times_first']:.2f}x)"
        for name, v in ran.items()
    )
    print(f"\nthroughput at most: {throughput or '-'}")
    waits = ", ".join(
        f"{name} {'yes' if v['queue_wait_p50_under_10ms'] else 'no'} "
        f"({fmt(v['queue_wait_p50_ms'], 2)} ms)"
        for name, v in ran.items()
    )
    print(f"queue wait p50 at half capacity < 10 ms: {waits or '-'}")
    lost = sum(outcome.lost for outcome in outcomes)
    failed = [name for name, v in judged.items() if v["failed"]]
    print(f"lost: {lost}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))


# -- command line --------------------------------------------------------------------------


def _topologies(text: str) -> list[Topology]:
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TOPOLOGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(TOPOLOGIES)}, e.g. A,C")
    return [TOPOLOGIES[name] for name in dict.fromkeys(names)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("python -m bench.scale", __doc__, EPILOG)
    parser.add_argument(
        "--topologies",
        type=_topologies,
        default=list(TOPOLOGIES.values()),
        help="which to run, comma-separated (default: A,B,C)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of the max and half phases (10)"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up (3)")
    parser.add_argument(
        "--concurrency", type=int, default=128, help="connections of the max phase (128)"
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=100,
        help="conversations each zapa worker answers at once (100)",
    )
    parser.add_argument("--load-workers", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument(
        "--model-latency",
        type=float,
        default=0.1,
        help="seconds the fake model waits before answering (0.1)",
    )
    parser.add_argument(
        "--postgres-url",
        "--database-url",
        dest="postgres_url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="Postgres server on which a throwaway database is created and dropped for each "
        "topology (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="Redis database shared by the processes; it is FLUSHED before each topology "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--server-env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for web and worker processes (repeatable)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where scale-<timestamp>.json is written (default: bench/results)",
    )
    args = parser.parse_args(argv)
    args.server_env = dict(args.server_env)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a process failed or any request was lost."""
    args = parse_args(argv)
    print(
        f"zapa scale-out benchmark: model latency {args.model_latency * 1000:.0f} ms, "
        f"topologies {','.join(t.name for t in args.topologies)}, warm-up {args.warmup:.0f} s, "
        f"max and half phases {args.duration:.0f} s each, {args.concurrency} connections at "
        f"most, worker concurrency {args.worker_concurrency}, {args.load_workers} load "
        f"processes, {os.cpu_count()} CPUs"
    )
    outcomes: list[Outcome] = []
    with fake_model(args.model_latency) as (model_url, fake_pid):
        for topology in args.topologies:
            try:
                outcomes.append(run_topology(topology, args, model_url, fake_pid))
            except ServiceFailed as exc:
                print(f"  FAILED: {exc}", file=sys.stderr)
                outcomes.append(Outcome(topology, error=str(exc)))
    print_tables(outcomes)
    judged = verdict(outcomes)
    print_verdict(judged, outcomes)
    _write(args, outcomes, judged)
    failed = any(o.error is not None or o.lost for o in outcomes)
    return 1 if failed else 0


def _write(args: argparse.Namespace, outcomes: list[Outcome], judged: dict[str, Any]) -> None:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = {
        "benchmark": "scale-out",
        "backend": "postgres",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "model_latency_s": args.model_latency,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "worker_concurrency": args.worker_concurrency,
            "load_workers": args.load_workers,
            "server_env": args.server_env,
        },
        "topologies": [
            {
                "name": o.topology.name,
                "webs": o.topology.webs,
                "workers": o.topology.workers,
                "error": o.error,
                "phases": [asdict(phase) for phase in o.phases],
            }
            for o in outcomes
        ],
        "budgets": judged,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    raise SystemExit(main())
