"""Retrieval evaluation over knowledge/eval/retrieval.jsonl (used by scripts/eval_retrieval.py and the benchmark).

A hit@k counts when one of the top-k *distinct documents* (in passage order) is in `relevant`.
MRR uses the rank of the first relevant distinct document within the top 10 (0 when none).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


def load_eval_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        for n, line in enumerate(Path(p).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if "question" in r and "relevant" in r:
                r.setdefault("language", "ja" if any("\u3040" <= c <= "\u9fff" for c in r["question"]) else "en")
                rows.append(r)
    return rows


@dataclass
class EvalResult:
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    misses: list[dict] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def evaluate(search_docs: Callable[[str, str], list[str]], rows: list[dict]) -> EvalResult:
    """search_docs(question, language) -> ranked doc ids (duplicates allowed; deduplicated here)."""
    res = EvalResult()
    stats: dict[str, list[tuple[int, int, float]]] = {}
    for r in rows:
        t = time.perf_counter()
        got = list(dict.fromkeys(search_docs(r["question"], r["language"])))  # distinct, in rank order
        res.latencies_ms.append((time.perf_counter() - t) * 1000)
        relevant = set(r["relevant"])
        rank = next((i + 1 for i, d in enumerate(got[:10]) if d in relevant), None)
        h1 = int(rank == 1)
        h3 = int(rank is not None and rank <= 3)
        rr = 1.0 / rank if rank else 0.0
        stats.setdefault(r["language"], []).append((h1, h3, rr))
        res.records.append({"id": r["id"], "language": r["language"], "rank": rank, "got": got[:5]})
        if not h3:
            res.misses.append({"id": r["id"], "language": r["language"], "question": r["question"],
                               "relevant": r["relevant"], "got": got[:3], "rank": rank})

    def agg(items):
        n = len(items) or 1
        return {"n": len(items), "hit@1": sum(i[0] for i in items) / n, "hit@3": sum(i[1] for i in items) / n,
                "mrr": sum(i[2] for i in items) / n}

    for lang, items in sorted(stats.items()):
        res.per_language[lang] = agg(items)
    res.overall = agg([i for items in stats.values() for i in items])
    return res


def format_result(res: EvalResult, label: str = "") -> str:
    tag = f"[{label}] " if label else ""
    return "\n".join(f"{tag}{lang:>3}  n={m['n']:<4} hit@1={m['hit@1']:.3f}  hit@3={m['hit@3']:.3f}  MRR={m['mrr']:.3f}"
                     for lang, m in list(res.per_language.items()) + [("all", res.overall)])
