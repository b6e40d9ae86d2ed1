"""Dense vector index in Chroma: embedded PersistentClient (default) or a `chroma run` server.

Security (CVE-2026-45829, chroma-core/chroma#6717, unpatched up to chromadb 1.5.9): a collection's
stored configuration can name an embedding function whose construction runs remote code, and
`client.get_collection()` / `Collection.configuration` / `Collection.schema` rebuild that function
with `known_embedding_functions[name].build_from_config(...)`. So this module
  * never calls `client.get_collection()` / `list_collections()` on a collection it did not just create;
    it fetches the raw model (`client._server.get_collection`), refuses it when its stored configuration
    or schema names any embedding function but ours (`UnsafeCollectionError`), and only then wraps it;
  * always passes vectors itself (`embeddings=` / `query_embeddings=`), so neither Chroma's default
    embedding function (which downloads an ONNX model) nor any stored one ever runs;
  * registers `PbxbotVectorsOnly`, an embedding function that refuses to embed: if anything in Chroma
    ever tried to embed text for our collections it fails loudly instead of downloading a model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

import numpy as np

from bot.config import ConfigError

log = logging.getLogger(__name__)

EF_NAME = "pbxbot-vectors-only"


class UnsafeCollectionError(ConfigError):
    """A Chroma collection's stored configuration names an embedding function we did not put there."""


@functools.cache
def _ef_class():
    """Defined lazily so that importing this module does not import chromadb (about 1-2 s)."""
    from chromadb.api.types import Documents, EmbeddingFunction
    from chromadb.utils.embedding_functions import register_embedding_function

    class PbxbotVectorsOnly(EmbeddingFunction[Documents]):
        def __init__(self, embedder: str = "unknown"):
            self._embedder = str(embedder)[:100]

        def __call__(self, input: Documents):  # noqa: A002 (Chroma's parameter name)
            raise RuntimeError("pbxbot passes vectors to Chroma itself; refusing to embed inside Chroma")

        @staticmethod
        def name() -> str:
            return EF_NAME

        def get_config(self) -> dict[str, Any]:
            return {"embedder": self._embedder}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> "PbxbotVectorsOnly":
            # Nothing from the stored config is executed or loaded: it is only a label.
            return PbxbotVectorsOnly(str((config or {}).get("embedder", "unknown")))

        def default_space(self):  # cosine on normalized vectors
            return "cosine"

        def supported_spaces(self):
            return ["cosine", "ip", "l2"]

    with contextlib.suppress(ValueError):  # already registered in this process (module reloaded in tests)
        register_embedding_function(PbxbotVectorsOnly)
    return PbxbotVectorsOnly


def foreign_embedding_functions(configuration_json: Any, serialized_schema: Any) -> list[str]:
    """Names of every embedding function a stored collection config/schema refers to, other than ours."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("embedding_function", "sparse_embedding_function") and isinstance(value, dict):
                    if not value.get("name"):
                        continue  # {"type": "legacy"} / {"type": "unknown"}: names nothing, Chroma builds nothing
                    name = value.get("name")
                    if name != EF_NAME:
                        found.append(str(name))
                walk(value)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(configuration_json or {})
    walk(serialized_schema or {})
    return found


_PERSISTENT: dict[str, Any] = {}
_CLIENT_LOCK = threading.Lock()


def make_client(settings) -> Any:
    """PersistentClient in settings.index_dir/chroma, or HttpClient for settings.chroma_url."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    if settings.chroma_url:
        u = urlparse(settings.chroma_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError("PBXBOT_CHROMA_URL must look like http://host:port")
        headers = {}
        if settings.chroma_token is not None and settings.chroma_token.get_secret_value():
            # Sent as "Authorization: Bearer <token>". `chroma run` 1.x does not check it itself
            # (its Rust frontend has no token provider); the reverse proxy in front of it must.
            headers["Authorization"] = "Bearer " + settings.chroma_token.get_secret_value()
        try:
            return chromadb.HttpClient(
                host=u.hostname, port=u.port or (443 if u.scheme == "https" else 80), ssl=u.scheme == "https",
                headers=headers, settings=ChromaSettings(anonymized_telemetry=False),
            )
        except Exception as exc:
            raise ConfigError(f"PBXBOT_CHROMA_URL: cannot reach the Chroma server ({type(exc).__name__})") from None
    path = str((Path(settings.index_dir) / "chroma").resolve())
    with _CLIENT_LOCK:  # one PersistentClient per path per process
        client = _PERSISTENT.get(path)
        if client is None:
            Path(path).mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=path, settings=ChromaSettings(anonymized_telemetry=False))
            _PERSISTENT[path] = client
        return client


def forget_client(settings) -> None:
    """Drop this process's embedded client for settings' index (before its folder is replaced)."""
    path = str((Path(settings.index_dir) / "chroma").resolve())
    with _CLIENT_LOCK:
        _PERSISTENT.pop(path, None)
    with contextlib.suppress(Exception):  # older or newer chromadb: a fresh process does it anyway
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient.clear_system_cache()


def _where(language: str | None, carrier: str | None) -> dict | None:
    clauses: list[dict] = []
    if language:
        clauses.append({"language": language})
    if carrier:
        clauses.append({"$or": [{f"c_{carrier}": True}, {"c_all": True}]})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


QUESTIONS_SUFFIX = "-q"  # the section questions' collection: "<name>-q" beside the text's "<name>"


def collection_names(name: str) -> tuple[str, str]:
    """The two collections of one build: text pieces, and section questions."""
    return name, name + QUESTIONS_SUFFIX


class ChromaVectorIndex:
    """The vectors of one build in two collections: the text pieces under `name`, the section
    questions under `name-q`. Metadata: doc_id, language, kind, question, c_<carrier>=True flags.

    Two collections, not one with a filter: a search ranks each kind of row apart (a query's nearest
    rows would otherwise all be questions), and a `where` filter made a Chroma query 3.5-4.5x slower
    on the development index (2.8 ms unfiltered, 10-13 ms with {"question": ...}; scripts/bench_retrieval.py
    at 100k chunks measured 1.2 s p95 for a filter over carrier flags)."""

    def __init__(self, client: Any, text: Any, questions: Any):
        self.client = client
        self.collections = {False: text, True: questions}

    # ---- create / open
    @classmethod
    def create(cls, client: Any, name: str, embedder_name: str) -> "ChromaVectorIndex":
        ef = _ef_class()(embedder_name)
        made = []
        for coll_name in collection_names(name):
            with contextlib.suppress(Exception):  # there was none
                client.delete_collection(coll_name)
            made.append(client.create_collection(
                name=coll_name, embedding_function=ef,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"pbxbot": "chunks", "embedder": embedder_name},
            ))
        return cls(client, *made)

    @classmethod
    def open(cls, client: Any, name: str, embedder_name: str) -> "ChromaVectorIndex":
        """Open an existing build's collections safely (see module docstring); refuse a foreign embedding function."""
        return cls(client, *(_open_collection(client, n, embedder_name) for n in collection_names(name)))

    @staticmethod
    def delete(client: Any, name: str) -> None:
        for coll_name in collection_names(name):
            with contextlib.suppress(Exception):  # best effort: one may never have been made
                client.delete_collection(coll_name)

    def count(self) -> int:
        return sum(c.count() for c in self.collections.values())

    # ---- write
    def add(self, ids: list[str], vectors: np.ndarray, metadatas: list[dict]) -> None:
        """Rows whose metadata says `question` go to the questions' collection, the others to the text's."""
        try:
            batch = int(self.client.get_max_batch_size())
        except Exception:
            batch = 1000
        batch = max(1, min(batch, 2000))
        for question, collection in self.collections.items():
            rows = [i for i, m in enumerate(metadatas) if bool(m.get("question")) is question]
            for i in range(0, len(rows), batch):
                part = rows[i:i + batch]
                collection.add(ids=[ids[j] for j in part], embeddings=np.asarray(vectors[part], dtype=np.float32),
                               metadatas=[metadatas[j] for j in part])

    # ---- read
    def query(self, vector: np.ndarray, n: int, *, question: bool, language: str | None = None,
              carrier: str | None = None) -> list[tuple[str, float]]:
        """[(chunk_id, cosine similarity)] best first, among the section questions (`question`) or
        the text pieces."""
        if n <= 0:
            return []
        res = self.collections[bool(question)].query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)], n_results=n,
            where=_where(language, carrier), include=["distances"],
        )
        ids = (res.get("ids") or [[]])[0]
        dists = (res.get("distances") or [[]])[0]
        return [(cid, 1.0 - float(d)) for cid, d in zip(ids, dists)]


def _open_collection(client: Any, name: str, embedder_name: str) -> Any:
    from chromadb.api.models.Collection import Collection

    server = client._server  # the raw API: returns the stored model without building anything from it
    try:
        model = server.get_collection(name=name, tenant=client.tenant, database=client.database)
    except Exception as exc:
        raise ConfigError(f"Chroma collection {name!r} is missing ({type(exc).__name__}); run `pbxbot index`") from None
    foreign = foreign_embedding_functions(model.configuration_json, model.serialized_schema)
    if foreign:
        raise UnsafeCollectionError(
            f"Chroma collection {name!r} names embedding function(s) {', '.join(sorted(set(foreign)))} in its "
            "stored configuration; refusing to load it (CVE-2026-45829). Rebuild with `pbxbot index --rebuild` "
            "after checking who wrote to the Chroma server."
        )
    return Collection(client=server, model=model, embedding_function=_ef_class()(embedder_name))


def chunk_metadata(doc_id: str, language: str, kind: str, carriers: Iterable[str], question: bool = False) -> dict:
    """`kind`: the document's (guide or source); `question`: the row is a section question, not text."""
    return {"doc_id": doc_id, "language": language, "kind": kind, "question": question,
            **{f"c_{c}": True for c in carriers}}
