"""Checks of the knowledge base that need more than one document: facts, sources, URLs and phone
numbers against the fact registry (knowledge/facts.yaml), the sheet's UNVERIFIED items,
counterparts, section markers. Used by scripts/kb_check.py and the knowledge-base tests; every
problem is listed (`pbxbot index` stops at the first).
"""

from __future__ import annotations

import re
from pathlib import Path

from bot.retrieval.documents import DocumentError, parse_document
from bot.retrieval.fact_registry import FORBIDDEN, FactRegistry, digits, phones_in, urls_in
from bot.retrieval.sections import parse_sections, section_problems
from bot.text import split_sentences

_LEANING = re.compile(
    r"^(this|these|that|those|such|it|they|its|their|there|also|however|so|then|in (that|this|such) case|in that way|"
    r"for (this|that) reason|as a result|otherwise|instead|likewise|similarly|besides)\b|"
    r"^(これ|それ|その|この|あの|こう|そう|こちら|そちら|また、|なお、|ただし、|しかし、|そのため|このため|そこで|さらに、|一方、|同様に|つまり)",
    re.IGNORECASE,
)


def check(paths: list[Path], registry: FactRegistry, warnings: bool = False,
          sources_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the documents at `paths`; counterparts are looked up in sources_dir
    (default: the folder of the first path)."""
    errors: list[str] = []
    warns: list[str] = []
    known = registry.fact_ids
    source_urls = registry.source_urls()
    all_urls = frozenset(u for urls in source_urls.values() for u in urls)
    docs = {}
    folder = sources_dir or (paths[0].parent if paths else Path("."))
    all_docs = {p.stem: p for p in folder.glob("*.md")}
    for path in paths:
        try:
            doc = parse_document(path)
        except DocumentError as exc:
            errors.append(str(exc))
            continue
        docs[doc.id] = doc
        name = path.name
        sections = parse_sections(doc.body)
        for field_name, problem in section_problems(sections, doc.facts, known):
            errors.append(f"{name}: field '{field_name}': {problem}")
        unknown_sources = [k for k in doc.sources if k not in registry.sources]
        if unknown_sources:
            errors.append(f"{name}: field 'sources': not in the registry: {', '.join(unknown_sources)}")
        owners = [k for k, urls in source_urls.items() if doc.url in urls]
        if not owners:
            errors.append(f"{name}: field 'url': {doc.url} is not the URL of any registry source")
        elif not set(owners) & set(doc.sources):
            errors.append(f"{name}: field 'url': belongs to {', '.join(owners)}, none of which is in sources")
        for u in urls_in(doc.body):
            if u not in all_urls:
                errors.append(f"{name}: field 'body': URL {u} is not a registry source URL")
        allowed_phones = {digits(p) for f in doc.facts for p in (registry.facts.get(f) or {}).get("phones") or ()}
        text = "\n".join((doc.title, doc.summary or "", doc.body))
        for phone in sorted(phones_in(text)):
            if digits(phone) not in allowed_phones:
                errors.append(f"{name}: field 'body': phone number {phone} belongs to none of the document's facts")
        raw = path.read_text(encoding="utf-8")
        for rx, why in FORBIDDEN:
            if rx.search(raw):
                errors.append(f"{name}: field 'body': {why}")
        cp = all_docs.get(doc.counterpart)
        if cp is None:
            errors.append(f"{name}: field 'counterpart': {doc.counterpart} does not exist")
        else:
            try:
                other = parse_document(cp)
                if other.counterpart != doc.id:
                    errors.append(f"{name}: field 'counterpart': {doc.counterpart} points to {other.counterpart}")
                n_self = sum(1 for s in sections if s.has_text)
                n_other = sum(1 for s in parse_sections(other.body) if s.has_text)
                if n_self != n_other:
                    warns.append(f"{name}: {n_self} sections, counterpart {other.id} has {n_other}")
            except DocumentError:
                pass  # reported when the counterpart itself is checked
        if warnings:
            for s in sections:
                for sent in split_sentences(s.text):
                    if _LEANING.search(sent):
                        warns.append(f"{name}: leans on the sentence before: {sent[:70]}")
    return errors, warns
