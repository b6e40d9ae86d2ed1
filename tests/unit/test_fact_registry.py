"""knowledge/facts.yaml against the fact sheet it was made from (when ../shared is present)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.retrieval.fact_registry import FactRegistry

REPO = Path(__file__).resolve().parents[2]
SHEET = REPO.parent / "shared" / "facts" / "fact-sheet.md"

pytestmark = pytest.mark.skipif(not SHEET.is_file(), reason=f"no fact sheet at {SHEET} (the registry is checked on its own)")


def _sheet() -> tuple[str, str]:
    text = SHEET.read_text(encoding="utf-8")
    cut = re.search(r"^## 13\.", text, re.M)
    return text[: cut.start()], text[cut.start():]


def test_the_registry_has_exactly_the_verified_facts_of_the_sheet_with_their_sources():
    verified, _ = _sheet()
    registry = FactRegistry.load(REPO / "knowledge")
    sheet_facts = set(re.findall(r"^- \*\*(P\d{3})\*\*", verified, re.M))
    assert set(registry.facts) == sheet_facts
    for block in re.split(r"\n(?=- \*\*P\d{3}\*\*)", verified):
        m = re.match(r"- \*\*(P\d{3})\*\*", block)
        src = re.search(r"Sources:\s*([^·]+)·", block)
        if m and src:
            assert registry.facts[m.group(1)]["sources"] == re.findall(r"K\d{3}", src.group(1)), m.group(1)


def test_every_source_url_of_the_registry_is_in_the_sheets_table():
    verified, _ = _sheet()
    registry = FactRegistry.load(REPO / "knowledge")
    for k, urls in registry.source_urls().items():
        row = next(line for line in verified.splitlines() if line.startswith(f"| {k} |"))
        assert all(u in row for u in urls), k


def test_no_unverified_item_reached_the_registry():
    _, unverified = _sheet()
    registry_text = (REPO / "knowledge" / "facts.yaml").read_text(encoding="utf-8")
    for url in re.findall(r"https?://[^\s)]+", unverified):
        assert url.rstrip(".,") not in registry_text
