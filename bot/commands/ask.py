"""`pbxbot ask "TEXT" [--conversation ID] [--json]` and `pbxbot ask --jsonl` (batch, see
../shared/contract.md): one conversational turn through the same ConversationService as every
channel (SQLite in the data dir, the real retriever; an index is built first when there is none).

Batch: one JSON request per stdin line {"id", "text", "conversation_id"?}; one reply JSON per stdout
line, in input order; lines sharing a conversation_id share one conversation; a malformed line gives
{"id": ..., "error": "..."} on its line and the batch goes on.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any, TextIO

from bot.config import Settings
from bot.messages import Address, InboundMessage, Reply

CHANNEL = "cli"


def run(args, settings: Settings) -> int:
    if not args.jsonl and args.text is None:
        print('pbxbot ask: give the question, e.g. pbxbot ask "国際電話を止めるには？", or use --jsonl', file=sys.stderr)
        return 2
    from bot.wiring import build_conversation_service

    service = build_conversation_service(settings)
    if args.jsonl:
        return run_batch(service, sys.stdin, sys.stdout)
    conversation_id = args.conversation or f"{CHANNEL}:{uuid.uuid4().hex[:12]}"
    replies = service.handle(InboundMessage(address=address_for(conversation_id), text=args.text))
    deliver_pending(service, conversation_id, sys.stdout, as_json=args.json)
    for reply in replies:
        if args.json:
            print(json.dumps(reply.to_json(), ensure_ascii=False))
        else:
            print(render_text(reply))
    if not args.json:
        print(f"(conversation {conversation_id}: continue with --conversation {conversation_id})", file=sys.stderr)
    return 0


def address_for(conversation_id: str) -> Address:
    return Address(channel=CHANNEL, conversation_id=conversation_id)


def run_batch(service, stdin: TextIO, stdout: TextIO) -> int:
    """Lines in, lines out, same order; a bad line never stops the batch."""
    errors = 0
    for n, line in enumerate(stdin, 1):
        if not line.strip():
            continue
        request_id: Any = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
            request_id = req.get("id")
            text = req.get("text")
            if not isinstance(text, str):
                raise ValueError('"text" must be a string')
            cid = req.get("conversation_id")
            if cid is not None and not isinstance(cid, (str, int)):
                raise ValueError('"conversation_id" must be a string')
            cid = str(cid) if cid is not None else f"{CHANNEL}:batch-{uuid.uuid4().hex[:12]}"
            rid = None if request_id is None else str(request_id)
            replies = service.handle(InboundMessage(address=address_for(cid), text=text, request_id=rid))
            out = merge_replies(replies, cid, rid) if replies else _silent(service, cid, rid)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            errors += 1
            out = {"id": request_id if isinstance(request_id, (str, int)) else None,
                   "error": f"line {n}: {exc.__class__.__name__ if not str(exc) else str(exc)[:200]}"}
        stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        stdout.flush()
    return 0


def merge_replies(replies: list[Reply], cid: str, rid: str | None) -> dict[str, Any]:
    """One JSON line per request: the core returns at most one reply per turn today; if it ever
    returns more, their answers are joined and the citations renumbered in order."""
    if len(replies) == 1:
        return replies[0].to_json()
    first = replies[0].to_json()
    answers, citations = [], []
    for r in replies:
        offset = len(citations)
        text = r.answer
        for c in sorted(r.citations, key=lambda c: -c.n):
            text = text.replace(f"[{c.n}]", f"[{c.n + offset}]")
        answers.append(text)
        citations.extend({**c.__dict__, "n": c.n + offset} for c in r.citations)
    first.update(
        answer="\n".join(answers), citations=citations,
        escalation=next((r.to_json()["escalation"] for r in replies if r.escalation), None),
    )
    return first


def _silent(service, cid: str, rid: str | None) -> dict[str, Any]:
    """A message that joined an open ticket without acknowledgement (or a duplicate) still gets its line."""
    state = service.store.get_state(cid)
    lang = state.language if state and state.language in ("ja", "en") else "en"
    return {"id": rid, "conversation_id": cid, "language": lang, "answer": "", "citations": [], "escalation": None,
            "confidence": 0.0, "kind": "none"}


def deliver_pending(service, conversation_id: str, out: TextIO, *, as_json: bool) -> None:
    """Operator replies (and re-announcements) queued for this CLI conversation since the last turn."""

    for item in service.handoff.pending_outbox(limit=200):
        if item.address.channel != CHANNEL or item.address.conversation_id != conversation_id:
            continue
        reply = Reply.from_payload(item.reply)
        print(json.dumps(reply.to_json(), ensure_ascii=False) if as_json else render_text(reply), file=out)
        service.handoff.mark_sent(item.id)


def render_text(reply: Reply) -> str:
    """The channels' plain text, with who spoke and the escalation spelled out for a terminal."""
    from bot.channels.rendering import render_text as plain_text

    lines = [("[operator] " if reply.kind == "operator" else "") + plain_text(reply)]
    if reply.escalation:
        e = reply.escalation
        lines.append(f"-> ticket {e.ticket_id} ({e.priority}, {e.reason})")
    return "\n".join(lines)
