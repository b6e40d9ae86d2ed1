"""Value types that cross the boundary between channels and the conversation core.

Stdlib only: channels, the core, the handoff service and the CLI all import this,
and it imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Language = Literal["ja", "en"]
Priority = Literal["urgent", "normal"]


_SCALARS = frozenset({str, int, float, bool, type(None)})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(dt: datetime | None) -> datetime | None:
    """Aware UTC datetime (naive values are taken to be UTC, as SQLite returns them)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


@dataclass(frozen=True)
class Address:
    """Where replies for one conversation go back to.

    `channel` is the registry key ("cli", "web", "telegram", "line", "slack").
    `conversation_id` is globally unique and prefixed by the channel, e.g. "telegram:12345".
    `route` holds what the channel needs to reach the user later (Telegram chat_id,
    LINE userId, Slack channel/response_url...). It must be JSON-serialisable and hold no secret.
    """

    channel: str
    conversation_id: str
    user_id: str = ""
    route: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Called several times per turn: skip asdict's recursive copy when the route is flat scalars
        # (the usual case); the result is the same.
        route = self.route
        if all(type(v) in _SCALARS for v in route.values()):
            return {"channel": self.channel, "conversation_id": self.conversation_id,
                    "user_id": self.user_id, "route": dict(route)}
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Address":
        return cls(d["channel"], d["conversation_id"], d.get("user_id", ""), dict(d.get("route") or {}))


@dataclass(frozen=True)
class InboundMessage:
    """One user message (or button action) as the core sees it, whatever the platform."""

    address: Address
    text: str
    # Platform message/update id, for de-duplicating retried webhooks. None: never a duplicate.
    message_id: str | None = None
    # "request_human" when the user pressed a "talk to a person" button or sent /human.
    action: str | None = None
    # Caller-supplied id echoed in the reply (batch mode of `pbxbot ask --jsonl`).
    request_id: str | None = None
    # A platform that pushes replies: they are written to the outbox in the turn's own transaction
    # (sent at once by the caller, by the outbox dispatcher if that fails or the process dies).
    # False for the widget's request/response route, whose reply is the HTTP response.
    outbox: bool = False

    @property
    def conversation_id(self) -> str:
        return self.address.conversation_id


@dataclass(frozen=True)
class Citation:
    n: int
    doc_id: str
    title: str
    publisher: str
    url: str
    published: str | None  # YYYY-MM-DD or None when the source shows no date


@dataclass(frozen=True)
class Escalation:
    reason: str  # short code: user_request | incident | billing_dispute | repeated_failure | low_confidence
    priority: Priority
    ticket_id: str


ReplyKind = Literal["answer", "incident", "handoff", "operator", "notice", "scope", "greeting", "error", "not_covered", "clarify"]


@dataclass(frozen=True)
class Reply:
    """A neutral reply; each channel renders it its own way (text is always enough)."""

    conversation_id: str
    language: Language
    answer: str
    citations: tuple[Citation, ...] = ()
    escalation: Escalation | None = None
    confidence: float = 0.0
    kind: ReplyKind = "answer"
    id: str | None = None  # echoed request id
    # Offer a "talk to a person" button where the channel supports buttons.
    offer_human: bool = False
    # Where the store keeps this reply and the user message it answers (transcript message ids;
    # None when not recorded). Not part of the reply JSON: the widget uses them as event numbers.
    stored_id: int | None = None
    reply_to: int | None = None
    # The outbox item that owes this reply to the user (InboundMessage.outbox): mark it sent once
    # delivered. Also the idempotency key of platforms that have one (LINE's X-Line-Retry-Key).
    outbox_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The reply JSON of ../shared/contract.md (extra keys are allowed by the contract)."""
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "language": self.language,
            "answer": self.answer,
            # explicit dicts: asdict's recursive deep copy cost more than the rest of to_json
            "citations": [{"n": c.n, "doc_id": c.doc_id, "title": c.title, "publisher": c.publisher,
                           "url": c.url, "published": c.published} for c in self.citations],
            "escalation": asdict(self.escalation) if self.escalation else None,
            "confidence": round(float(self.confidence), 4),
            "kind": self.kind,
        }

    def to_payload(self) -> dict[str, Any]:
        """What the store keeps (outbox, transcript meta): the reply JSON plus "offer_human"."""
        data = self.to_json()
        data["offer_human"] = self.offer_human
        return data

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "Reply":
        """Rebuild a Reply from to_payload() output (or the contract's reply JSON)."""
        esc = payload.get("escalation")
        return cls(
            conversation_id=payload["conversation_id"],
            language=payload.get("language") or "ja",
            answer=payload.get("answer", ""),
            citations=tuple(Citation(**c) for c in payload.get("citations") or ()),
            escalation=Escalation(**esc) if esc else None,
            confidence=float(payload.get("confidence") or 0.0),
            kind=payload.get("kind") or "answer",
            id=payload.get("id"),
            offer_human=bool(payload.get("offer_human", False)),
        )
