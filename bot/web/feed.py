"""TranscriptFeed: the widget's live events, polled from the transcript in the store (not kept in
process memory).

Every message of a web conversation (the user's, the bot's, an operator's) is already in the
store's transcript, with an id that only grows. So an event's number is its message id, history is
a transcript query, and live delivery is one small poll per server process: "which messages came
after the last one I saw?" (ids and conversation ids only), then the full rows of those whose
conversation has a widget connected to this process. That is what lets several worker processes
serve one set of widgets: an operator's reply written by one worker reaches a browser connected to
another within one poll interval, and a widget reloaded after a restart still gets its history.

A process that writes a message itself (a reply through the outbox) calls wake() so its own
widgets get it at once rather than at the next poll. On PostgreSQL the database announces every
committed message to every node (LISTEN/NOTIFY, bot/handoff/changes.py): `notify()` wakes the
feed when the message belongs to a conversation with a widget connected here, and the poll
becomes a slow safety net (LIVE_POLL_SECONDS) for as long as notifications flow.

PostgreSQL hands out ids at insert time, so a transaction can commit id 41 after id 42 was seen.
Missing ids below the cursor are therefore asked for again for a while (GAP_SECONDS) before being
taken as rolled back; SQLite writes one transaction at a time and never leaves such gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable, Sequence

from bot.ports import ConversationStore, StoredMessage

log = logging.getLogger("bot.web.feed")

RunSync = Callable[..., Awaitable[Any]]
POLL_SECONDS = 0.5
LIVE_POLL_SECONDS = 5.0  # with change notifications flowing (PostgreSQL)
GAP_SECONDS = 10.0
INDEX_BATCH = 1000
HISTORY_LIMIT = 200  # events a reconnecting widget gets back at most (the newest)
QUEUE_SIZE = 500


def reply_event(seq: int | None, at: float | None, payload: dict[str, Any]) -> dict[str, Any]:
    """The widget's JSON for one reply: its number, time and role, then Reply.to_payload()."""
    role = "operator" if payload.get("kind") == "operator" else "bot"
    return {"seq": seq, "at": at, "role": role, **payload}


def event_of(msg: StoredMessage) -> dict[str, Any] | None:
    """The widget's JSON for one transcript message (None: not shown to the user)."""
    at = msg.created_at.timestamp() if msg.created_at else None
    if msg.role == "user":
        return {"seq": msg.id, "at": at, "role": "user", "text": msg.text, "action": msg.meta.get("action"),
                "client_id": msg.meta.get("message_id")}  # the widget's client_id
    if msg.role not in ("bot", "operator"):
        return None
    payload = msg.meta.get("reply")
    if not isinstance(payload, dict):  # written before replies kept their JSON: rebuild the essentials
        payload = {"id": None, "conversation_id": msg.conversation_id, "language": msg.meta.get("language", "ja"),
                   "answer": msg.text, "citations": [], "escalation": None, "confidence": 0.0,
                   "kind": "operator" if msg.role == "operator" else "answer", "offer_human": False}
    return reply_event(msg.id, at, payload)


class TranscriptFeed:
    def __init__(self, store: ConversationStore, run_sync: RunSync, *, poll_seconds: float = POLL_SECONDS,
                 is_followed: Callable[[str], bool] = lambda cid: cid.startswith("web:")) -> None:
        self.store = store
        self.run_sync = run_sync
        self.poll_seconds = poll_seconds
        self.is_followed = is_followed
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._cursor: int | None = None
        self._gaps: dict[int, float] = {}  # missing id -> monotonic time first missed
        self._wake = asyncio.Event()
        self._stopping = False
        self.last_error: str | None = None
        self.live: Callable[[], bool] = lambda: False  # are change notifications flowing?

    # ------------------------------------------------------------ reading

    def history(self, conversation_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Events of one conversation after `after` (sync: call in a worker thread)."""
        msgs = self.store.messages_after(conversation_id, max(0, int(after)))[-HISTORY_LIMIT:]
        return [e for e in map(event_of, msgs) if e is not None]

    # ------------------------------------------------------------ live

    def subscribe(self, conversation_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._subscribers.setdefault(conversation_id, set()).add(q)
        return q

    def unsubscribe(self, conversation_id: str, q: asyncio.Queue) -> None:
        subs = self._subscribers.get(conversation_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subscribers[conversation_id]

    def wake(self) -> None:
        """Poll now (this process just wrote something a widget may be waiting for)."""
        self._wake.set()

    def notify(self, message_id: int, conversation_id: str) -> None:
        """A message was committed somewhere (a change notification): poll now if a widget here
        follows its conversation. Event-loop thread only."""
        if conversation_id in self._subscribers:
            self._wake.set()

    def close_streams(self) -> None:
        """End every open stream (shutdown); widgets reconnect elsewhere. Event-loop thread only."""
        self._stopping = True
        for subs in self._subscribers.values():
            for q in list(subs):
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(None)
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.poll()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep trying, report in /healthz
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("widget feed poll failed: %s", self.last_error)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LIVE_POLL_SECONDS if self.live() else self.poll_seconds)
            self._wake.clear()

    async def poll(self) -> int:
        """One round: deliver new messages to this process's subscribers; returns how many."""
        if self._cursor is None:
            self._cursor = await self.run_sync(self.store.latest_message_id)
            return 0
        delivered = 0
        for _ in range(20):  # a burst bigger than one index batch is read in a few more batches now
            index, n = await self._poll_once()
            delivered += n
            if len(index) < INDEX_BATCH:
                break
        return delivered

    async def _poll_once(self) -> tuple[list[tuple[int, str]], int]:
        index, rows = await self.run_sync(self._read_new, self._cursor, sorted(self._gaps),
                                          set(self._subscribers))
        for msg in rows:  # a missed id that has committed since: no longer a gap
            self._gaps.pop(msg.id, None)
        self._advance(index)
        delivered = 0
        for msg in rows:
            if not self.is_followed(msg.conversation_id):
                continue
            event = event_of(msg)
            if event is None:
                continue
            for q in list(self._subscribers.get(msg.conversation_id, ())):
                with contextlib.suppress(asyncio.QueueFull):  # a stuck client: it catches up from history on reconnect
                    q.put_nowait(event)
                    delivered += 1
        return index, delivered

    def _read_new(self, cursor: int, gaps: Sequence[int], followed: set[str]
                  ) -> tuple[list[tuple[int, str]], list[StoredMessage]]:
        index = self.store.message_index_after(cursor, INDEX_BATCH)
        wanted = [i for i, cid in index if cid in followed and self.is_followed(cid)]
        if gaps:  # ids missed earlier that may have committed since
            wanted += gaps
        return index, self.store.messages_by_id(wanted) if wanted else []

    def _advance(self, index: list[tuple[int, str]]) -> None:
        now = time.monotonic()
        if index:
            seen = {i for i, _ in index}
            expected = self._cursor + 1 if self._cursor is not None else index[0][0]
            for missing in range(expected, index[-1][0]):
                if missing not in seen and len(self._gaps) < 10_000:
                    self._gaps.setdefault(missing, now)
            self._cursor = index[-1][0]
        # a gap still missing after GAP_SECONDS was a rolled-back insert
        self._gaps = {i: t for i, t in self._gaps.items() if now - t < GAP_SECONDS}
