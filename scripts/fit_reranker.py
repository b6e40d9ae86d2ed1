"""Fit the second-stage reranker (bot/retrieval/rerank.json) and keep it only if it helps.

    python scripts/fit_reranker.py           # fit, compare out-of-fold with the fused order, save if better
    python scripts/fit_reranker.py --report  # compare only, save nothing

Development data only (never the held-out set): the retrieval questions (knowledge/eval/retrieval*.jsonl,
a candidate counts when its document is relevant) and the questions labelled with facts
(knowledge/eval/answerability_dev.jsonl and knowledge/eval/dev_labelled/questions.jsonl when present:
a candidate counts when its section states one of the facts). For every question the search's top
candidates and their features are taken with the reranker off. A logistic model over the features
(classes balanced, L2) is fitted 5 times, each time without a fifth of the questions, and ranks that
fifth: document hit@3 and section recall@5 of those out-of-fold rankings are compared with the fused
order's. The coefficients (fitted on everything) are saved only when neither figure gets worse and
one gets better; otherwise rerank.json says `"enabled": false` and why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import load_settings  # noqa: E402
from bot.conversation.understanding.text import kana_to_kanji  # noqa: E402
from bot.retrieval.rerank import FEATURES, RERANK_PATH  # noqa: E402

FOLDS = 5
MAX_PER_DOC = 2


def questions() -> list[dict]:
    out = []
    for path in sorted((ROOT / "knowledge" / "eval").glob("retrieval*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                out.append({"text": r["question"], "language": r["language"], "docs": set(r["relevant"])})
    for path in [ROOT / "knowledge" / "eval" / "answerability_dev.jsonl", ROOT / "knowledge" / "eval" / "dev_labelled" / "questions.jsonl"]:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                text = r.get("question") or r.get("text")
                if text and r.get("facts") and r.get("answerable") is True:
                    out.append({"text": text, "language": r["language"], "facts": set(r["facts"])})
    return out


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


def top_passages(order: list[int], keys: list[str], sections: dict, k: int) -> list[str]:
    out, per_doc = [], {}
    for i in order:
        doc = sections[keys[i]]["doc_id"]
        if per_doc.get(doc, 0) >= MAX_PER_DOC:
            continue
        per_doc[doc] = per_doc.get(doc, 0) + 1
        out.append(keys[i])
        if len(out) >= k:
            break
    return out


def metrics(items: list[dict], orders: list[list[int]], sections: dict) -> tuple[float, float, int, int]:
    doc_hits, doc_n, sec_hits, sec_n = 0, 0, 0, 0
    for item, order in zip(items, orders):
        if "docs" in item:
            top = top_passages(order, item["keys"], sections, 12)
            docs = list(dict.fromkeys(sections[k]["doc_id"] for k in top))[:3]
            doc_hits += bool(set(docs) & item["docs"])
            doc_n += 1
        else:
            top = top_passages(order, item["keys"], sections, 5)
            sec_hits += any(item["labels"][item["keys"].index(k)] for k in top)
            sec_n += 1
    return doc_hits / max(1, doc_n), sec_hits / max(1, sec_n), doc_n, sec_n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    from bot.retrieval.hybrid import _give_way
    from bot.retrieval.hybrid import open_retriever as build_retriever  # the retriever itself, no wrapper

    settings = load_settings()
    r = build_retriever(settings)
    r.reranker = None
    sections = r.store.sections
    items = []
    t0 = time.perf_counter()
    for q in questions():
        r.search(kana_to_kanji(q["text"]), 5, language=q["language"])
        if not r.last_candidates or not r.last_candidates[0]:
            continue
        keys, feats = r.last_candidates
        if "docs" in q:
            # any section of a relevant document, but never its one-line summary: a summary lists
            # topics and answers nothing by itself (the composer shows it last, if at all)
            labels = [float(sections[k]["doc_id"] in q["docs"] and not k.endswith("#s")) for k in keys]
        else:
            labels = [float(bool(set(sections[k].get("facts") or ()) & q["facts"]) and
                            sections[k]["doc_id"].endswith("-" + q["language"])) for k in keys]
        fused_order = [keys.index(k) for k, _ in _give_way([(k, -i) for i, k in enumerate(keys)], sections)]
        items.append({**q, "keys": list(keys), "X": np.asarray(feats), "labels": labels, "fused": fused_order})
    print(f"{len(items)} development questions searched in {time.perf_counter() - t0:.1f} s "
          f"({sum(1 for i in items if 'docs' in i)} with relevant documents, {sum(1 for i in items if 'facts' in i)} with facts)")
    base = metrics(items, [i["fused"] for i in items], sections)
    folds = np.arange(len(items)) % FOLDS
    oof_orders: list[list[int]] = [[] for _ in items]
    for f in range(FOLDS):
        train = [it for it, k in zip(items, folds) if k != f]
        X = np.vstack([it["X"] for it in train])
        y = np.concatenate([it["labels"] for it in train])
        b0, w = fit(X, y)
        for idx in np.where(folds == f)[0]:
            scores = b0 + items[idx]["X"] @ w
            oof_orders[idx] = list(np.argsort(-scores, kind="stable"))
    oof = metrics(items, oof_orders, sections)
    print(f"fused order:            document hit@3 {base[0]:.3f} (n={base[2]})  section recall@5 {base[1]:.3f} (n={base[3]})")
    print(f"reranked (out-of-fold): document hit@3 {oof[0]:.3f}  section recall@5 {oof[1]:.3f}")
    better = oof[0] >= base[0] and oof[1] >= base[1] and (oof[0] > base[0] or oof[1] > base[1])
    if args.report:
        return 0
    X = np.vstack([it["X"] for it in items])
    y = np.concatenate([it["labels"] for it in items])
    b0, w = fit(X, y)
    data = {"enabled": bool(better), "intercept": b0, "weights": {f: float(v) for f, v in zip(FEATURES, w)},
            "fitted_on": {"questions": len(items), "date": time.strftime("%Y-%m-%d"), "embedder": settings.embedder,
                          "out_of_fold": {"fused": {"doc_hit3": round(base[0], 3), "section_recall5": round(base[1], 3)},
                                          "reranked": {"doc_hit3": round(oof[0], 3), "section_recall5": round(oof[1], 3)}}}}
    if not better:
        data["why_disabled"] = "out of fold it did not improve document hit@3 or section recall@5 without making the other worse"
    RERANK_PATH.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("weights: " + " ".join(f"{f}={v:.2f}" for f, v in zip(FEATURES, w)) + f" intercept={b0:.2f}")
    print(f"saved {RERANK_PATH.relative_to(ROOT)} (enabled: {better})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
