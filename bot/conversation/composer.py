"""Grounded, extractive answers without an LLM.

Every sentence of an answer is a sentence of a passage retrieved this turn (markup removed); the
only other words are fixed template lines (bot/conversation/texts.py). Sentences are numbered by
document: `[n]` follows each run of sentences from one document, and the citations are exactly the
documents whose sentences are shown. "as of <date>" and source names stay because sentences are
never cut or rewritten.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

from bot.messages import Citation
from bot.ports import Passage

# ---------------------------------------------------------------- sentences

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_TABLE = re.compile(r"^\s*\|")
_LIST_MARK = re.compile(r"^\s*(?:[-*+•・]|\d{1,2}[.)]|[（(]\d{1,2}[)）]|[①-⑳])\s+")
_LINK = re.compile(r"\[([^\]]+)\]\((?:https?://|/)[^)]*\)")
_EMPH = re.compile(r"(\*\*|__|`)")
_SINGLE_EMPH = re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])")
_EN_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[“‘¥$])")
_ABBREV = re.compile(
    r"(?:\b(?:e\.g|i\.e|etc|vs|approx|no|nos|st|mr|ms|dr|inc|ltd|co|corp|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|u\.s|fig|p|pp|cf)\.|\b[A-Z]\.)$",
    re.IGNORECASE,
)


def clean_line(line: str) -> str:
    line = _LIST_MARK.sub("", line)
    line = _LINK.sub(r"\1", line)
    line = _EMPH.sub("", line)
    line = _SINGLE_EMPH.sub(r"\1", line)
    return re.sub(r"\s+", " ", line).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of a Markdown passage: headings and tables dropped, list markers and emphasis removed."""
    return list(_split_cached(text or ""))


@lru_cache(maxsize=4096)
def _split_cached(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in (text or "").splitlines():
        if not raw.strip() or _HEADING.match(raw) or _TABLE.match(raw) or raw.strip().startswith("---"):
            continue
        line = clean_line(raw)
        if not line:
            continue
        for part in _split_ja(line):
            out.extend(_split_en(part))
    return tuple(s for s in (x.strip() for x in out) if len(s) >= 4)


_OPEN = "(（「『["
_CLOSE = ")）」』]"


def _split_ja(text: str) -> list[str]:
    """Split after 。！？ (and ! ? right before Japanese text) outside brackets:
    "NTT Com(2016年6月。OCNも同内容)は…" stays one sentence."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif ch in "。！？" and depth == 0:
            parts.append(text[start : i + 1])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _split_en(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for m in _EN_END.finditer(text):
        before = text[start : m.start()]
        if _ABBREV.search(before):
            continue
        pieces.append((before + m.group(0)).strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


# ---------------------------------------------------------------- terms and scores

_EN_STOP = frozenset(
    """a an the is are was were be been being am i we you he she it they my our your their me us this that these those
    what how why when where who which can could should would will do does did have has had not no to of in on at for
    from with by about and or but if so please there here any some all just also than then into out up down over
    get got its it's i'm we're what's tell know want need""".split()
)
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]+")
_HIRAGANA = re.compile(r"^[\u3040-\u309f]+$")
_WORDS = re.compile(r"[a-z0-9][a-z0-9+'-]*")

_ACTION = re.compile(
    "|".join(
        (
            r"ください|しましょう|してください|申し込|申込|依頼|連絡|相談|止め|切[りっる]|外し|変更|変え|確認|保存|残し|記録|削除|無効|更新|設定し|見直",
            r"^(call|ask|contact|stop|cut|unplug|disconnect|change|check|keep|apply|report|remove|disable|update|block|bar|note|write|request|confirm|turn off|set|use|do not|don't|never)\b",
            r"\b(you should|you can|ask (your|the)|call (your|the)|contact (your|the))\b",
        )
    ),
    re.IGNORECASE,
)


def terms(text: str) -> frozenset[str]:
    """Words (English, stemmed) and kanji/katakana bigrams, for overlap scoring."""
    return _terms_cached(text or "")


@lru_cache(maxsize=16384)
def _terms_cached(text: str) -> frozenset[str]:
    n = unicodedata.normalize("NFKC", text or "").lower()
    out: set[str] = set()
    for w in _WORDS.findall(n):
        if w in _EN_STOP or len(w) < 2:
            continue
        out.add(_stem(w))
    for run in _CJK_RUN.findall(n):
        if len(run) == 1:
            if not _HIRAGANA.match(run):
                out.add(run)
            continue
        for i in range(len(run) - 1):
            bg = run[i : i + 2]
            if not _HIRAGANA.match(bg):
                out.add(bg)
    return frozenset(out)


def _stem(w: str) -> str:
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf):
            return w[: -len(suf)]
    return w


@lru_cache(maxsize=16384)  # passage sentences repeat across turns (the index is static)
def is_action(sentence: str) -> bool:
    return bool(_ACTION.search(sentence))


# ---------------------------------------------------------------- pieces


@dataclass(frozen=True)
class Source:
    doc_id: str
    title: str
    publisher: str
    url: str
    published: str | None
    language: str
    kind: str = "source"  # "guide": our compiled topic guide; its url/publisher are its main source's

    @classmethod
    def of(cls, p: Passage) -> "Source":
        return cls(p.doc_id, p.title, p.publisher, p.url, p.published, p.language, p.kind)

    @property
    def cited_publisher(self) -> str:
        """A guide is our summary of several advisories: never present it as the carrier's own page."""
        if self.kind != "guide":
            return self.publisher
        if self.language == "ja":
            return f"pbxbotまとめ(主な出典: {self.publisher})"
        return f"pbxbot guide (main source: {self.publisher})"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Piece:
    """One sentence of one passage, where it came from, and how well it answers."""

    text: str
    source: Source
    rank: int  # passage rank in this turn's retrieval
    index: int  # sentence position in the passage
    score: float = 0.0
    overlap: float = 0.0



def pack(pieces: Sequence[Piece]) -> dict[str, Any]:
    """Compact JSON for conversation state: each source once, then [text, doc_id, rank, index] rows."""
    sources = {p.source.doc_id: p.source.to_dict() for p in pieces}
    return {"sources": sources, "pieces": [[p.text, p.source.doc_id, p.rank, p.index] for p in pieces]}


def unpack(data: dict[str, Any]) -> list[Piece]:
    sources = {k: Source(**v) for k, v in (data.get("sources") or {}).items()}
    out = []
    for row in data.get("pieces") or []:
        try:
            text, doc_id, rank, index = row
            out.append(Piece(text, sources[doc_id], int(rank), int(index)))
        except (ValueError, KeyError, TypeError):
            continue  # state written by an older version: skip what cannot be read
    return out


def measure(text: str, lang: str) -> int:
    """Chat size: characters for Japanese, words for English."""
    return len(text) if lang == "ja" else len(text.split())


def pieces_of(
    passages: Sequence[Passage],
    query: str = "",
    *,
    focus: str | None = None,
    boost: re.Pattern[str] | None = None,
    max_passages: int = 3,
) -> list[Piece]:
    """Scored sentences of the top passages (distinct chunks), in retrieval order.

    Score: overlap with the query (and again with `focus`, the words of this very message),
    an action bonus (lead with the action), the passage rank, the opening of a section, and a
    bonus for sentences matching `boost` (a phone number when the user asked for one)."""
    q = terms(query)
    fq = terms(focus) if focus and focus != query else frozenset()
    out: list[Piece] = []
    seen: set[str] = set()
    rank = 0
    # A document's one-line summary passage (chunk id "<doc>#s", see retrieval/chunking.py) lists
    # topics rather than saying what to do: it goes after the sections.
    # It is left out when a section of the same document was retrieved (it would repeat it).
    sections = {p.doc_id for p in passages if not p.chunk_id.endswith("#s")}
    passages = sorted((p for p in passages if not (p.chunk_id.endswith("#s") and p.doc_id in sections)),
                      key=lambda p: p.chunk_id.endswith("#s"))
    for p in passages:
        if p.chunk_id in seen:
            continue
        seen.add(p.chunk_id)
        src = Source.of(p)
        lead_section = not p.heading and not p.chunk_id.endswith("#s")
        # "<doc>#2.1" continues section 2: its first sentence does not open anything
        continuation = bool(re.search(r"#\d+\.[1-9]\d*$", p.chunk_id))
        for i, s in enumerate(split_sentences(p.text)):
            st = terms(s)
            overlap = len(q & st) / math.sqrt(len(q) + 1) if q else 0.0
            if fq:
                overlap += len(fq & st) / math.sqrt(len(fq) + 1)
            score = overlap + (0.5 if is_action(s) else 0.0) + 1.0 / (1 + rank)
            if i == 0 and not continuation:
                score += 0.6 if lead_section else 0.3
            elif i == 1 and lead_section:
                score += 0.3
            if boost is not None and boost.search(s):
                score += 1.5
            out.append(Piece(s, src, rank, i, score, overlap))
        rank += 1
        if rank >= max_passages:
            break
    return out


def select(pieces: Sequence[Piece], lang: str, budget: int) -> tuple[list[Piece], list[Piece]]:
    """Best sentences within the budget, shown in document order (top passage first); the rest
    (in document order) is kept for "more". Lower-ranked passages contribute only sentences about
    as relevant as the top passage's best one."""
    top_overlap = max((p.overlap for p in pieces if p.rank == 0), default=0.0)
    bar = max(0.15, 0.6 * top_overlap)
    min_len = 25 if lang == "ja" else 8  # a short line out of its context says little
    useful = [p for p in pieces if p.rank == 0 or (p.overlap >= bar and measure(p.text, lang) >= min_len)]
    chosen: list[Piece] = []
    used = 0
    for p in sorted(useful, key=lambda p: (-p.score, p.rank, p.index)):
        cost = measure(p.text, lang) + (4 if lang == "ja" else 1)
        if chosen and used + cost > budget:
            continue
        chosen.append(p)
        used += cost
    order = lambda p: (p.rank, p.index)  # noqa: E731
    chosen.sort(key=order)
    chosen_keys = {(p.rank, p.index) for p in chosen}
    related = [p for p in pieces if p.rank == 0 or (p.overlap > 0 and measure(p.text, lang) >= min_len)]
    rest = [p for p in sorted(related, key=order) if (p.rank, p.index) not in chosen_keys]
    return chosen, rest


def take_in_order(pieces: Sequence[Piece], lang: str, budget: int) -> tuple[list[Piece], list[Piece]]:
    """The first sentences in document order (ordered steps), within the budget."""
    chosen: list[Piece] = []
    used = 0
    for p in pieces:
        cost = measure(p.text, lang) + (4 if lang == "ja" else 1)
        if chosen and used + cost > budget:
            break
        chosen.append(p)
        used += cost
    return chosen, list(pieces[len(chosen) :])



# ---------------------------------------------------------------- rendering


class CitationBook:
    """Numbers documents in order of first use within one reply."""

    def __init__(self) -> None:
        self._n: dict[str, int] = {}
        self._sources: list[Source] = []

    def number(self, src: Source) -> int:
        if src.doc_id not in self._n:
            self._sources.append(src)
            self._n[src.doc_id] = len(self._sources)
        return self._n[src.doc_id]

    def citations(self) -> tuple[Citation, ...]:
        return tuple(
            Citation(
                n=i + 1, doc_id=s.doc_id, title=s.title, publisher=s.cited_publisher, url=s.url, published=s.published
            )
            for i, s in enumerate(self._sources)
        )


def render(pieces: Iterable[Piece], lang: str, book: CitationBook, *, numbered: bool = False) -> str:
    """Sentences with a [n] marker after each run from one document; one paragraph (or, numbered,
    one list item) per run."""
    runs: list[tuple[Source, list[str]]] = []
    for p in pieces:
        if runs and runs[-1][0].doc_id == p.source.doc_id and not numbered:
            runs[-1][1].append(p.text)
        else:
            runs.append((p.source, [p.text]))
    lines = []
    for i, (src, sents) in enumerate(runs):
        n = book.number(src)
        body = _join(sents, src.language)
        marker = f"[{n}]" if src.language == "ja" else f" [{n}]"
        prefix = f"{i + 1}. " if numbered else ""
        lines.append(f"{prefix}{body}{marker}")
    return "\n".join(lines)


_JA_TERMINAL = tuple("。！？!?）)」』")


def _join(sentences: list[str], lang: str) -> str:
    """English sentences with a space; Japanese ones directly, except after a list item without
    a full stop ("…を確認する" + "不要な…"), which gets a space."""
    if lang != "ja":
        return " ".join(sentences)
    out = sentences[0]
    for s in sentences[1:]:
        out += s if out.endswith(_JA_TERMINAL) else " " + s
    return out


MARKER = re.compile(r"\[(\d+)\]")


def markers(text: str) -> set[int]:
    return {int(m) for m in MARKER.findall(text)}
