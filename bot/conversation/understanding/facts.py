"""Facts a user gives about an incident, for the operator's ticket summary: carrier, whether it is
still going on, when it was noticed, amounts, destinations, the PBX vendor.

Table-driven: carriers, countries and vendors, and the phrases of "still happening", live in
knowledge/lexicon/ (carriers.yaml, entities.yaml, status.yaml). Only the shapes of money and time
("180万円", "¥600k", "2 hours ago", "+232") are written here.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from bot.config import ConfigError


@dataclass
class IncidentFacts:
    carrier: str | None = None
    still_happening: bool | None = None
    noticed_at: str | None = None
    amounts: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    vendor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"carrier": self.carrier, "still_happening": self.still_happening, "noticed_at": self.noticed_at,
                "amounts": list(self.amounts), "destinations": list(self.destinations), "vendor": self.vendor}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "IncidentFacts":
        d = d or {}
        return cls(carrier=d.get("carrier"), still_happening=d.get("still_happening"), noticed_at=d.get("noticed_at"),
                   amounts=list(d.get("amounts") or []), destinations=list(d.get("destinations") or []),
                   vendor=d.get("vendor"))


MISSING_ORDER = ("carrier", "still_happening", "noticed_at", "vendor")


def missing_facts(f: IncidentFacts) -> list[str]:
    """The facts that matter to an operator and are not known yet, most important first."""
    return [name for name in MISSING_ORDER if getattr(f, name) in (None, "")]


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").lower()


def _phrase_rx(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """Whole words for ASCII phrases (a space also matches no space in Japanese ones)."""
    parts = []
    for p in sorted({_norm(x) for x in phrases if x}, key=len, reverse=True):
        body = r"\s*".join(re.escape(w) for w in p.split())
        parts.append(rf"(?<![a-z0-9]){body}(?![a-z0-9])" if p.isascii() else body)
    return re.compile("|".join(parts)) if parts else None


class _Phrases:
    """_phrase_rx(phrases), run only when the text holds the first word of one of its phrases
    (_Prefilter over the one list): exact, and a few substring tests for the short tables (carriers,
    the still-happening phrases) that nearly every message is checked against."""

    def __init__(self, rx: re.Pattern[str], phrases: Iterable[str]) -> None:
        self.rx = rx
        self.prefilter = _Prefilter([phrases])

    @classmethod
    def of(cls, phrases: Iterable[str]) -> "_Phrases | None":
        phrases = list(phrases)
        rx = _phrase_rx(phrases)
        return cls(rx, phrases) if rx is not None else None

    def search(self, text: str) -> re.Match[str] | None:
        return self.rx.search(text) if self.prefilter.may_match(text) else None

    def sub(self, repl: str, text: str) -> str:
        return self.rx.sub(repl, text) if self.prefilter.may_match(text) else text


class _Prefilter:
    """Which of several phrase patterns (_phrase_rx) can match a text, without running them all.

    A phrase matches only where its first word occurs literally (the normalised text holds the
    normalised word), so a pattern none of whose phrases' first words occur in the text cannot
    match and is skipped. Exact: the candidates are a superset of the patterns that match, in
    their original order. A message names few of the ~180 countries, and running each country's
    pattern over it cost more than everything else the extractor does (a substring test per
    distinct first word is a fraction of that)."""

    def __init__(self, phrase_lists: Iterable[Iterable[str]]) -> None:
        self.always: set[int] = set()  # a phrase without a word (cannot happen with sane tables)
        self.by_key: dict[str, set[int]] = {}
        for i, phrases in enumerate(phrase_lists):
            for p in {_norm(x) for x in phrases if x}:
                words = p.split()
                if not words:
                    self.always.add(i)
                    continue
                self.by_key.setdefault(words[0], set()).add(i)

    def may_match(self, text: str) -> bool:
        """Whether any of the patterns can match (stops at the first first word found)."""
        return bool(self.always) or any(key in text for key in self.by_key)

    def candidates(self, text: str) -> list[int]:
        out = set(self.always)
        for key, members in self.by_key.items():
            if key in text:
                out |= members
        return sorted(out)


_NOTICED = re.compile("|".join((
    r"(今朝|昨夜|昨晩|昨日|おととい|一昨日|先週|先月|今月|今週|週末|土曜|日曜|連休|さっき|先ほど|たった今|今日|本日|今夜|深夜|夜中|明け方|休み明け|月曜)(の?(朝|夜|午前|午後|夕方|深夜|未明))?",
    r"\d{1,2}\s*(月\s*\d{1,2}\s*日|時(\d{1,2}分)?|分前|時間前|日前)",
    r"\b(this morning|last night|yesterday|today|tonight|an hour ago|this weekend|last weekend|last week|on monday|over the weekend|just now|this afternoon|minutes ago)\b",
    r"\b\d{1,3}\s*(minutes?|hours?|days?) ago\b", r"\b(at|around|since) \d{1,2}(:\d{2})?\s*(am|pm)?\b",
    r"\b(on )?(mon|tues|wednes|thurs|fri|satur|sun)day\b", r"\b\d{1,2}/\d{1,2}\b", r"\b\d{4}-\d{2}-\d{2}\b",
)))
HOME_CODE = "81"  # Japan: never a destination of calls abroad
_AMOUNT = re.compile("|".join((
    r"(?:約|およそ)?\d[\d,，.]*\s*(?:億|万|千)?\s*円", r"[¥￥]\s*\d[\d,，.]*\s*(?:万|million|m|k)?",
    r"\b\d[\d,.]*\s*(?:million|thousand|k|m)?\s*(?:yen|jpy)\b", r"\b(?:usd|us\$|\$)\s*\d[\d,.]*", r"(?:数十|数百|数千)万円",
)))
# A calling code as dialled: +232, 00232, 010-232 (Japan's international prefix), 国番号232.
_CODE = re.compile(r"(?:\+|(?<![\d-])00|(?<![\d-])010-?|国番号\s*|country code\s*)([1-9]\d{0,14})")
# a whole number dialled abroad, its digits perhaps grouped ("+371 6712 3456", "00224-61-234-5678")
_DIALLED = re.compile(r"(?:\+|(?<![\d-])00|(?<![\d-])010-?)([1-9](?:[ -]?\d){7,15})(?!\d)")


class FactExtractor:
    def __init__(self, *, carriers: list[dict], countries: list[dict], vendors: list[dict], status: dict):
        self._carriers = [(c["id"], rx) for c in carriers if (rx := _Phrases.of(c.get("aliases") or []))]
        self.carrier_names = {c["id"]: dict(c.get("names") or {}) for c in carriers}
        country_phrases = [list(c.get("ja") or []) + list(c.get("en") or []) for c in countries]
        self._countries = [(str(c.get("code")), rx, phrases) for c, phrases in zip(countries, country_phrases)
                           if (rx := _phrase_rx(phrases))]
        self._country_filter = _Prefilter(phrases for _, _, phrases in self._countries)
        self._country_codes = {str(c.get("code")) for c in countries if c.get("code")}
        self._vendors = [(v["name"], rx, phrases) for v in vendors
                         if (rx := _phrase_rx(phrases := [v["name"], *(v.get("aliases") or [])]))]
        self._vendor_filter = _Prefilter(phrases for _, _, phrases in self._vendors)
        still = status.get("still_happening") or {}
        self._still_yes = _Phrases.of(still.get("ongoing") or [])
        self._still_no = _Phrases.of(still.get("over") or [])
        self._vendor_unknown = _Phrases.of(status.get("vendor_unknown") or [])
        self._reported = _Phrases.of(status.get("reported") or [])

    @classmethod
    def load(cls, knowledge_dir: Path | str) -> "FactExtractor":
        lex = Path(knowledge_dir) / "lexicon"

        def read(name: str) -> dict:
            path = lex / name
            if not path.exists():
                return {}
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                raise ConfigError(f"{path}: field 'yaml': not readable YAML") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: field 'file': must be a YAML mapping")
            return data

        carriers = read("carriers.yaml").get("carriers") or []
        for i, c in enumerate(carriers):
            if not isinstance(c, dict) or not c.get("id") or not isinstance(c.get("aliases"), list):
                raise ConfigError(f"{lex / 'carriers.yaml'}: field 'carriers[{i}]': needs id and a list of aliases")
        entities = read("entities.yaml")
        return cls(carriers=carriers, countries=_entries(entities.get("countries")), vendors=_vendors(entities.get("vendors")),
                   status=read("status.yaml"))

    # ------------------------------------------------------------ carriers

    def carriers(self, text: str) -> list[str]:
        """Carrier ids named in the text, most specific first; "NTT" inside "NTT Com" counts once."""
        found: list[str] = []
        rest = _norm(text)
        for cid, rx in self._carriers:
            if rx.search(rest):
                found.append(cid)
                rest = rx.sub(" ", rest)
        return found

    def strip_carriers(self, text: str) -> str:
        rest = _norm(text)
        for _, rx in self._carriers:
            rest = rx.sub(" ", rest)
        return re.sub(r"\s+", " ", rest).strip()

    def carrier_name(self, carrier: str, lang: str) -> str:
        names = self.carrier_names.get(carrier) or {}
        return names.get(lang) or names.get("en") or carrier

    # ------------------------------------------------------------ facts

    def status(self, text: str) -> bool | None:
        """What the message says of the takeover (status.yaml): True, it goes on ("まだ続いています");
        False, it has been stopped ("blocked since Monday"); None, neither. A phrase that it goes on
        wins over words of stopping ("we stopped it, but calls are still going out")."""
        return self._status(_norm(text))

    def _status(self, norm: str) -> bool | None:
        if self._still_yes and self._still_yes.search(norm):
            return True
        if self._still_no and self._still_no.search(norm):
            return False
        return None

    def extract(self, text: str, known: IncidentFacts | None = None, *, ongoing: bool | None = None) -> IncidentFacts:
        """Facts in one message merged over what is known (a newer statement wins for carrier and
        still_happening; lists accumulate). `ongoing`: what the classifier says of this message
        (fraud in progress: True; an incident that is over: False)."""
        f = IncidentFacts.from_dict(known.to_dict()) if known else IncidentFacts()
        norm = _norm(text)
        carriers = self.carriers(norm)
        if carriers:
            f.carrier = carriers[0]
        stated = self._status(norm)
        if stated is not None:
            f.still_happening = stated
        elif ongoing is not None:
            f.still_happening = ongoing
        m = _NOTICED.search(norm)
        if m and not f.noticed_at:
            f.noticed_at = m.group(0).strip()
        for m in _AMOUNT.finditer(norm):
            if (v := m.group(0).strip()) not in f.amounts:
                f.amounts.append(v)
        for v in self._countries_named(norm):
            if v not in f.destinations:
                f.destinations.append(v)
        for m in _CODE.finditer(norm):
            digits = m.group(1)
            known_code = self._calling_code(digits)
            if known_code is None:
                if len(digits) > 3:
                    continue  # a long number with no known code: not a destination we can name
                known_code = digits
            if (v := "+" + known_code) not in f.destinations:
                f.destinations.append(v)
        for i in self._vendor_filter.candidates(norm):
            name, rx, _ = self._vendors[i]
            if rx.search(norm):
                f.vendor = name
                break
        else:
            if f.vendor is None and self._vendor_unknown and self._vendor_unknown.search(norm):
                f.vendor = "unknown"
        return f

    def reports(self, text: str) -> bool:
        """The message states something of the user's own line, as an incident report does and a
        question about how blocking works does not: an amount, a destination, when it was noticed,
        whether it goes on, a dialled number, or words of a takeover or of calls nobody made
        (status.yaml `reported`)."""
        norm = _norm(text)
        if _AMOUNT.search(norm) or _NOTICED.search(norm) or _CODE.search(norm) or self._status(norm) is not None:
            return True
        if self._reported and self._reported.search(norm):
            return True
        return next(self._countries_named(norm), None) is not None

    def dialled_abroad(self, text: str) -> int:
        """How many whole international numbers the message holds (a known calling code other than
        Japan's +81 and enough digits for a subscriber number: "00224612345678", "+371 6712 3456"):
        several of them are a pasted call log or bill, not a question about one number."""
        count = 0
        for m in _DIALLED.finditer(_norm(text)):
            digits = re.sub(r"[\s-]", "", m.group(1))
            code = self._calling_code(digits)
            if code is not None and code != HOME_CODE and len(digits) - len(code) >= 6:
                count += 1
        return count

    def _countries_named(self, norm: str) -> Iterator[str]:
        """The names of countries abroad in normalized text, as written; never Japan ("東日本電信電話",
        "our Japan office": Japan is where the calls come from)."""
        for i in self._country_filter.candidates(norm):
            code, rx, _ = self._countries[i]
            if code != HOME_CODE:
                yield from (m.group(0) for m in rx.finditer(norm))

    def _calling_code(self, digits: str) -> str | None:
        """The longest known calling code the digits start with ("2325..." -> "232"), or None."""
        return next((digits[:n] for n in (3, 2, 1) if digits[:n] in self._country_codes), None)


def _entries(raw: object) -> list[dict]:
    return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []


def _vendors(raw: object) -> list[dict]:
    out = []
    for v in _entries(raw):
        name = v.get("name")
        if not name:
            continue
        aliases = [*(v.get("aliases") or []), *(v.get("ja") or []), *(v.get("en") or []), *(v.get("products") or [])]
        out.append({"name": str(name), "aliases": [str(a) for a in aliases]})
    return out
