"""The ticket queue as the console shows it: tickets as JSON, one-line summaries, and QueueEvents,
the push stream of ticket changes that console pages follow (/console/api/events)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any, Callable

from bot.messages import as_utc
from bot.ports import Ticket, TicketDetail
from bot.web.sse import KEEPALIVE, KEEPALIVE_LINE, with_keepalive


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else as_utc(dt).isoformat().replace("+00:00", "Z")


def ticket_json(t: Ticket, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    return {
        "id": t.id, "conversation_id": t.conversation_id, "channel": t.address.channel,
        "status": t.status, "priority": t.priority, "reason": t.reason, "summary": t.summary,
        "operator": t.operator, "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "age_seconds": max(0, int((now - as_utc(t.created_at)).total_seconds())),
        "summary_line": summary_line(t.summary),
    }


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


def detail_json(d: TicketDetail) -> dict[str, Any]:
    return {
        "ticket": ticket_json(d.ticket),
        "transcript": [{"id": m.id, "role": m.role, "text": m.text, "created_at": iso(m.created_at),
                        "operator": (m.meta or {}).get("operator")} for m in d.transcript],
        "audit": [{"actor": a.actor, "action": a.action, "detail": a.detail, "at": iso(a.at)} for a in d.audit],
    }


def age_text(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class QueueEvents:
    """Ticket changes for the console pages that follow /console/api/events (event-loop thread)."""

    def __init__(self, live: Callable[[], bool] = lambda: False) -> None:
        self.live = live  # are changes of other processes and nodes pushed too?
        self.closing = False  # streams end after their first event (shutting down; the fuzzer)
        self._queues: set[asyncio.Queue] = set()

    def close_streams(self) -> None:
        """End every open stream (the console reconnects and polls). On the event loop's thread."""
        self.closing = True
        for q in list(self._queues):
            q.put_nowait(None)

    def publish(self, ticket_id: str, status: str) -> None:
        for q in list(self._queues):
            if q.qsize() < 100:  # a client that stopped reading misses events, and polls
                q.put_nowait({"id": ticket_id, "status": status})

    async def stream(self, keepalive: float = 15.0):
        q: asyncio.Queue = asyncio.Queue()
        self._queues.add(q)
        try:
            yield f"retry: 3000\nevent: hello\ndata: {json.dumps({'live': self.live()})}\n\n"
            if self.closing:
                return
            async for event in with_keepalive(q, keepalive):
                if event is None:
                    return
                yield KEEPALIVE_LINE if event is KEEPALIVE else f"event: ticket\ndata: {json.dumps(event)}\n\n"
        finally:
            self._queues.discard(q)
