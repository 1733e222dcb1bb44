"""Sign-in failures and account locks in Redis, shared by every process that uses it.

With ``REDIS_URL`` set the lock lives here (without it, in the database: see
``storage/admin_store.py``). A failure is counted and the lock set in one Lua script, so
concurrent failures from several processes are each counted once and lock exactly at the
fifth. Both keys expire by themselves: the count when its window ends, the lock after its
hour.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot import keys
from bot.admin.ports import LoginFailures
from bot.errors import DependencyUnavailable

# KEYS: the failure count, the lock. ARGV: window ms, max failures, lock ms.
# Returns the count and the lock's remaining ms (negative when there is none).
_ADD_FAILURE = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if count >= tonumber(ARGV[2]) then
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
        redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
    end
end
return {count, redis.call('PTTL', KEYS[2])}
"""


class RedisLockout:
    """The lockout half of :class:`bot.admin.ports.AdminStore`, kept in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._add = redis.register_script(_ADD_FAILURE)

    async def add_login_failure(
        self, username: str, window_seconds: float, max_failures: int, lock_seconds: float
    ) -> LoginFailures:
        """Count one failure; from the ``max_failures``-th within the window on, lock."""
        arguments = [int(window_seconds * 1000), max_failures, int(lock_seconds * 1000)]
        with _unavailable():
            count, lock_ms = await self._add(keys=_keys(username), args=arguments)
        return LoginFailures(count=int(count), locked_until=_until(int(lock_ms)))

    async def login_failures(self, username: str) -> LoginFailures:
        """The failures in the current window, and an active lock."""
        failures, lock = _keys(username)
        with _unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(failures)
                pipe.pttl(lock)
                count, lock_ms = await pipe.execute()
        return LoginFailures(count=int(count or 0), locked_until=_until(int(lock_ms)))

    async def clear_login_failures(self, username: str) -> None:
        """Forget the failures after a successful sign-in (a lock stays until it expires)."""
        with _unavailable():
            await self._redis.delete(_keys(username)[0])


@contextmanager
def _unavailable() -> Iterator[None]:
    """Redis failures as :class:`bot.errors.DependencyUnavailable` (the API answers 503)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise DependencyUnavailable("redis", str(exc) or type(exc).__name__) from exc


def _keys(username: str) -> list[str]:
    return [f"{keys.ADMIN_FAILURES}:{username}", f"{keys.ADMIN_LOCK}:{username}"]


def _until(lock_ms: int) -> datetime | None:
    if lock_ms <= 0:
        return None
    return datetime.fromtimestamp(time.time() + lock_ms / 1000, UTC)
