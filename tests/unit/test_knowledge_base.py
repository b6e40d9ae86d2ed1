"""The knowledge base (knowledge/sources/*.md) against the fact registry (knowledge/facts.yaml).

Runs on a fresh clone without ../shared: every document parses; every section lists 2-5 questions
and the facts it states, their union is the front matter's facts; every fact and source id is in
the registry; the front-matter url belongs to a listed source; every URL in a body is a source's;
every phone number belongs to one of the document's facts; nothing from the sheet's UNVERIFIED
section; counterparts exist and point back; guides open with text before their sections. Each
document is parsed once for all checks. When ../shared is present, the registry itself is
checked against the fact sheet (tests/unit/test_fact_registry.py).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

from bot.retrieval.documents import load_documents
from bot.retrieval.fact_registry import FactRegistry
from bot.retrieval.kb_checks import check

REPO = Path(__file__).resolve().parents[2]
KNOWLEDGE = REPO / "knowledge"
SOURCES = KNOWLEDGE / "sources"
DOCS = sorted(SOURCES.glob("*.md"))


@lru_cache(maxsize=1)
def registry() -> FactRegistry:
    return FactRegistry.load(KNOWLEDGE)


@lru_cache(maxsize=1)
def problems() -> tuple[tuple[str, ...], tuple[str, ...]]:
    errors, warnings = check(DOCS, registry(), warnings=True, sources_dir=SOURCES)
    return tuple(errors), tuple(warnings)


def test_the_knowledge_base_has_both_languages_of_every_document():
    stems = {p.stem for p in DOCS}
    assert len(DOCS) >= 70
    assert all((s[:-3] + ("-en" if s.endswith("-ja") else "-ja")) in stems for s in stems)


def test_every_document_passes_every_check_against_the_registry():
    errors, _ = problems()
    assert not errors, "\n".join(errors)


def test_no_sentence_leans_on_the_one_before_it():
    _, warnings = problems()
    leaning = [w for w in warnings if "leans on" in w]
    assert not leaning, "\n".join(leaning)


def test_pbxbot_loads_every_document():
    assert len(load_documents(KNOWLEDGE)) == len(DOCS)


def test_every_fact_of_the_registry_is_stated_or_says_why_not():
    stated = {f for d in load_documents(KNOWLEDGE) for f in d.facts}
    missing = [pid for pid, fact in registry().facts.items() if pid not in stated and not fact.get("omitted")]
    assert not missing, f"facts stated nowhere without a reason in knowledge/facts.yaml: {missing}"
    assert all(fact.get("summary") for fact in registry().facts.values())


@pytest.mark.parametrize("path", [p for p in DOCS if p.stem.startswith("guide-")], ids=lambda p: p.name)
def test_a_guide_opens_with_what_a_frightened_user_needs_before_its_sections(path: Path):
    body = path.read_text(encoding="utf-8").split("\n---", 1)[1]
    lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("<!--") and ln.strip() != "---"]
    assert lines and not lines[0].startswith("#") and any(ln.startswith("## ") for ln in lines)


# ---------------------------------------------------------------- the checks catch what they must

GOOD = """---
id: fx-x-{l}
title: t
kind: guide
language: {l}
counterpart: fx-x-{o}
publisher: NTT
url: https://www.ntt-west.co.jp/news/1507/150706a.html
published: 2015-07-06
carriers: [all]
topics: [containment]
facts: [P066]
sources: [K021]
---
<!-- q: a? -->
<!-- q: b? -->
<!-- facts: P066 -->
{body}
"""


def _pair(tmp_path: Path, body: str) -> list[str]:
    for lang, other in (("en", "ja"), ("ja", "en")):
        (tmp_path / f"fx-x-{lang}.md").write_text(GOOD.format(l=lang, o=other, body=body), encoding="utf-8")
    errors, _ = check(sorted(tmp_path.glob("*.md")), registry(), sources_dir=tmp_path)
    return errors


@pytest.mark.parametrize("body, problem", [
    ("Call 0120-116116 (as of 2015).", None),  # P066's own number
    ("Call 0120-999-999 today.", "phone number 0120-999-999"),
    ("The centre's fax is 0120-210535.", "fax number"),
    ("See https://www.kokusai-teishi.com/ for the form.", "UNVERIFIED"),
    ("See https://example.org/made-up for details.", "not a registry source URL"),
])
def test_invented_numbers_addresses_and_unverified_items_are_caught(tmp_path, body, problem):
    errors = _pair(tmp_path, body)
    if problem is None:
        assert errors == []
    else:
        assert any(problem in e for e in errors), errors


def test_a_fact_the_registry_does_not_know_is_caught(tmp_path):
    (tmp_path / "fx-x-en.md").write_text(GOOD.format(l="en", o="ja", body="Text.").replace("P066", "P999"), encoding="utf-8")
    (tmp_path / "fx-x-ja.md").write_text(GOOD.format(l="ja", o="en", body="本文。"), encoding="utf-8")
    errors, _ = check(sorted(tmp_path.glob("*.md")), registry(), sources_dir=tmp_path)
    assert any("P999" in e and "facts.yaml" in e for e in errors), errors


def test_the_registry_holds_nothing_of_the_unverified_section():
    text = (KNOWLEDGE / "facts.yaml").read_text(encoding="utf-8")
    assert not re.search(r"kokusai-teishi|UV\d\d|JPCERT-AT-20", text)
