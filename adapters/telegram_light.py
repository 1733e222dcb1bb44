"""The common Telegram update read straight from its JSON: a text in a private chat.

Most updates a bot gets are people writing to it in private. For those the webhook needs
six fields, and building python-telegram-bot's whole ``Update`` object graph for them costs
more than storing the message. :func:`private_text` reads them off the decoded JSON, and
gives up (``None``) on anything else — groups, media, edits, unexpected types — which then
takes the full ``Update.de_json`` path, so what the bot does never depends on the shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_UPDATE_KEYS = frozenset({"update_id", "message"})


@dataclass(frozen=True, slots=True)
class PrivateText:
    """The fields of a private text message that the webhook uses."""

    update_id: int
    message_id: int
    chat_id: int
    thread_id: int | None
    sender_id: int
    sender_name: str
    text: str


def private_text(data: Any) -> PrivateText | None:
    """The private text message in an update's JSON, or ``None`` if it is anything else."""
    if not isinstance(data, dict) or data.keys() != _UPDATE_KEYS:
        return None
    message = data["message"]
    if not isinstance(message, dict):
        return None
    chat = message.get("chat")
    sender = message.get("from")
    text = message.get("text")
    if not (
        isinstance(chat, dict)
        and chat.get("type") == "private"
        and isinstance(sender, dict)
        and sender.get("is_bot") is False
        and isinstance(text, str)
    ):
        return None
    first, last = sender.get("first_name"), sender.get("last_name")
    numbers = (data["update_id"], message.get("message_id"), chat.get("id"), sender.get("id"))
    if not all(_is_int(n) for n in numbers) or not isinstance(first, str):
        return None
    if last is not None and not isinstance(last, str):
        return None
    thread_id = message.get("message_thread_id") if message.get("is_topic_message") else None
    if thread_id is not None and not _is_int(thread_id):
        return None
    return PrivateText(
        update_id=data["update_id"],
        message_id=message["message_id"],
        chat_id=chat["id"],
        thread_id=thread_id,
        sender_id=sender["id"],
        sender_name=f"{first} {last}" if last else first,
        text=text,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
