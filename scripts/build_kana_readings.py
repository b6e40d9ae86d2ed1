"""Generate bot/conversation/kana_readings.py: the kana spelling of every Japanese lexicon term.

Frightened users on a phone often type without kanji conversion ("ふせいりよう", "りようきゅうし").
The documents and the core's patterns use kanji, so the core rewrites these spellings before it
looks at a message. The readings come from SudachiPy's dictionary (the analyzer retrieval uses),
for every term of knowledge/lexicon/terms.yaml that contains a kanji; only readings of 4 kana or
more are kept (a shorter one hides inside ordinary words: ていし in ていしゅつ), and a reading
shared by two different terms is dropped.

    python scripts/build_kana_readings.py            # rewrite the module
    python scripts/build_kana_readings.py --check    # exit 1 when it is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TERMS = ROOT / "knowledge" / "lexicon" / "terms.yaml"
TARGET = ROOT / "bot" / "conversation" / "kana_readings.py"
_KANJI = re.compile(r"[\u4e00-\u9fff]")
MIN_KANA = 4
# Readings that are also everyday words with another meaning: いじょう is 以上 ("that's all") far
# more often than 異常, ほしょう is 保証 (a warranty) as often as 補償.
AMBIGUOUS = {"いじょう", "ほしょう"}


def _hiragana(katakana: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "\u30a1" <= c <= "\u30f6" else c for c in katakana)


def readings(terms_path: Path = TERMS) -> list[tuple[str, str]]:
    from sudachipy import Dictionary, SplitMode

    # As bot/retrieval/analysis.py: the core dictionary, .tokenizer() where it exists (create() is
    # deprecated in SudachiPy 0.7 but is all 0.6.x has).
    d = Dictionary(dict="core")
    mode = SplitMode.C
    tok = (getattr(d, "tokenizer", None) or d.create)(mode=mode)
    data = yaml.safe_load(terms_path.read_text(encoding="utf-8")) or {}
    words: list[str] = []
    for group in data.get("synonyms") or []:
        words.extend(str(t) for t in group.get("terms") or [])
    words.extend(str(t) for t in data.get("terms") or [])
    found: dict[str, set[str]] = {}
    for term in sorted(set(words)):
        if not _KANJI.search(term):
            continue
        kana = _hiragana("".join(m.reading_form() for m in tok.tokenize(term)))
        if len(kana) >= MIN_KANA and kana not in AMBIGUOUS and re.fullmatch(r"[\u3041-\u309f\u30fc]+", kana):
            found.setdefault(kana, set()).add(term)
    pairs = [(kana, next(iter(terms))) for kana, terms in found.items() if len(terms) == 1]
    return sorted(pairs, key=lambda p: (-len(p[0]), p[0]))


def render(pairs: list[tuple[str, str]]) -> str:
    lines = [
        '"""Kana spellings of the Japanese lexicon terms -> the terms (generated, do not edit).',
        "",
        "Made by scripts/build_kana_readings.py from knowledge/lexicon/terms.yaml (SudachiPy readings);",
        "a test fails when it is out of date. Longest first.",
        '"""',
        "",
        "KANA_READINGS: tuple[tuple[str, str], ...] = (",
    ]
    lines += [f"    ({kana!r}, {term!r})," for kana, term in pairs]
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    text = render(readings())
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python scripts/build_kana_readings.py")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}: {text.count(chr(10)) - 8} readings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
