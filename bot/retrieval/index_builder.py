"""Build the retrieval index: documents -> chunks -> vectors (Chroma) + BM25, built aside and switched atomically.

Layout under settings.index_dir:
  CURRENT                  the build id being served (replaced with os.replace: readers see old or new, never half)
  builds/<build_id>/       manifest.json, documents.json, chunks.jsonl (text rows and section questions),
                           sections.jsonl (each section's text, facts, sentences), sentence_vectors.npy
                           (row-aligned with the sentences of sections.jsonl), bm25/ (bm25s files + vocab)
  chroma/                  the embedded Chroma (collection `pbxbot-<build_id>`; on a server when PBXBOT_CHROMA_URL is set)
  embcache/<embedder>/     per-document vectors keyed by the document's content hash + chunker version:
                           re-indexing re-embeds only documents whose content changed.
A build takes an exclusive lock (index_dir/.build.lock) so two processes never build at once.

Damage: the manifest lists a SHA-256 of every file of its build. `verify_build` checks them (a few
ms; every start does, through service.ensure_index): a damaged build stops start-up with one line
naming the fix, `pbxbot index` rebuilds it instead of calling it up to date, and `pbxbot index
--rebuild` recovers from any damaged file: the build, the embedding cache (not read), or the
embedded Chroma database (moved aside to chroma.damaged and made anew).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from bot.config import ConfigError, Settings
from bot.retrieval.analysis import Analyzer
from bot.retrieval.chunking import CHUNKER_VERSION, Chunk, chunk_document
from bot.retrieval.documents import Document, load_documents
from bot.retrieval.embedders import BaseEmbedder, embedder_slug, make_embedder
from bot.retrieval.lexical_index import LexicalIndex
from bot.retrieval.lexicon import Lexicon, default_lexicon_path
from bot.retrieval.sections import parse_sections
from bot.text import split_sentences
from bot.retrieval.vector_index import ChromaVectorIndex, chunk_metadata, make_client

log = logging.getLogger(__name__)
# What a build holds beyond the chunks (Chroma metadata, store files): a change here rebuilds the
# index without re-embedding (CHUNKER_VERSION would also throw the cached embeddings away).
# 2: Chroma rows say whether they are a section question ("question"), so each kind is searched apart.
INDEX_FORMAT = "2"

ANALYZER_VERSION = "2"  # 2: sentence tokens and word rarity in the build
SPLIT_MODE = "C"  # SudachiPy split mode, chosen by measurement (docs/retrieval.md)


class IndexDamaged(ConfigError):
    """A file of the served index is missing or damaged; the message names it and the fix."""


REBUILD_HINT = "run `pbxbot index --rebuild`"


def file_checksums(folder: Path) -> dict[str, str]:
    """{path relative to the build folder: sha256} of every file of a build but its manifest."""
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_build(index_dir: Path, manifest: dict) -> str | None:
    """None when every file of the build is there and intact; else what is wrong, naming the file.
    A build made before checksums were recorded is checked for its files only."""
    folder = Path(index_dir) / "builds" / str(manifest.get("build_id"))
    files = manifest.get("files")
    if not isinstance(files, dict):
        files = {name: None for name in ("chunks.jsonl", "documents.json", "bm25/params.index.json")}
    for rel, digest in files.items():
        path = folder / rel
        try:
            if not path.is_file():
                return f"{path} is missing"
            if digest is not None and _sha256(path) != digest:
                return f"{path} is damaged (its checksum does not match)"
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror or type(exc).__name__})"
    return None


@dataclass
class BuildReport:
    build_id: str
    documents: int
    chunks: int
    embedded_documents: int  # documents whose vectors were computed in this build
    reused_documents: int  # documents whose vectors came from the cache
    seconds: float
    up_to_date: bool = False
    collection: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def read_current(index_dir: Path) -> dict | None:
    """The manifest of the build being served, or None."""
    try:
        build_id = (index_dir / "CURRENT").read_text(encoding="utf-8").strip()
        return json.loads((index_dir / "builds" / build_id / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fingerprint(docs: list[Document], embedder: str, lexicon: Lexicon, chroma_target: str, split_mode: str = SPLIT_MODE) -> str:
    h = hashlib.sha256()
    for part in (embedder, CHUNKER_VERSION, INDEX_FORMAT, ANALYZER_VERSION, split_mode, lexicon.version_key, chroma_target):
        h.update(part.encode() + b"\0")
    for d in sorted(docs, key=lambda d: d.id):
        h.update(f"{d.id}={d.content_hash}\0".encode())
    return h.hexdigest()[:20]


def files_stamp(settings: Settings) -> str:
    """Cheap change detector (names, sizes, mtimes of documents and lexicon): lets a process start
    without parsing every document when nothing changed since the served build."""
    from bot.retrieval.documents import sources_dir

    h = hashlib.sha256()
    folder = sources_dir(settings.knowledge_dir)
    paths = sorted(folder.glob("*.md")) + [default_lexicon_path(settings.knowledge_dir),
                                           Path(settings.knowledge_dir) / "facts.yaml"]
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{p.name}:missing\0".encode())
    for part in (settings.embedder, chroma_target(settings), CHUNKER_VERSION, ANALYZER_VERSION):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:20]


def chroma_target(settings: Settings) -> str:
    return settings.chroma_url or "embedded"


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".build.lock", "w") as fh:
        with contextlib.suppress(ImportError):  # not POSIX: no lock
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def section_records(doc: Document, chunks: list[Chunk]) -> list[dict]:
    """One record per section that has text (and one for the summary): what a search returns as a
    passage, with the sentences the composer may show (bot.text.split_sentences, the same cut)."""
    sections = {s.number: s for s in parse_sections(doc.body)}
    out: list[dict] = []
    by_key: dict[str, list[Chunk]] = {}
    for c in chunks:
        if c.kind != "question":
            by_key.setdefault(c.section_key, []).append(c)
    for key, parts in by_key.items():
        text = "\n".join(c.text for c in parts)
        sec = sections.get(parts[0].section)
        out.append({"section": key, "doc_id": doc.id, "heading": parts[0].heading, "text": text,
                    "kind": parts[0].kind, "facts": list(sec.facts) if sec else [],
                    "questions": list(sec.questions) if sec else [], "sentences": split_sentences(text)})
    return out


def _embed_with_cache(docs_chunks: list[tuple[Document, list[Chunk]]], embedder: BaseEmbedder, cache_dir: Path,
                      rebuild: bool, progress: bool) -> tuple[list[np.ndarray], int, int]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: list[np.ndarray] = []
    embedded = reused = 0
    bar = tqdm(total=sum(len(c) for _, c in docs_chunks), unit="chunk", desc="embedding", disable=not progress)
    for doc, chunks in docs_chunks:
        # A document's vectors: its rows (text, questions, summary), then its sections' sentences.
        texts = [c.index_text(doc) for c in chunks] + [x for r in section_records(doc, chunks) for x in r["sentences"]]
        f = cache_dir / f"{doc.content_hash}-c{CHUNKER_VERSION}.npy"
        vecs = None
        if not rebuild and f.exists():
            try:
                vecs = np.load(f)
                if vecs.shape[0] != len(texts):
                    vecs = None
            except (OSError, ValueError):
                vecs = None
        if vecs is None:
            vecs = embedder.embed_documents_np(texts) if texts else np.zeros((0, 1), np.float32)
            tmp = f.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp.npy")
            np.save(tmp, vecs)
            os.replace(tmp, f)
            embedded += 1
        else:
            reused += 1
        out.append(vecs)
        bar.update(len(chunks))
    bar.close()
    return out, embedded, reused


def build_index(settings: Settings, *, rebuild: bool = False, progress: bool = True,
                documents: list[Document] | None = None, split_mode: str = SPLIT_MODE) -> BuildReport:
    """Build (or refresh) the index for settings.knowledge_dir; a no-op when nothing changed.

    Raises DocumentError (a ConfigError) for a malformed document before touching the served index.
    """
    t0 = time.perf_counter()
    index_dir = Path(settings.index_dir)
    stamp = files_stamp(settings)  # taken before reading, so a change during the build triggers a refresh later
    docs = documents if documents is not None else load_documents(settings.knowledge_dir)
    lexicon = Lexicon.load(default_lexicon_path(settings.knowledge_dir))
    spec = settings.embedder
    fp = fingerprint(docs, spec, lexicon, chroma_target(settings), split_mode)
    with build_lock(index_dir):
        current = read_current(index_dir)
        repaired = None
        if current and current.get("fingerprint") == fp and not rebuild:
            repaired = verify_build(index_dir, current) or _chroma_problem(settings, current)
            if repaired is None and "files" in current:
                return BuildReport(current["build_id"], len(docs), current["chunks"], 0, len(docs),
                                   time.perf_counter() - t0, up_to_date=True, collection=current["collection"])
            if repaired is not None:  # nothing it was made from is trusted: re-embed everything
                log.warning("the index is damaged (%s); rebuilding it", repaired)
                rebuild = True
        build_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
        builds = index_dir / "builds"
        tmp = builds / f".tmp-{build_id}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            docs_chunks = [(d, chunk_document(d)) for d in docs]
            embedder = make_embedder(spec)
            vec_lists, embedded, reused = _embed_with_cache(
                docs_chunks, embedder, index_dir / "embcache" / embedder_slug(spec), rebuild, progress)
            analyzer = Analyzer(lexicon, split_mode=split_mode)
            rows: list[dict] = []
            token_lists: list[list[str]] = []
            metas: list[dict] = []
            row_vectors: list[np.ndarray] = []
            sentence_vectors: list[np.ndarray] = []
            sections: list[dict] = []
            for (doc, chunks), vecs in zip(docs_chunks, vec_lists):
                for c in chunks:
                    rows.append({"chunk_id": c.chunk_id, "doc_id": c.doc_id, "ordinal": c.ordinal,
                                 "heading": c.heading, "text": c.text, "language": c.language,
                                 "kind": c.kind, "section": c.section_key})
                    token_lists.append(analyzer.tokenize(c.index_text(doc)))
                    metas.append(chunk_metadata(doc.id, doc.language, doc.kind, doc.carriers, question=c.kind == "question"))
                records = section_records(doc, chunks)
                start = len(chunks)
                for r in records:
                    n = len(r["sentences"])
                    r["sentence_offset"] = sum(len(v) for v in sentence_vectors)
                    # each sentence's words as the search analyses them: how much of a question a
                    # sentence covers is read from these (bot/retrieval/hybrid.py, sentence coverage)
                    r["sentence_tokens"] = [sorted(set(t for t in analyzer.tokenize(x) if not t.startswith("syn:")))
                                            for x in r["sentences"]]
                    sentence_vectors.append(vecs[start:start + n])
                    start += n
                    sections.append(r)
                row_vectors.append(vecs[:len(chunks)])
            vectors = np.vstack([v for v in row_vectors if len(v)]) if rows else np.zeros((0, embedder.dim), np.float32)
            sentences = (np.vstack([v for v in sentence_vectors if len(v)]) if any(len(v) for v in sentence_vectors)
                         else np.zeros((0, vectors.shape[1] if rows else embedder.dim), np.float32))
            np.save(tmp / "sentence_vectors.npy", np.asarray(sentences, dtype=np.float32))
            _write_jsonl(tmp / "sections.jsonl", sections)
            LexicalIndex.build(token_lists).save(tmp / "bm25")
            # inverse document frequency of every word over the rows: a rare word of a question
            # ("Docomo", "Teams") weighs more in how much of it a sentence covers
            df = Counter(t for toks in token_lists for t in set(toks))
            n_rows = len(token_lists)
            idf = {t: round(math.log((n_rows + 1) / (c + 0.5)), 4) for t, c in df.items()}
            (tmp / "idf.json").write_text(json.dumps(idf, ensure_ascii=False), encoding="utf-8")
            # row-aligned copy of the vectors: lets a fresh process answer before chromadb is imported
            # (service.HybridRetriever.load(defer_chroma=True)); Chroma stays the index of record.
            np.save(tmp / "vectors.npy", np.asarray(vectors, dtype=np.float32))
            _write_jsonl(tmp / "chunks.jsonl", rows)
            (tmp / "documents.json").write_text(
                json.dumps([d.to_json() for d in docs], ensure_ascii=False), encoding="utf-8")
            collection = f"pbxbot-{build_id}"
            _store_vectors(settings, collection, spec, [r["chunk_id"] for r in rows], vectors, metas,
                           repair=rebuild)
            manifest = {
                "build_id": build_id, "fingerprint": fp, "embedder": spec, "dim": int(vectors.shape[1]) if rows else 0,
                "collection": collection, "chroma": chroma_target(settings), "documents": len(docs), "chunks": len(rows),
                "chunker_version": CHUNKER_VERSION, "analyzer_version": ANALYZER_VERSION, "split_mode": split_mode,
                "lexicon": lexicon.version_key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "doc_hashes": {d.id: d.content_hash for d in docs}, "files_stamp": stamp,
                "files": file_checksums(tmp),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
            final = builds / build_id
            os.replace(tmp, final)
            pointer = index_dir / f".CURRENT.{build_id}"
            pointer.write_text(build_id, encoding="utf-8")
            os.replace(pointer, index_dir / "CURRENT")  # the switch
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _cleanup(settings, index_dir, keep={build_id, (current or {}).get("build_id")})
        return BuildReport(build_id, len(docs), len(rows), embedded, reused, time.perf_counter() - t0,
                           collection=collection, details={"repaired": repaired} if repaired else {})


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _chroma_problem(settings: Settings, manifest: dict) -> str | None:
    """What is wrong with the build's collection in the embedded Chroma database, or None."""
    if settings.chroma_url:
        return None  # a server's health is the server's; serving reports a missing collection
    try:
        vindex = ChromaVectorIndex.open(make_client(settings), manifest["collection"], manifest["embedder"])
        count = vindex.count()
    except Exception as exc:  # noqa: BLE001 - reported, then rebuilt
        return f"the Chroma database in {Path(settings.index_dir) / 'chroma'} cannot be used ({type(exc).__name__})"
    if count != manifest.get("chunks"):
        return f"the Chroma collection {manifest['collection']} holds {count} of {manifest.get('chunks')} chunks"
    return None


def _store_vectors(settings: Settings, collection: str, spec: str, ids: list[str], vectors: np.ndarray,
                   metas: list[dict], *, repair: bool) -> None:
    """The build's collection in Chroma. An embedded Chroma database that cannot be used: with
    `repair` (pbxbot index --rebuild) moved aside to chroma.damaged and made anew (it holds
    nothing the knowledge base cannot rebuild); without, a clear IndexDamaged."""
    try:
        ChromaVectorIndex.create(make_client(settings), collection, spec).add(ids, vectors, metas)
        return
    except ConfigError:
        raise
    except Exception as exc:
        if settings.chroma_url:
            raise
        folder = Path(settings.index_dir) / "chroma"
        if not repair:
            raise IndexDamaged(f"the Chroma database in {folder} cannot be used ({type(exc).__name__}: "
                               f"{str(exc)[:120]}); {REBUILD_HINT}") from None
        log.warning("the Chroma database in %s cannot be used (%s); moving it aside and starting a new one",
                    folder, type(exc).__name__)
    from bot.retrieval.vector_index import forget_client

    forget_client(settings)
    aside = folder.with_name("chroma.damaged")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    ChromaVectorIndex.create(make_client(settings), collection, spec).add(ids, vectors, metas)


def _cleanup(settings: Settings, index_dir: Path, keep: set) -> None:
    """Remove builds older than the previous one (a process may still serve the previous one)."""
    builds = index_dir / "builds"
    client = None
    for p in sorted(builds.iterdir()) if builds.exists() else []:
        if p.name in keep:
            continue
        with contextlib.suppress(Exception):  # best effort: a stale folder or collection is harmless
            manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
            if manifest.get("chroma") == chroma_target(settings):
                client = client or make_client(settings)
                ChromaVectorIndex.delete(client, manifest["collection"])
        shutil.rmtree(p, ignore_errors=True)
