"""Evaluate the conversation core on knowledge/eval/conversations.jsonl.

    python scripts/eval_conversations.py [--cases PATH] [--store memory|sqlite] [--verbose] [--json]

Prints: % of cases passed (every turn's expectations and the case's escalation label), escalation
precision and recall (a case is positive when it must escalate; predicted positive when the bot
opened any ticket), exact-label accuracy, and every failure. Exit 1 when a target is missed
(>= 95% pass, precision and recall >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import Settings, load_settings  # noqa: E402
from bot.messages import Address, InboundMessage, Reply  # noqa: E402

RANK = {"none": 0, "normal": 1, "urgent": 2}
TARGET_PASS, TARGET_PR = 0.95, 0.95


def _norm(s: str) -> str:
    return unicodedata.normalize("NFKC", s or "").casefold()


def check_turn(expect: dict, replies: list[Reply]) -> list[str]:
    """Reasons this turn fails its expectations (empty when it passes)."""
    text = "\n".join(r.answer for r in replies)
    low = _norm(text)
    problems = []
    if "contains_any" in expect and not any(_norm(x) in low for x in expect["contains_any"]):
        problems.append(f"contains none of {expect['contains_any']}")
    for x in expect.get("contains_all", []):
        if _norm(x) not in low:
            problems.append(f"missing {x!r}")
    for x in expect.get("not_contains", []):
        if _norm(x) in low:
            problems.append(f"contains forbidden {x!r}")
    if "citations" in expect:
        has = any(r.citations for r in replies)
        if has != bool(expect["citations"]):
            problems.append(f"citations {'present' if has else 'absent'}")
    if "escalation" in expect:
        got = max((RANK[r.escalation.priority] for r in replies if r.escalation), default=0)
        if got != RANK[expect["escalation"]]:
            problems.append(f"escalation {_label(got)} != {expect['escalation']}")
    if "language" in expect:
        langs = {r.language for r in replies}
        if langs != {expect["language"]}:
            problems.append(f"language {sorted(langs) or 'no reply'} != {expect['language']}")
    return problems


def _label(rank: int) -> str:
    return {v: k for k, v in RANK.items()}[rank]


def run(cases: list[dict], service) -> dict:
    results = []
    for case in cases:
        cid = f"eval:{case['id']}"
        address = Address("eval", cid)
        worst = 0
        failures = []
        transcript = []
        for i, turn in enumerate(case["turns"]):
            replies = service.handle(InboundMessage(address=address, text=turn["user"]))
            worst = max([worst] + [RANK[r.escalation.priority] for r in replies if r.escalation])
            transcript.append((turn["user"], [r.answer for r in replies]))
            for p in check_turn(turn.get("expect", {}), replies):
                failures.append(f"turn {i + 1}: {p}")
        label = case.get("escalation", "none")
        if _label(worst) != label:
            failures.append(f"case escalation {_label(worst)} != {label}")
        results.append({"id": case["id"], "label": label, "got": _label(worst), "failures": failures, "transcript": transcript})
    n = len(results)
    passed = sum(1 for r in results if not r["failures"])
    tp = sum(1 for r in results if r["label"] != "none" and r["got"] != "none")
    fp = sum(1 for r in results if r["label"] == "none" and r["got"] != "none")
    fn = sum(1 for r in results if r["label"] != "none" and r["got"] == "none")
    exact = sum(1 for r in results if r["label"] == r["got"])
    return {
        "cases": n,
        "passed": passed,
        "pass_rate": passed / n if n else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "label_accuracy": exact / n if n else 0.0,
        "results": results,
    }


def build_service(settings: Settings, store_kind: str):
    from bot.conversation.service import ConversationService
    from bot.wiring import build_retriever

    retriever = build_retriever(settings)
    if store_kind == "sqlite":
        from bot.handoff.sql_store import SqlHandoffStore

        tmp = tempfile.mkdtemp(prefix="pbxbot-eval-")
        store = SqlHandoffStore.from_settings(settings.model_copy(update={"data_dir": Path(tmp), "database_url": None}))
    else:
        from bot.handoff.memory_store import InMemoryHandoffStore

        store = InMemoryHandoffStore()
    return ConversationService(retriever=retriever, store=store, handoff=store, settings=settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=ROOT / "knowledge" / "eval" / "conversations.jsonl")
    ap.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    ap.add_argument("--verbose", action="store_true", help="print the transcript of failed cases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cases = [json.loads(line) for line in args.cases.read_text(encoding="utf-8").splitlines() if line.strip()]
    settings = load_settings()
    t0 = time.perf_counter()
    service = build_service(settings, args.store)
    t1 = time.perf_counter()
    report = run(cases, service)
    t2 = time.perf_counter()
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "results"} | {
            "failures": {r["id"]: r["failures"] for r in report["results"] if r["failures"]}}, ensure_ascii=False, indent=1))
    else:
        for r in report["results"]:
            if r["failures"]:
                print(f"FAIL {r['id']} (label {r['label']}, got {r['got']}): " + "; ".join(r["failures"]))
                if args.verbose:
                    for user, answers in r["transcript"]:
                        print(f"   U: {user[:200]}")
                        for a in answers:
                            print("   B: " + a.replace("\n", "\n      "))
        print(
            f"cases {report['cases']}  passed {report['passed']} ({report['pass_rate']:.1%})  "
            f"escalation precision {report['precision']:.3f}  recall {report['recall']:.3f}  "
            f"label accuracy {report['label_accuracy']:.1%}  (load {t1 - t0:.1f} s, run {t2 - t1:.1f} s)"
        )
    ok = report["pass_rate"] >= TARGET_PASS and report["precision"] >= TARGET_PR and report["recall"] >= TARGET_PR
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
