"""Slack rendering: Block Kit messages (mrkdwn escaped, sources as links, the "escalate" button) and
the operator channel's announcement of a new or still unclaimed ticket."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.channels.rendering import (
    HUMAN_BUTTON_LABEL, OPERATOR_LABEL, SOURCES_LABEL, TICKET_LABEL, citation_label, language_of, render_text,
    split_text, ticket_to_show,
)
from bot.messages import Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.ports import Ticket

SECTION_MAX = 2900  # a section's text is limited to 3000 characters
ESCALATE_ACTION = "escalate"
SUMMARY_KEYS = ("carrier", "still_happening", "noticed_at", "vendor", "amounts", "destinations", "language")


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    safe_label = escape_mrkdwn(label).replace("|", "¦")
    if url.startswith(("https://", "http://")) and not any(c in url for c in "<>| \n"):
        return f"<{url}|{safe_label}>"
    return f"{safe_label} {escape_mrkdwn(url)}"


def citation_line(c: Any, language: str) -> str:
    date = f" ({c.published})" if c.published else ""
    return f"[{c.n}] " + _link(c.url, citation_label(c, language)) + date


def _sections(text: str, most: int) -> list[dict[str, Any]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
            for chunk in split_text(text, SECTION_MAX)[:most]]


def render_message(reply: Reply) -> dict[str, Any]:
    """Block Kit message: the answer, its sources as links, the ticket number, the escalate button."""
    lang = language_of(reply)
    answer = escape_mrkdwn(reply.answer.strip())
    if reply.kind == "operator":
        answer = f"*{OPERATOR_LABEL[lang]}:* " + answer
    blocks = _sections(answer, 20)
    if reply.citations:
        lines = "\n".join(citation_line(c, lang) for c in reply.citations)
        blocks += _sections(f"*{SOURCES_LABEL[lang]}*\n" + lines, 5)
    ticket = ticket_to_show(reply)
    if ticket:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"{TICKET_LABEL[lang]}: {escape_mrkdwn(ticket)}"}]})
    if reply.offer_human:
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "action_id": ESCALATE_ACTION, "value": "request_human",
            "text": {"type": "plain_text", "text": HUMAN_BUTTON_LABEL[lang]}}]})
    return {"text": render_text(reply)[:3000] or " ", "blocks": blocks[:50]}


def render_ticket(ticket: "Ticket", event: str, console_url: str | None) -> dict[str, Any]:
    """The operator-channel announcement of a new (or still unclaimed) ticket."""
    urgent = ticket.priority == "urgent"
    head = ("再通知: " if event == "reannounced" else "新しい問い合わせ: ") + ("🚨 緊急" if urgent else "通常")
    fields = [f"*Ticket:* `{escape_mrkdwn(ticket.id)}`", f"*Priority:* {escape_mrkdwn(ticket.priority)}",
              f"*Reason:* {escape_mrkdwn(ticket.reason)}", f"*Channel:* {escape_mrkdwn(ticket.address.channel)}"]
    for key in SUMMARY_KEYS:
        value = (ticket.summary or {}).get(key)
        if value not in (None, "", [], {}):
            text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            fields.append(f"*{key}:* {escape_mrkdwn(text[:200])}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(fields)[:SECTION_MAX]}},
    ]
    if console_url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _link(console_url, "console")}]})
    return {"text": f"{head} {ticket.id} ({ticket.priority}, {ticket.reason})", "blocks": blocks}
