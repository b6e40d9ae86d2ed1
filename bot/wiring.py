"""Builds the core objects from Settings: shared by the CLI and web.create_app.

The only place (with web.create_app) that chooses implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    from bot.conversation.service import ConversationService
    from bot.handoff.sql_store import SqlHandoffStore
    from bot.ports import Retriever


def build_retriever(settings: Settings, *, progress: bool = False) -> "Retriever":
    """Open the index (embedded or Chroma server); build it first when there is none."""
    from bot.retrieval.service import open_retriever

    return open_retriever(settings, progress=progress)


def prepare_index(settings: Settings, *, progress: bool = False) -> dict:
    """Build or refresh the index when needed, without loading it (the manifest)."""
    from bot.retrieval.service import ensure_index

    return ensure_index(settings, progress=progress)


def build_store(settings: Settings) -> "SqlHandoffStore":
    """SQLite in the data dir, or PostgreSQL when PBXBOT_DATABASE_URL is set; migrated to head."""
    from bot.handoff.sql_store import SqlHandoffStore

    return SqlHandoffStore.from_settings(settings)


def build_conversation_service(
    settings: Settings, *, retriever: "Retriever | None" = None, store: "SqlHandoffStore | None" = None,
    understander: Any = None,
) -> "ConversationService":
    from bot.conversation.service import ConversationService

    store = store if store is not None else build_store(settings)
    retriever = retriever if retriever is not None else build_retriever(settings)
    return ConversationService(retriever=retriever, store=store, handoff=store, settings=settings,
                               understander=understander)


def prepare_understanding(settings: Settings) -> Any:
    """Train the intent classifier for the served embedder when knowledge/intents or the embedder
    changed, so that a start finds it ready (`pbxbot index`, `pbxbot serve --workers` before its
    workers). Loads only an embedder, and only when it must train. Returns the classifier."""
    from pathlib import Path

    from bot.conversation.understanding import classifier
    from bot.conversation.understanding.intents import load_intents
    from bot.retrieval.service import QueryEncoder

    data = load_intents(settings.knowledge_dir)
    cache = Path(settings.data_dir) / "models"
    saved = classifier.saved_model(data, cache, settings.embedder)
    if saved is not None:
        return saved
    encoder = QueryEncoder(settings.embedder, cache_dir=str(Path(settings.data_dir) / "cache"))
    return classifier.load_or_train(data, cache, encoder.encode_queries, settings.embedder)
