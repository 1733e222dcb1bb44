"""Every text Zapa says to a person, in one place."""

from __future__ import annotations

GREETING = (
    "Hi! I'm an assistant. Send me a message and I'll answer.\n"
    "Commands: /reset starts a fresh conversation, /usage shows your remaining messages, "
    "/help shows this text."
)
HELP = GREETING
RESET_DONE = "Done — I've forgotten our conversation. What would you like to talk about?"
RATE_LIMITED = "You're sending messages faster than I can answer. Please try again in {wait}."
APOLOGY = "Sorry, I can't answer right now. Please try again in a little while."
USAGE_HEADER = "Messages you have left:"
USAGE_LINE = "- {remaining} of {limit} this {period} (resets in {reset})"
USAGE_NONE = "There is no message limit for you."
TEXT_ONLY = "I can read text only for now. Please send your question as a message."
ECHO_PREFIX = "Echo (no model configured): "


def humanize_seconds(seconds: float) -> str:
    """``75`` → ``"2 minutes"``; rounds up so a person never retries too early."""
    whole = max(1, int(-(-seconds // 1)))
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute")):
        if whole >= size:
            count = -(-whole // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"
