"""Fit how the composer scores a sentence against the question (bot/conversation/sentence_scorer.json).

    python scripts/fit_sentence_scorer.py            # fit, compare out-of-fold with the current weights, save if better
    python scripts/fit_sentence_scorer.py --report   # compare only

Development data only: the answerable questions of knowledge/eval/dev_labelled/questions.jsonl
(incidents left out), each labelled with strings a correct answer contains. Every question is
searched and cut into scored sentences as the question skill does; a sentence is a positive when it
contains one of the strings. Logistic regression over the composer's SENTENCE_FEATURES (classes
balanced), 5 folds by question: the out-of-fold share of questions whose best-scored sentence is a
positive (and whose top three hold one) is compared with the current weights'. Saved only when
better; the weights are scaled so that scores spread as the hand-set ones do (the composer's
relevance margins are in those units).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import load_settings  # noqa: E402
from bot.conversation import composer  # noqa: E402
from bot.conversation.answering import AnswerTypes  # noqa: E402
from bot.conversation.passages import in_language  # noqa: E402
from bot.conversation.understanding.text import kana_to_kanji  # noqa: E402

FOLDS = 5


def norm(s: str) -> str:
    return unicodedata.normalize("NFKC", s or "").casefold()


class Recorder:
    """Stands in for the composer's scorer while the pieces are built: keeps each feature row."""

    def __init__(self, inner):
        self.inner = inner
        self.rows: list[tuple[float, ...]] = []

    def __call__(self, features):
        self.rows.append(tuple(features))
        return self.inner(features)


def fit(X: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[float, np.ndarray]:
    w_pos, w_neg = len(y) / (2 * max(1, y.sum())), len(y) / (2 * max(1, (1 - y).sum()))
    sw = np.where(y == 1, w_pos, w_neg)
    A = np.hstack([np.ones((len(y), 1)), X])
    beta = np.zeros(A.shape[1])
    reg = np.eye(A.shape[1]) * l2
    reg[0, 0] = 0
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(A @ beta, -30, 30)))
        g = A.T @ (sw * (p - y)) + reg @ beta
        H = (A * (sw * p * (1 - p))[:, None]).T @ A + reg + 1e-9 * np.eye(A.shape[1])
        step = np.linalg.solve(H, g)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(beta[0]), beta[1:]


def hits(groups, scorer) -> tuple[float, float]:
    top1 = top3 = 0
    for X, y in groups:
        order = np.argsort(-scorer(X), kind="stable")
        top1 += y[order[0]] > 0
        top3 += y[order[:3]].max() > 0
    return top1 / len(groups), top3 / len(groups)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    from bot.retrieval.hybrid import open_retriever as build_retriever  # the retriever itself, no wrapper

    settings = load_settings()
    retriever = build_retriever(settings)
    types = AnswerTypes.load(settings.knowledge_dir)
    path = ROOT / "knowledge" / "eval" / "dev_labelled" / "questions.jsonl"
    groups = []
    t0 = time.perf_counter()
    current = composer.SENTENCE_SCORER
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("answerable") is not True or not row.get("expect_any") or row.get("language") not in ("ja", "en"):
            continue
        if {"fraud_now", "fraud_bill"} & set(row.get("intents") or []):
            continue
        query = kana_to_kanji(row["text"])
        res = retriever.search(query, settings.retrieval_k, language=row["language"])
        passages, _ = in_language(res.passages, row["language"])
        recorder = Recorder(current)
        composer.SENTENCE_SCORER = recorder
        try:
            pieces = composer.pieces_of(passages, query, focus=row["text"], cue=types.cue(row["text"]),
                                        max_passages=max(3, len(passages)))
        finally:
            composer.SENTENCE_SCORER = current
        if not recorder.rows:
            continue
        expect = [norm(x) for x in row["expect_any"]]
        y = np.array([float(any(e in norm(p.text) for e in expect)) for p in pieces])
        if y.sum() == 0:
            continue  # the search did not find the answer at all: nothing for the scorer to learn
        groups.append((np.array(recorder.rows), y))
    print(f"{len(groups)} development questions whose sentences hold the answer ({time.perf_counter() - t0:.1f} s)")
    base = hits(groups, lambda X: X @ np.array(current.w) + current.intercept)
    folds = np.arange(len(groups)) % FOLDS
    oof_top1 = oof_top3 = 0
    for f in range(FOLDS):
        train = [g for g, k in zip(groups, folds) if k != f]
        b0, w = fit(np.vstack([g[0] for g in train]), np.concatenate([g[1] for g in train]))
        test = [g for g, k in zip(groups, folds) if k == f]
        t1, t3 = hits(test, lambda X: b0 + X @ w)
        oof_top1 += t1 * len(test)
        oof_top3 += t3 * len(test)
    oof = (oof_top1 / len(groups), oof_top3 / len(groups))
    print(f"current weights: best sentence answers {base[0]:.3f}, top three hold the answer {base[1]:.3f}")
    print(f"fitted (out-of-fold): best sentence answers {oof[0]:.3f}, top three hold the answer {oof[1]:.3f}")
    if args.report or oof[0] <= base[0]:
        print("not saved" + ("" if args.report else " (no better than the current weights)"))
        return 0
    X = np.vstack([g[0] for g in groups])
    b0, w = fit(X, np.concatenate([g[1] for g in groups]))
    hand = composer.SentenceScorer(composer.SentenceScorer.HAND_SET)
    spread = np.std(X @ np.array(hand.w)) / max(1e-9, np.std(X @ w))
    data = {"weights": {f: float(v * spread) for f, v in zip(composer.SENTENCE_FEATURES, w)}, "intercept": 0.0,
            "fitted_on": {"questions": len(groups), "date": time.strftime("%Y-%m-%d"),
                          "out_of_fold": {"best_sentence_answers": round(oof[0], 3), "top3": round(oof[1], 3)},
                          "before": {"best_sentence_answers": round(base[0], 3), "top3": round(base[1], 3)}}}
    composer.SCORER_PATH.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print("weights: " + " ".join(f"{f}={v * spread:.2f}" for f, v in zip(composer.SENTENCE_FEATURES, w)))
    print(f"saved {composer.SCORER_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
