"""The ports the engine depends on.

``storage/``, ``bot/llm.py``, ``bot/ratelimit.py``, ``bot/queue.py`` and ``adapters/``
implement them; only the runtime factory picks which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from bot.messages import (
    ChatTurn,
    Completion,
    InboundMessage,
    MessageStatus,
    Reply,
    StoredMessage,
    Usage,
)

DeltaCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class NewReply:
    """A reply to store; the store links it to its inbound message and closes the turn."""

    text: str
    status: MessageStatus
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """What the store knows of a message's sender and event before storing it.

    ``first_message_id`` is set when the same event was delivered recently; ``rate_limit``
    is the user's own ``RATE_LIMIT``-style windows, ``None`` for the service's.
    """

    first_message_id: int | None
    banned: bool = False
    rate_limit: str | None = None


class ConversationStore(Protocol):
    """Durable users, conversations, messages and inbound events."""

    async def admission(
        self, platform: str, platform_user_id: str, event_id: str | None, within_seconds: float
    ) -> Admission:
        """What decides a message's fate before it is stored, read in one go.

        ``first_message_id`` names the message first delivered with ``event_id`` if that
        was within ``within_seconds``; the rest is what an admin set for the user.
        """
        ...

    async def claim_ban_notice(self, user_id: int) -> bool:
        """True once per ban: the banned user's first message since then gets the notice."""
        ...

    async def store_inbound(
        self, message: InboundMessage, status: MessageStatus, *, dedup_seconds: float
    ) -> StoredMessage:
        """Store the user, the conversation and the message in one transaction.

        When ``message.event_id`` was stored for the platform within ``dedup_seconds``,
        nothing is written and :class:`bot.errors.DuplicateEvent` is raised.
        """
        ...

    async def get_message(self, message_id: int) -> StoredMessage | None:
        """The inbound message with that id, or ``None``."""
        ...

    async def history(self, message: StoredMessage, limit: int) -> list[ChatTurn]:
        """The newest answered turns of the message's conversation before it, oldest first.

        Each turn is a question and its answer, ``limit`` messages at most. Only turns since
        the last reset count; commands, failed and refused turns are left out.
        """
        ...

    async def save_reply(self, inbound: StoredMessage, reply: NewReply) -> Reply:
        """Store the reply and set the inbound message's status to ``reply.status``."""
        ...

    async def reply_for(self, inbound_id: int) -> Reply | None:
        """The stored reply to an inbound message, if the turn is closed."""
        ...

    async def mark_delivered(self, reply_id: int) -> None:
        """Record that the platform has the reply, so a redelivered job won't send it again."""
        ...

    async def mark_unreachable(self, user_id: int) -> None:
        """Record that the platform refuses messages to this user (e.g. they blocked the bot).

        The mark is cleared when the user writes again.
        """
        ...

    async def reset_context(self, command: StoredMessage) -> None:
        """Start a fresh context after the ``/reset`` message ``command``.

        Earlier messages stay stored but leave the prompt; messages that arrived after the
        command belong to the new context.
        """
        ...

    async def unfinished(self, limit: int) -> list[StoredMessage]:
        """Messages accepted but not yet closed (or closed but not delivered), oldest first."""
        ...

    async def ping(self) -> None:
        """Raise when the database cannot be reached."""
        ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The rate limiter's verdict on one message.

    ``notify`` is true for the first refusal in a window only, so the user is told once.
    """

    allowed: bool
    retry_after: float = 0.0
    notify: bool = False


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """How much of one rate-limit window a user has left."""

    limit: int
    period: str
    remaining: int
    reset_in: float


class RateLimiter(Protocol):
    """Per-user message limits over the ``RATE_LIMIT`` windows."""

    async def hit(self, key: str, windows: str | None = None) -> RateDecision:
        """Count one message for ``key`` and say whether it may go on.

        ``windows`` (``"10/minute;100/day"``) replaces the default windows for this user.
        """
        ...

    async def usage(self, key: str, windows: str | None = None) -> list[WindowUsage]:
        """The user's remaining quota in each window, without counting a message."""
        ...

    async def ping(self) -> None:
        """Raise when the limiter's storage cannot be reached."""
        ...


class Responder(Protocol):
    """An OpenAI-compatible model (or the offline echo model)."""

    @property
    def model(self) -> str:
        """The model's name as reported in results."""
        ...

    async def complete(
        self, prompt: Sequence[ChatTurn], on_delta: DeltaCallback | None = None
    ) -> Completion:
        """Answer the prompt, calling ``on_delta`` with each piece of text as it arrives.

        Raises:
            bot.errors.ModelUnavailable: after every attempt failed, or while the circuit
                breaker is open.
        """
        ...

    def status(self) -> str:
        """A one-word state for ``/ready``: ``ok``, ``echo`` or ``circuit_open``."""
        ...


class ReplyStream(Protocol):
    """One reply on its way out: text as it is generated, then the stored reply."""

    @property
    def live(self) -> bool:
        """Whether someone watches the text arrive; if not, no deltas are produced."""
        ...

    async def delta(self, text: str) -> None:
        """Pass on a piece of the reply as the model generates it."""
        ...

    async def finish(self, reply: Reply) -> None:
        """Deliver the stored reply; raise if the platform did not take it."""
        ...


class Sender(Protocol):
    """The outbound half of an adapter: how replies reach the platform."""

    def reply_stream(self, message: StoredMessage) -> AbstractAsyncContextManager[ReplyStream]:
        """Open a stream for the reply to ``message``.

        The context shows the platform's "working" state (Telegram's *typing…*) while
        open; leaving it without ``finish`` delivers nothing.
        """
        ...


@dataclass(frozen=True, slots=True)
class Job:
    """A stored inbound message waiting for its reply."""

    message_id: int
    conversation_id: int
    request_id: str | None = None
    attempt: int = 1
    # The message as just accepted, when the job never ran before: the worker then needs
    # not read it back. Jobs recovered, retried or read from a shared queue carry none.
    message: StoredMessage | None = field(default=None, compare=False, repr=False)


class Queue(Protocol):
    """At-least-once delivery of jobs, one conversation at a time, in arrival order.

    A job handed out by :meth:`get` stays owned until :meth:`ack` (done, after its reply is
    stored and delivered), :meth:`retry` (hand it back) or :meth:`bury` (give up on it); no
    other job of the same conversation is handed out meanwhile. A message has at most one
    job queued: putting it again while it is queued or in flight changes nothing.
    """

    async def put(self, job: Job) -> bool:
        """Enqueue a job, unless one for the same message is queued already; whether it was."""
        ...

    async def get(self) -> Job:
        """Wait for the next job whose conversation has no job in flight."""
        ...

    async def ack(self, job: Job) -> None:
        """The job is done; release its conversation."""
        ...

    async def retry(self, job: Job, delay: float) -> None:
        """Hand the job back to run again after ``delay`` seconds, ahead of its successors."""
        ...

    async def bury(self, job: Job, error: str) -> None:
        """The job failed for good: keep it for the operator (dead letters) and release it."""
        ...

    async def depth(self) -> int:
        """Jobs waiting or in flight."""
        ...

    async def aclose(self) -> None:
        """Stop handing out jobs; hand owned ones back for another process to take."""
        ...


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    """News of a reply for whoever waits on it: a piece of text, or ``done`` (it is stored)."""

    message_id: int
    delta: str | None = None
    done: bool = False
    # The stored reply, when the event never left the process; otherwise read from the store.
    reply: Reply | None = field(default=None, compare=False)


class ReplyBus(Protocol):
    """Carries reply events from the process that makes a reply to the one holding the request.

    ``local`` is true when both are always the same process; otherwise an event can be
    missed (a reconnect), so listeners also look in the store now and then.
    """

    @property
    def local(self) -> bool:
        """Whether replies are made in this process only."""
        ...

    def listen(self, message_id: int) -> AbstractAsyncContextManager[asyncio.Queue[ReplyEvent]]:
        """Receive the events of one message while the context is open."""
        ...

    async def publish(self, event: ReplyEvent) -> None:
        """Tell the listeners of ``event.message_id``, in whichever process they are."""
        ...
