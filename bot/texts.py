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
BANNED = "You can no longer use this bot: an administrator has blocked you."
USAGE_HEADER = "Messages you have left:"
USAGE_LINE = "- {remaining} of {limit} this {period} (resets in {reset})"
USAGE_NONE = "There is no message limit for you."
TEXT_ONLY = "I can read text only for now. Please send your question as a message."
ECHO_PREFIX = "Echo (no model configured): "

# Slack: slash-prefixed words are commands the Slack client intercepts, so in mentions and
# direct messages the commands are plain words, and the slash command takes them as text.
SLACK_HELP = (
    "Hi! I'm an assistant. Mention me in a channel, or write to me here, and I'll answer; "
    "a thread is one conversation.\n"
    "Say *reset* to start a fresh conversation, *usage* to see your remaining messages, "
    "*help* for this text."
)
SLACK_COMMAND_USAGE = (
    "Ask me anything: `{command} What makes a good haiku?`\n"
    "`{command} reset` starts a fresh conversation, `{command} usage` shows how many messages "
    "you have left. You can also mention me in a channel, or write to me directly."
)
SLACK_THINKING = "Thinking…"
SLACK_UNAVAILABLE = "Sorry, I can't take your question right now. Please try again in a moment."

_HELP_BY_PLATFORM = {"slack": SLACK_HELP}


def help_for(platform: str) -> str:
    """The greeting and help text for a platform, naming commands as people type them there."""
    return _HELP_BY_PLATFORM.get(platform, HELP)


def humanize_seconds(seconds: float) -> str:
    """``75`` → ``"2 minutes"``; rounds up so a person never retries too early."""
    whole = max(1, int(-(-seconds // 1)))
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute")):
        if whole >= size:
            count = -(-whole // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"
