"""Real Postgres and Redis for the test suite.

``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` win when set; otherwise the servers on the default
local ports are used. (Starting throwaway servers when nothing listens: to do.)
"""

from __future__ import annotations

import os


def postgres_url() -> str:
    """A Postgres server URL the tests may create databases on."""
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def redis_url() -> str:
    """A Redis server URL the tests may flush."""
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
