"""Builds the core objects from Settings: shared by the CLI and web.create_app.

The only place (with web.create_app) that chooses implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    from bot.conversation.service import ConversationService
    from bot.handoff.sql_store import SqlHandoffStore
    from bot.ports import Retriever


def build_retriever(settings: Settings, *, progress: bool = False) -> "Retriever":
    """Open the index (embedded or Chroma server); build it first when there is none. Searches go
    through BoundedRetriever (a query's retrieval work is bounded by settings.max_search_chars)."""
    from bot.retrieval.service import open_retriever

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

    def __getattr__(self, name: str):  # noqa: ANN204 - health(), get_document(), wait_ready(), ...
        return getattr(self.inner, name)


def prepare_index(settings: Settings, *, progress: bool = False) -> dict:
    """Build or refresh the index when needed, without loading it (the manifest)."""
    from bot.retrieval.service import ensure_index

    return ensure_index(settings, progress=progress)


def build_store(settings: Settings) -> "SqlHandoffStore":
    """SQLite in the data dir, or PostgreSQL when PBXBOT_DATABASE_URL is set; migrated to head."""
    from bot.handoff.sql_store import SqlHandoffStore

    return SqlHandoffStore.from_settings(settings)


def build_conversation_service(
    settings: Settings, *, retriever: "Retriever | None" = None, store: "SqlHandoffStore | None" = None
) -> "ConversationService":
    from bot.conversation.service import ConversationService

    store = store if store is not None else build_store(settings)
    retriever = retriever if retriever is not None else build_retriever(settings)
    return ConversationService(retriever=retriever, store=store, handoff=store, settings=settings)
