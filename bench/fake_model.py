"""The fake OpenAI server in a process of its own, so it takes no CPU from the service.

Run as ``python -m bench.fake_model --latency 0.1``: prints its base URL on one line, then
serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from tests.fake_openai import FakeOpenAI


async def serve(latency: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with FakeOpenAI(latency=latency) as fake:
        print(fake.base_url, flush=True)
        while not stop.is_set():
            # The fake records every request for tests' asserts; a benchmark never reads
            # them, so drop them to keep its memory flat over thousands of requests.
            fake.requests.clear()
            fake.request_headers.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI API on a free port.")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each answer")
    asyncio.run(serve(parser.parse_args().latency))


if __name__ == "__main__":
    main()
