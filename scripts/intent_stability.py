"""How much the intent model's decisions move when its training data barely changes.

    python scripts/intent_stability.py [--runs 5] [--drop 0.01]

Trains the intent classifier (bot/conversation/understanding/classifier.py) once on all of
knowledge/intents/ and then --runs times, each time without a different random --drop share of the
examples (a stand-in for "someone added or reworded a few examples"). It prints, per label, the
thresholds' mean and spread over the runs, and over the development messages (every user turn of
knowledge/eval/dev_labelled/*.jsonl, knowledge/eval/conversations.jsonl and
knowledge/eval/dev_probes.jsonl; never a held-out set) the share whose labels differ from the full
model's, and how many of them gain or lose fraud_now or fraud_bill (the urgent decision).

The sentence vectors of all examples are computed once, in one batch, and reused by every run
(PBXBOT_DATA_DIR must hold a built index for the embedder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_conversations import is_labelled, labelled_turns  # noqa: E402

URGENT = ("fraud_now", "fraud_bill")


def dev_messages() -> list[str]:
    files = sorted((ROOT / "knowledge" / "eval" / "dev_labelled").glob("*.jsonl"))
    files += [ROOT / "knowledge" / "eval" / "conversations.jsonl", ROOT / "knowledge" / "eval" / "dev_probes.jsonl"]
    cases = [json.loads(line) for path in files for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    # split into turns as scripts/eval_conversations.py does
    return [t["user"] for case in cases for t in (labelled_turns(case) if is_labelled(case) else case["turns"])
            if t.get("user", "").strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--drop", type=float, default=0.01)
    args = ap.parse_args(argv)

    from bot.config import load_settings
    from bot.conversation.understanding import classifier
    from bot.conversation.understanding.intents import load_intents
    from bot.retrieval.hybrid import QueryEncoder

    settings = load_settings()
    data = load_intents(settings.knowledge_dir)
    encoder = QueryEncoder(settings.embedder)
    prepared = [classifier.prepare(ex.text) for ex in data.examples]
    vectors = dict(zip(prepared, np.asarray(encoder.encode_queries(prepared), dtype=np.float64)))

    def cached(texts):  # the examples' vectors from the one batch above
        return np.stack([vectors[t] for t in texts])

    messages = dev_messages()

    def fit(examples):
        t0 = time.perf_counter()
        clf = classifier.train(dataclasses.replace(data, examples=examples), cached, embedder_name=settings.embedder)
        clf.encoder = encoder.encode_queries  # serving reads one message at a time, as the bot does
        took = time.perf_counter() - t0
        return clf, took, [clf.predict(m).labels for m in messages]

    full, took, base = fit(data.examples)
    print(f"FOLDS={classifier.FOLDS}; {len(data.examples)} examples, "
          f"{len(messages)} development messages; full model trained in {took:.1f} s")
    thresholds = {lab: [] for lab in full.labels}
    changed, gained, lost = [], [], []
    for run in range(args.runs):
        rng = random.Random(run)
        kept = [ex for ex in data.examples if rng.random() >= args.drop]
        clf, _, labels = fit(kept)
        for lab, t in zip(clf.labels, clf.thresholds):
            thresholds[lab].append(float(t))
        changed.append(sum(1 for a, b in zip(base, labels) if a != b))
        gained.append(sum(1 for a, b in zip(base, labels) if not a & set(URGENT) and b & set(URGENT)))
        lost.append(sum(1 for a, b in zip(base, labels) if a & set(URGENT) and not b & set(URGENT)))
    print(f"{'label':<18} {'full':>5} {'mean':>5} {'spread':>6}  (thresholds over {args.runs} runs, each without "
          f"{args.drop:.0%} of the examples)")
    for lab, t_full in zip(full.labels, full.thresholds):
        ts = thresholds[lab]
        print(f"{lab:<18} {t_full:5.2f} {statistics.fmean(ts):5.2f} {max(ts) - min(ts):6.2f}")
    spread = [max(ts) - min(ts) for ts in thresholds.values()]
    print(f"mean threshold spread {statistics.fmean(spread):.3f}")
    print(f"development messages whose labels differ from the full model's: "
          f"{statistics.fmean(changed):.1f} a run ({statistics.fmean(changed) / len(messages):.1%}); "
          f"urgent labels gained {sum(gained)}, lost {sum(lost)} over {args.runs} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
