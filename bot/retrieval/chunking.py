"""Cut documents into passages that respect Japanese and English text structure.

- `#`..`####` headings start a new section; the heading path ("Title > Section") travels with each chunk;
- paragraphs are split into sentences at 。！？ (and ．!? and ". " in English), never inside a sentence;
- each list item is one unit (an intro line ending in ：/: stays with the items when they fit);
- units are packed into chunks up to a size budget (characters for Japanese, about 120 words for English);
  a single over-long sentence is cut at 、/，/spaces as a last resort;
- chunk ids are `<doc_id>#<section>.<piece>`: stable while the document's structure is stable;
- every question a section lists (`<!-- q: ... -->`, bot/retrieval/sections.py) is one more row,
  `<doc_id>#<section>.q<i>`, a retrieval key that points at its section (like the alternate
  questions of FAQ tools): a user's question often resembles another question more than any text.

Changing this module's behaviour: bump CHUNKER_VERSION so cached embeddings are not reused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.retrieval.documents import Document
from bot.retrieval.sections import parse_sections

CHUNKER_VERSION = "3"
MAX_CHARS = {"ja": 320, "en": 900}
MIN_CHARS = {"ja": 60, "en": 160}

_LIST_RE = re.compile(r"^\s*(?:[-*+・]|\d{1,3}[.)．）])\s+")
_JA_SENT_RE = re.compile(r"(?<=[。！？!?．])(?![」』）)!?！？])")
_EN_SENT_RE = re.compile(r"(?<=[.?!])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    ordinal: int
    heading: str
    text: str
    language: str
    kind: str = "text"  # "text" | "question" (a section's alternate question) | "summary"
    section: int = 0  # -1 for the document's summary

    @property
    def section_key(self) -> str:
        return f"{self.doc_id}#s" if self.kind == "summary" else f"{self.doc_id}#{self.section}"

    def index_text(self, doc: Document) -> str:
        """What the dense and lexical indexes see: title and heading path give a passage its
        context; a question is indexed as it is (it is already a whole question)."""
        if self.kind == "question":
            return self.text
        head = doc.title if not self.heading else f"{doc.title} / {self.heading}"
        return f"{head}\n{self.text}"


def split_sentences(text: str, language: str) -> list[str]:
    parts = (s for part in _JA_SENT_RE.split(text.strip()) for s in _EN_SENT_RE.split(part))
    return [s.strip() for s in parts if s and s.strip()]


def _hard_split(sentence: str, limit: int) -> list[str]:
    pieces: list[str] = []
    rest = sentence
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("、"), window.rfind("，"), window.rfind(", "), window.rfind(" "))
        if cut < limit // 3:
            cut = limit
        else:
            cut += 1
        pieces.append(rest[:cut].strip())
        rest = rest[cut:]
    if rest.strip():
        pieces.append(rest.strip())
    return pieces


def _units(lines: list[str], language: str, limit: int) -> list[str]:
    """Sentences and list items of one section, in order."""
    units: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            joiner = "" if language == "ja" else " "
            for s in split_sentences(joiner.join(x.strip() for x in para), language):
                units.extend(_hard_split(s, limit))
            para.clear()

    for line in lines:
        if not line.strip():
            flush()
            continue
        if _LIST_RE.match(line):
            flush()
            item = line.strip()
            units.extend(_hard_split(item, limit))
            continue
        if line.startswith(("  ", "\t")) and units and _LIST_RE.match(units[-1]) and not para:
            units[-1] = units[-1] + (" " if language == "en" else "") + line.strip()  # list item continuation
            continue
        para.append(line)
    flush()
    return units


def _pack(units: list[str], language: str) -> list[str]:
    limit, minimum = MAX_CHARS[language], MIN_CHARS[language]
    sep = "" if language == "ja" else " "
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for u in units:
        is_item = bool(_LIST_RE.match(u))
        join = "\n" if (is_item or (cur and _LIST_RE.match(cur[-1]))) else sep
        extra = len(u) + (len(join) if cur else 0)
        if cur and size + extra > limit:
            chunks.append(_join(cur, sep))
            cur, size = [], 0
            extra = len(u)
        cur.append(u)
        size += extra
    if cur:
        if chunks and size < minimum and len(chunks[-1]) + size <= limit * 1.3:
            chunks[-1] = chunks[-1] + "\n" + _join(cur, sep)
        else:
            chunks.append(_join(cur, sep))
    return chunks


def _join(units: list[str], sep: str) -> str:
    out = ""
    for i, u in enumerate(units):
        if i == 0:
            out = u
        elif _LIST_RE.match(u) or _LIST_RE.match(units[i - 1]):
            out += "\n" + u
        else:
            out += sep + u
    return out.strip()


def chunk_document(doc: Document) -> list[Chunk]:
    language = doc.language if doc.language in MAX_CHARS else "en"
    limit = MAX_CHARS[language]
    chunks: list[Chunk] = []
    ordinal = 0
    if doc.summary:
        # A document-level passage (title + one-line summary): matches broad questions ("what do I do first?")
        # that no single section answers on its own.
        chunks.append(Chunk(f"{doc.id}#s", doc.id, ordinal, "", doc.summary.strip(), doc.language, "summary", -1))
        ordinal += 1
    path: list[tuple[int, str]] = []
    for section in parse_sections(doc.body):
        if section.level:
            path = [(lv, h) for lv, h in path if lv < section.level] + [(section.level, section.heading)]
        heading = " > ".join(h for _, h in path if h and h != doc.title)
        for p_no, text in enumerate(_pack(_units(section.text.splitlines(), language, limit), language)):
            chunks.append(Chunk(f"{doc.id}#{section.number}.{p_no}", doc.id, ordinal, heading, text, doc.language,
                                "text", section.number))
            ordinal += 1
        if not section.has_text:
            continue
        for q_no, question in enumerate(section.questions):
            chunks.append(Chunk(f"{doc.id}#{section.number}.q{q_no}", doc.id, ordinal, heading, question, doc.language,
                                "question", section.number))
            ordinal += 1
    return chunks
