"""`pbxbot index [--rebuild]`: build or refresh the retrieval index (only changed documents are re-embedded)."""

from __future__ import annotations


from bot.config import Settings


def run(args, settings: Settings) -> int:
    from bot.retrieval.index_builder import build_index

    report = build_index(settings, rebuild=bool(getattr(args, "rebuild", False)), progress=True)
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
    return 0
