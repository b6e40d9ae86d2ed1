"""`pbxbot index [--rebuild]`: build or refresh the retrieval index (only changed documents are
re-embedded), then train the intent classifier if knowledge/intents or the embedder changed."""

from __future__ import annotations

import time

from bot.config import Settings


def run(args, settings: Settings) -> int:
    from bot.conversation.understanding.intents import load_intents
    from bot.retrieval.documents import load_documents
    from bot.retrieval.index_builder import build_index
    from bot.wiring import prepare_understanding

    # A malformed document or intents file stops here with one line, before any work is done.
    documents = load_documents(settings.knowledge_dir)
    load_intents(settings.knowledge_dir)
    report = build_index(settings, rebuild=bool(getattr(args, "rebuild", False)), progress=True, documents=documents)
    if report.details.get("repaired"):
        print(f"the index was damaged ({report.details['repaired']}); rebuilt it from the knowledge base")
    if report.up_to_date:
        print(f"index up to date: {report.documents} documents, {report.chunks} chunks (build {report.build_id})")
    else:
        print(
            f"index built: {report.documents} documents, {report.chunks} chunks; "
            f"embedded {report.embedded_documents} documents, reused {report.reused_documents}; "
            f"{report.seconds:.1f} s (build {report.build_id}, embedder {settings.embedder})"
        )
    started = time.perf_counter()
    model = prepare_understanding(settings)
    print(f"intent model: {model.meta.get('examples')} examples, "
          f"{'up to date' if model.from_cache else 'trained'} in {time.perf_counter() - started:.1f} s")
    return 0
