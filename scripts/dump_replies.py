"""Dump every reply of the conversation core to the development inputs, to prove a change alters none.

    python scripts/dump_replies.py [--out FILE] [--profile FILE] [--cpu] [--warm-up]
    python scripts/dump_replies.py --out /tmp/before.jsonl   # on the old code
    python scripts/dump_replies.py --out /tmp/after.jsonl    # on the new code
    cmp /tmp/before.jsonl /tmp/after.jsonl                   # must print nothing

Inputs (development sets only): every case of knowledge/eval/conversations.jsonl and
knowledge/eval/dev_labelled/*.jsonl (multi-turn cases keep their conversation; loaded and split into
turns as scripts/eval_conversations.py does) and every question of knowledge/eval/retrieval.jsonl
(one conversation each). They run through ConversationService.handle on a fresh SQLite store in a
temporary directory, with the data dir's index and intent model (PBXBOT_DATA_DIR).

Output: one JSON line per turn: case id, turn number, the user text and each reply (answer text,
kind, language, confidence, citations, offer_human — the "talk to a person" button — and the
escalation), then the conversation's active ticket after the turn (status, priority, reason,
summary) and its saved state (language, carrier, topics, failures, last query, facts). Ticket ids
are random (T-YYYYMMDD-xxxx): each is replaced by T#n, n in order of first appearance, wherever it
occurs (reply text included).

--cpu prints the CPU time (time.process_time) of the turns, without loading, per turn;
--profile FILE writes a cProfile of the turns (pstats format); --warm-up first answers every turn
once in other conversations, unmeasured and not dumped (a long-running server's caches are warm;
the dump must not change either).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_conversations import build_service, is_labelled, labelled_turns  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.messages import Address, InboundMessage  # noqa: E402

EVAL = ROOT / "knowledge" / "eval"
TICKET_ID = re.compile(r"T-\d{8}-[0-9a-fA-F]{4}")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def workload() -> list[tuple[str, list[str]]]:
    """(case id, user turns) of every development conversation and question."""
    cases = _jsonl(EVAL / "conversations.jsonl")
    for path in sorted((EVAL / "dev_labelled").glob("*.jsonl")):
        cases += _jsonl(path)
    out = []
    for case in cases:
        turns = labelled_turns(case) if is_labelled(case) else case["turns"]
        out.append((str(case["id"]), [t["user"] for t in turns]))
    for q in _jsonl(EVAL / "retrieval.jsonl"):
        out.append((str(q["id"]), [q["question"]]))
    return out


class TicketIds:
    """Random ticket ids -> T#1, T#2, ... in order of first appearance."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        return TICKET_ID.sub(lambda m: self.names.setdefault(m.group(0), f"T#{len(self.names) + 1}"), text)


def reply_record(r) -> dict[str, Any]:
    return {
        "kind": r.kind, "language": r.language, "answer": r.answer, "confidence": repr(float(r.confidence)),
        "citations": [[c.n, c.doc_id, c.title, c.publisher, c.url, c.published] for c in r.citations],
        "offer_human": r.offer_human,
        "escalation": [r.escalation.reason, r.escalation.priority, r.escalation.ticket_id] if r.escalation else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="output file (default: stdout)")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the turns to this file")
    ap.add_argument("--cpu", action="store_true", help="print the turns' CPU time to stderr")
    ap.add_argument("--warm-up", action="store_true", help="answer every turn once first (other conversations)")
    args = ap.parse_args(argv)

    service = build_service(load_settings(), "sqlite")  # a fresh SQLite file, as the evaluation runs
    store, handoff = service.store, service.handoff
    cases = workload()
    if args.warm_up:
        for case_id, users in cases:
            for text in users:
                service.handle(InboundMessage(address=Address("dump", f"warm-up:{case_id}"), text=text))
    # every turn is answered first (measured), then dumped: the dump reads nothing a turn needs
    results: list[tuple[str, int, str, list, Any, Any]] = []
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    cpu = 0.0
    turns = 0
    for case_id, users in cases:
        address = Address("dump", f"dump:{case_id}")
        for i, text in enumerate(users):
            c0 = time.process_time()
            if profiler is not None:
                profiler.enable()
            replies = service.handle(InboundMessage(address=address, text=text))
            if profiler is not None:
                profiler.disable()
            cpu += time.process_time() - c0
            turns += 1
            results.append((case_id, i + 1, text, replies, handoff.active_ticket(address.conversation_id),
                            store.get_state(address.conversation_id)))
    if profiler is not None:
        profiler.dump_stats(str(args.profile))
    if args.cpu:
        print(f"{turns} turns, CPU {cpu:.3f} s, {cpu / turns * 1000:.2f} ms a turn", file=sys.stderr)

    ids = TicketIds()
    lines = []
    for case_id, n, text, replies, ticket, state in results:
        rec = {
            "case": case_id, "turn": n, "user": text,
            "replies": [reply_record(r) for r in replies],
            "ticket": None if ticket is None else {
                "id": ticket.id, "status": ticket.status, "priority": ticket.priority, "reason": ticket.reason,
                "summary": ticket.summary},
            "state": None if state is None else {
                "language": state.language, "carrier": state.carrier, "topics": state.topics,
                "failures": state.failures, "last_query": state.last_query, "facts": state.facts},
        }
        lines.append(ids(json.dumps(rec, ensure_ascii=False, sort_keys=True, default=str)))
    data = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(data, encoding="utf-8")
    else:
        sys.stdout.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
