"""Rank fusion of dense and lexical results."""

from __future__ import annotations

from typing import Hashable, Sequence

RRF_K = 60


def rrf(rankings: Sequence[Sequence[Hashable]], weights: Sequence[float] | None = None, k: int = RRF_K) -> dict[Hashable, float]:
    """Weighted reciprocal rank fusion: sum_i w_i / (k + rank_i), rank starting at 1."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    out: dict[Hashable, float] = {}
    for ranking, w in zip(rankings, weights):
        for r, item in enumerate(dict.fromkeys(ranking), 1):  # an item's first place counts
            out[item] = out.get(item, 0.0) + w / (k + r)
    return out


def max_rrf(weights: Sequence[float], k: int = RRF_K) -> float:
    """The score of an item ranked first everywhere (to scale fused scores into 0..1)."""
    return sum(w / (k + 1) for w in weights)
