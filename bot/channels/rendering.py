"""What every channel renders the same way: the plain-text reply (the fallback every channel can
send), message splitting at a platform's size limit, and the few labels around an answer."""

from __future__ import annotations

import dataclasses
from typing import Any

from bot.messages import Reply

HUMAN_BUTTON_LABEL = {"ja": "担当者と話す", "en": "Talk to a person"}
SOURCES_LABEL = {"ja": "出典", "en": "Sources"}
TICKET_LABEL = {"ja": "受付番号", "en": "Ticket"}
OPERATOR_LABEL = {"ja": "担当者", "en": "Operator"}


def language_of(reply: Reply) -> str:
    return reply.language if reply.language in ("ja", "en") else "ja"


def citation_label(c: Any, language: str) -> str:
    """Publisher 「Title」 (ja) or Publisher: Title (en)."""
    return f"{c.publisher}「{c.title}」" if language == "ja" else f"{c.publisher}: {c.title}"


def format_citation(c: Any, language: str = "ja") -> str:
    """"[1] Publisher 「Title」 (2026-01-02) https://..." — one line per source."""
    date = f" ({c.published})" if c.published else ""
    return f"[{c.n}] {citation_label(c, language)}{date} {c.url}".strip()


def ticket_to_show(reply: Reply) -> str | None:
    """The ticket number to add below an answer (None when there is none or the answer says it)."""
    ticket = reply.escalation.ticket_id if reply.escalation else None
    return ticket if ticket and ticket not in reply.answer else None


def render_text(reply: Reply) -> str:
    """The plain-text rendering every channel can send: answer, sources, ticket number."""
    lang = language_of(reply)
    parts = [reply.answer.strip()]
    if reply.citations:
        parts.append(SOURCES_LABEL[lang] + ":\n" + "\n".join(format_citation(c, reply.language) for c in reply.citations))
    ticket = ticket_to_show(reply)
    if ticket:
        parts.append(f"{TICKET_LABEL[lang]}: {ticket}")
    return "\n\n".join(p for p in parts if p)


def text_only(reply: Reply) -> Reply:
    """The same reply as plain text: sources folded into the answer, no buttons."""
    return dataclasses.replace(reply, answer=render_text(reply), citations=(), offer_human=False)


def split_text(text: str, size: int) -> list[str]:
    """Pieces of at most `size` characters, cut at a line break in the second half of a piece when
    there is one; never an empty list (a platform refuses an empty message: " ")."""
    out, rest = [], text
    while len(rest) > size:
        cut = rest.rfind("\n", 0, size)
        cut = cut if cut > size // 2 else size
        out.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    out.append(rest)
    return [p for p in out if p.strip()] or [" "]
