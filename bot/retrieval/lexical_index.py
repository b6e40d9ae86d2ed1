"""BM25 (bm25s) over analysis.Analyzer tokens, with language/carrier masks.

bm25s's own tokenizer would turn a whole Japanese clause into one token, so tokens always come
from our Analyzer. Scores for the whole corpus are computed (sparse, a few ms at 100k chunks) and
masked with numpy; `get_scores` raises on an empty token list, so empty queries are handled here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class LexicalIndex:
    def __init__(self, bm25, vocab: dict[str, int]):
        self.bm25 = bm25
        self.vocab = vocab

    @classmethod
    def build(cls, token_lists: list[list[str]], *, k1: float = 1.2, b: float = 0.75) -> "LexicalIndex":
        import bm25s

        vocab: dict[str, int] = {"": 0}
        ids = [[vocab.setdefault(t, len(vocab)) for t in toks] for toks in token_lists]
        bm25 = bm25s.BM25(k1=k1, b=b)
        # (ids, vocab) form: bm25s skips its own tokenizer entirely
        bm25.index((ids, vocab), show_progress=False)
        return cls(bm25, vocab)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.bm25.save(str(folder))
        (folder / "pbxbot_vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex":
        import bm25s

        bm25 = bm25s.BM25.load(str(folder))
        vocab = json.loads((folder / "pbxbot_vocab.json").read_text(encoding="utf-8"))
        return cls(bm25, vocab)

    def scores(self, tokens: list[str]) -> np.ndarray | None:
        ids = [self.vocab[t] for t in dict.fromkeys(tokens) if t in self.vocab]
        if not ids:
            return None
        return np.asarray(self.bm25.get_scores_from_ids(ids), dtype=np.float32)

    def top(self, tokens: list[str], n: int, *masks: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """For each mask (no mask: every row), [(row, score)] best first; rows with score 0 or masked
        out are dropped. The scores are computed once for all masks."""
        s = self.scores(tokens)
        return [[] if s is None else _best(s, n, mask) for mask in (masks or (None,))]


def _best(s: np.ndarray, n: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
    if mask is not None:
        s = np.where(mask, s, 0.0)
    n = min(n, len(s))
    if n <= 0:
        return []
    idx = np.argpartition(-s, n - 1)[:n] if n < len(s) else np.arange(len(s))
    idx = idx[np.argsort(-s[idx], kind="stable")]
    return [(int(i), float(s[i])) for i in idx if s[i] > 0]
