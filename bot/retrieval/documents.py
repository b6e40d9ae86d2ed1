"""Knowledge documents: Markdown with YAML front matter (format: knowledge/README.md).

`load_documents(knowledge_dir)` reads `knowledge_dir/sources/*.md` (or a folder of .md files),
validates every document and raises `DocumentError` naming the file and the field for the first
problem found. It never lets a YAML or Unicode traceback escape.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.config import ConfigError
from bot.retrieval.sections import parse_sections, section_problems

LANGUAGES = ("ja", "en")
KINDS = ("source", "guide")
CARRIERS = ("ntt-east-west", "ntt-com", "kddi", "softbank", "other", "all")
TOPICS = (
    "symptoms", "containment", "stop-international", "kokusai-center", "attack", "hardening",
    "refund", "regulator", "police", "glossary", "statistics", "050-ip", "incoming", "home", "liability", "services",
)
REQUIRED = (
    "id", "title", "kind", "language", "counterpart", "publisher", "url", "published",
    "carriers", "topics", "facts", "sources",
)
_ID_RE = re.compile(r"^[a-z0-9-]+-(ja|en)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
_FACT_RE = re.compile(r"^P\d{3,}$")
_SOURCE_RE = re.compile(r"^K\d{3,}$")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: ~20x faster than pure Python
    """SafeLoader without the timestamp resolver: dates stay strings, so a bad date like 2014-02-30
    is reported as a bad `published` field instead of a ValueError from PyYAML's date constructor."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class DocumentError(ConfigError):
    """A knowledge document is malformed. The message names the file and the field."""

    def __init__(self, path: Path | str, field_name: str, problem: str):
        self.path = str(path)
        self.field = field_name
        self.problem = problem
        super().__init__(f"{self.path}: field '{field_name}': {problem}")


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    kind: str
    language: str
    counterpart: str
    publisher: str
    url: str
    published: str | None
    carriers: tuple[str, ...]
    topics: tuple[str, ...]
    facts: tuple[str, ...]
    sources: tuple[str, ...]
    body: str
    path: str
    summary: str | None = None
    content_hash: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        """The front matter (lists for tuples), then body, path and content hash."""
        d = asdict(self)
        tail = {key: d.pop(key) for key in ("body", "path", "content_hash")}
        for key in ("carriers", "topics", "facts", "sources"):
            d[key] = list(d[key])
        return d | tail


def split_front_matter(text: str, path: Path) -> tuple[str, str]:
    text = text.lstrip("\ufeff")
    if not text.startswith("---"):
        raise DocumentError(path, "front matter", "file must start with a '---' YAML front matter block")
    m = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", text, re.S)
    if not m:
        raise DocumentError(path, "front matter", "no closing '---' line")
    return m.group(1), text[m.end():]


def _str_list(path: Path, data: dict, key: str, allowed: tuple[str, ...] | None = None,
              pattern: re.Pattern | None = None, nonempty: bool = True) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DocumentError(path, key, "must be a list of strings")
    if nonempty and not value:
        raise DocumentError(path, key, "must not be empty")
    for v in value:
        if allowed is not None and v not in allowed:
            raise DocumentError(path, key, f"unknown value {v!r} (allowed: {', '.join(allowed)})")
        if pattern is not None and not pattern.match(v):
            raise DocumentError(path, key, f"bad id {v!r}")
    return tuple(value)


def _nonempty_str(path: Path, data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DocumentError(path, key, "missing or empty")
    return value.strip()


def parse_document(path: Path) -> Document:
    """Parse and validate one file (everything except cross-document checks)."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(path, "encoding", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DocumentError(path, "file", f"unreadable: {exc.strerror}") from None
    head, body = split_front_matter(raw, path)
    try:
        data = yaml.load(head, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        raise DocumentError(path, "front matter", f"invalid YAML{where}") from None
    if not isinstance(data, dict):
        raise DocumentError(path, "front matter", "must be a YAML mapping")
    for key in REQUIRED:
        if key not in data:
            raise DocumentError(path, key, "missing")

    doc_id = _nonempty_str(path, data, "id")
    if not _ID_RE.match(doc_id):
        raise DocumentError(path, "id", f"{doc_id!r} must match [a-z0-9-]+ and end with -ja or -en")
    if path.stem != doc_id:
        raise DocumentError(path, "id", f"{doc_id!r} does not match the file name {path.name!r}")
    language = data.get("language")
    if language not in LANGUAGES:
        raise DocumentError(path, "language", f"unknown language {language!r} (allowed: ja, en)")
    if not doc_id.endswith("-" + language):
        raise DocumentError(path, "language", f"{language!r} does not match the id suffix of {doc_id!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise DocumentError(path, "kind", f"unknown kind {kind!r} (allowed: source, guide)")
    counterpart = _nonempty_str(path, data, "counterpart")
    if not _ID_RE.match(counterpart) or counterpart.endswith("-" + language):
        raise DocumentError(path, "counterpart", f"{counterpart!r} must be an id in the other language")
    url = data.get("url")
    if not isinstance(url, str) or not _URL_RE.match(url.strip()):
        raise DocumentError(path, "url", "missing or not an http(s) URL")
    published = data.get("published")
    if isinstance(published, _dt.datetime):
        published = published.date()
    if isinstance(published, _dt.date):
        published = published.isoformat()
    elif published is not None:
        if not isinstance(published, str) or not _DATE_RE.match(published):
            raise DocumentError(path, "published", f"bad date {published!r} (YYYY-MM-DD or null)")
        try:
            _dt.date.fromisoformat(published)
        except ValueError:
            raise DocumentError(path, "published", f"bad date {published!r} (not a calendar date)") from None
    summary = data.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise DocumentError(path, "summary", "must be one line of text")
    body = body.strip()
    if not body:
        raise DocumentError(path, "body", "document has no text after the front matter")
    doc = Document(
        id=doc_id,
        title=_nonempty_str(path, data, "title"),
        kind=kind,
        language=language,
        counterpart=counterpart,
        publisher=_nonempty_str(path, data, "publisher"),
        url=url.strip(),
        published=published,
        carriers=_str_list(path, data, "carriers", CARRIERS),
        topics=_str_list(path, data, "topics", TOPICS),
        facts=_str_list(path, data, "facts", pattern=_FACT_RE),
        sources=_str_list(path, data, "sources", pattern=_SOURCE_RE),
        body=body,
        path=str(path),
        summary=summary.strip() if isinstance(summary, str) else None,
    )
    digest = hashlib.sha256(json.dumps(doc.to_json() | {"path": ""}, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    return Document(**{**doc.__dict__, "content_hash": digest[:24]})


def _registry_facts(knowledge_dir: Path) -> frozenset[str] | None:
    """The fact ids of knowledge/facts.yaml; None where a corpus has no registry (test fixtures)."""
    from bot.retrieval.fact_registry import FactRegistry

    if not (knowledge_dir / "facts.yaml").exists():
        return None
    return FactRegistry.load(knowledge_dir).fact_ids


def sources_dir(knowledge_dir: Path | str) -> Path:
    knowledge_dir = Path(knowledge_dir)
    sub = knowledge_dir / "sources"
    return sub if sub.is_dir() else knowledge_dir


def load_documents(knowledge_dir: Path | str) -> list[Document]:
    """Load and validate every document; raise DocumentError on the first problem (sorted by file name)."""
    folder = sources_dir(knowledge_dir)
    if not folder.is_dir():
        raise DocumentError(folder, "knowledge_dir", "folder does not exist")
    docs: list[Document] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        doc = parse_document(path)
        if doc.id in seen:
            raise DocumentError(path, "id", f"duplicate id {doc.id!r} (also in {seen[doc.id].name})")
        seen[doc.id] = path
        docs.append(doc)
    if not docs:
        raise DocumentError(folder, "sources", "no documents (*.md) found")
    known = _registry_facts(Path(knowledge_dir))
    for d in docs:
        problems = section_problems(parse_sections(d.body), d.facts, known)
        if problems:
            field_name, problem = problems[0]
            raise DocumentError(d.path, field_name, problem)
    by_id = {d.id: d for d in docs}
    for d in docs:
        other = by_id.get(d.counterpart)
        if other is None:
            raise DocumentError(d.path, "counterpart", f"counterpart {d.counterpart!r} is missing")
        if other.counterpart != d.id:
            raise DocumentError(d.path, "counterpart",
                                f"counterpart {d.counterpart!r} points to {other.counterpart!r}, not back to {d.id!r}")
    return docs
