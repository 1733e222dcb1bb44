"""The Slack app manifest for ``zapa slack manifest``: paste it into "Create app from manifest".

It names what the adapter needs and nothing more: the slash command, the two event
subscriptions (mentions in channels, direct messages), and the bot scopes behind them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

BOT_SCOPES = (
    "app_mentions:read",  # app_mention events
    "chat:write",  # chat.postMessage and chat.update
    "commands",  # the slash command
    "im:history",  # message.im events: direct messages
    "users:read",  # users.info: display names
)
BOT_EVENTS = ("app_mention", "message.im")


class ManifestError(ValueError):
    """The manifest cannot be made from these arguments."""


def build_manifest(
    *, command: str, url: str | None, name: str = "Zapa", socket_mode: bool = False
) -> dict[str, Any]:
    """The manifest as data: Request URLs point at ``url``, or Socket Mode is on.

    Raises:
        ManifestError: neither an https ``url`` nor Socket Mode is given.
    """
    if not socket_mode:
        if url is None:
            raise ManifestError("give the public URL of /webhooks/slack with --url, or --socket")
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc:
            raise ManifestError(f"Slack sends requests to https URLs only, not {url!r}")
    slash: dict[str, Any] = {
        "command": command,
        "description": f"Ask {name}",
        "usage_hint": "your question | reset | usage",
        "should_escape": False,
    }
    events: dict[str, Any] = {"bot_events": list(BOT_EVENTS)}
    interactivity: dict[str, Any] = {"is_enabled": True}
    if not socket_mode:
        slash["url"] = url
        events["request_url"] = url
        interactivity["request_url"] = url
    return {
        "display_information": {
            "name": name,
            "description": "An assistant you can mention, message, or ask with " + command,
        },
        "features": {
            "app_home": {
                "home_tab_enabled": False,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [slash],
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket_mode,
            "token_rotation_enabled": False,
        },
    }


def manifest_yaml(**kwargs: Any) -> str:
    """:func:`build_manifest` as YAML, in the order Slack's editor shows it."""
    return yaml.safe_dump(build_manifest(**kwargs), sort_keys=False, allow_unicode=True)
