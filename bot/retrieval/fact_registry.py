"""The project's fact registry (knowledge/facts.yaml): what a knowledge document may rest on.

Generated from ../shared/facts/fact-sheet.md by scripts/build_fact_registry.py, so the checks run
on a fresh clone without ../shared: fact ids with their sources, dates and phone numbers; source
ids with publisher, title and URL. Nothing of the sheet's UNVERIFIED section is in it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.config import ConfigError

# Japanese phone numbers as written in running text, after NFKC (same rules as the generator).
PHONE_RES = (
    re.compile(r"(?<![\d-])0\d{1,4}-\d{1,4}-\d{3,4}(?![\d-])"),
    re.compile(r"(?<![\d-])0\d{2,4}-\d{5,8}(?![\d-])"),
    re.compile(r"(?<![\d-])0\d{9,10}(?![\d-])"),
)
# ASCII URL characters only: Japanese text often follows a URL without a space.
URL_RE = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'*+,;=%]+")
URL_TRAILING = ".,;:!?'[]"
# Things the sheet says never to tell users (its UNVERIFIED section and one withdrawn number).
FORBIDDEN = (
    (re.compile(r"kokusai-teishi", re.I), "UV01: the centre's web address is UNVERIFIED"),
    (re.compile(r"JPCERT-AT-20", re.I), "UV10: JPCERT/CC alert identifiers are UNVERIFIED"),
    (re.compile(r"\bAST-20\d\d-\d", re.I), "UV12: Asterisk advisory ids are UNVERIFIED"),
    (re.compile(r"fcc\.gov", re.I), "UV13: no FCC guide was retrieved"),
    (re.compile(r"0120-?210-?535"), "P112: never give the centre's old fax number to users"),
    (re.compile(r"憲法(第)?21条|constitution,? art(icle|\.)? ?21", re.I),
     "UV05: the constitutional basis of secrecy of communications is UNVERIFIED"),
)


def digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def phones_in(text: str) -> set[str]:
    text = unicodedata.normalize("NFKC", text)
    return {p for rx in PHONE_RES for p in rx.findall(text)}


def urls_in(text: str) -> list[str]:
    return [u.rstrip(URL_TRAILING) for u in URL_RE.findall(text)]


@dataclass(frozen=True)
class FactRegistry:
    facts: dict[str, dict]
    sources: dict[str, dict]

    @classmethod
    def load(cls, knowledge_dir: Path | str) -> "FactRegistry":
        path = Path(knowledge_dir) / "facts.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: field 'file': unreadable ({exc.strerror})") from None
        except yaml.YAMLError:
            raise ConfigError(f"{path}: field 'yaml': not valid YAML") from None
        facts, sources = data.get("facts"), data.get("sources")
        if not isinstance(facts, dict) or not isinstance(sources, dict):
            raise ConfigError(f"{path}: field 'facts'/'sources': both must be mappings")
        return cls(facts=facts, sources=sources)

    @property
    def fact_ids(self) -> frozenset[str]:
        return frozenset(self.facts)

    def source_urls(self) -> dict[str, frozenset[str]]:
        """Source id -> its URLs (the main one, then mirrors or originals the sheet names)."""
        return {k: frozenset(([v["url"]] if v.get("url") else []) + list(v.get("other_urls") or []))
                for k, v in self.sources.items()}
