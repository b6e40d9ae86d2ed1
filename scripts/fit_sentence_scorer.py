"""Fit how the composer scores a sentence against the question (bot/conversation/sentence_scorer.json).

    python scripts/fit_sentence_scorer.py            # fit, compare out-of-fold with the current weights, save if better
    python scripts/fit_sentence_scorer.py --report   # compare only

Development data only: the answerable questions of the development sets in the held-out format
(dev_labelled, dev_fresh, dev_blind3; `--leave-out` fits without one) and knowledge/eval/dev_probes.jsonl,
and the first turns of their conversations (incidents left out), each labelled with strings a correct answer contains. Every question is
searched and cut into scored sentences as the question skill does; a sentence is a positive when it
contains one of the strings. A listwise model over the composer's SENTENCE_FEATURES: per question, a
softmax over its sentences, fitted to put the probability on the positives (L2 1.0) — what the
composer needs is the right order within one question, not a calibrated probability across
questions (a pointwise logistic fit, used until 2026-12-07, scored 0.611 / 0.800 out of fold on the
same 95 questions against 0.653 / 0.821 for this one). 5 folds by question: the out-of-fold share of
questions whose best-scored sentence is a positive (and whose top three hold one) is compared with
the current weights'. Saved only when better; the weights are scaled so that scores spread as the
hand-set ones do (the composer's relevance margins are in those units).

Since 2026-12-08 the same fit also learns the question-sentence match (bot/retrieval/sentence_match.json,
applied by the retriever: sum_k w_k q_k s_k over the embedder's 512 dimensions, one weight a dimension),
from the products q_k * s_k of the question's and each sentence's vectors next to the other features
(L2 0.1, 1000 steps). Judged by leaving one development set out (fitted on the other two, best
sentence on the one left out): twin 0.613 -> 0.641, dev_fresh 0.549 -> 0.604, dev_blind3 0.513 -> 0.538
against the same features without the match; in the conversations of the set left out, twin 179 -> 182,
dev_fresh 103 -> 102, dev_blind3 93 -> 94. A sentence-only prior (s_k without q_k) was less steady
(dev_blind3 0.500) and is not used.
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
sys.path.insert(0, str(ROOT / "scripts"))

from bot.config import load_settings  # noqa: E402
from bot.conversation import composer  # noqa: E402
from bot.conversation.answering import AnswerTypes  # noqa: E402
from bot.conversation.passages import in_language  # noqa: E402
from bot.conversation.understanding.text import kana_to_kanji  # noqa: E402
from eval_conversations import labelled_turns  # noqa: E402
from bot.retrieval.hybrid import SENTENCE_MATCH_PATH  # noqa: E402

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


def fit(groups: list[tuple[np.ndarray, np.ndarray]], l2: float = 1.0, iters: int = 300, lr: float = 0.5) -> np.ndarray:
    """Weights minimising, over the questions, the cross-entropy between the softmax of the
    sentences' scores and the positives (spread evenly over them), plus L2; full-batch gradient
    descent (the loss is convex; 300 steps settle it at these sizes)."""
    w = np.zeros(groups[0][0].shape[1])
    for _ in range(iters):
        grad = l2 * w
        for X, y in groups:
            s = X @ w
            p = np.exp(s - s.max())
            grad += X.T @ (p / p.sum() - y / y.sum())
        w -= lr * grad / len(groups)
    return w


def hits(groups, scorer) -> tuple[float, float]:
    top1 = top3 = 0
    for X, y in groups:
        order = np.argsort(-scorer(X), kind="stable")
        top1 += y[order[0]] > 0
        top3 += y[order[:3]].max() > 0
    return top1 / len(groups), top3 / len(groups)


DEV_SETS = ("dev_labelled", "dev_fresh", "dev_blind3")  # development sets in the held-out format


def labelled_questions(leave_out: frozenset[str] = frozenset()):
    """The development questions labelled with what their answer contains: the single questions of
    the development sets (DEV_SETS, `leave_out` excepted) and knowledge/eval/dev_probes.jsonl, and the
    first turn of each development conversation (later turns lean on the conversation, which a search
    of their text alone would not), each read as eval_conversations reads a labelled turn."""
    eval_dir = ROOT / "knowledge" / "eval"
    paths = [eval_dir / "dev_probes.jsonl"] + [eval_dir / d / f for d in DEV_SETS if d not in leave_out
                                               for f in ("questions.jsonl", "conversations.jsonl")]
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield labelled_turns(json.loads(line))[0]


MATCH_SCALE = 10.0  # q_k * s_k are small (unit vectors over 512 dimensions): scaled to the other features' range
MATCH_L2, MATCH_ITERS = 0.1, 1000  # chosen by leaving one development set out (see the module docstring)


def match_rows(retriever, result, passages, pieces) -> np.ndarray | None:
    """q_k * s_k for each piece (the search's query vector and the sentence's stored vector), or None when a
    piece's passage is not a section of the index (a test double) or its sentences do not line up."""
    store = retriever.store
    qv = retriever.query_vector(result.query)
    ordered = composer.reading_order(passages)
    rows = []
    for piece in pieces:
        passage = ordered[piece.rank]
        sec = store.sections.get(passage.chunk_id)
        n = len(sec.get("sentences") or ()) if sec else 0
        if not n or piece.index >= n or len(passage.sentence_scores) != n:
            return None
        rows.append(store.sentence_vectors[int(sec.get("sentence_offset", 0)) + piece.index] * qv)
    return np.array(rows) * MATCH_SCALE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--leave-out", nargs="*", default=[], choices=DEV_SETS,
                    help="development sets to fit without (to judge the fit on a set it never saw)")
    args = ap.parse_args()
    from bot.retrieval.hybrid import open_retriever as build_retriever  # the retriever itself, no wrapper

    settings = load_settings()
    retriever = build_retriever(settings)
    types = AnswerTypes.load(settings.knowledge_dir)
    groups = []  # (the current features, the new features: the base ones and q*s, positives)
    t0 = time.perf_counter()
    current = composer.SENTENCE_SCORER
    base_features = len(composer.SENTENCE_FEATURES) - 1  # all but "match", which the fit learns afresh
    for row in labelled_questions(frozenset(args.leave_out)):
        if row.get("answerable") is not True or not row.get("expect_any") or row.get("language") not in ("ja", "en"):
            continue
        if {"fraud_now", "fraud_bill"} & set(row.get("intents") or []):
            continue
        query = kana_to_kanji(row["user"])
        res = retriever.search(query, settings.retrieval_k, language=row["language"])
        passages, _ = in_language(res.passages, row["language"])
        recorder = Recorder(current)
        composer.SENTENCE_SCORER = recorder
        try:
            pieces = composer.pieces_of(passages, query, focus=row["user"], cue=types.cue(row["user"]),
                                        max_passages=max(3, len(passages)))
        finally:
            composer.SENTENCE_SCORER = current
        if not recorder.rows:
            continue
        expect = [norm(x) for x in row["expect_any"]]
        y = np.array([float(any(e in norm(p.text) for e in expect)) for p in pieces])
        if y.sum() == 0:
            continue  # the search did not find the answer at all: nothing for the scorer to learn
        matched = match_rows(retriever, res, passages, pieces)
        if matched is None:
            continue
        rows = np.array(recorder.rows)
        groups.append((rows, np.hstack([rows[:, :base_features], matched]), y))
    print(f"{len(groups)} development questions whose sentences hold the answer ({time.perf_counter() - t0:.1f} s)")
    base = hits([(g[0], g[2]) for g in groups], lambda X: X @ np.array(current.w) + current.intercept)
    folds = np.arange(len(groups)) % FOLDS
    oof_top1 = oof_top3 = 0
    for f in range(FOLDS):
        w = fit([(g[1], g[2]) for g, k in zip(groups, folds) if k != f], l2=MATCH_L2, iters=MATCH_ITERS)
        test = [(g[1], g[2]) for g, k in zip(groups, folds) if k == f]
        t1, t3 = hits(test, lambda X, w=w: X @ w)
        oof_top1 += t1 * len(test)
        oof_top3 += t3 * len(test)
    oof = (oof_top1 / len(groups), oof_top3 / len(groups))
    print(f"current weights: best sentence answers {base[0]:.3f}, top three hold the answer {base[1]:.3f}")
    print(f"fitted (out-of-fold): best sentence answers {oof[0]:.3f}, top three hold the answer {oof[1]:.3f}")
    if args.report or oof[0] <= base[0]:
        print("not saved" + ("" if args.report else " (no better than the current weights)"))
        return 0
    X = np.vstack([g[1] for g in groups])
    w = fit([(g[1], g[2]) for g in groups], l2=MATCH_L2, iters=MATCH_ITERS)
    hand = composer.SentenceScorer(composer.SentenceScorer.HAND_SET)
    spread = np.std(np.vstack([g[0] for g in groups]) @ np.array(hand.w)) / max(1e-9, np.std(X @ w))
    names = composer.SENTENCE_FEATURES[:base_features]
    # The match's own weight is 1: its scale lives in sentence_match.json, which the retriever applies.
    weights = {**{f: float(v * spread) for f, v in zip(names, w[:base_features])}, "match": 1.0}
    fitted = {"questions": len(groups), "date": time.strftime("%Y-%m-%d"), "left_out": list(args.leave_out),
              "out_of_fold": {"best_sentence_answers": round(oof[0], 3), "top3": round(oof[1], 3)},
              "before": {"best_sentence_answers": round(base[0], 3), "top3": round(base[1], 3)}}
    composer.SCORER_PATH.write_text(json.dumps({"weights": weights, "intercept": 0.0, "fitted_on": fitted}, indent=1) + "\n",
                                    encoding="utf-8")
    match = [round(float(v * spread * MATCH_SCALE), 6) for v in w[base_features:]]
    SENTENCE_MATCH_PATH.write_text(json.dumps({"embedder": retriever.encoder_name, "weights": match,
                                               "fitted_on": fitted}) + "\n", encoding="utf-8")
    print("weights: " + " ".join(f"{f}={v:.2f}" for f, v in weights.items()))
    print(f"saved {composer.SCORER_PATH.relative_to(ROOT)} and {SENTENCE_MATCH_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
