"""Warm conversation-turn latency without an LLM: p50 / p95 / max of ConversationService.handle().

    python scripts/bench_conversation.py [--store sqlite|memory] [--rounds N]

Real retriever and knowledge base (index built first if there is none). Turns: every user turn of
knowledge/eval/conversations.jsonl (multi-turn cases keep their conversation) and every question of
knowledge/eval/retrieval.jsonl, after one warm-up pass. Target: p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import load_settings  # noqa: E402
from bot.messages import Address, InboundMessage  # noqa: E402

TARGET_P95_MS = 50.0


def workload() -> list[list[str]]:
    """Conversations (lists of user turns)."""
    convs = []
    ev = ROOT / "knowledge" / "eval"
    for line in (ev / "conversations.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            convs.append([t["user"] for t in json.loads(line)["turns"]])
    retrieval = ev / "retrieval.jsonl"
    if retrieval.exists():
        for line in retrieval.read_text(encoding="utf-8").splitlines():
            if line.strip():
                convs.append([json.loads(line)["question"]])
    return convs


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    ap.add_argument("--rounds", type=int, default=1, help="measured passes over the workload")
    args = ap.parse_args(argv)

    from bot.conversation.service import ConversationService
    from bot.handoff.service import HandoffService
    from bot.wiring import build_retriever

    settings = load_settings()
    retriever = build_retriever(settings)
    if args.store == "sqlite":
        from bot.handoff.sql_store import SqlHandoffStore

        tmp = Path(tempfile.mkdtemp(prefix="pbxbot-bench-"))
        store = SqlHandoffStore.from_settings(settings.model_copy(update={"data_dir": tmp, "database_url": None}))
    else:
        from bot.handoff.sql_store import SqlHandoffStore

        store = SqlHandoffStore("sqlite://")  # in memory
    service = ConversationService(retriever=retriever, store=store, handoff=HandoffService(store), settings=settings)
    convs = workload()

    errors = 0

    def one_pass(tag: str) -> list[float]:
        nonlocal errors
        times = []
        for i, turns in enumerate(convs):
            address = Address("bench", f"bench:{tag}:{i}")
            for text in turns:
                t0 = time.perf_counter()
                replies = service.handle(InboundMessage(address=address, text=text))
                times.append((time.perf_counter() - t0) * 1000)
                errors += sum(1 for r in replies if r.kind == "error")
        return times

    one_pass("warmup")
    times: list[float] = []
    for r in range(args.rounds):
        times += one_pass(f"r{r}")
    if errors:
        print(f"{errors} turns ended in an error reply: the numbers would be meaningless", file=sys.stderr)
        return 2
    p50, p95 = statistics.median(times), percentile(times, 95)
    print(f"store {args.store}: {len(times)} warm turns  p50 {p50:.1f} ms  p95 {p95:.1f} ms  max {max(times):.1f} ms  "
          f"mean {statistics.fmean(times):.1f} ms  (target p95 <= {TARGET_P95_MS:.0f} ms: {'met' if p95 <= TARGET_P95_MS else 'MISSED'})")
    return 0 if p95 <= TARGET_P95_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
