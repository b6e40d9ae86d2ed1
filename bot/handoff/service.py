"""HandoffService: the ticket rules, written once, over a narrow TicketStore.

A conversation has at most one active (open or claimed) ticket. Escalating again while one is
active never opens a second: it upgrades the priority to urgent when asked and fills the gaps of
the summary. Facts the user gives later fill gaps too (merge_facts), never overwriting. The
lifecycle is open -> claimed -> resolved; an operator's reply claims an open ticket, is recorded
in the transcript and enqueued in the outbox in the same transaction. Every change is audited.
Operators type ticket ids by hand, so ids are normalised ("t-20261128-AB12").
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from bot.handoff.storable import as_utc
from bot.messages import Address, Reply
from bot.ports import (
    OutboxItem,
    Ticket,
    TicketDetail,
    TicketNotFound,
    TicketStateError,
    TicketStore,
    TicketTransaction,
    UndeliveredItem,
)

ACTIVE_STATUSES = ("open", "claimed")
PRIORITIES = ("urgent", "normal")


class HandoffService:
    """Implements bot.ports.Handoff. `tickets` also serves the outbox (bot.ports.Outbox)."""

    def __init__(self, tickets: Any) -> None:
        self.tickets: TicketStore = tickets
        self.outbox = tickets

    # ------------------------------------------------------------ escalation (the core)

    def open_ticket(self, address: Address, *, reason: str, priority: str, summary: dict[str, Any]) -> Ticket:
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
        with self.tickets.ticket_transaction(address) as tx:
            active = tx.active_ticket()
            if active is not None:
                return self._escalate_again(tx, active, reason, priority, summary)
            tid = new_ticket_id(tx.now)
            while tx.ticket_id_taken(tid):
                tid = new_ticket_id(tx.now)
            ticket, linked = tx.add_ticket(Ticket(
                id=tid, conversation_id=address.conversation_id, address=address, status="open",
                priority=priority, reason=reason, summary=dict(summary or {}), created_at=tx.now,
                updated_at=tx.now))
            tx.audit(tid, "bot", "opened", f"reason={reason} priority={priority}; {linked} messages linked")
            return ticket

    def _escalate_again(self, tx: TicketTransaction, ticket: Ticket, reason: str, priority: str,
                        summary: dict[str, Any]) -> Ticket:
        """A repeated escalation joins the active ticket: urgent wins, the summary gains what it lacked."""
        changed = []
        if priority == "urgent" and ticket.priority != "urgent":
            ticket = replace(ticket, priority="urgent")
            changed.append("priority urgent")
        merged = merge_summary(ticket.summary, summary)
        if merged != ticket.summary:
            ticket = replace(ticket, summary=merged)
            changed.append("summary")
        if not changed:
            return ticket
        tx.audit(ticket.id, "bot", "updated", f"escalated again ({reason}): {', '.join(changed)}")
        return tx.save_ticket(replace(ticket, updated_at=tx.now))

    def merge_facts(self, ticket_id: str, facts: dict[str, Any]) -> Ticket:
        with self.tickets.ticket_transaction() as tx:
            ticket = self._get(tx, ticket_id)
            merged = merge_summary(ticket.summary, facts)
            if merged == ticket.summary:
                return ticket
            tx.audit(ticket.id, "bot", "updated", f"facts from the user: {', '.join(sorted(facts))}")
            return tx.save_ticket(replace(ticket, summary=merged, updated_at=tx.now))

    def active_ticket(self, conversation_id: str) -> Ticket | None:
        return self.tickets.active_ticket(conversation_id)

    # ------------------------------------------------------------ operators

    def claim(self, ticket_id: str, operator: str) -> Ticket:
        with self.tickets.ticket_transaction() as tx:
            ticket = self._get(tx, ticket_id)
            if ticket.status == "resolved":
                raise TicketStateError(f"ticket {ticket.id} is resolved and cannot be claimed")
            if ticket.status == "claimed":
                if ticket.operator == operator:
                    return ticket  # a repeated click
                raise TicketStateError(f"ticket {ticket.id} is already claimed by {ticket.operator}")
            tx.audit(ticket.id, operator_actor(operator), "claimed")
            return tx.save_ticket(replace(ticket, status="claimed", operator=operator, updated_at=tx.now))

    def reply(self, ticket_id: str, operator: str, text: str) -> Ticket:
        with self.tickets.ticket_transaction() as tx:
            ticket = self._get(tx, ticket_id)
            if ticket.status == "resolved":
                raise TicketStateError(f"ticket {ticket.id} is resolved; the conversation is back with the bot")
            actor = operator_actor(operator)
            if ticket.status == "open":  # replying is taking the ticket
                ticket = replace(ticket, status="claimed", operator=operator)
                tx.audit(ticket.id, actor, "claimed", "by replying")
            newest, state_language = tx.conversation(ticket.conversation_id)
            address = newest or ticket.address  # the conversation's newest route
            language = ticket.summary.get("language")
            reply = operator_reply(address, language if language in ("ja", "en") else state_language, text)
            # The reply JSON rides along in the transcript: the widget's feed shows it from there.
            msg = tx.add_message(address, "operator", text, {"operator": operator, "reply": reply.to_payload()},
                                 ticket.id)
            tx.enqueue(address, reply, ticket.id)
            tx.audit(ticket.id, actor, "replied", f"message #{msg.id}")
            return tx.save_ticket(replace(ticket, updated_at=tx.now))

    def resolve(self, ticket_id: str, operator: str) -> Ticket:
        with self.tickets.ticket_transaction() as tx:
            ticket = self._get(tx, ticket_id)
            if ticket.status == "resolved":
                raise TicketStateError(f"ticket {ticket.id} is already resolved")
            tx.audit(ticket.id, operator_actor(operator), "resolved")
            return tx.save_ticket(replace(ticket, status="resolved", operator=ticket.operator or operator,
                                          updated_at=tx.now))

    def list_queue(self, statuses: tuple[str, ...] = ACTIVE_STATUSES) -> list[Ticket]:
        return sorted(self.tickets.tickets(tuple(statuses)),
                      key=lambda t: (t.priority != "urgent", as_utc(t.created_at), t.id))

    def get_detail(self, ticket_id: str) -> TicketDetail | None:
        return self.tickets.ticket_detail(normalize_ticket_id(ticket_id))

    # ------------------------------------------------------------ re-announcing unclaimed urgent tickets

    def overdue_urgent(self, now: datetime, older_than_minutes: float) -> list[Ticket]:
        cutoff = as_utc(now) - timedelta(minutes=older_than_minutes)  # type: ignore[operator]
        due = [t for t in self.tickets.tickets(("open",))
               if t.priority == "urgent" and as_utc(t.reannounced_at or t.created_at) <= cutoff]  # type: ignore[operator]
        return sorted(due, key=lambda t: (as_utc(t.created_at), t.id))

    def mark_reannounced(self, ticket_id: str, at: datetime) -> None:
        with self.tickets.ticket_transaction() as tx:
            ticket = self._get(tx, ticket_id)
            tx.audit(ticket.id, "system", "reannounced", "unclaimed urgent ticket announced again")
            tx.save_ticket(replace(ticket, reannounced_at=as_utc(at)))

    # ------------------------------------------------------------ the outbox

    def enqueue(self, address: Address, reply: Reply, ticket_id: str | None = None) -> int:
        return self.outbox.enqueue(address, reply, ticket_id)

    def pending_outbox(self, limit: int = 50) -> list[OutboxItem]:
        return self.outbox.pending_outbox(limit)

    def lease_outbox(self, limit: int = 50, seconds: float = 60.0) -> list[OutboxItem]:
        return self.outbox.lease_outbox(limit, seconds)

    def mark_sent(self, item_id: int) -> None:
        self.outbox.mark_sent(item_id)

    def mark_failed(self, item_id: int, error: str, retry_in: float | None = None, *,
                    permanent: bool = False) -> None:
        self.outbox.mark_failed(item_id, error, retry_in, permanent=permanent)

    def retry_outbox(self, item_id: int, actor: str = "system") -> bool:
        return self.outbox.retry_outbox(item_id, actor)

    def undelivered(self, limit: int = 100, ticket_id: str | None = None) -> list[UndeliveredItem]:
        return self.outbox.undelivered(limit, ticket_id)

    def outbox_counts(self) -> dict[str, int]:
        return self.outbox.outbox_counts()

    def outbox_status(self, item_id: int) -> dict[str, Any] | None:
        return self.outbox.outbox_status(item_id)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _get(tx: TicketTransaction, ticket_id: str) -> Ticket:
        ticket = tx.ticket(normalize_ticket_id(ticket_id))
        if ticket is None:
            raise TicketNotFound(f"no ticket {ticket_id!r}")
        return ticket


def new_ticket_id(now: datetime) -> str:
    """Short, human-friendly, sortable by day: T-20261128-ab12."""
    return f"T-{as_utc(now):%Y%m%d}-{secrets.token_hex(2)}"


def normalize_ticket_id(ticket_id: str) -> str:
    """Operators type ids by hand: accept surrounding blanks and any case ("t-20261128-AB12")."""
    tid = (ticket_id or "").strip()
    if tid[:2].upper() == "T-":
        return "T-" + tid[2:].lower()
    return tid


def merge_summary(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A later escalation or fact adds what the summary lacked; it never erases one."""
    merged = dict(old)
    for key, value in (new or {}).items():
        if value not in (None, "", [], {}) and merged.get(key) in (None, "", [], {}):
            merged[key] = value
    return merged


def operator_actor(operator: str) -> str:
    return f"operator:{operator}"


def operator_reply(address: Address, language: str | None, text: str) -> Reply:
    lang = language if language in ("ja", "en") else "ja"
    return Reply(conversation_id=address.conversation_id, language=lang, answer=text, kind="operator")  # type: ignore[arg-type]
