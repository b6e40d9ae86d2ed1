"""Check knowledge documents the way `pbxbot index` and the tests will, listing every problem.

    python scripts/kb_check.py                      # every document in knowledge/sources
    python scripts/kb_check.py knowledge/sources/guide-home-users-ja.md ...
    python scripts/kb_check.py --warnings           # also sentences that lean on the one before

Errors (exit 1): front matter, section markers (2-5 questions, a facts marker with registry ids,
their union equal to the front matter's facts), sources and URLs from the registry, phone numbers
that belong to one of the document's facts, the sheet's UNVERIFIED items, counterparts.
Warnings: a sentence that opens with a word pointing back ("This", "Such", 「その」「また、」).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import ConfigError  # noqa: E402
from bot.retrieval.documents import DocumentError, parse_document  # noqa: E402
from bot.retrieval.fact_registry import FORBIDDEN, FactRegistry, digits, phones_in, urls_in  # noqa: E402
from bot.retrieval.sections import parse_sections, section_problems  # noqa: E402

KNOWLEDGE = ROOT / "knowledge"
_LEANING = re.compile(
    r"^(this|these|that|those|such|it|they|its|their|there|also|however|so|then|in (that|this|such) case|in that way|"
    r"for (this|that) reason|as a result|otherwise|instead|likewise|similarly|besides)\b|"
    r"^(これ|それ|その|この|あの|こう|そう|こちら|そちら|また、|なお、|ただし、|しかし、|そのため|このため|そこで|さらに、|一方、|同様に|つまり)",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*+・]|\d{1,2}[.)])\s+", "", line).strip()
        if not line or line.startswith(("#", "|", "<!--")):
            continue
        for part in re.split(r"(?<=[。！？])|(?<=[.!?])\s+(?=[A-Z0-9\"'(])", line):
            if part and part.strip():
                out.append(part.strip())
    return out


def check(paths: list[Path], registry: FactRegistry, warnings: bool) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warns: list[str] = []
    known = registry.fact_ids
    source_urls = registry.source_urls()
    all_urls = frozenset(u for urls in source_urls.values() for u in urls)
    docs = {}
    all_docs = {p.stem: p for p in (KNOWLEDGE / "sources").glob("*.md")}
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
                for sent in sentences(s.text):
                    if _LEANING.search(sent):
                        warns.append(f"{name}: leans on the sentence before: {sent[:70]}")
    return errors, warns


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--warnings", action="store_true")
    args = ap.parse_args()
    try:
        registry = FactRegistry.load(KNOWLEDGE)
    except ConfigError as exc:
        print(exc)
        return 2
    paths = args.files or sorted((KNOWLEDGE / "sources").glob("*.md"))
    errors, warns = check(paths, registry, args.warnings)
    for w in warns:
        print("warning:", w)
    for e in errors:
        print("error:", e)
    print(f"{len(paths)} documents, {len(errors)} errors, {len(warns)} warnings")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
