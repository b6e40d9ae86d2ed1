"""How much of the fact sheet the knowledge documents cover.

    python scripts/kb_coverage.py [--sheet ../shared/facts/fact-sheet.md]

Counts the sheet's facts outside its UNVERIFIED section (from the sheet when it is there, else
from knowledge/facts.yaml), the ones some document lists in `facts:` and states in a section (its
`<!-- facts: -->` marker), per section of the sheet, and lists every fact no document states, with
the reason recorded in knowledge/facts.yaml (`omitted:`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.retrieval.documents import load_documents  # noqa: E402
from bot.retrieval.fact_registry import FactRegistry  # noqa: E402
from bot.retrieval.sections import parse_sections  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sheet", type=Path, default=ROOT.parent / "shared" / "facts" / "fact-sheet.md")
    args = ap.parse_args()
    registry = FactRegistry.load(ROOT / "knowledge")
    if args.sheet.exists():
        verified = args.sheet.read_text(encoding="utf-8").split("## 13. UNVERIFIED")[0]
        facts = sorted(set(re.findall(r"^- \*\*(P\d{3})\*\*", verified, re.M)))
        origin = str(args.sheet)
    else:
        facts = sorted(registry.facts)
        origin = "knowledge/facts.yaml (no fact sheet here)"
    docs = load_documents(ROOT / "knowledge")
    listed: dict[str, set[str]] = {}
    stated: dict[str, set[str]] = {}
    for d in docs:
        for f in d.facts:
            listed.setdefault(f, set()).add(d.id)
        for s in parse_sections(d.body):
            for f in s.facts:
                stated.setdefault(f, set()).add(d.id)
    covered = [f for f in facts if f in listed and f in stated]
    print(f"facts outside UNVERIFIED: {len(facts)} (from {origin})")
    print(f"covered by a document (listed and stated in a section): {len(covered)} ({len(covered) / len(facts):.1%})")
    per_section = Counter(registry.facts.get(f, {}).get("section", "?").split(" ")[0] for f in facts)
    covered_section = Counter(registry.facts.get(f, {}).get("section", "?").split(" ")[0] for f in covered)
    print("per sheet section: " + "  ".join(f"{s} {covered_section[s]}/{n}" for s, n in sorted(per_section.items())))
    docs_per_fact = [len(stated.get(f, ())) for f in covered]
    print(f"documents per covered fact: median {sorted(docs_per_fact)[len(docs_per_fact) // 2] if docs_per_fact else 0}, "
          f"max {max(docs_per_fact, default=0)}")
    uncovered = [f for f in facts if f not in covered]
    for f in uncovered:
        reason = registry.facts.get(f, {}).get("omitted") or "NO REASON RECORDED"
        print(f"  not covered: {f} ({registry.facts.get(f, {}).get('section', '?')}): {reason}")
    return 0 if all(registry.facts.get(f, {}).get("omitted") for f in uncovered) else 1


if __name__ == "__main__":
    raise SystemExit(main())
