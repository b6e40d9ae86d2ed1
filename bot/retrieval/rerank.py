"""A learned second stage over the fused candidate sections (a linear model over features of one search).

The first stage fuses four rankings with reciprocal ranks (dense and BM25, over the text and over
the sections' questions). Ranks throw away how close a match is; the second stage looks at the
scores themselves, at the section's kind (a document's lead or summary introduces rather than
answers) and at its best sentence, and orders the top candidates again.

Coefficients live in rerank.json next to this file, fitted on the development questions by
`scripts/fit_reranker.py`, which keeps them only when they improve section-level recall and
document hit@3 out-of-fold (every question ranked by a model fitted without it). No file: the
first stage's order stands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RERANK_PATH = Path(__file__).with_name("rerank.json")
CANDIDATES = 20  # top fused sections the second stage orders again
FEATURES = ("rrf_dense", "rrf_lex", "rrf_qdense", "rrf_qlex", "dense_max", "question_max", "bm25_max",
            "sentence_max", "opening", "summary", "source", "other_language", "carrier_unasked", "carrier_asked", "heading_unasked")


class Reranker:
    def __init__(self, intercept: float, weights: dict[str, float]):
        self.intercept = float(intercept)
        self.w = np.array([float(weights.get(f, 0.0)) for f in FEATURES])

    @classmethod
    def load(cls, path: Path = RERANK_PATH) -> "Reranker | None":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not data.get("enabled", True):
            return None
        return cls(data.get("intercept", 0.0), data.get("weights") or {})

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n, len(FEATURES)) -> n logits (higher: more likely to answer)."""
        return self.intercept + features @ self.w
