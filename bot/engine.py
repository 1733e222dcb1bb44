"""The conversation engine: accept a message, then answer it, one conversation at a time.

``accept`` runs on the webhook path and must stay fast: dedup → rate limit → store →
enqueue. ``process`` runs in a worker: history → prompt → model → store the reply →
deliver. The engine knows only the ports of :mod:`bot.ports`.

Acknowledging comes first. A platform that waits too long for its 2xx sends the webhook
again (Slack after 3 s) or backs off, while a stored message waits safely for its answer;
so while a flood of messages is being accepted (``EngineConfig.busy_accepts`` or more at
once, until they have stayed at ``calm_accepts`` or fewer for ``calm_seconds``), the
workers' spare slots wait (:meth:`Engine.calm`) and the event loop goes to the webhooks. A message
whose caller waits for the reply itself (a synchronous webhook) does not count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog

from bot import metrics, texts
from bot.errors import DuplicateEvent, ModelUnavailable, RecipientUnreachable
from bot.messages import (
    ChatTurn,
    Command,
    InboundMessage,
    MessageStatus,
    Reply,
    Role,
    StoredMessage,
)
from bot.ports import (
    ConversationStore,
    Job,
    NewReply,
    Queue,
    RateLimiter,
    ReplyStream,
    Responder,
    Sender,
    WindowUsage,
)
from bot.tokens import count_tokens

logger = structlog.get_logger(__name__)

DEDUP_SECONDS = 24 * 3600
HISTORY_FETCH_LIMIT = 200


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's knobs, taken from settings by the app factory."""

    system_prompt: str
    history_max_tokens: int
    dedup_seconds: float = DEDUP_SECONDS
    history_fetch_limit: int = HISTORY_FETCH_LIMIT
    # Messages being accepted at once from which the webhooks go first, and down to which
    # they must drain, and stay for calm_seconds, before the workers take jobs freely again.
    busy_accepts: int = 16
    calm_accepts: int = 4
    calm_seconds: float = 0.05


class Outcome(StrEnum):
    """What :meth:`Engine.accept` did with a message."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    BANNED = "banned"


@dataclass(frozen=True, slots=True)
class Acceptance:
    """The verdict on an inbound message.

    ``message_id`` is the first delivery's for duplicates; ``queued`` says whether a reply
    (an answer, or the over-limit notice) is on its way.
    """

    outcome: Outcome
    message_id: int
    retry_after: float = 0.0
    queued: bool = False


def rate_key(platform: str, user_id: str) -> str:
    """The rate-limit key of a platform user."""
    return f"{platform}:{user_id}"


class Engine:
    """Turns stored messages into stored, delivered replies."""

    def __init__(
        self,
        *,
        store: ConversationStore,
        limiter: RateLimiter,
        responder: Responder,
        queue: Queue,
        config: EngineConfig,
        senders: Mapping[str, Sender] | None = None,
    ) -> None:
        self._store = store
        self._limiter = limiter
        self._responder = responder
        self._queue = queue
        self._config = config
        self._senders: dict[str, Sender] = dict(senders or {})
        self._system = ChatTurn(Role.SYSTEM, config.system_prompt)
        self._system_tokens = count_tokens(config.system_prompt)
        self._accepting = 0
        self._calm = asyncio.Event()
        self._calm.set()
        self._calming: asyncio.TimerHandle | None = None

    def register_sender(self, platform: str, sender: Sender) -> None:
        """Route replies to messages of ``platform`` through ``sender``."""
        self._senders[platform] = sender

    async def calm(self) -> None:
        """Wait while a flood of messages is being accepted (see the module docstring)."""
        await self._calm.wait()

    async def accept(self, message: InboundMessage, *, awaited: bool = False) -> Acceptance:
        """Store the message and queue its reply, unless it is a repeat or over the limit.

        ``awaited``: the caller answers its request with the reply (a synchronous webhook),
        so the message does not count towards a flood that the workers give way to.

        Raises:
            bot.errors.DependencyUnavailable: the database or Redis cannot take it now.
        """
        if awaited:
            return await self._accept(message)
        self._accepting += 1
        if self._accepting >= self._config.busy_accepts:
            self._calm.clear()
            if self._calming is not None:
                self._calming.cancel()
                self._calming = None
        try:
            return await self._accept(message)
        finally:
            self._accepting -= 1
            calming = self._calming is not None or self._calm.is_set()
            if self._accepting <= self._config.calm_accepts and not calming:
                loop = asyncio.get_running_loop()
                self._calming = loop.call_later(self._config.calm_seconds, self._settle)

    def _settle(self) -> None:
        """The accepts stayed few since the timer was set: the workers may go on."""
        self._calming = None
        if self._accepting <= self._config.calm_accepts:
            self._calm.set()

    async def _accept(self, message: InboundMessage) -> Acceptance:
        admission = await self._store.admission(
            message.platform, message.user_id, message.event_id, self._config.dedup_seconds
        )
        if admission.first_message_id is not None:
            metrics.TURNS.labels("duplicate").inc()
            await self._requeue_unanswered(admission.first_message_id)
            return Acceptance(Outcome.DUPLICATE, admission.first_message_id)
        status = MessageStatus.RECEIVED
        retry_after = 0.0
        notify = False
        if admission.banned:
            status = MessageStatus.BANNED
        elif message.command is None:
            key = rate_key(message.platform, message.user_id)
            decision = await self._limiter.hit(key, admission.rate_limit)
            if not decision.allowed:
                status, retry_after, notify = (
                    MessageStatus.RATE_LIMITED,
                    decision.retry_after,
                    decision.notify,
                )
        try:
            stored = await self._store.store_inbound(
                message, status, dedup_seconds=self._config.dedup_seconds
            )
        except DuplicateEvent as exc:
            metrics.TURNS.labels("duplicate").inc()
            return Acceptance(Outcome.DUPLICATE, exc.message_id)
        if status is MessageStatus.BANNED:
            metrics.TURNS.labels("banned").inc()
            notify = await self._store.claim_ban_notice(stored.user_id)
            logger.info("banned_user_message", message_id=stored.id, notify=notify)
            if notify:
                await self._enqueue(stored)
            return Acceptance(Outcome.BANNED, stored.id, queued=notify)
        if status is MessageStatus.RATE_LIMITED:
            metrics.TURNS.labels("rate_limited").inc()
            logger.info("rate_limited", message_id=stored.id, notify=notify)
            if notify:
                await self._enqueue(stored)
            return Acceptance(Outcome.RATE_LIMITED, stored.id, retry_after, queued=notify)
        await self._enqueue(stored)
        return Acceptance(Outcome.QUEUED, stored.id, queued=True)

    async def _requeue_unanswered(self, message_id: int) -> None:
        """Queue a redelivered message again if it is still waiting for its answer.

        Its first delivery may have been stored while the queue was down (the platform got
        a 503 and retried); queuing is idempotent, so a job already queued stays one job.
        """
        first = await self._store.get_message(message_id)
        if first is not None and first.status is MessageStatus.RECEIVED:
            await self._enqueue(first, fresh=False)

    async def message(self, message_id: int) -> StoredMessage | None:
        """A stored inbound message."""
        return await self._store.get_message(message_id)

    async def result(self, message_id: int) -> Reply | None:
        """The stored reply to a message, once its turn is closed."""
        return await self._store.reply_for(message_id)

    async def usage(self, platform: str, user_id: str) -> list[WindowUsage]:
        """A user's remaining quota in each rate-limit window (their own, if an admin set it)."""
        admission = await self._store.admission(platform, user_id, None, 0)
        return await self._limiter.usage(rate_key(platform, user_id), admission.rate_limit)

    async def recover(self, limit: int = 10_000) -> int:
        """Queue again the messages accepted but not finished (a stop, a lost queue); how many.

        Only those of platforms this process delivers to: another process (or this one,
        once the adapter is on again) answers the rest, instead of this one giving up.
        Messages whose job is still queued are left as they are.
        """
        pending = [m for m in await self._store.unfinished(limit) if m.platform in self._senders]
        queued = 0
        for message in pending:
            queued += await self._enqueue(message, fresh=False)
        if queued:
            logger.info("recovered_messages", count=queued)
        return queued

    async def process(self, job: Job) -> None:
        """Answer the job's message, or finish delivering its stored reply.

        Safe to run again for the same job: a stored reply is delivered, never regenerated,
        and a delivered one is not sent twice.
        """
        if job.message is not None and job.attempt == 1:
            message = job.message  # fresh from accept: no reply can exist yet
        else:
            found = await self._store.get_message(job.message_id)
            if found is None:
                logger.warning("job_for_unknown_message", message_id=job.message_id)
                return
            message = found
            existing = await self._store.reply_for(message.id)
            if existing is not None:
                if not existing.delivered:
                    await self._deliver(existing)
                return
        if message.status is MessageStatus.BANNED:
            await self._notify_banned(message)
        elif message.status is MessageStatus.RATE_LIMITED:
            await self._notify_rate_limited(message)
        elif message.command is not None:
            await self._run_command(message)
        elif message.status is MessageStatus.RECEIVED:
            await self._answer(message)

    async def give_up(self, job: Job, error: BaseException) -> None:
        """Close a job that kept failing: the user gets the apology, the turn is failed."""
        logger.error(
            "job_abandoned", message_id=job.message_id, attempts=job.attempt, error=repr(error)
        )
        message = await self._store.get_message(job.message_id)
        if message is None or await self._store.reply_for(message.id) is not None:
            return
        metrics.TURNS.labels("failed").inc()
        reply = await self._store.save_reply(message, NewReply(texts.APOLOGY, MessageStatus.FAILED))
        try:
            await self._deliver(reply)
        except Exception as exc:
            logger.error("apology_undelivered", message_id=message.id, error=repr(exc))

    async def _enqueue(self, message: StoredMessage, *, fresh: bool = True) -> bool:
        return await self._queue.put(
            Job(
                message.id,
                message.conversation_id,
                message.request_id,
                message=message if fresh else None,
            )
        )

    def _sender(self, message: StoredMessage) -> Sender:
        try:
            return self._senders[message.platform]
        except KeyError:
            raise LookupError(f"no adapter delivers to platform {message.platform!r}") from None

    async def _deliver(self, reply: Reply) -> None:
        async with self._sender(reply.inbound).reply_stream(reply.inbound) as stream:
            await self._finish(stream, reply)
        await self._store.mark_delivered(reply.id)

    async def _finish(self, stream: ReplyStream, reply: Reply) -> None:
        """Deliver the reply; a user the platform refuses is marked, and delivery settled.

        Retrying would never get through, so the reply counts as delivered (as far as it
        can be) and the job ends instead of retrying until it is abandoned.
        """
        try:
            await stream.finish(reply)
        except RecipientUnreachable:
            logger.warning("recipient_unreachable", message_id=reply.inbound.id)
            await self._store.mark_unreachable(reply.inbound.user_id)

    async def _answer(self, message: StoredMessage) -> None:
        started = time.perf_counter()
        prompt = await self._prompt(message)
        model_seconds = 0.0
        async with self._sender(message).reply_stream(message) as stream:
            try:
                on_delta = stream.delta if stream.live else None
                completion = await self._responder.complete(prompt, on_delta=on_delta)
                model_seconds = completion.latency_ms / 1000
                if not completion.text.strip():
                    raise ModelUnavailable("the model returned an empty answer")
            except ModelUnavailable as exc:
                logger.warning("model_unavailable", message_id=message.id, error=str(exc))
                metrics.TURNS.labels("failed").inc()
                new = NewReply(texts.APOLOGY, MessageStatus.FAILED)
            else:
                metrics.TURNS.labels("answered").inc()
                metrics.MODEL_LATENCY.observe(model_seconds)
                metrics.TOKENS.labels("prompt").inc(completion.usage.prompt_tokens)
                metrics.TOKENS.labels("completion").inc(completion.usage.completion_tokens)
                new = NewReply(
                    completion.text,
                    MessageStatus.ANSWERED,
                    model=completion.model,
                    usage=completion.usage,
                    latency_ms=completion.latency_ms,
                )
            reply = await self._store.save_reply(message, new)
            await self._finish(stream, reply)
            # The user has the reply now; recording that is bookkeeping after the fact.
            replied = time.perf_counter()
        metrics.ENGINE_OVERHEAD.observe(max(0.0, replied - started - model_seconds))
        await self._store.mark_delivered(reply.id)

    async def _prompt(self, message: StoredMessage) -> list[ChatTurn]:
        """System prompt, then the newest history that fits the budget, then the message."""
        history = await self._store.history(message, self._config.history_fetch_limit)
        budget = self._config.history_max_tokens - self._system_tokens
        budget -= count_tokens(message.text)
        # Whole turns only, newest first: a question without its answer (or the reverse)
        # would mislead the model.
        start = len(history)
        while start >= 2:
            question, answer = history[start - 2], history[start - 1]
            cost = count_tokens(question.content) + count_tokens(answer.content)
            if cost > budget:
                break
            budget -= cost
            start -= 2
        return [self._system, *history[start:], ChatTurn(Role.USER, message.text)]

    async def _notify_banned(self, message: StoredMessage) -> None:
        reply = await self._store.save_reply(message, NewReply(texts.BANNED, MessageStatus.BANNED))
        await self._deliver(reply)

    async def _notify_rate_limited(self, message: StoredMessage) -> None:
        windows = await self.usage(message.platform, message.platform_user_id)
        waits = [w.reset_in for w in windows if w.remaining <= 0]
        wait = min(waits) if waits else 60.0
        text = texts.RATE_LIMITED.format(wait=texts.humanize_seconds(wait))
        reply = await self._store.save_reply(message, NewReply(text, MessageStatus.RATE_LIMITED))
        await self._deliver(reply)

    async def _run_command(self, message: StoredMessage) -> None:
        match message.command:
            case Command.RESET:
                await self._store.reset_context(message)
                text = texts.RESET_DONE
            case Command.USAGE:
                windows = await self.usage(message.platform, message.platform_user_id)
                text = _usage_text(windows)
            case _:
                text = texts.help_for(message.platform)
        reply = await self._store.save_reply(message, NewReply(text, MessageStatus.ANSWERED))
        await self._deliver(reply)


def _usage_text(windows: list[WindowUsage]) -> str:
    if not windows:
        return texts.USAGE_NONE
    lines = [texts.USAGE_HEADER]
    lines += [
        texts.USAGE_LINE.format(
            remaining=w.remaining,
            limit=w.limit,
            period=w.period,
            reset=texts.humanize_seconds(w.reset_in),
        )
        for w in windows
    ]
    return "\n".join(lines)
