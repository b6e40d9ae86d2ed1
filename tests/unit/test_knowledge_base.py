"""Validation of the knowledge base documents in knowledge/sources/*.md.

Plain PyYAML + regex; deliberately does not import bot.retrieval, so a broken
retriever cannot hide a broken document (and the other way round).

Checks, for every document:
  * the YAML front matter parses and has every required field of knowledge/README.md
    with an allowed value;
  * the id equals the file stem and its -ja/-en suffix matches `language`;
  * every fact id (P...) and source id (K...) exists in ../shared/facts/fact-sheet.md;
  * the front-matter url and every http(s) URL in the body are URLs of the sheet's
    source table (section 1), and the front-matter url belongs to one of the listed sources;
  * every phone-number-like string in the body appears in the sheet;
  * every ja document has an en counterpart pointing back, and the other way round;
  * nothing from the sheet's UNVERIFIED section (e.g. the kokusai-teishi.com address).

The fact sheet lives outside the repository (repo_root.parent / "shared" / "facts");
the checks that need it are skipped with a clear reason when it is absent.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES_DIR = REPO_ROOT / "knowledge" / "sources"
FACT_SHEET = REPO_ROOT.parent / "shared" / "facts" / "fact-sheet.md"

REQUIRED_FIELDS = (
    "id",
    "title",
    "kind",
    "language",
    "counterpart",
    "publisher",
    "url",
    "published",
    "carriers",
    "topics",
    "facts",
    "sources",
)
KINDS = {"source", "guide"}
LANGUAGES = {"ja", "en"}
CARRIERS = {"ntt-east-west", "ntt-com", "kddi", "softbank", "other", "all"}
TOPICS = {
    "symptoms",
    "containment",
    "stop-international",
    "kokusai-center",
    "attack",
    "hardening",
    "refund",
    "regulator",
    "police",
    "glossary",
    "statistics",
    "050-ip",
    "incoming",
    "home",
    "liability",
    "services",
}
ID_RE = re.compile(r"^[a-z0-9-]+-(ja|en)$")
P_ID_RE = re.compile(r"^P\d{3}$")
K_ID_RE = re.compile(r"^K\d{3}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# ASCII URL characters only (Japanese text often follows a URL without a space);
# parentheses are excluded so that Markdown links and "(...)" remarks end the URL.
URL_RE = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'*+,;=%]+")
URL_TRAILING = ".,;:!?'[]"

# Japanese phone numbers as written in running text: 0120-116116, 0120-210-364,
# 03-1234-5678, 0570-000-000, 0120116116 ... (after NFKC, so full-width digits count).
PHONE_RES = (
    re.compile(r"(?<![\d-])0\d{1,4}-\d{1,4}-\d{3,4}(?![\d-])"),
    re.compile(r"(?<![\d-])0\d{2,4}-\d{5,8}(?![\d-])"),
    re.compile(r"(?<![\d-])0\d{9,10}(?![\d-])"),
)

# Items of the sheet's section 13 (UNVERIFIED) and other things the sheet says never to
# tell users. Each entry: (regex, reason).
FORBIDDEN = (
    (re.compile(r"kokusai-teishi", re.I), "UV01: the centre's web address is UNVERIFIED"),
    (re.compile(r"JPCERT-AT-20", re.I), "UV10: JPCERT/CC alert identifiers are UNVERIFIED"),
    (re.compile(r"\bAST-20\d\d-\d", re.I), "UV12: Asterisk advisory ids are UNVERIFIED"),
    (re.compile(r"fcc\.gov", re.I), "UV13: no FCC guide was retrieved"),
    (re.compile(r"0120-?210-?535"), "P112: never give the centre's old fax number to users"),
    (re.compile(r"憲法(第)?21条|constitution,? art(icle|\.)? ?21", re.I),
     "UV05: the constitutional basis of secrecy of communications is UNVERIFIED"),
)


# --------------------------------------------------------------------------- helpers


def _doc_files() -> list[Path]:
    if not SOURCES_DIR.is_dir():
        return []
    return sorted(SOURCES_DIR.glob("*.md"))


def _split(path: Path) -> tuple[dict, str]:
    """Return (front matter, body) of a document; raise AssertionError on bad layout."""
    text = path.read_text(encoding="utf-8")
    m = re.match(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", text, re.S)
    assert m, f"{path.name}: no YAML front matter between '---' lines at the top of the file"
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:  # pragma: no cover - message path
        raise AssertionError(f"{path.name}: front matter is not valid YAML: {exc}") from exc
    assert isinstance(meta, dict), f"{path.name}: front matter is not a YAML mapping"
    return meta, m.group(2)


def _sheet_text() -> str:
    if not FACT_SHEET.is_file():
        pytest.skip(f"fact sheet not found at {FACT_SHEET}; fact/source/URL/phone checks need it")
    return _sheet_text_cached()


@lru_cache(maxsize=1)
def _sheet_text_cached() -> str:
    return FACT_SHEET.read_text(encoding="utf-8")


def _sheet_verified_part() -> str:
    """The sheet without section 13 (UNVERIFIED), which must never be a source."""
    text = _sheet_text()
    cut = re.search(r"^## 13\.", text, re.M)
    return text[: cut.start()] if cut else text


@lru_cache(maxsize=1)
def _fact_ids() -> frozenset[str]:
    return frozenset(re.findall(r"^- \*\*(P\d{3})\*\*", _sheet_text_cached(), re.M))


@lru_cache(maxsize=1)
def _k_rows() -> dict[str, str]:
    """K id -> its row of the source table."""
    rows = {}
    for line in _sheet_text_cached().splitlines():
        m = re.match(r"^\|\s*(K\d{3})\s*\|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def _urls_in(text: str) -> list[str]:
    return [u.rstrip(URL_TRAILING) for u in URL_RE.findall(text)]


@lru_cache(maxsize=1)
def _k_urls() -> dict[str, frozenset[str]]:
    return {k: frozenset(_urls_in(row)) for k, row in _k_rows().items()}


@lru_cache(maxsize=1)
def _all_sheet_urls() -> frozenset[str]:
    out: set[str] = set()
    for urls in _k_urls().values():
        out |= urls
    return frozenset(out)


def _phones_in(text: str) -> set[str]:
    text = unicodedata.normalize("NFKC", text)
    found: set[str] = set()
    for rx in PHONE_RES:
        found.update(rx.findall(text))
    return found


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


@lru_cache(maxsize=1)
def _sheet_phone_digits() -> frozenset[str]:
    verified = _sheet_text_cached()
    cut = re.search(r"^## 13\.", verified, re.M)
    verified = verified[: cut.start()] if cut else verified
    return frozenset(_digits(p) for p in _phones_in(verified))


DOCS = _doc_files()
DOC_IDS = [p.name for p in DOCS]


def _is_guide(path: Path) -> bool:
    """Collection-time filter; a document that does not parse fails the front-matter tests instead."""
    try:
        return _split(path)[0].get("kind") == "guide"
    except Exception:
        return False


GUIDES = [p for p in DOCS if _is_guide(p)]


# --------------------------------------------------------------------------- tests


def test_knowledge_sources_exist():
    assert DOCS, f"no documents found in {SOURCES_DIR}"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_front_matter_fields(path: Path):
    meta, body = _split(path)
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    assert not missing, f"{path.name}: front matter lacks required field(s) {missing}"

    for key in ("id", "title", "publisher", "counterpart", "url"):
        assert isinstance(meta[key], str) and meta[key].strip(), (
            f"{path.name}: '{key}' must be a non-empty string, got {meta[key]!r}"
        )
    assert meta["kind"] in KINDS, f"{path.name}: kind {meta['kind']!r} not in {sorted(KINDS)}"
    assert meta["language"] in LANGUAGES, (
        f"{path.name}: language {meta['language']!r} not in {sorted(LANGUAGES)}"
    )

    pub = meta["published"]
    assert pub is None or isinstance(pub, _dt.date) or (
        isinstance(pub, str) and DATE_RE.match(pub)
    ), f"{path.name}: published must be YYYY-MM-DD or null, got {pub!r}"

    for key, allowed in (("carriers", CARRIERS), ("topics", TOPICS)):
        val = meta[key]
        assert isinstance(val, list) and val, f"{path.name}: '{key}' must be a non-empty list"
        bad = [v for v in val if v not in allowed]
        assert not bad, f"{path.name}: {key} {bad} not among {sorted(allowed)}"

    for key, rx in (("facts", P_ID_RE), ("sources", K_ID_RE)):
        val = meta[key]
        assert isinstance(val, list) and val, f"{path.name}: '{key}' must be a non-empty list"
        bad = [v for v in val if not (isinstance(v, str) and rx.match(v))]
        assert not bad, f"{path.name}: malformed {key} entries {bad}"
        dups = sorted({v for v in val if val.count(v) > 1})
        assert not dups, f"{path.name}: duplicate {key} entries {dups}"

    if "summary" in meta:
        assert isinstance(meta["summary"], str) and "\n" not in meta["summary"].strip(), (
            f"{path.name}: summary must be a one-line string"
        )

    assert body.strip(), f"{path.name}: empty body"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_id_matches_file_and_language(path: Path):
    meta, _ = _split(path)
    doc_id = meta.get("id")
    assert doc_id == path.stem, f"{path.name}: id {doc_id!r} differs from the file stem {path.stem!r}"
    assert ID_RE.match(str(doc_id)), (
        f"{path.name}: id {doc_id!r} must match [a-z0-9-]+ and end with -ja or -en"
    )
    assert str(doc_id).endswith("-" + str(meta.get("language"))), (
        f"{path.name}: id suffix does not match language {meta.get('language')!r}"
    )


@pytest.mark.parametrize("path", GUIDES, ids=[p.name for p in GUIDES])
def test_guide_opens_with_text_before_sections(path: Path):
    _, body = _split(path)
    lines = [ln for ln in body.strip().splitlines() if ln.strip()]
    if lines and re.match(r"^# ", lines[0]):  # an optional '# Title' line
        lines = lines[1:]
    assert lines and not lines[0].startswith("#"), (
        f"{path.name}: a guide must open with the sentences a frightened user needs, "
        f"before the first heading"
    )
    assert any(ln.startswith("## ") for ln in lines), f"{path.name}: a guide needs '## ' sections"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_fact_ids_exist_in_sheet(path: Path):
    _sheet_text()
    meta, _ = _split(path)
    unknown = [p for p in meta.get("facts") or [] if p not in _fact_ids()]
    assert not unknown, f"{path.name}: fact ids not in the fact sheet: {unknown}"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_source_ids_exist_in_sheet(path: Path):
    _sheet_text()
    meta, _ = _split(path)
    unknown = [k for k in meta.get("sources") or [] if k not in _k_rows()]
    assert not unknown, f"{path.name}: source ids not in the fact sheet's K table: {unknown}"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_front_matter_url_is_a_listed_source_url(path: Path):
    _sheet_text()
    meta, _ = _split(path)
    url = str(meta.get("url"))
    assert url in _all_sheet_urls(), (
        f"{path.name}: front-matter url {url!r} is not a URL of the fact sheet's source table"
    )
    owners = sorted(k for k, urls in _k_urls().items() if url in urls)
    listed = set(meta.get("sources") or [])
    assert listed & set(owners), (
        f"{path.name}: front-matter url belongs to {owners}, none of which is in sources"
    )


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_body_urls_are_sheet_urls(path: Path):
    _sheet_text()
    _, body = _split(path)
    bad = [u for u in _urls_in(body) if u not in _all_sheet_urls()]
    assert not bad, f"{path.name}: URLs not in the fact sheet's source table: {bad}"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_phone_numbers_are_in_sheet(path: Path):
    _sheet_text()
    meta, body = _split(path)
    text = body + "\n" + str(meta.get("title", "")) + "\n" + str(meta.get("summary", ""))
    bad = sorted(p for p in _phones_in(text) if _digits(p) not in _sheet_phone_digits())
    assert not bad, f"{path.name}: phone numbers not found in the fact sheet: {bad}"


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_no_unverified_items(path: Path):
    text = path.read_text(encoding="utf-8")
    hits = [f"{rx.pattern!r} ({why})" for rx, why in FORBIDDEN if rx.search(text)]
    assert not hits, f"{path.name}: states items the sheet forbids: {hits}"


def _meta_by_id() -> dict[str, dict]:
    """id -> front matter of every parseable document (broken ones fail their own tests)."""
    out = {}
    for p in DOCS:
        try:
            meta, _ = _split(p)
        except AssertionError:
            continue
        out[str(meta.get("id"))] = meta
    return out


@pytest.mark.parametrize("path", DOCS, ids=DOC_IDS)
def test_counterpart_exists_and_points_back(path: Path):
    meta, _ = _split(path)
    metas = _meta_by_id()
    doc_id, lang, cp = meta.get("id"), meta.get("language"), meta.get("counterpart")
    other_lang = {"ja": "en", "en": "ja"}.get(lang)
    assert cp in metas, f"{path.name}: counterpart {cp!r} has no document in {SOURCES_DIR}"
    other = metas[cp]
    assert other.get("language") == other_lang, (
        f"{path.name}: counterpart {cp!r} has language {other.get('language')!r}, "
        f"expected {other_lang!r}"
    )
    assert other.get("counterpart") == doc_id, (
        f"{path.name}: counterpart {cp!r} points to {other.get('counterpart')!r}, not back to {doc_id!r}"
    )
    assert str(cp).rsplit("-", 1)[0] == str(doc_id).rsplit("-", 1)[0], (
        f"{path.name}: counterpart {cp!r} should share the base id of {doc_id!r}"
    )
    assert other.get("kind") == meta.get("kind"), (
        f"{path.name}: counterpart {cp!r} is of kind {other.get('kind')!r}, not {meta.get('kind')!r}"
    )


def test_ids_are_unique():
    seen: dict[str, str] = {}
    dups = []
    for p in DOCS:
        try:
            meta, _ = _split(p)
        except AssertionError:
            continue
        doc_id = str(meta.get("id"))
        if doc_id in seen:
            dups.append(f"{doc_id!r} in {seen[doc_id]} and {p.name}")
        seen.setdefault(doc_id, p.name)
    assert not dups, f"duplicate document ids: {dups}"
