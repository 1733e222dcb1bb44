"""The memory check: RSS of ``zapa serve`` idle, and after rounds of distinct conversations.

For each backend (the SQLite default, then Postgres + Redis) it starts the fake model and
``zapa serve``, reads the service's resident memory once it idles, then runs rounds of
``--conversations`` new conversations (one message each, through the synchronous generic
webhook) and reads it again after each. Memory that keeps growing from one round to the
next is a leak: every round does the same work on new users and conversations. Some growth
over the first rounds is by design — the rate limiter remembers each user for its longest
window (a minute in this run), and SQLite keeps a page cache — so the verdict compares the
last round with the one before, after those have filled.

``python -m bench.memory [--quick]``; JSON goes to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.generic import TOKEN, ServiceFailed, backend_env, fake_model, service

ROUND_CONCURRENCY = 64
RSS_BUDGET_MB = 150.0
GROWTH_BUDGET_MB = 5.0


def rss_mb(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ServiceFailed(f"no VmRSS for pid {pid}")


async def converse(base_url: str, first: int, count: int) -> int:
    """``count`` new conversations of one message each; how many were answered (200)."""
    answered = 0
    numbers = iter(range(first, first + count))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=ROUND_CONCURRENCY)
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers) as session:

        async def one_by_one() -> None:
            nonlocal answered
            for n in numbers:
                body = {
                    "conversation_id": f"memory-{n}",
                    "user_id": f"user-{n}",
                    "user_name": f"User {n}",
                    "text": f"message number {n}, to a conversation of its own",
                }
                async with session.post("/webhooks/generic", json=body) as response:
                    await response.read()
                    answered += response.status == 200

        await asyncio.gather(*(one_by_one() for _ in range(ROUND_CONCURRENCY)))
    return answered


def settle(pid: int, seconds: float = 2.0) -> float:
    """RSS after the service has had a moment to finish and free what a round left."""
    time.sleep(seconds)
    return rss_mb(pid)


def run_backend(backend: str, args: argparse.Namespace, model_url: str) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="zapa-memory-") as folder,
        backend_env(backend, args, model_url, Path(folder)) as env,
        service(env, Path(folder)) as running,
    ):
        pid = running.process.pid
        # One small round first, so what every process allocates once (pools, caches,
        # compiled statements) is in the idle figure rather than in round one's growth.
        asyncio.run(converse(running.base_url, 10**9, 200))
        running.wait_idle()
        idle = settle(pid)
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            started = time.monotonic()
            first = number * args.conversations
            answered = asyncio.run(converse(running.base_url, first, args.conversations))
            running.wait_idle()
            seconds = time.monotonic() - started
            after = settle(pid)
            rounds.append(
                {
                    "conversations": args.conversations,
                    "answered": answered,
                    "seconds": round(seconds, 1),
                    "rss_mb": round(after, 1),
                }
            )
            print(
                f"  {backend}: round {number + 1}: {answered}/{args.conversations} answered"
                f" in {seconds:.0f} s, RSS {after:.1f} MB",
                flush=True,
            )
    # Steady state: the last round against the one before. The first rounds fill what is
    # meant to fill (the rate limiter remembers each user for its longest window, SQLite's
    # page cache), so they grow until that is full.
    growth = rounds[-1]["rss_mb"] - rounds[-2]["rss_mb"] if len(rounds) > 1 else 0.0
    return {
        "backend": backend,
        "idle_rss_mb": round(idle, 1),
        "rounds": rounds,
        "growth_between_rounds_mb": round(growth, 1),
    }


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's budgets: under 150 MB after the rounds, flat from one round to the next."""
    return {
        r["backend"]: {
            "rss_under_150_mb": max(x["rss_mb"] for x in r["rounds"]) < RSS_BUDGET_MB,
            "flat_across_rounds": r["growth_between_rounds_mb"] < GROWTH_BUDGET_MB,
            "all_answered": all(x["answered"] == x["conversations"] for x in r["rounds"]),
        }
        for r in results
    }


def print_table(results: list[dict[str, Any]], judged: dict[str, Any]) -> None:
    print()
    header = "| backend | idle RSS | " + " | ".join(
        f"after round {n + 1}" for n in range(len(results[0]["rounds"]))
    )
    print(header + " | growth in the last round | budgets met |")
    print("|" + "---|" * (header.count("|") + 2))
    for r in results:
        after = " | ".join(f"{x['rss_mb']:.1f} MB" for x in r["rounds"])
        met = "yes" if all(judged[r["backend"]].values()) else "no"
        print(
            f"| {r['backend']} | {r['idle_rss_mb']:.1f} MB | {after} |"
            f" {r['growth_between_rounds_mb']:+.1f} MB | {met} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description="RSS of zapa serve idle and after rounds of distinct conversations.",
    )
    parser.add_argument("--conversations", type=int, default=10_000, help="per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="the fake model's, seconds")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--quick", action="store_true", help="2,000 conversations per round")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/…)")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations = 2_000
    args.server_env = {}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with fake_model(args.latency) as (model_url, _):
        for backend in args.backends.split(","):
            print(f"{backend}: {args.rounds} rounds of {args.conversations} conversations")
            try:
                results.append(run_backend(backend.strip(), args, model_url))
            except ServiceFailed as exc:
                print(f"{backend}: {exc}", file=sys.stderr)
                return 1
    judged = verdict(results)
    print_table(results, judged)
    out = args.out or Path(__file__).parent / "results" / f"memory-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine()}
    report = {"machine": machine, "results": results, "verdict": judged}
    out.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {out}")
    return 0 if all(all(v.values()) for v in judged.values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
