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

REPLY_EVENTS: Final = f"{PREFIX}:replies"
"""Pub/sub channel of reply events (deltas, "done") for web processes holding requests."""

# The queue's keys share one hash tag, so its scripts also run on a Redis Cluster.
QUEUE: Final = f"{{{PREFIX}:q}}"
QUEUE_READY: Final = f"{QUEUE}:ready"
"""Stream with one entry per conversation that has jobs; its consumer group hands them out."""
QUEUE_GROUP: Final = "workers"
"""The consumer group of :data:`QUEUE_READY`; a pending entry is a conversation being worked on."""
QUEUE_JOBS: Final = f"{QUEUE}:jobs"
"""Hash of message id → job (attempt, request id, the message when fresh)."""
QUEUE_DEAD: Final = f"{QUEUE}:dead"
"""Stream of jobs given up on after every attempt, for ``zapa queue retry-dead``."""
QUEUE_DEAD_IDS: Final = f"{QUEUE}:dead-ids"
"""Set of the message ids in :data:`QUEUE_DEAD`, so recovery does not queue them again."""
QUEUE_WAITS: Final = f"{QUEUE}:waits"
"""The last thousand queue waits in milliseconds, for ``zapa queue stats``."""


def queue_lane(conversation_id: int) -> str:
    """The list of one conversation's queued message ids, oldest first."""
    return f"{QUEUE}:lane:{conversation_id}"


ADMIN_FAILURES: Final = f"{PREFIX}:admin:failures"
"""Failed sign-ins of one admin account in the current window, e.g. ``zapa:admin:failures:ops``."""
ADMIN_LOCK: Final = f"{PREFIX}:admin:lock"
"""Present while an admin account is locked after too many failures; expires with the lock."""
