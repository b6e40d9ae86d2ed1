"""Values as the database keeps them: aware UTC datetimes, text without NUL or lone surrogates,
JSON of plain values, and the conversation state as a JSON document. Stdlib only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from bot.messages import Address, as_utc  # noqa: F401  (as_utc: the store's own name for it too)
from bot.ports import ConversationState


def clean_text(value: str) -> str:
    """What every backend can store: no NUL (PostgreSQL rejects it in text and JSONB) and no lone
    surrogate (not encodable as UTF-8)."""
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
    # state is clean, and walking them in Python costs more than the rest of their write.
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


def state_to_json(state: ConversationState) -> dict[str, Any]:
    # Field by field, not dataclasses.asdict: its recursive deep copy of `facts` (which holds the
    # pending "more" sentences) is slow on the turn's hot path. The store copies the result anyway.
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
