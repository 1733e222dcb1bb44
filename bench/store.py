"""Microbenchmark of the conversation store: the six calls of one turn, one at a time.

A turn of the engine calls the store six times: ``store_inbound``, ``reply_for``,
``get_message``, ``history``, ``save_reply`` and ``mark_delivered``. This runs such turns
back to back on one event loop, on a new conversation each, and prints the CPU time
(``time.process_time``: every thread of the process, so a driver's worker thread counts)
and the wall time of each call and of the whole turn. The turns are measured in rounds,
and the round that used the least CPU is reported, as ``timeit`` does: on a shared
machine the others mostly measure the neighbours.

By default it measures a SQLite file in a temporary directory and a throwaway PostgreSQL
database created on ``--postgres-url`` and dropped afterwards. ``--database-url`` measures
that one database instead; it is migrated first, and the benchmark's rows stay in it.

    python -m bench.store
    python -m bench.store --database-url postgresql://postgres@127.0.0.1:5432/zapa
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from bot.messages import InboundMessage, MessageStatus
from bot.ports import NewReply
from storage.db import open_database
from storage.migrate import upgrade_head
from storage.repository import SqlConversationStore

CALLS = ("store_inbound", "reply_for", "get_message", "history", "save_reply", "mark_delivered")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

_T = TypeVar("_T")


class Timings:
    """CPU and wall seconds spent in each store call, summed over the measured turns."""

    def __init__(self) -> None:
        self.cpu = dict.fromkeys(CALLS, 0.0)
        self.wall = dict.fromkeys(CALLS, 0.0)

    async def time(self, name: str, call: Callable[[], Awaitable[_T]]) -> _T:
        cpu, wall = time.process_time(), time.perf_counter()
        result = await call()
        self.cpu[name] += time.process_time() - cpu
        self.wall[name] += time.perf_counter() - wall
        return result


async def one_turn(store: SqlConversationStore, timings: Timings, n: int) -> None:
    """The store calls of one engine turn on a new conversation, as the engine makes them."""
    message = InboundMessage(
        platform="webhook",
        conversation_key=uuid.uuid4().hex,
        user_id=f"user-{n % 50}",
        text=f"question {n}",
        event_id=uuid.uuid4().hex,
    )
    stored = await timings.time(
        "store_inbound",
        lambda: store.store_inbound(message, MessageStatus.RECEIVED, dedup_seconds=86400),
    )
    await timings.time("reply_for", lambda: store.reply_for(stored.id))
    loaded = await timings.time("get_message", lambda: store.get_message(stored.id))
    assert loaded is not None
    await timings.time("history", lambda: store.history(loaded, 200))
    reply = await timings.time(
        "save_reply",
        lambda: store.save_reply(loaded, NewReply(f"answer {n}", MessageStatus.ANSWERED, "echo")),
    )
    await timings.time("mark_delivered", lambda: store.mark_delivered(reply.id))


async def measure(url: str, pool_size: int, warmup: int, turns: int, rounds: int) -> Timings:
    """Run ``warmup`` unmeasured turns, then ``rounds`` rounds of ``turns``; the best round."""
    database = open_database(url, pool_size)
    try:
        store = SqlConversationStore(database)
        numbers = itertools.count()
        for _ in range(warmup):
            await one_turn(store, Timings(), next(numbers))
        best: Timings | None = None
        for _ in range(rounds):
            gc.collect()
            timings = Timings()
            for _ in range(turns):
                await one_turn(store, timings, next(numbers))
            if best is None or sum(timings.cpu.values()) < sum(best.cpu.values()):
                best = timings
        assert best is not None
        return best
    finally:
        await database.dispose()


def report(label: str, timings: Timings, turns: int, rounds: int) -> None:
    print(f"\n{label}: best of {rounds} rounds of {turns} turns, ms per call")
    print(f"  {'call':<16}{'cpu':>8}{'wall':>8}")
    for name in CALLS:
        cpu, wall = timings.cpu[name] / turns * 1000, timings.wall[name] / turns * 1000
        print(f"  {name:<16}{cpu:8.3f}{wall:8.3f}")
    cpu_turn = sum(timings.cpu.values()) / turns * 1000
    wall_turn = sum(timings.wall.values()) / turns * 1000
    print(f"  {'turn':<16}{cpu_turn:8.3f}{wall_turn:8.3f}")
    print(f"  {'mean per call':<16}{cpu_turn / len(CALLS):8.3f}{wall_turn / len(CALLS):8.3f}")


@contextlib.contextmanager
def throwaway_postgres(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``server_url``, dropped on exit."""
    name = f"zapa_bench_{uuid.uuid4().hex[:12]}"
    admin = make_url(server_url).set(drivername="postgresql")

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(admin.render_as_string(hide_password=False))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def bench(label: str, url: str, args: argparse.Namespace) -> None:
    upgrade_head(url)
    timings = asyncio.run(measure(url, args.pool_size, args.warmup, args.turns, args.rounds))
    report(label, timings, args.turns, args.rounds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store",
        description="CPU and wall time of the conversation store's calls in one turn.",
    )
    parser.add_argument(
        "--database-url",
        help="measure this database only (migrated first; the rows stay); "
        "default: a temporary SQLite file and a throwaway Postgres database",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="server for the throwaway Postgres database (default: %(default)s)",
    )
    parser.add_argument("--turns", type=int, default=300, help="turns per round (300)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured turns first (200)")
    parser.add_argument("--pool-size", type=int, default=10, help="connection pool size (10)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.database_url:
        bench(make_url(args.database_url).get_backend_name(), args.database_url, args)
        return 0
    with tempfile.TemporaryDirectory(prefix="zapa-bench-store-") as directory:
        bench("sqlite file", f"sqlite:///{Path(directory) / 'zapa.db'}", args)
    with throwaway_postgres(args.postgres_url) as url:
        bench("postgres", url, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
