"""Calibrated confidence: P(top passage's document answers the query), a logistic model over
features of one search (fused score, agreement of the two rankings, dense cosine, BM25 score, margin).

Coefficients live in confidence.json next to this file. They are fitted on the development set by
`scripts/eval_retrieval.py --fit-confidence` (label: the top document is relevant) with L2-regularized
logistic regression (Newton/IRLS); the script prints the Brier score and a reliability table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURES = ("fused", "agree", "dense_top", "lex_top", "margin")
COEF_PATH = Path(__file__).with_name("confidence.json")
# Used until a fit exists: hand-set so that a lone weak match is < 0.35 and strong agreement > 0.8.
DEFAULT = {"intercept": -4.0, "weights": {"fused": 2.5, "agree": 1.5, "dense_top": 3.0, "lex_top": 1.2, "margin": 2.0}}


@dataclass(frozen=True)
class Features:
    fused: float  # top fused score / best possible (0..1)
    agree: float  # 1 when the top document is in the top 3 documents of both rankings, 0.5 in one
    dense_top: float  # cosine of the best dense hit of the top document (0 when none)
    lex_top: float  # BM25 of the top document's best chunk, squashed: s / (s + 5)
    margin: float  # (top doc fused - second doc fused) / best possible

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f) for f in FEATURES], dtype=np.float64)


class Calibrator:
    def __init__(self, intercept: float, weights: dict[str, float]):
        self.intercept = float(intercept)
        self.w = np.array([float(weights.get(f, 0.0)) for f in FEATURES])

    @classmethod
    def load(cls, path: Path = COEF_PATH) -> "Calibrator":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = DEFAULT
        return cls(data.get("intercept", DEFAULT["intercept"]), data.get("weights", DEFAULT["weights"]))

    def __call__(self, f: Features) -> float:
        z = self.intercept + float(self.w @ f.vector())
        z = max(-30.0, min(30.0, z))
        return 1.0 / (1.0 + math.exp(-z))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> tuple[float, np.ndarray]:
    """L2-regularized logistic regression by Newton's method; returns (intercept, weights)."""
    n, d = X.shape
    A = np.hstack([np.ones((n, 1)), X])
    beta = np.zeros(d + 1)
    reg = np.eye(d + 1) * l2
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ beta, -30, 30)))
        g = A.T @ (p - y) + reg @ beta
        H = (A * (p * (1 - p))[:, None]).T @ A + reg + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(H, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(beta[0]), beta[1:]


def save_coefficients(intercept: float, weights: np.ndarray, meta: dict, path: Path = COEF_PATH) -> None:
    data = {"intercept": intercept, "weights": {f: float(w) for f, w in zip(FEATURES, weights)}, "fitted_on": meta}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
