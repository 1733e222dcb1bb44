"""Platform adapters. :func:`build_adapters` is the one registry of what is enabled."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from bot.engine import Engine
from bot.ports import ReplyBus, Sender
from config import Settings

WEBHOOK_ROUTES = {
    "telegram": "/webhooks/telegram",
    "slack": "/webhooks/slack",
    "webhook": "/webhooks/generic",
}


class Adapter(Protocol):
    """One platform: its inbound route and its outbound sender."""

    platform: str
    path: str

    @property
    def sender(self) -> Sender:
        """How replies to this platform go out."""
        ...

    async def start(self) -> None:
        """Learn what the adapter needs from its platform before serving."""
        ...

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify, parse and hand off one webhook request."""
        ...

    async def aclose(self) -> None:
        """Release what the adapter holds."""
        ...


def build_adapters(settings: Settings, engine: Engine, bus: ReplyBus) -> list[Adapter]:
    """The adapters whose secrets are configured; the others stay off (their route is 404).

    ``bus`` carries reply events to the web process holding a generic webhook request.
    """
    from adapters.webhook import WebhookAdapter

    adapters: list[Adapter] = []
    if settings.webhook_enabled:
        adapters.append(WebhookAdapter(settings, engine, bus))
    if settings.telegram_bot_token is not None and settings.telegram_webhook_secret is not None:
        from adapters.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(settings, engine))
    if settings.slack_enabled:
        from adapters.slack import SlackAdapter

        adapters.append(SlackAdapter(settings, engine))
    return adapters
