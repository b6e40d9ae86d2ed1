"""Rules shared by every HandoffService implementation (in-memory and SQL): ticket ids,
lifecycle transitions, audit actors, the outbox payload. Stdlib only."""

from __future__ import annotations

import json
import secrets
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from bot.messages import Address, Reply
from bot.ports import ConversationState, TicketNotFound, TicketStateError

ACTIVE_STATUSES = ("open", "claimed")
PRIORITIES = ("urgent", "normal")
DEFAULT_MAX_ATTEMPTS = 5  # an outbox item becomes 'failed' after this many failed deliveries


def as_utc(dt: datetime | None) -> datetime | None:
    """Aware UTC datetime (naive values are taken to be UTC, as SQLite returns them)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def new_ticket_id(now: datetime) -> str:
    """Short, human-friendly, sortable by day: T-20261128-ab12."""
    return f"T-{as_utc(now):%Y%m%d}-{secrets.token_hex(2)}"


def normalize_ticket_id(ticket_id: str) -> str:
    """Operators type ids by hand: accept surrounding blanks and any case ("t-20261128-AB12")."""
    tid = (ticket_id or "").strip()
    if tid[:2].upper() == "T-":
        return "T-" + tid[2:].lower()
    return tid


def check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
    return priority


def actor_for_role(role: str, meta: dict[str, Any] | None = None) -> str:
    if role == "operator":
        name = (meta or {}).get("operator")
        return f"operator:{name}" if name else "operator"
    return role  # user | bot | system


def operator_actor(operator: str) -> str:
    return f"operator:{operator}"


def check_claim(ticket_id: str, status: str, current_operator: str | None, operator: str) -> bool:
    """True when the claim changes the ticket; False when it is a repeat by the same operator."""
    if status == "resolved":
        raise TicketStateError(f"ticket {ticket_id} is resolved and cannot be claimed")
    if status == "claimed":
        if current_operator == operator:
            return False
        raise TicketStateError(f"ticket {ticket_id} is already claimed by {current_operator}")
    return True


def check_reply(ticket_id: str, status: str) -> None:
    if status == "resolved":
        raise TicketStateError(f"ticket {ticket_id} is resolved; the conversation is back with the bot")


def check_resolve(ticket_id: str, status: str) -> None:
    if status == "resolved":
        raise TicketStateError(f"ticket {ticket_id} is already resolved")


def not_found(ticket_id: str) -> TicketNotFound:
    return TicketNotFound(f"no ticket {ticket_id!r}")


def merge_summary(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A repeated escalation adds facts the first one lacked; it never erases one."""
    merged = dict(old)
    for key, value in (new or {}).items():
        if value not in (None, "", [], {}) and merged.get(key) in (None, "", [], {}):
            merged[key] = value
    return merged


def operator_reply(address: Address, language: str | None, text: str) -> Reply:
    lang = language if language in ("ja", "en") else "ja"
    return Reply(conversation_id=address.conversation_id, language=lang, answer=text, kind="operator")


def ticket_id_of_reply(reply: Reply) -> str | None:
    return reply.escalation.ticket_id if reply.escalation else None


# ---------------------------------------------------------------- state <-> JSON


def state_to_json(state: ConversationState) -> dict[str, Any]:
    # Field by field, not dataclasses.asdict: its recursive deep copy of `facts` (which holds the
    # pending "more" sentences) was ~0.8 ms a turn. The stores copy the result (JSON) anyway.
    return {
        "conversation_id": state.conversation_id,
        "address": state.address.to_dict(),
        "language": state.language,
        "carrier": state.carrier,
        "topics": list(state.topics),
        "failures": state.failures,
        "last_query": state.last_query,
        "facts": dict(state.facts),
    }


def state_from_json(data: dict[str, Any], updated_at: datetime | None) -> ConversationState:
    return ConversationState(
        conversation_id=data["conversation_id"],
        address=Address.from_dict(data["address"]),
        language=data.get("language"),
        carrier=data.get("carrier"),
        topics=list(data.get("topics") or []),
        failures=int(data.get("failures") or 0),
        last_query=data.get("last_query"),
        facts=dict(data.get("facts") or {}),
        updated_at=as_utc(updated_at),
    )


# ---------------------------------------------------------------- storable text

def clean_text(value: str) -> str:
    """What every backend can store: no NUL (PostgreSQL rejects it in text and JSONB) and no lone
    surrogate (not encodable as UTF-8). Applied by both stores so they behave alike."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def clean_json(value: Any) -> Any:
    """clean_text applied to every string (keys included) of a JSON-like value."""
    # Fast path: one C-speed dump shows whether anything needs cleaning at all (a NUL appears as
    # the escape \u0000; a lone surrogate makes the UTF-8 encode fail). Nearly every reply and
    # state is clean, and walking them in Python was ~0.7 ms a turn.
    try:
        dumped = json.dumps(value, ensure_ascii=False)
        if "\\u0000" not in dumped:
            dumped.encode("utf-8")
            return value
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        pass
    return _clean_json_walk(value)


def _clean_json_walk(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json_walk(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json_walk(v) for v in value]
    return value


def json_roundtrip(value: Any) -> Any:
    """What a JSON column gives back (tuples become lists; a non-JSON value raises TypeError):
    the in-memory store uses it to behave exactly like the SQL one."""
    return json.loads(json.dumps(clean_json(value)))


# ---------------------------------------------------------------- one process's exclusive jobs


class TryLocks:
    """Named non-blocking locks inside one process: `with locks.try_hold(name) as mine:` gives True
    to one holder at a time and False to the others. The in-memory store's exclusive(), and the SQL
    store's on an in-memory SQLite database (neither is shared with another process)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def try_hold(self, name: str) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()
