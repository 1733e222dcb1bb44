"""The rate limiter against process memory and the real Redis."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from bot import keys
from bot.errors import DependencyUnavailable
from bot.ratelimit import LimitsRateLimiter, build_rate_limiter
from config.settings import load_settings

MakeLimiter = Callable[[str], LimitsRateLimiter]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[MakeLimiter]:
    """Builds limiters for a ``RATE_LIMIT`` value, the way the app does, on each backend."""
    limiters: list[LimitsRateLimiter] = []
    clients: list[aioredis.Redis] = []

    def make(rate_limit: str) -> LimitsRateLimiter:
        if request.param == "memory":
            limiter = build_rate_limiter(load_settings(rate_limit=rate_limit, redis_url=None), None)
        else:
            client = aioredis.Redis.from_url(redis_url)
            clients.append(client)
            settings = load_settings(rate_limit=rate_limit, redis_url=redis_url)
            limiter = build_rate_limiter(settings, client)
        limiters.append(limiter)
        return limiter

    yield make
    for limiter in limiters:
        await limiter.aclose()
    for client in clients:
        await client.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_messages_over_the_limit_are_refused_with_the_wait(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("3/minute;5/day")

    decisions = [await limiter.hit("telegram:1") for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert 0 < decisions[3].retry_after <= 60


async def test_over_limit_user_is_notified_once_per_window(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("3/minute;5/day")
    for _ in range(3):
        await limiter.hit("telegram:1")

    refusals = [await limiter.hit("telegram:1") for _ in range(3)]

    assert [r.allowed for r in refusals] == [False, False, False]
    assert [r.notify for r in refusals] == [True, False, False]


async def test_refused_messages_use_no_quota_of_other_windows(make_limiter: MakeLimiter) -> None:
    # The longer window comes first, so counting it before testing the minute would show.
    limiter = make_limiter("5/day;2/minute")
    for _ in range(6):
        await limiter.hit("slack:U1")

    day, minute = await limiter.usage("slack:U1")

    assert (minute.period, minute.remaining) == ("minute", 0)
    assert (day.period, day.remaining) == ("day", 3)


async def test_users_are_limited_independently(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("1/minute")

    first = await limiter.hit("telegram:1")
    same_user = await limiter.hit("telegram:1")
    other_user = await limiter.hit("telegram:2")

    assert (first.allowed, same_user.allowed, other_user.allowed) == (True, False, True)


async def test_simultaneous_messages_never_exceed_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("2/minute;10/day")

    decisions = await asyncio.gather(*(limiter.hit("telegram:1") for _ in range(10)))

    assert sum(d.allowed for d in decisions) == 2
    assert sum(d.notify for d in decisions) == 1
    minute, _ = await limiter.usage("telegram:1")
    assert minute.remaining == 0


async def test_usage_shows_remaining_quota_without_counting(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("3/minute;5/day")

    fresh = await limiter.usage("web:u-7")
    await limiter.hit("web:u-7")
    await limiter.hit("web:u-7")
    after_two = await limiter.usage("web:u-7")
    again = await limiter.usage("web:u-7")

    assert [(u.limit, u.period, u.remaining, u.reset_in) for u in fresh] == [
        (3, "minute", 3, 0.0),
        (5, "day", 5, 0.0),
    ]
    assert [(u.limit, u.remaining) for u in after_two] == [(3, 1), (5, 3)]
    assert 58 < after_two[0].reset_in <= 60
    assert 86_398 < after_two[1].reset_in <= 86_400
    assert [u.remaining for u in again] == [1, 3]


async def test_quota_frees_up_when_the_window_has_passed(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("2/second")
    await limiter.hit("telegram:1")
    await limiter.hit("telegram:1")
    refused = await limiter.hit("telegram:1")
    assert not refused.allowed
    assert 0 < refused.retry_after <= 1

    await asyncio.sleep(refused.retry_after + 0.05)

    assert (await limiter.hit("telegram:1")).allowed


async def test_user_is_notified_again_in_the_next_window_period(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("1/second")
    await limiter.hit("telegram:1")
    first = await limiter.hit("telegram:1")
    await asyncio.sleep(first.retry_after + 0.05)
    assert (await limiter.hit("telegram:1")).allowed

    refused_again = await limiter.hit("telegram:1")

    assert first.notify
    assert not refused_again.allowed
    assert refused_again.notify


async def test_reaching_a_longer_window_is_notified_with_its_longer_wait(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter("2/second;3/minute")
    await limiter.hit("telegram:1")
    await limiter.hit("telegram:1")
    per_second = await limiter.hit("telegram:1")
    await asyncio.sleep(per_second.retry_after + 0.05)
    assert (await limiter.hit("telegram:1")).allowed

    per_minute = await limiter.hit("telegram:1")

    assert per_second.notify and per_second.retry_after <= 1
    assert not per_minute.allowed
    assert per_minute.notify
    assert 55 < per_minute.retry_after <= 60


async def test_ping_succeeds_while_the_storage_is_reachable(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter("3/minute")

    await limiter.ping()

    assert (await limiter.hit("telegram:1")).allowed


def test_unknown_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="week"):
        LimitsRateLimiter.in_memory([(3, "week")])


async def test_limiters_sharing_a_redis_share_counts(redis_url: str) -> None:
    settings = load_settings(rate_limit="3/minute", redis_url=redis_url)
    # Two processes: each opens its own connection to the same Redis.
    first = build_rate_limiter(settings, None)
    second = build_rate_limiter(settings, None)
    try:
        assert (await first.hit("telegram:1")).allowed
        assert (await second.hit("telegram:1")).allowed
        assert (await first.hit("telegram:1")).allowed
        refused = await second.hit("telegram:1")
        usage = await first.usage("telegram:1")
    finally:
        await first.aclose()
        await second.aclose()

    assert not refused.allowed
    assert refused.notify
    assert [u.remaining for u in usage] == [0]


async def test_limiter_uses_the_apps_redis_connections(redis_url: str) -> None:
    app_redis = aioredis.Redis.from_url(redis_url, client_name="zapa-app")
    observer = aioredis.Redis.from_url(redis_url, client_name="observer")
    limiter = build_rate_limiter(load_settings(rate_limit="3/minute"), app_redis)
    try:
        await limiter.ping()
        await limiter.hit("telegram:1")
        await limiter.usage("telegram:1")
        # Connections closed by earlier tests may linger in the list for a moment.
        for _ in range(20):
            clients = await observer.client_list()
            if {c["name"] for c in clients} <= {"zapa-app", "observer"}:
                break
            await asyncio.sleep(0.05)
    finally:
        await limiter.aclose()
        await app_redis.aclose()
        await observer.aclose()

    names = sorted(c["name"] for c in clients if c["name"] != "observer")
    assert names and set(names) == {"zapa-app"}


async def test_keys_live_under_the_rate_limit_prefix(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    limiter = build_rate_limiter(load_settings(rate_limit="1/minute"), client)
    try:
        await limiter.hit("telegram:1")
        await limiter.hit("telegram:1")
        stored = [key async for key in client.scan_iter()]
    finally:
        await limiter.aclose()
        await client.aclose()

    assert len(stored) == 2  # the message log and the notice
    assert all(key.startswith(f"{keys.RATE_LIMIT}:") for key in stored)


async def test_unreachable_redis_is_reported_at_once() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    limiter = build_rate_limiter(load_settings(rate_limit="3/minute", redis_url=url), None)
    started = time.monotonic()
    try:
        for call in (
            lambda: limiter.hit("telegram:1"),
            lambda: limiter.usage("telegram:1"),
            limiter.ping,
        ):
            with pytest.raises(DependencyUnavailable) as raised:
                await call()
            assert raised.value.dependency == "redis"
    finally:
        await limiter.aclose()

    assert time.monotonic() - started < 3


async def test_redis_that_does_not_answer_times_out() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # The app's client sets no socket timeout: the limiter must bound the wait itself.
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    limiter = LimitsRateLimiter.on_redis([(3, "minute")], client, owns_redis=True, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(DependencyUnavailable, match=r"no answer within 0\.3 seconds"):
            await limiter.hit("telegram:1")
        with pytest.raises(DependencyUnavailable):
            await limiter.ping()
    finally:
        await limiter.aclose()
        server.close()
        await server.wait_closed()

    assert time.monotonic() - started < 2


async def test_memory_limiter_forgets_users_whose_windows_have_passed() -> None:
    from bot.ratelimit import _SweptMemoryStorage

    storage = _SweptMemoryStorage()
    storage.SWEEP_SECONDS = 0.0
    limiter = LimitsRateLimiter([(2, "second")], storage)
    for user in ("a", "b", "c"):
        assert (await limiter.hit(user)).allowed
    assert {key.split("/")[1] for key in storage.events} == {"a", "b", "c"}
    assert not storage.locks  # no lock kept per user: one serves them all
    await asyncio.sleep(1.1)
    assert (await limiter.hit("d")).allowed  # a hit sweeps what expired meanwhile
    users = {key.split("/")[1] for key in storage.events}
    assert users == {"d"}
