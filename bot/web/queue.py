"""The ticket queue as the console shows it: ages as short text, and QueueEvents, the push stream
of ticket changes that console pages follow (/console/api/events). A ticket's JSON: bot/ticket_json.py."""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from bot.web.sse import KEEPALIVE, KEEPALIVE_LINE, with_keepalive


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
