"""Builds the core objects from Settings: shared by the CLI and web.create_app.

The only place (with web.create_app) that chooses implementations.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from bot.config import ConfigError, Settings

log = logging.getLogger("bot.wiring")

if TYPE_CHECKING:  # pragma: no cover
    from bot.conversation.service import ConversationService
    from bot.handoff.sql_store import SqlHandoffStore
    from bot.ports import Retriever


def build_retriever(settings: Settings, *, progress: bool = False) -> "Retriever":
    """Open the index (embedded or Chroma server); build it first when there is none. Searches go
    through BoundedRetriever (a query's retrieval work is bounded by settings.max_search_chars)."""
    from bot.retrieval.hybrid import open_retriever

    return BoundedRetriever(open_retriever(settings, progress=progress), settings.max_search_chars)


class BoundedRetriever:
    """A Retriever whose work per query is bounded: a query longer than `max_chars` is cut to its
    first characters and its last TAIL_CHARS (what a long paste is about is at its start; the
    core puts the current message after earlier context and retrieval hints at the end, so
    both ends matter). Analysis, BM25 and the embedding then see at most `max_chars`: a
    4000-character message costs what a `max_chars` one does. The message itself is recorded
    and answered whole. Everything else is the wrapped retriever's."""

    TAIL_CHARS = 80

    def __init__(self, inner: "Retriever", max_chars: int) -> None:
        self.inner = inner
        self.max_chars = max_chars

    def bound(self, query: str) -> str:
        if not isinstance(query, str) or len(query) <= self.max_chars:
            return query
        tail = min(self.TAIL_CHARS, self.max_chars // 4)
        return query[: self.max_chars - tail - 1] + " " + query[-tail:]

    def search(self, query: str, k: int = 5, **kwargs):  # noqa: ANN201 - the inner retriever's SearchResult
        return self.inner.search(self.bound(query), k, **kwargs)

    def prefetch(self, query: str) -> None:
        prefetch = getattr(self.inner, "prefetch", None)
        if prefetch is not None:
            prefetch(self.bound(query))

    def encode_queries(self, texts):  # noqa: ANN001,ANN201 - the TextEncoder role, bounded like a search
        return self.inner.encode_queries([self.bound(t) for t in texts])

    def __getattr__(self, name: str):  # noqa: ANN204 - health(), get_document(), wait_ready(), ...
        return getattr(self.inner, name)


def prepare_index(settings: Settings, *, progress: bool = False) -> dict:
    """Build or refresh the index when needed, without loading it (the manifest)."""
    from bot.retrieval.hybrid import ensure_index

    return ensure_index(settings, progress=progress)


def build_store(settings: Settings, *, attempts: int | None = None,
                sleep: Callable[[float], None] = time.sleep) -> "SqlHandoffStore":
    """SQLite in the data dir, or PostgreSQL when PBXBOT_DATABASE_URL is set; migrated to head.

    A database that cannot be reached (not up yet, restarting) is tried `attempts` times
    (settings.database_start_attempts), 1, 2, 4, then 5 s apart, with one log line per failed
    attempt; then a ConfigError (one line, never a traceback). A refused login, a missing
    database or a schema newer than this code is a ConfigError at once: waiting will not help."""
    from sqlalchemy.exc import DBAPIError

    from bot.handoff.migrate import SchemaError
    from bot.handoff.sql_store import SqlHandoffStore

    attempts = max(1, attempts or settings.database_start_attempts)
    where = _database_label(settings)
    for attempt in range(1, attempts + 1):
        try:
            return SqlHandoffStore.from_settings(settings)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from None
        except DBAPIError as exc:
            reason = _database_error(exc)
            if any(h in reason.lower() for h in _HOPELESS) or attempt == attempts:  # waiting will not help
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise ConfigError(f"cannot use the database at {where}{tries}: {reason}") from None
            delay = min(5.0, 2.0 ** (attempt - 1))
            log.warning("database at %s not reachable (%s); attempt %d of %d, trying again in %.0f s",
                        where, reason, attempt, attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


_HOPELESS = ("password authentication failed", "authentication failed", "does not exist", "no password supplied",
             "permission denied", "unable to open database file", "role ")


def _database_error(exc: Exception) -> str:
    """The driver's first line (no SQL, no parameters, no password)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return text[:200]


def _database_label(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse fails later with its own message
        return "PBXBOT_DATABASE_URL"


def build_conversation_service(
    settings: Settings, *, retriever: "Retriever | None" = None, store: "SqlHandoffStore | None" = None,
    understander: Any = None,
) -> "ConversationService":
    from bot.conversation.service import ConversationService
    from bot.handoff.service import HandoffService

    store = store if store is not None else build_store(settings)
    retriever = retriever if retriever is not None else build_retriever(settings)
    return ConversationService(retriever=retriever, store=store, handoff=HandoffService(store), settings=settings,
                               understander=understander)


def prepare_understanding(settings: Settings) -> Any:
    """Train the intent classifier for the served embedder when knowledge/intents or the embedder
    changed, so that a start finds it ready (`pbxbot index`, `pbxbot serve --workers` before its
    workers). Loads only an embedder, and only when it must train. Returns the classifier."""
    from pathlib import Path

    from bot.conversation.understanding import classifier
    from bot.conversation.understanding.intents import load_intents
    from bot.retrieval.hybrid import QueryEncoder

    data = load_intents(settings.knowledge_dir)
    cache = Path(settings.data_dir) / "models"
    saved = classifier.saved_model(data, cache, settings.embedder)
    if saved is not None:
        return saved
    encoder = QueryEncoder(settings.embedder)
    return classifier.load_or_train(data, cache, encoder.encode_queries, settings.embedder)
