"""Telegram updates as the pipeline's events: hostile JSON is None (Update.de_json raises plain
exceptions), /start and /help are notices, /human and the inline button ask for a person."""

from __future__ import annotations

import json
from typing import Any

from telegram import Update

from bot.channels.base import Inbound
from bot.language import detect_language
from bot.messages import Address, InboundMessage

HUMAN_CALLBACK = "human"
NOTICES = {"/start": "welcome", "/help": "help"}


def parse_update(body: bytes, bot: Any) -> Update | None:
    """Update.de_json over hostile JSON: None instead of the plain exceptions it raises."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int) or isinstance(
                data.get("update_id"), bool):
            return None
        return Update.de_json(data, bot)
    except Exception:
        return None


def inbound_of(update: Update, max_chars: int) -> Inbound | None:
    """The event an update is for the pipeline (None: nothing to answer, e.g. an edited message)."""
    event_id = str(update.update_id)
    message_id = f"telegram:{update.update_id}"
    query = update.callback_query
    if query is not None:
        if query.data != HUMAN_CALLBACK or query.message is None:
            return None
        address = _address(query.message.chat.id, query.from_user.id if query.from_user else None)
        return Inbound(address, InboundMessage(address=address, text="", action="request_human", message_id=message_id),
                       language=_language(query.from_user, ""), event_id=event_id, context=query)
    message = update.message
    if message is None or message.chat is None:
        return None
    user = message.from_user
    address = _address(message.chat.id, user.id if user else None)
    text = message.text if isinstance(message.text, str) else ""
    language = _language(user, text)
    command = text.split(maxsplit=1)[0].split("@", 1)[0].lower() if text.startswith("/") else ""
    if not text or command in NOTICES:
        if not text and message.chat.type != "private":
            return None  # stickers and photos in a group: not for the bot
        return Inbound(address, notice=NOTICES.get(command, "text_only"), language=language, event_id=event_id)
    action = "request_human" if command == "/human" else None
    inbound = InboundMessage(address=address, text="" if action else text[:max_chars], action=action,
                             message_id=message_id)
    return Inbound(address, inbound, language=language, event_id=event_id)


def _address(chat_id: int, user_id: int | None) -> Address:
    return Address("telegram", f"telegram:{chat_id}", user_id=str(user_id or chat_id), route={"chat_id": chat_id})


def _language(user: Any, text: str) -> str:
    code = (getattr(user, "language_code", None) or "").lower()
    default = "ja" if not code or code.startswith("ja") else "en"
    return (detect_language(text) or default) if text and not text.startswith("/") else default
