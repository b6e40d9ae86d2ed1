"""Sentences of a Markdown passage, as the bot shows them (shared by the index and the composer).

The index embeds each sentence of a section at build time and the composer shows single sentences:
both must cut a passage into exactly the same sentences, so the splitter lives here, in neither.
Stdlib only.
"""

from __future__ import annotations

import re
from functools import lru_cache

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
    """Sentences of a Markdown passage: headings, tables and marker comments dropped, list markers
    and emphasis removed."""
    return [u[0] for u in split_units(text)]


@lru_cache(maxsize=4096)
def split_units(text: str) -> tuple[tuple[str, int], ...]:
    """(sentence, leans_on) for every sentence of split_sentences: leans_on is the index of the
    sentence a list item cannot be shown without (the line that introduces the list: "KDDI asks
    for the following measures."), or -1."""
    out: list[tuple[str, int]] = []
    lead = -1  # the sentence that introduces the current list
    previous_was_item = False
    for raw in (text or "").splitlines():
        stripped = raw.strip()
        if not stripped or _HEADING.match(raw) or _TABLE.match(raw) or stripped.startswith(("---", "<!--")):
            continue
        is_item = bool(_LIST_MARK.match(raw))
        line = clean_line(raw)
        if not line:
            continue
        if is_item and not previous_was_item:
            lead = len(out) - 1  # the last sentence before the list (-1 when the list opens the passage)
        for part in _split_ja(line):
            for sentence in _split_en(part):
                sentence = sentence.strip()
                if len(sentence) < 4:
                    continue
                out.append((sentence, lead if is_item else -1))
        previous_was_item = is_item
    return tuple(out)


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


