"""Every Redis key prefix Zapa writes, in one place.

All keys start with :data:`PREFIX` so one Redis can be shared with other applications and
Zapa's keys can be listed (``SCAN MATCH zapa:*``) or removed together.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "zapa"

RATE_LIMIT: Final = f"{PREFIX}:rl"
"""Prefix of the rate limiter's keys, e.g. ``zapa:rl:hit/telegram:42/20/1/minute``."""

RATE_LIMIT_HITS: Final = "hit"
"""Namespace of the counted messages, one moving-window log per user and window."""

RATE_LIMIT_NOTICES: Final = "notice"
"""Namespace of the "you are over the limit" notices, one per user and window period."""
