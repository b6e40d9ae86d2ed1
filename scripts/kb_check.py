"""Check knowledge documents the way `pbxbot index` and the tests will, listing every problem.

    python scripts/kb_check.py                      # every document in knowledge/sources
    python scripts/kb_check.py knowledge/sources/guide-home-users-ja.md ...
    python scripts/kb_check.py --warnings           # also sentences that lean on the one before

Errors (exit 1): front matter, section markers (2-5 questions, a facts marker with registry ids,
their union equal to the front matter's facts), sources and URLs from the registry, phone numbers
that belong to one of the document's facts, the sheet's UNVERIFIED items, counterparts.
Warnings: a sentence that opens with a word pointing back ("This", "Such", 「その」「また、」).
The checks: bot/retrieval/kb_checks.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import ConfigError  # noqa: E402
from bot.retrieval.fact_registry import FactRegistry  # noqa: E402
from bot.retrieval.kb_checks import check  # noqa: E402

KNOWLEDGE = ROOT / "knowledge"


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
    errors, warns = check(paths, registry, args.warnings, KNOWLEDGE / "sources")
    for w in warns:
        print("warning:", w)
    for e in errors:
        print("error:", e)
    print(f"{len(paths)} documents, {len(errors)} errors, {len(warns)} warnings")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
