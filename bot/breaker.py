"""A circuit breaker for the model endpoint.

After ``threshold`` consecutive failed turns the breaker opens: callers fail at once with
:class:`bot.errors.CircuitOpen` instead of waiting for timeouts. After ``reset_seconds``
it lets one trial call through (half-open); the trial's success closes it, its failure
opens it again for another ``reset_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

import structlog

from bot.errors import CircuitOpen

logger = structlog.get_logger(__name__)


class BreakerState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures and stops calls while the endpoint looks down.

    Usage: :meth:`acquire` before a call (it raises while open), then exactly one of
    :meth:`record_success`, :meth:`record_failure` or :meth:`release` after it.

    Args:
        threshold: consecutive failures that open the breaker.
        reset_seconds: how long it stays open before a trial call.
        clock: monotonic seconds; injectable so tests need not sleep.
    """

    def __init__(
        self,
        threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self._threshold = threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker turns half-open once ``reset_seconds`` pass."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._failures

    def acquire(self) -> bool:
        """Ask to make a call.

        Returns:
            ``True`` when this call is the half-open trial, ``False`` for a normal call.

        Raises:
            CircuitOpen: while open (``retry_after`` is the time left), or while half-open
                with the trial call still running (``retry_after`` unknown).
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.OPEN:
            assert self._opened_at is not None
            left = self._reset_seconds - (self._clock() - self._opened_at)
            raise CircuitOpen("the model circuit breaker is open", retry_after=max(left, 0.0))
        if self._trial_in_flight:
            raise CircuitOpen("the model circuit breaker is testing the model")
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """A call succeeded: close the breaker and forget earlier failures."""
        if self._opened_at is not None:
            logger.info("circuit_closed")
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """A call failed: count it, and open (or reopen) the breaker when due."""
        self._failures += 1
        self._trial_in_flight = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
            logger.warning(
                "circuit_opened", failures=self._failures, reset_seconds=self._reset_seconds
            )

    def release(self, trial: bool) -> None:
        """A call ended without a verdict (cancelled, or the caller's own error).

        Args:
            trial: what :meth:`acquire` returned for that call; a trial slot is freed so
                the next caller may try instead.
        """
        if trial:
            self._trial_in_flight = False
