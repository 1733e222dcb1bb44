"""Per-user message limits over the ``RATE_LIMIT`` windows, on the ``limits`` library.

With ``REDIS_URL`` the counts live in Redis, so every web process and worker shares them;
without it they live in this process's memory (one process only).

The strategy is the moving window: each window keeps the timestamps of the user's last N
messages and a message is allowed while fewer than N fall within the period. A fixed window
would be cheaper (one counter) but lets a user send 2N messages around a window boundary and
then locks them out for a whole period; the moving window frees one slot at a time, exactly
when the oldest counted message ages out, which is also what ``retry_after`` reports. The
price is a list of at most N timestamps per user and window.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import redis.asyncio as aioredis
import structlog
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerSecond,
)
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from bot import keys
from bot.errors import DependencyUnavailable
from bot.ports import RateDecision, WindowUsage
from config.settings import Settings, parse_rate_limit

logger = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 2.0
"""Seconds one limiter call may wait for Redis before the message is turned away with 503."""

# A refusal always asks for some wait, even when a slot frees while we answer.
_MIN_RETRY_AFTER: Final = 0.01

_ITEMS: Final[dict[str, type[RateLimitItem]]] = {
    "second": RateLimitItemPerSecond,
    "minute": RateLimitItemPerMinute,
    "hour": RateLimitItemPerHour,
    "day": RateLimitItemPerDay,
}


@dataclass(frozen=True, slots=True)
class _Window:
    limit: int
    period: str
    messages: RateLimitItem
    notices: RateLimitItem

    @classmethod
    def of(cls, limit: int, period: str) -> _Window:
        item = _ITEMS[period]
        return cls(
            limit=limit,
            period=period,
            messages=item(limit, namespace=keys.RATE_LIMIT_HITS),
            # One notice per period: the first refusal takes the only slot.
            notices=item(1, namespace=keys.RATE_LIMIT_NOTICES),
        )


class LimitsRateLimiter:
    """The :class:`bot.ports.RateLimiter` port on ``limits``' moving-window strategy.

    Build it with :meth:`in_memory`, :meth:`on_redis` or :func:`build_rate_limiter`.
    Every window is tested before any is counted, so a refused message uses no quota.
    Redis failures and timeouts surface as :class:`bot.errors.DependencyUnavailable`.
    """

    def __init__(
        self,
        windows: Sequence[tuple[int, str]],
        storage: Storage,
        *,
        redis: aioredis.Redis | None = None,
        owns_redis: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        unknown = {period for _, period in windows} - _ITEMS.keys()
        if unknown:
            raise ValueError(f"unknown rate-limit periods: {sorted(unknown)}")
        self._windows = tuple(_Window.of(limit, period) for limit, period in windows)
        self._strategy = MovingWindowRateLimiter(storage)
        self._redis = redis
        self._owns_redis = owns_redis
        self._timeout = timeout

    @classmethod
    def in_memory(cls, windows: Sequence[tuple[int, str]]) -> LimitsRateLimiter:
        """A limiter counting in this process's memory (one process only)."""
        return cls(windows, _SweptMemoryStorage())

    @classmethod
    def on_redis(
        cls,
        windows: Sequence[tuple[int, str]],
        redis: aioredis.Redis,
        *,
        owns_redis: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> LimitsRateLimiter:
        """A limiter counting in Redis through ``redis``'s connection pool.

        Args:
            windows: ``(limit, period)`` pairs, as :attr:`config.settings.Settings.rate_limits`.
            redis: the app's client; the limiter borrows its pool rather than opening its own.
            owns_redis: close ``redis`` (and its pool) in :meth:`aclose`.
            timeout: seconds a call may wait for Redis.
        """
        storage = RedisStorage(
            # The URL is not used to connect when a pool is given (and limits' URL parser
            # rejects some URLs redis-py accepts, such as one without a port).
            "async+redis://",
            implementation="redispy",
            key_prefix=keys.RATE_LIMIT,
            # limits documents ``connection_pool`` but annotates options as scalars only.
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        )
        return cls(windows, storage, redis=redis, owns_redis=owns_redis, timeout=timeout)

    async def hit(self, key: str, windows: str | None = None) -> RateDecision:
        """Count one message for ``key`` unless a window is exhausted.

        A refusal's ``retry_after`` is the time until every exhausted window frees a slot;
        ``notify`` is true for the first refusal in that window's period only. ``windows``
        (``RATE_LIMIT`` syntax) replaces the limiter's own windows for this key; each
        window counts apart, so changing a user's limit starts their count afresh.

        Raises:
            bot.errors.DependencyUnavailable: Redis cannot be reached in time.
            ValueError: ``windows`` is not ``N/second|minute|hour|day;…``.
        """
        return await self._guarded(self._hit(key, self._for(windows)))

    async def usage(self, key: str, windows: str | None = None) -> list[WindowUsage]:
        """The user's remaining quota in each window, without counting a message.

        ``reset_in`` is the time until the oldest counted message leaves the window (and
        a slot frees), 0 when the window counts none.

        Raises:
            bot.errors.DependencyUnavailable: Redis cannot be reached in time.
            ValueError: ``windows`` is not ``N/second|minute|hour|day;…``.
        """
        return await self._guarded(self._usage(key, self._for(windows)))

    async def ping(self) -> None:
        """Raise :class:`bot.errors.DependencyUnavailable` when Redis does not answer."""
        if self._redis is not None:
            await self._guarded(self._redis.ping())

    async def aclose(self) -> None:
        """Close the Redis client if the limiter owns it; a borrowed one stays open."""
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()

    def _for(self, windows: str | None) -> tuple[_Window, ...]:
        return self._windows if windows is None else _parsed(windows)

    async def _hit(self, key: str, windows: tuple[_Window, ...]) -> RateDecision:
        if len(windows) == 1:
            # One window: its hit is its own test (it counts only under the limit).
            if await self._strategy.hit(windows[0].messages, key):
                return RateDecision(allowed=True)
            only = await self._strategy.get_window_stats(windows[0].messages, key)
            return await self._refused(key, [(windows[0], only.reset_time)])
        # The windows are asked at once, not one after another: on Redis each question is a
        # round trip, and a turn's latency should not grow with the number of windows.
        stats = await _each(
            [self._strategy.get_window_stats(window.messages, key) for window in windows]
        )
        exhausted = [
            (w, s.reset_time) for w, s in zip(windows, stats, strict=True) if s.remaining <= 0
        ]
        if not exhausted:
            taken = await _each([self._strategy.hit(window.messages, key) for window in windows])
            if all(taken):
                return RateDecision(allowed=True)
            # Another message of the same user took the last slot since the test above.
            # Windows that counted this one keep that count: rare, and it errs on the side
            # of the limit.
            lost = [w for w, ok in zip(windows, taken, strict=True) if not ok]
            stats = await _each(
                [self._strategy.get_window_stats(window.messages, key) for window in lost]
            )
            exhausted = [(w, s.reset_time) for w, s in zip(lost, stats, strict=True)]
        return await self._refused(key, exhausted)

    async def _refused(self, key: str, exhausted: list[tuple[_Window, float]]) -> RateDecision:
        window, reset_at = max(exhausted, key=lambda pair: pair[1])
        retry_after = min(max(reset_at - time.time(), _MIN_RETRY_AFTER), _seconds(window))
        notify = await self._strategy.hit(window.notices, key)
        logger.debug(
            "rate_limited",
            key=key,
            window=f"{window.limit}/{window.period}",
            retry_after=round(retry_after, 3),
            notify=notify,
        )
        return RateDecision(allowed=False, retry_after=retry_after, notify=notify)

    async def _usage(self, key: str, windows: tuple[_Window, ...]) -> list[WindowUsage]:
        result: list[WindowUsage] = []
        for window in windows:
            stats = await self._strategy.get_window_stats(window.messages, key)
            remaining = min(max(stats.remaining, 0), window.limit)
            reset_in = 0.0
            if remaining < window.limit:
                reset_in = min(max(stats.reset_time - time.time(), 0.0), _seconds(window))
            result.append(WindowUsage(window.limit, window.period, remaining, reset_in))
        return result

    async def _guarded(self, operation: Awaitable[T]) -> T:
        if self._redis is None:  # counted in memory: nothing to wait for or lose
            return await operation
        try:
            async with asyncio.timeout(self._timeout):
                return await operation
        except TimeoutError as exc:
            logger.warning("redis_timeout", timeout=self._timeout)
            raise DependencyUnavailable(
                "redis", f"no answer within {self._timeout:g} seconds"
            ) from exc
        except (RedisError, OSError) as exc:
            logger.warning("redis_unavailable", error=str(exc))
            raise DependencyUnavailable("redis", str(exc) or type(exc).__name__) from exc


async def _each(questions: list[Awaitable[T]]) -> list[T]:
    """The answers to ``questions``, asked at once; one (the usual case) needs no task."""
    if len(questions) == 1:
        return [await questions[0]]
    return list(await asyncio.gather(*questions))


@functools.lru_cache(maxsize=256)
def _parsed(windows: str) -> tuple[_Window, ...]:
    return tuple(_Window.of(limit, period) for limit, period in parse_rate_limit(windows))


def _seconds(window: _Window) -> float:
    return float(window.messages.get_expiry())


def build_rate_limiter(settings: Settings, redis: aioredis.Redis | None) -> LimitsRateLimiter:
    """The rate limiter for these settings.

    Args:
        settings: ``RATE_LIMIT`` gives the windows, ``REDIS_URL`` whether to use Redis.
        redis: the app's Redis client, whose connection pool the limiter shares. When it
            is ``None`` but ``REDIS_URL`` is set, the limiter opens (and owns) its own
            client; close it with :meth:`LimitsRateLimiter.aclose`.

    Returns:
        A limiter on Redis when ``redis`` or ``REDIS_URL`` is given, else in memory.
    """
    if redis is not None:
        return LimitsRateLimiter.on_redis(settings.rate_limits, redis)
    if settings.redis_url is not None:
        client = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=DEFAULT_TIMEOUT,
            socket_connect_timeout=DEFAULT_TIMEOUT,
        )
        return LimitsRateLimiter.on_redis(settings.rate_limits, client, owns_redis=True)
    return LimitsRateLimiter.in_memory(settings.rate_limits)


class _OneLock(defaultdict[str, asyncio.Lock]):
    """One lock for every key, instead of ``limits``' lock per key (per user).

    The storage's critical sections never await (the sweep below replaces the library's
    one that did), so on one event loop no two of them can overlap and the lock is never
    waited for; a lock per user only cost memory and the garbage collector's time.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = asyncio.Lock()

    def __missing__(self, key: str) -> asyncio.Lock:
        return self._lock


class _SweptMemoryStorage(MemoryStorage):
    """``limits``' memory storage, sweeping expired entries every few seconds.

    The library starts a sweep after every hit unless one is running, and hands each key's
    entries to a thread during it: under steady traffic it sweeps without pause and its
    CPU cost grows with the number of users (a second of CPU per sweep at 16,000 keys).
    Here a sweep runs at most every ``SWEEP_SECONDS`` and trims each key's list in place,
    which takes microseconds; expired entries never count either way, since the strategy
    compares timestamps itself. The two overridden names are ``MemoryStorage``'s private
    methods (hence their mangled spelling); the test suite covers expiry through them.
    """

    SWEEP_SECONDS = 5.0

    def __init__(self) -> None:
        super().__init__()
        self._last_sweep = 0.0
        self.locks = _OneLock()

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= self.SWEEP_SECONDS:
            self._last_sweep = now
            self._MemoryStorage__expire_events()

    def _MemoryStorage__expire_events(self) -> None:
        now = time.time()
        for key in list(self.events):
            if self.locks[key].locked():
                continue
            entries = self.events[key]
            # Entries are newest first; keep those still inside their window.
            cutoff = bisect.bisect_left(entries, -now, key=lambda entry: -entry.expiry)
            del entries[cutoff:]
            if not entries:
                del self.events[key]
                self.locks.pop(key, None)
        for key in [k for k, expiry in self.expirations.items() if expiry <= now]:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)
