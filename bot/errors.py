"""Zapa's error tree. Foreign errors are translated at the boundary with ``raise … from``.

::

    ZapaError
    ├── ModelUnavailable        the model failed after every attempt, or the breaker is open
    │   └── CircuitOpen         the breaker is open; ``retry_after`` says for how long
    ├── DependencyUnavailable   the database or Redis cannot take work now (→ 503)
    ├── RecipientUnreachable    the platform refuses messages to the user (blocked the bot)
    ├── SetupError              a platform refuses the set-up (a wrong token); says what to do
    └── DuplicateEvent          the platform delivered this event before
                                (``message_id`` names the first delivery)
"""

from __future__ import annotations


class ZapaError(Exception):
    """Base of every error Zapa raises on purpose."""


class ModelUnavailable(ZapaError):
    """The model did not answer after every attempt."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpen(ModelUnavailable):
    """Recent calls failed so often that the model is not called for a while."""


class DependencyUnavailable(ZapaError):
    """A backing service (``database`` or ``redis``) cannot take work right now."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency


class DuplicateEvent(ZapaError):
    """The same platform event arrived before; ``message_id`` is the first delivery's."""

    def __init__(self, message_id: int) -> None:
        super().__init__(f"duplicate of message {message_id}")
        self.message_id = message_id


class RecipientUnreachable(ZapaError):
    """The platform will not deliver to this user (they blocked the bot, or left)."""


class SetupError(ZapaError):
    """A platform refuses the configuration, or a set-up step cannot go on.

    The message is one line telling the operator what to do.
    """
