"""The one JSON shape of a ticket: the console's API (/console/api/tickets, /console/api/tickets/{id})
and `pbxbot tickets list|show --json` print the same keys, so an operator's script reads both alike.
(They were two functions whose shapes had drifted apart: the API lacked `reannounced_at` and the
transcript's `handled`, the command lacked `summary_line`.)"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bot.messages import as_utc
from bot.ports import Ticket, TicketDetail


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else as_utc(dt).isoformat().replace("+00:00", "Z")


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the queue: carrier · still happening · amounts · language."""
    parts = []
    if summary.get("carrier"):
        parts.append(str(summary["carrier"]))
    if summary.get("still_happening") is True:
        parts.append("still happening / 継続中")
    for key in ("amounts", "destinations"):
        value = summary.get(key)
        if value:
            parts.append(", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    if summary.get("language"):
        parts.append(str(summary["language"]))
    return " · ".join(parts)[:160]


def ticket_json(t: Ticket, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    return {
        "id": t.id, "conversation_id": t.conversation_id, "channel": t.address.channel,
        "status": t.status, "priority": t.priority, "reason": t.reason, "summary": t.summary,
        "operator": t.operator, "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "reannounced_at": iso(t.reannounced_at),
        "age_seconds": max(0, int((now - as_utc(t.created_at)).total_seconds())),
        "summary_line": summary_line(t.summary or {}),
    }


def detail_json(d: TicketDetail) -> dict[str, Any]:
    return {
        "ticket": ticket_json(d.ticket),
        "transcript": [{"id": m.id, "role": m.role, "text": m.text, "created_at": iso(m.created_at),
                        "handled": m.handled, "operator": (m.meta or {}).get("operator")} for m in d.transcript],
        "audit": [{"actor": a.actor, "action": a.action, "detail": a.detail, "at": iso(a.at)} for a in d.audit],
    }
