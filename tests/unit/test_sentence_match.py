"""The learned question-sentence match (bot/retrieval/hybrid.py SentenceMatch): used only with the
embedder it was fitted for, and never on vectors of another size."""

from __future__ import annotations

import json

import numpy as np

from bot.retrieval.hybrid import SENTENCE_MATCH_PATH, SentenceMatch


def test_the_saved_match_is_for_the_default_embedder_and_its_vector_size():
    data = json.loads(SENTENCE_MATCH_PATH.read_text(encoding="utf-8"))
    match = SentenceMatch.load("usem3")
    assert data["embedder"] == "usem3" and match is not None
    assert match.weights.shape == (len(data["weights"]),) and np.isfinite(match.weights).all()


def test_another_embedder_or_no_file_gets_no_match(tmp_path):
    assert SentenceMatch.load("e5") is None
    assert SentenceMatch.load("usem3", tmp_path / "missing.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    assert SentenceMatch.load("usem3", broken) is None


def test_the_match_weighs_each_dimension_and_refuses_vectors_of_another_size():
    match = SentenceMatch(np.array([2.0, 0.0, -1.0]))
    q = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    s = np.array([0.5, 3.0, 1.0], dtype=np.float32)
    assert float(s @ match.target(q)) == 2.0 * 0.5 + 0.0 * 3.0 - 1.0 * 1.0
    assert match.target(np.ones(4, dtype=np.float32)) is None and match.target(None) is None
