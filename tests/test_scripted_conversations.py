"""Runs the scripted multi-turn conversations in tests/conversations/*.yaml (Rasa-style end-to-end
stories as data) against the real ConversationService on the fake knowledge base."""

from __future__ import annotations

import unicodedata
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from bot.messages import Address, InboundMessage, Reply, utcnow
from tests.fakes import make_service
from bot.handoff.service import HandoffService

HERE = Path(__file__).parent / "conversations"
CASES = [(f"{path.stem}: {case['name']}", case) for path in sorted(HERE.glob("*.yaml"))
         for case in yaml.safe_load(path.read_text(encoding="utf-8"))]


def _n(s: str) -> str:
    return unicodedata.normalize("NFKC", str(s)).casefold()


def check_text(expect: dict, text: str, where: str) -> None:
    low = _n(text)
    if "contains_any" in expect:
        assert any(_n(x) in low for x in expect["contains_any"]), f"{where}: none of {expect['contains_any']} in {text!r}"
    for x in expect.get("contains_all", []):
        assert _n(x) in low, f"{where}: {x!r} missing from {text!r}"
    for x in expect.get("not_contains", []):
        assert _n(x) not in low, f"{where}: {x!r} must not be in {text!r}"


def check_replies(expect: dict, replies, store, cid: str, where: str) -> None:
    if "replies" in expect:
        assert len(replies) == expect["replies"], f"{where}: {len(replies)} replies"
    if replies:
        r = replies[0]
        check_text(expect, r.answer, where)
        if "kind" in expect:
            assert r.kind == expect["kind"], f"{where}: kind {r.kind}"
        if "language" in expect:
            assert r.language == expect["language"], f"{where}: language {r.language}"
        if "citations" in expect:
            assert bool(r.citations) == expect["citations"], f"{where}: citations {r.citations}"
        if "escalation" in expect:
            got = r.escalation.priority if r.escalation else "none"
            assert got == expect["escalation"], f"{where}: escalation {got}"
        if "reason" in expect:
            assert r.escalation and r.escalation.reason == expect["reason"], f"{where}: reason {r.escalation}"
    ticket = HandoffService(store).active_ticket(cid)
    if "ticket" in expect:
        assert (ticket.status if ticket else "none") == expect["ticket"], f"{where}: ticket {ticket}"
    if "ticket_priority" in expect:
        assert ticket and ticket.priority == expect["ticket_priority"], f"{where}: ticket {ticket}"
    for key, value in (expect.get("summary") or {}).items():
        assert ticket and ticket.summary.get(key) == value, f"{where}: summary {key}={ticket.summary.get(key) if ticket else None}"


def check_outbox(expect: dict, store, where: str) -> None:
    items = store.pending_outbox()
    assert items, f"{where}: outbox empty"
    reply = Reply.from_payload(items[-1].reply)
    check_text(expect, reply.answer, where)
    if "kind" in expect:
        assert reply.kind == expect["kind"], f"{where}: outbox kind {reply.kind}"
    if "citations" in expect:
        assert bool(reply.citations) == expect["citations"]


@pytest.mark.parametrize("name,case", CASES, ids=[n for n, _ in CASES])
def test_scripted_conversation(name, case):
    service, store, _ = make_service()
    cid = f"script:{abs(hash(name))}"
    address = Address("script", cid)
    start = utcnow()
    for i, step in enumerate(case["steps"], 1):
        where = f"{name} step {i}"
        if "user" in step:
            replies = service.handle(InboundMessage(address=address, text=step["user"],
                                                    message_id=step.get("message_id"), action=step.get("action")))
            check_replies(step.get("expect") or {}, replies, store, cid, where)
        elif "operator" in step:
            ticket = HandoffService(store).active_ticket(cid)
            assert ticket, f"{where}: no ticket to {step['operator']}"
            op = step.get("name", "sato")
            if step["operator"] == "claim":
                HandoffService(store).claim(ticket.id, op)
            elif step["operator"] == "reply":
                HandoffService(store).reply(ticket.id, op, step["text"])
            elif step["operator"] == "resolve":
                HandoffService(store).resolve(ticket.id, op)
            else:
                pytest.fail(f"{where}: unknown operator step {step['operator']}")
            if "expect_outbox" in step:
                check_outbox(step["expect_outbox"], store, where)
        elif "reannounce_after_minutes" in step:
            n = service.reannounce_overdue(start + timedelta(minutes=step["reannounce_after_minutes"]))
            assert n == step.get("expect_count", n), f"{where}: reannounced {n}"
            if "expect_outbox" in step:
                check_outbox(step["expect_outbox"], store, where)
        else:
            pytest.fail(f"{where}: unknown step {step}")
