"""Choosing among retrieved passages: by language, by carrier, by topic."""

from __future__ import annotations

from typing import Sequence

from bot.ports import Passage


def in_language(passages: Sequence[Passage], lang: str) -> tuple[list[Passage], bool]:
    """The passages in the user's language; the other language's only when none is (flagged)."""
    same = [p for p in passages if p.language == lang]
    if same or not passages:
        return same, False
    return list(passages), True


def pick(passages: Sequence[Passage], *, topics: Sequence[str], carrier: str | None = None,
         prefer_lead: bool = False) -> Passage | None:
    """The best passage on one of `topics`: for `carrier` when given, else a guide for all carriers;
    with prefer_lead, that document's opening section (guides open with what to do first)."""
    def ok(p: Passage) -> bool:
        if topics and not set(topics) & set(p.topics):
            return False
        return carrier in p.carriers if carrier else True

    matching = [p for p in passages if ok(p)]
    if not matching:
        return passages[0] if passages and carrier is None else None
    if carrier is None:
        general = [p for p in matching if "all" in p.carriers]
        matching = general or matching
    if prefer_lead:
        guides = [p for p in matching if p.kind == "guide"]
        pool = guides or matching
        top_doc = pool[0].doc_id
        leads = [p for p in passages if p.doc_id == top_doc and not p.heading and not is_summary(p)]
        return leads[0] if leads else next((p for p in pool if not is_summary(p)), pool[0])
    return matching[0]


def is_summary(p: Passage) -> bool:
    return p.chunk_id.endswith("#s")  # the document's one-line summary passage (retrieval/chunking.py)


def for_carrier(passages: Sequence[Passage], carrier: str | None) -> list[Passage]:
    """Drop passages about other carriers when the user named one (keeps general ones)."""
    if not carrier:
        return list(passages)
    kept = [p for p in passages if not p.carriers or carrier in p.carriers or "all" in p.carriers]
    return kept or list(passages)
