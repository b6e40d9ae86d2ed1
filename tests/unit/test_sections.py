"""Section markers of knowledge documents: questions and facts per section, validated at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.retrieval.documents import DocumentError, load_documents
from bot.retrieval.sections import parse_sections, section_problems, strip_markers

BODY = """<!-- q: What do I do first? -->
<!-- q: How do I stop it now? -->
<!-- facts: P045 -->
Stop international calls first.

## Keep records
<!-- q: What should I keep? -->
<!-- q: Can I delete the logs? -->
<!-- facts: P046 P047 -->
Keep the call records.
"""


def test_sections_carry_their_questions_and_facts_and_markers_never_reach_the_text():
    lead, records = parse_sections(BODY)
    assert lead.number == 0 and lead.questions == ("What do I do first?", "How do I stop it now?")
    assert records.heading == "Keep records" and records.facts == ("P046", "P047")
    assert "<!--" not in lead.text + records.text and "<!--" not in strip_markers(BODY)
    assert section_problems([lead, records], ("P045", "P046", "P047"), frozenset({"P045", "P046", "P047"})) == []


def test_every_broken_marker_is_named():
    sections = parse_sections(BODY.replace("<!-- q: Can I delete the logs? -->\n", "").replace("P046 P047", "P046 P999"))
    problems = section_problems(sections, ("P045", "P046", "P047"), frozenset({"P045", "P046", "P047"}))
    text = " ".join(p for _, p in problems)
    assert "has 1 questions" in text and "P999" in text and "P047" in text


def _corpus(tmp_path: Path, body_ja: str) -> Path:
    src = tmp_path / "sources"
    src.mkdir()
    head = ("---\nid: fx-a-{l}\ntitle: t\nkind: guide\nlanguage: {l}\ncounterpart: fx-a-{o}\npublisher: p\n"
            "url: https://example.org/a\npublished: null\ncarriers: [all]\ntopics: [containment]\nfacts: [P045]\nsources: [K021]\n---\n")
    good = "<!-- q: a? -->\n<!-- q: b? -->\n<!-- facts: P045 -->\nText.\n"
    (src / "fx-a-en.md").write_text(head.format(l="en", o="ja") + good, encoding="utf-8")
    (src / "fx-a-ja.md").write_text(head.format(l="ja", o="en") + body_ja, encoding="utf-8")
    return tmp_path


def test_a_section_without_questions_stops_loading_with_the_file_and_the_field(tmp_path):
    root = _corpus(tmp_path, "<!-- facts: P045 -->\n本文。\n")
    with pytest.raises(DocumentError) as exc:
        load_documents(root)
    assert exc.value.path.endswith("fx-a-ja.md") and exc.value.field == "questions"


def test_a_fact_missing_from_the_registry_stops_loading(tmp_path):
    root = _corpus(tmp_path, "<!-- q: a? -->\n<!-- q: b? -->\n<!-- facts: P045 -->\n本文。\n")
    (root / "facts.yaml").write_text("facts:\n  P046: {summary: x}\nsources: {}\n", encoding="utf-8")
    with pytest.raises(DocumentError) as exc:
        load_documents(root)
    assert exc.value.field == "facts" and "P045" in str(exc.value)


def test_the_shipped_knowledge_base_loads():
    assert len(load_documents(Path(__file__).resolve().parents[2] / "knowledge")) >= 70
