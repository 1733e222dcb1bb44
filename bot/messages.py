"""The normalized message model every adapter produces and consumes.

No platform object (a Telegram ``Update``, a Slack event dict) crosses into the engine:
adapters translate to these frozen types at the edge and keep the raw payload in
``InboundMessage.raw`` for debugging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """Who wrote a message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    """Where a stored message stands.

    A user message is ``received`` until it is answered, failed, or refused by the rate
    limit. A reply carries the status of the turn it closes: ``answered`` for the model's
    text, ``failed`` for the apology, ``rate_limited`` for the over-limit notice. A banned
    user's messages are stored ``banned`` and not answered; the first after the ban gets
    a ``banned`` notice.
    """

    RECEIVED = "received"
    ANSWERED = "answered"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    BANNED = "banned"


class Command(StrEnum):
    """Conversation commands every adapter offers: ``/start``, ``/help``, ``/reset``, ``/usage``."""

    START = "start"
    HELP = "help"
    RESET = "reset"
    USAGE = "usage"


def parse_command(text: str) -> Command | None:
    """Recognize a command typed as text: ``/reset``, ``/usage@botname``, ``/HELP``."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    word = stripped[1:].split(maxsplit=1)[0] if len(stripped) > 1 else ""
    word = word.split("@", 1)[0].lower()
    try:
        return Command(word)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message from a person, as an adapter normalized it.

    Attributes:
        platform: adapter name (``telegram``, ``slack``, ``webhook``, ``cli``).
        conversation_key: the platform's id for the conversation (a chat, a thread, a
            caller's ``conversation_id``); unique within the platform.
        user_id: the platform's id for the author.
        text: what the person wrote.
        event_id: the platform's delivery id (``update_id``, ``event_id``, ``webhook-id``);
            the same id twice is one message. ``None`` when the platform has none.
        user_name: a display name, when the platform gives one.
        platform_message_id: the platform's id of this message, to reply to it.
        command: set when the message is a conversation command rather than a question.
        route: where the reply goes, as JSON-serializable data the adapter understands; it
            is stored with the message so a reply can still be delivered after a restart.
        raw: the platform payload, for debugging only.
        request_id: the id of the HTTP request that carried the message, for logs.
    """

    platform: str
    conversation_key: str
    user_id: str
    text: str
    event_id: str | None = None
    user_name: str | None = None
    platform_message_id: str | None = None
    command: Command | None = None
    route: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """An inbound message as the store keeps it, with the ids the engine works with."""

    id: int
    conversation_id: int
    user_id: int
    platform: str
    conversation_key: str
    platform_user_id: str
    text: str
    status: MessageStatus
    created_at: datetime
    command: Command | None = None
    platform_message_id: str | None = None
    route: Mapping[str, Any] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a model call consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of a model prompt."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Completion:
    """What the model answered."""

    text: str
    model: str
    usage: Usage
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Reply:
    """A stored reply on its way back to the platform.

    ``status`` tells which kind of reply it is: the model's answer (``answered``), an
    apology after the model failed (``failed``), or the over-limit notice
    (``rate_limited``). Command answers are ``answered`` with ``model`` unset.
    """

    id: int
    inbound: StoredMessage
    text: str
    status: MessageStatus
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    delivered: bool = False

    def as_result(self) -> dict[str, Any]:
        """The JSON body SPEC §4.3 defines for a finished turn."""
        return {
            "conversation_id": self.inbound.conversation_key,
            "message_id": self.inbound.id,
            "reply": self.text,
            "model": self.model,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
            },
        }
