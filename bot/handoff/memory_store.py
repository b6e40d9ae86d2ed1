"""InMemoryHandoffStore: ConversationStore + HandoffService in process memory.

The fake shipped next to the real thing (SqlHandoffStore): same behaviour, checked by the same
contract suite (tests/contract/test_handoff_store.py). For unit tests and `pbxbot chat` without
a database. Thread-safe (one re-entrant lock); the clock is injectable. Stdlib only.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, ContextManager, Sequence

from bot.handoff import common
from bot.messages import Address, Reply, utcnow
from bot.ports import (
    AuditEntry,
    ConversationState,
    OutboxItem,
    Role,
    StoredMessage,
    Ticket,
    TicketDetail,
    TicketNotFound,
)


@dataclass
class _Outbox:
    id: int
    address: Address
    reply: dict[str, Any]
    created_at: datetime
    ticket_id: str | None = None
    status: str = "pending"  # pending | sent | failed
    attempts: int = 0
    last_error: str | None = None
    sent_at: datetime | None = None
    leased_until: datetime | None = None


@dataclass
class _Conversation:
    address: Address
    state: ConversationState | None = None
    message_ids: list[int] = field(default_factory=list)


class InMemoryHandoffStore:
    """Both roles of bot.ports in memory. `clock()` returns an aware UTC datetime."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_attempts: int = common.DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self._clock = clock
        self._max_attempts = max_attempts
        self._lock = threading.RLock()
        self._conversations: dict[str, _Conversation] = {}
        self._messages: dict[int, StoredMessage] = {}
        self._dedupe: dict[tuple[str, str], int] = {}  # (conversation_id, dedupe_key) -> message id
        self._tickets: dict[str, Ticket] = {}
        self._audit: list[AuditEntry] = []
        self._outbox: dict[int, _Outbox] = {}
        self._next_message_id = 1
        self._exclusive = common.TryLocks()
        self._next_outbox_id = 1
        self._revoked_sessions: dict[str, datetime] = {}

    def _now(self) -> datetime:
        return common.as_utc(self._clock())

    def close(self) -> None:  # same surface as SqlHandoffStore
        pass

    # ------------------------------------------------------------ ConversationStore

    def get_state(self, conversation_id: str) -> ConversationState | None:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            return copy.deepcopy(conv.state) if conv and conv.state else None

    def save_state(self, state: ConversationState) -> None:
        with self._lock:
            stored = common.state_from_json(common.json_roundtrip(common.state_to_json(state)), self._now())
            conv = self._conversation(state.address)
            conv.state = stored
            state.updated_at = stored.updated_at

    def record_message(
        self,
        address: Address,
        role: Role,
        text: str,
        *,
        handled: bool = True,
        dedupe_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> StoredMessage | None:
        with self._lock:
            key = (address.conversation_id, common.clean_text(dedupe_key)) if dedupe_key is not None else None
            if key is not None and key in self._dedupe:
                return None
            self._conversation(address, refresh=True)
            ticket = self._active(address.conversation_id)
            msg = self._add_message(address, role, text, handled=handled, meta=meta,
                                    ticket_id=ticket.id if ticket else None)
            if key is not None:
                self._dedupe[key] = msg.id
            if ticket is not None:
                self._audit_add(ticket.id, common.actor_for_role(role, meta), f"{role}_message",
                                f"message #{msg.id}")
            return copy.deepcopy(msg)

    def begin_turn(
        self,
        address: Address,
        text: str,
        *,
        dedupe_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[StoredMessage | None, ConversationState | None]:
        with self._lock:
            state = self.get_state(address.conversation_id)
            return self.record_message(address, "user", text, handled=False, dedupe_key=dedupe_key, meta=meta), state

    def complete_turn(
        self,
        address: Address,
        message_id: int,
        state: ConversationState | None,
        replies: Sequence[tuple[str, dict[str, Any]]],
    ) -> list[StoredMessage]:
        with self._lock:
            # Check everything that can fail before changing anything (all or nothing).
            stored_state = None
            if state is not None:
                stored_state = common.state_from_json(common.json_roundtrip(common.state_to_json(state)), self._now())
            metas = [common.json_roundtrip(dict(meta or {})) for _, meta in replies]
            self._conversation(address)
            if stored_state is not None:
                self._conversations[address.conversation_id].state = stored_state
                state.updated_at = stored_state.updated_at  # type: ignore[union-attr]
            ticket = self._active(address.conversation_id)
            out = []
            for (text, _), meta in zip(replies, metas):
                msg = self._add_message(address, "bot", text, handled=True, meta=meta,
                                        ticket_id=ticket.id if ticket else None)
                if ticket is not None:
                    self._audit_add(ticket.id, "bot", "bot_message", f"message #{msg.id}")
                out.append(copy.deepcopy(msg))
            msg = self._messages.get(message_id)
            if msg is not None:
                msg.handled = True
            return out

    def mark_handled(self, message_id: int) -> None:
        with self._lock:
            msg = self._messages.get(message_id)
            if msg is not None:
                msg.handled = True

    def unhandled_messages(self) -> list[StoredMessage]:
        with self._lock:
            return [copy.deepcopy(m) for m in sorted(self._messages.values(), key=lambda m: m.id)
                    if not m.handled]

    def transcript(self, conversation_id: str, limit: int | None = None) -> list[StoredMessage]:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            ids = conv.message_ids if conv else []
            if limit is not None:
                ids = ids[-limit:] if limit > 0 else []
            return [copy.deepcopy(self._messages[i]) for i in ids]

    def messages_after(self, conversation_id: str, after_id: int) -> list[StoredMessage]:
        with self._lock:
            conv = self._conversations.get(conversation_id)
            ids = conv.message_ids if conv else []
            return [copy.deepcopy(self._messages[i]) for i in ids if i > after_id]

    def exclusive(self, name: str) -> ContextManager[bool]:
        return self._exclusive.try_hold(name)

    def conversation_turn(self, conversation_id: str) -> ContextManager[None]:
        return contextlib.nullcontext()  # one process only: the core's own lock is enough

    def latest_message_id(self) -> int:
        with self._lock:
            return max(self._messages, default=0)

    def message_index_after(self, after_id: int, limit: int = 1000) -> list[tuple[int, str]]:
        with self._lock:
            ids = sorted(i for i in self._messages if i > after_id)[: max(1, limit)]
            return [(i, self._messages[i].conversation_id) for i in ids]

    def messages_by_id(self, ids: Sequence[int]) -> list[StoredMessage]:
        with self._lock:
            return [copy.deepcopy(self._messages[i]) for i in sorted(set(ids)) if i in self._messages]

    # ------------------------------------------------------------ HandoffService

    def merge_facts(self, ticket_id: str, facts: dict[str, Any]) -> Ticket:
        with self._lock:
            ticket = self._tickets.get(ticket_id)
            if ticket is None:
                raise TicketNotFound(ticket_id)
            merged = common.merge_summary(ticket.summary, common.json_roundtrip(dict(facts or {})))
            if merged != ticket.summary:
                ticket.summary, ticket.updated_at = merged, self._now()
                self._audit_add(ticket.id, "bot", "updated", f"facts from the user: {', '.join(sorted(facts))}")
            return copy.deepcopy(ticket)

    def open_ticket(
        self, address: Address, *, reason: str, priority: str, summary: dict[str, Any]
    ) -> Ticket:
        common.check_priority(priority)
        with self._lock:
            now = self._now()
            self._conversation(address, refresh=True)
            ticket = self._active(address.conversation_id)
            if ticket is not None:
                changed = []
                if priority == "urgent" and ticket.priority != "urgent":
                    ticket.priority = "urgent"
                    changed.append("priority urgent")
                merged = common.merge_summary(ticket.summary, common.json_roundtrip(dict(summary or {})))
                if merged != ticket.summary:
                    ticket.summary = merged
                    changed.append("summary")
                if changed:
                    ticket.updated_at = now
                    self._audit_add(ticket.id, "bot", "updated",
                                    f"escalated again ({reason}): {', '.join(changed)}")
                return copy.deepcopy(ticket)
            tid = common.new_ticket_id(now)
            while tid in self._tickets:
                tid = common.new_ticket_id(now)
            ticket = Ticket(
                id=tid, conversation_id=address.conversation_id, address=_stored(address), status="open",
                priority=priority, reason=reason, summary=common.json_roundtrip(dict(summary or {})),
                created_at=now, updated_at=now,
            )
            self._tickets[tid] = ticket
            linked = 0
            for mid in self._conversations[address.conversation_id].message_ids:
                msg = self._messages[mid]
                if msg.ticket_id is None:
                    msg.ticket_id = tid
                    linked += 1
            self._audit_add(tid, "bot", "opened",
                            f"reason={reason} priority={priority}; {linked} messages linked")
            return copy.deepcopy(ticket)

    def active_ticket(self, conversation_id: str) -> Ticket | None:
        with self._lock:
            t = self._active(conversation_id)
            return copy.deepcopy(t) if t else None

    def claim(self, ticket_id: str, operator: str) -> Ticket:
        with self._lock:
            t = self._get(ticket_id)
            if common.check_claim(t.id, t.status, t.operator, operator):
                t.status, t.operator, t.updated_at = "claimed", operator, self._now()
                self._audit_add(t.id, common.operator_actor(operator), "claimed", "")
            return copy.deepcopy(t)

    def reply(self, ticket_id: str, operator: str, text: str) -> Ticket:
        with self._lock:
            t = self._get(ticket_id)
            common.check_reply(t.id, t.status)
            now = self._now()
            if t.status == "open":  # replying is taking the ticket
                t.status, t.operator = "claimed", operator
                self._audit_add(t.id, common.operator_actor(operator), "claimed", "by replying")
            address = self._conversation(t.address).address  # the conversation's newest route
            reply = common.operator_reply(address, self._language(t), text)
            msg = self._add_message(address, "operator", text, handled=True,
                                    meta={"operator": operator, "reply": reply.to_payload()}, ticket_id=t.id)
            self._enqueue(address, reply, ticket_id=t.id)
            t.updated_at = now
            self._audit_add(t.id, common.operator_actor(operator), "replied", f"message #{msg.id}")
            return copy.deepcopy(t)

    def resolve(self, ticket_id: str, operator: str) -> Ticket:
        with self._lock:
            t = self._get(ticket_id)
            common.check_resolve(t.id, t.status)
            t.status, t.updated_at = "resolved", self._now()
            if not t.operator:
                t.operator = operator
            self._audit_add(t.id, common.operator_actor(operator), "resolved", "")
            return copy.deepcopy(t)

    def list_queue(self, statuses: tuple[str, ...] = ("open", "claimed")) -> list[Ticket]:
        with self._lock:
            found = [t for t in self._tickets.values() if t.status in statuses]
            found.sort(key=lambda t: (t.priority != "urgent", t.created_at, t.id))
            return copy.deepcopy(found)

    def get_detail(self, ticket_id: str) -> TicketDetail | None:
        with self._lock:
            t = self._tickets.get(common.normalize_ticket_id(ticket_id))
            if t is None:
                return None
            conv = self._conversations.get(t.conversation_id)
            msgs = [self._messages[i] for i in (conv.message_ids if conv else [])
                    if self._messages[i].ticket_id == t.id]
            audit = [a for a in self._audit if a.ticket_id == t.id]
            return TicketDetail(ticket=copy.deepcopy(t), transcript=copy.deepcopy(msgs),
                                audit=copy.deepcopy(audit))

    def overdue_urgent(self, now: datetime, older_than_minutes: float) -> list[Ticket]:
        cutoff = common.as_utc(now) - timedelta(minutes=older_than_minutes)
        with self._lock:
            found = [t for t in self._tickets.values()
                     if t.priority == "urgent" and t.status == "open"
                     and (t.reannounced_at or t.created_at) <= cutoff]
            found.sort(key=lambda t: (t.created_at, t.id))
            return copy.deepcopy(found)

    def mark_reannounced(self, ticket_id: str, at: datetime) -> None:
        with self._lock:
            t = self._get(ticket_id)
            t.reannounced_at = common.as_utc(at)
            self._audit_add(t.id, "system", "reannounced", "unclaimed urgent ticket announced again")

    # ------------------------------------------------------------ outbox

    def enqueue(self, address: Address, reply: Reply) -> int:
        with self._lock:
            self._conversation(address)
            return self._enqueue(address, reply, ticket_id=common.ticket_id_of_reply(reply))

    def pending_outbox(self, limit: int = 50) -> list[OutboxItem]:
        with self._lock:
            items = sorted((o for o in self._outbox.values() if o.status == "pending"),
                           key=lambda o: o.id)[:limit]
            return [OutboxItem(id=o.id, address=o.address, reply=copy.deepcopy(o.reply),
                               attempts=o.attempts, created_at=o.created_at) for o in items]

    def lease_outbox(self, limit: int = 50, seconds: float = 60.0) -> list[OutboxItem]:
        """Like pending_outbox, but each item is leased for `seconds`: other callers skip it until
        mark_sent/mark_failed or the lease runs out. Use this in a delivery loop."""
        with self._lock:
            now = self._now()
            items = sorted((o for o in self._outbox.values() if o.status == "pending"
                            and (o.leased_until is None or o.leased_until <= now)), key=lambda o: o.id)[:limit]
            for o in items:
                o.leased_until = now + timedelta(seconds=seconds)
            return [OutboxItem(id=o.id, address=o.address, reply=copy.deepcopy(o.reply),
                               attempts=o.attempts, created_at=o.created_at) for o in items]

    def mark_sent(self, item_id: int) -> None:
        with self._lock:
            o = self._outbox.get(item_id)
            if o is None or o.status == "sent":
                return
            o.status, o.sent_at, o.leased_until = "sent", self._now(), None
            o.attempts += 1
            if o.ticket_id and o.ticket_id in self._tickets:
                self._audit_add(o.ticket_id, "system", "delivered", f"outbox #{o.id}")

    def mark_failed(self, item_id: int, error: str, retry_in: float | None = None) -> None:
        """Count a failed attempt; the item stays leased for `retry_in` seconds (back-off shared by
        every worker and kept across restarts), then is due again, until max_attempts."""
        with self._lock:
            o = self._outbox.get(item_id)
            if o is None or o.status != "pending":
                return
            o.attempts += 1
            o.last_error = common.clean_text(error or "")[:1000]
            o.leased_until = self._now() + timedelta(seconds=retry_in) if retry_in else None
            if o.attempts >= self._max_attempts:
                o.status = "failed"
            if o.ticket_id and o.ticket_id in self._tickets:
                self._audit_add(o.ticket_id, "system", "delivery_failed",
                                f"outbox #{o.id} attempt {o.attempts}: {o.last_error[:200]}")

    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        with self._lock:
            now = self._now()
            self._revoked_sessions = {k: v for k, v in self._revoked_sessions.items() if v >= now}
            self._revoked_sessions[sid[:64]] = common.as_utc(expires_at)

    def session_revoked(self, sid: str) -> bool:
        with self._lock:
            return sid[:64] in self._revoked_sessions

    def outbox_status(self, item_id: int) -> dict[str, Any] | None:
        """status, attempts, last_error, sent_at of one outbox item (for tests and the console)."""
        with self._lock:
            o = self._outbox.get(item_id)
            if o is None:
                return None
            return {"status": o.status, "attempts": o.attempts, "last_error": o.last_error,
                    "sent_at": o.sent_at, "ticket_id": o.ticket_id}

    # ------------------------------------------------------------ internals (lock held)

    def _conversation(self, address: Address, *, refresh: bool = False) -> _Conversation:
        conv = self._conversations.get(address.conversation_id)
        if conv is None:
            conv = self._conversations[address.conversation_id] = _Conversation(address=_stored(address))
        elif refresh:  # the newest address wins (a Slack response_url, a LINE reply route...)
            conv.address = _stored(address)
        return conv

    def _add_message(self, address: Address, role: str, text: str, *, handled: bool,
                     meta: dict[str, Any] | None, ticket_id: str | None) -> StoredMessage:
        conv = self._conversation(address)
        msg = StoredMessage(
            id=self._next_message_id, conversation_id=address.conversation_id, role=role,  # type: ignore[arg-type]
            text=common.clean_text(text), created_at=self._now(), ticket_id=ticket_id, handled=handled,
            meta=common.json_roundtrip(dict(meta or {})),
        )
        self._next_message_id += 1
        self._messages[msg.id] = msg
        conv.message_ids.append(msg.id)
        return msg

    def _enqueue(self, address: Address, reply: Reply, *, ticket_id: str | None) -> int:
        item = _Outbox(id=self._next_outbox_id, address=_stored(address), reply=common.json_roundtrip(reply.to_payload()),
                       created_at=self._now(), ticket_id=ticket_id)
        self._next_outbox_id += 1
        self._outbox[item.id] = item
        return item.id

    def _active(self, conversation_id: str) -> Ticket | None:
        for t in self._tickets.values():
            if t.conversation_id == conversation_id and t.status in common.ACTIVE_STATUSES:
                return t
        return None

    def _get(self, ticket_id: str) -> Ticket:
        t = self._tickets.get(common.normalize_ticket_id(ticket_id))
        if t is None:
            raise common.not_found(ticket_id)
        return t

    def _language(self, t: Ticket) -> str | None:
        lang = t.summary.get("language")
        if lang in ("ja", "en"):
            return lang
        conv = self._conversations.get(t.conversation_id)
        return conv.state.language if conv and conv.state else None

    def _audit_add(self, ticket_id: str, actor: str, action: str, detail: str) -> None:
        self._audit.append(AuditEntry(ticket_id=ticket_id, actor=actor, action=action,
                                      detail=detail, at=self._now()))


def _stored(address: Address) -> Address:
    """The Address as a JSON column would give it back."""
    return Address.from_dict(common.json_roundtrip(address.to_dict()))
