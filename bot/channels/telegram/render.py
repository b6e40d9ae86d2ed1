"""Telegram HTML: every text escaped, citations as links (http/https only), the ticket number in
<code>, the inline "talk to a person" button; long answers split below the 4096-character limit."""

from __future__ import annotations

import html
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.channels.rendering import (
    HUMAN_BUTTON_LABEL, OPERATOR_LABEL, SOURCES_LABEL, TICKET_LABEL, citation_label, language_of, split_text,
    ticket_to_show,
)
from bot.channels.telegram.updates import HUMAN_CALLBACK
from bot.messages import Reply

CHUNK = 3500  # Telegram allows 4096 characters of text per message; keep room for sources


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def citation_html(c: Any, language: str) -> str:
    date = f" ({_esc(c.published)})" if c.published else ""
    url = str(c.url or "")
    if url.startswith(("https://", "http://")):
        return f'[{c.n}] <a href="{html.escape(url, quote=True)}">{_esc(citation_label(c, language))}</a>{date}'
    return f"[{c.n}] {_esc(citation_label(c, language))}{date} {_esc(url)}".rstrip()


def render_html(reply: Reply) -> list[str]:
    """HTML messages: the answer (split when long), then sources as links and the ticket number."""
    lang = language_of(reply)
    chunks = [_esc(c) for c in split_text(reply.answer.strip(), CHUNK)]
    if reply.kind == "operator":
        chunks[0] = f"<b>{OPERATOR_LABEL[lang]}:</b> " + chunks[0]
    tail = []
    if reply.citations:
        tail.append(f"<b>{SOURCES_LABEL[lang]}</b>\n" + "\n".join(citation_html(c, lang) for c in reply.citations))
    ticket = ticket_to_show(reply)
    if ticket:
        tail.append(f"{TICKET_LABEL[lang]}: <code>{_esc(ticket)}</code>")
    if tail:
        chunks[-1] = "\n\n".join([chunks[-1], *tail])
    return chunks


def human_button(language: str) -> InlineKeyboardMarkup:
    label = HUMAN_BUTTON_LABEL.get(language, HUMAN_BUTTON_LABEL["ja"])
    return InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=HUMAN_CALLBACK)]])
