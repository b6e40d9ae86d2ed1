"""Grounded, extractive answers without an LLM.

Every sentence of an answer is a sentence of a passage retrieved this turn (markup removed); the
only other words are fixed template lines (bot/conversation/texts.py). Sentences are numbered by
document: `[n]` follows each run of sentences from one document, and the citations are exactly the
documents whose sentences are shown. "as of <date>" and source names stay because sentences are
never cut or rewritten.
"""

from __future__ import annotations

import json
import math
import operator
import re
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bot.messages import Citation
from bot.ports import Passage
from bot.text import split_units


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


@lru_cache(maxsize=16384)
def terms(text: str) -> frozenset[str]:
    """Words (English, stemmed) and kanji/katakana bigrams, for overlap scoring."""
    n = unicodedata.normalize("NFKC", text or "").lower()
    out = {_stem(w) for w in _WORDS.findall(n) if w not in _EN_STOP and len(w) >= 2}
    for run in _CJK_RUN.findall(n):  # a lone character, or the run's bigrams; hiragana alone says nothing
        grams = [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]
        out.update(g for g in grams if not _HIRAGANA.match(g))
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
    leans_on: int = -1  # index of the sentence (same passage) it cannot be shown without
    similarity: float | None = None  # cosine to the question (the retriever's sentence vectors), when known
    typed: bool = False  # gives the kind of answer the question asks for (a duration, a number...)
    coverage: float = 0.0  # share of the question's words (weighted by rarity) the sentence contains, when known


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


# Sentences about the document rather than the subject ("this page explains...") never answer.
_META = re.compile(r"(this (page|document|guide|section) (explains|describes|covers|lists|summari[sz]es)|"
                   r"(この|本)(ページ|資料|ガイド|文書)(で|は)[^。]{0,20}(説明|紹介|まとめ))", re.IGNORECASE)
# A sentence that opens by pointing back cannot stand alone (documents are written to avoid them;
# this keeps an old or a missed one next to the sentence it leans on).
_LEANING = re.compile(
    r"^(this|these|that|those|such|it|they|also|however|in (that|this|such) case|as a result|otherwise|instead)\b|"
    r"^(これ|それ|その|この|こう|そう|また、|なお、|ただし、|そのため|このため|そこで|一方、)", re.IGNORECASE)
_CONTINUATION = re.compile(r"#\d+\.[1-9]\d*$")  # "<doc>#2.1": a section's continuation


@lru_cache(maxsize=16384)  # passage sentences repeat across turns (the index is static)
def _is_meta(sentence: str) -> bool:
    return _META.search(sentence) is not None


@lru_cache(maxsize=16384)
def _leans_back(sentence: str) -> bool:
    return _LEANING.search(sentence) is not None


Cue = Callable[[str], float]  # how strongly a sentence gives the kind of answer asked for (0: not at all)
STRONG_CUE = 2.0  # a sentence this strongly of the asked kind is looked for in every retrieved section
# With the retriever's scores: sections this close to the best one may contribute sentences. 0.8 -> 0.7
# (2026-12-08): development twin 178 -> 179, second set 98 -> 98 (one gained, one lost), third set 84 -> 85;
# 0.6, 0.5 and 0 (every retrieved section) measured the same as 0.7, so the smallest change was kept.
STANDING_POOL = 0.7
SENTENCE_FEATURES = ("similarity", "coverage", "overlap", "typed", "standing", "rank", "first", "question", "lead", "length",
                     "match")
SCORER_PATH = Path(__file__).with_name("sentence_scorer.json")


class SentenceScorer:
    """How well a sentence answers the question: a linear model over SENTENCE_FEATURES (fitted by
    scripts/fit_sentence_scorer.py on the labelled development set: a sentence answers when it
    contains what the answer must contain), or the hand-set weights below until one is fitted."""

    HAND_SET = {"similarity": 1.0, "coverage": 0.6, "typed": 0.2, "standing": 0.2}

    def __init__(self, weights: dict[str, float], intercept: float = 0.0) -> None:
        self.w = [float(weights.get(f, 0.0)) for f in SENTENCE_FEATURES]
        self.intercept = float(intercept)

    @classmethod
    def load(cls, path: Path = SCORER_PATH) -> "SentenceScorer":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["weights"], data.get("intercept", 0.0))
        except (OSError, ValueError, KeyError):
            return cls(cls.HAND_SET)

    def __call__(self, features: Sequence[float]) -> float:
        return self.intercept + sum(map(operator.mul, self.w, features))


SENTENCE_SCORER = SentenceScorer.load()
# How far below the best sentence another sentence of its section may be, and follow: a section is
# written to answer as a whole. 0.25 -> 0.35 (2026-12-07): development twin 171 -> 173, probes 31 -> 32
# ("is there a way to stop those calls?" got only "that is a different problem", the next sentence of
# the same lead, the centre that stops them, was cut); answers ~10 % longer (ja 241 -> 265 characters
# on average, en 81 -> 87 words), still within the chat budget; 0.2 and 0.3 did worse, 0.4-0.7 no better.
SAME_SECTION_SLACK = 0.35
# A sentence the conversation was shown in its last answers comes later. 0.3 -> 0.15 (2026-12-08): a
# follow-up often asks again about what the last answer said («うちみたいな小さい店でも？» after "small
# offices are targeted too"); second development set 101 -> 103 (dfc-002, dfc-004), the others unchanged;
# 0 did less well (twin +1, third set -1).
SEEN_PENALTY = 0.15


def reading_order(passages: Sequence[Passage]) -> list[Passage]:
    """The passages in the order their sentences are read (a Piece's `rank` indexes this list): each
    chunk once; a document's one-line summary passage (chunk id "<doc>#s", see retrieval/chunking.py)
    lists topics rather than saying what to do, so it goes after the sections, and is left out when a
    section of the same document was retrieved (it would repeat it)."""
    sections = {p.doc_id for p in passages if not p.chunk_id.endswith("#s")}
    ordered = sorted((p for p in passages if not (p.chunk_id.endswith("#s") and p.doc_id in sections)),
                     key=lambda p: p.chunk_id.endswith("#s"))
    seen: set[str] = set()
    return [p for p in ordered if not (p.chunk_id in seen or seen.add(p.chunk_id))]


def pieces_of(
    passages: Sequence[Passage],
    query: str = "",
    *,
    focus: str | None = None,
    cue: Cue | None = None,
    max_passages: int = 3,
) -> list[Piece]:
    """Scored sentences of the top passages (distinct chunks), in retrieval order.

    With the retriever's sentence similarities (the usual case) a sentence scores by how close it
    is to the question, its word overlap with the question, and whether it gives the kind of answer
    asked (`cue`: a duration for "how long", a number for "which number"); the passage's rank counts
    only a little, so the answering sentence leads whatever its passage's rank. Without them (test
    doubles), word overlap, actions and the position in the passage decide, as they used to."""
    q = terms(query)
    fq = terms(focus) if focus and focus != query else frozenset()
    out: list[Piece] = []
    rank = 0
    top_score = max((p.score for p in passages), default=0.0)
    for p in reading_order(passages):
        behind = bool(p.sentence_scores and rank > 0 and top_score > 0 and p.score < STANDING_POOL * top_score)
        src = Source.of(p)
        lead_section = not p.heading and not p.chunk_id.endswith("#s")
        # "<doc>#2.1" continues section 2: its first sentence does not open anything
        continuation = bool(_CONTINUATION.search(p.chunk_id))
        units = split_units(p.text)
        sims = p.sentence_scores if len(p.sentence_scores) == len(units) else ()
        covers = p.sentence_coverage if len(p.sentence_coverage) == len(units) else ()
        matches = p.sentence_match if len(p.sentence_match) == len(units) else ()
        for i, (sentence, leans_on) in enumerate(units):
            if leans_on < 0 and i > 0 and _leans_back(sentence):
                leans_on = i - 1
            st = terms(sentence)
            overlap = len(q & st) / math.sqrt(len(q) + 1) if q else 0.0
            if fq:
                overlap += len(fq & st) / math.sqrt(len(fq) + 1)
            strength = float(cue(sentence)) if cue else 0.0
            typed = strength > 0
            if behind and strength < STRONG_CUE:
                continue  # a section well behind the best one does not answer, unless it has what was asked
            coverage = float(covers[i]) if covers else 0.0
            if sims:
                sim = float(sims[i])
                # the section's own standing in this search counts too: a sentence of the best
                # section leads unless another section has a clearly closer one
                standing = p.score / top_score if top_score > 0 else 0.0
                features = (sim, coverage, min(overlap, 1.5), strength, standing, 1.0 / (1 + rank),
                            float(i == 0), p.question_score, float(lead_section), min(measure(sentence, p.language), 120) / 120,
                            float(matches[i]) if matches else 0.0)
                score = SENTENCE_SCORER(features)
            else:
                sim = None
                score = overlap + (0.5 if is_action(sentence) else 0.0) + 1.0 / (1 + rank) + 0.4 * strength
                if i == 0 and not continuation:
                    score += 0.6 if lead_section else 0.3
                elif i == 1 and lead_section:
                    score += 0.3
            if _is_meta(sentence):
                score -= 1.0
            out.append(Piece(sentence, src, rank, i, score, overlap, leans_on, sim, typed, coverage))
        rank += 1
        if rank >= max_passages:
            break
    return out


def _redundant(piece: Piece, chosen: Sequence[Piece]) -> bool:
    """Says again what a chosen sentence says (word overlap): the same fact is told once."""
    a = terms(piece.text)
    others = (terms(c.text) for c in chosen)
    return bool(a) and any(b and len(a & b) / min(len(a), len(b)) >= 0.6 for b in others)


def fingerprint(text: str) -> str:
    """A short key of a sentence, to remember what a conversation was already shown."""
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def select(pieces: Sequence[Piece], lang: str, budget: int, seen: frozenset[str] = frozenset()) -> tuple[list[Piece], list[Piece]]:
    """The sentences that answer, best first, within the budget; the rest (related sentences, in
    document order) is kept for "more".

    The best sentence leads. Others follow when they are about as relevant (with similarities:
    within 0.12 of the best, or typed answers within 0.2; without: the old overlap bar), say
    something not said yet (no near-duplicates) and fit; a sentence that leans on another (a list
    item on its lead line) comes with it, right before it."""
    if not pieces:
        return [], []
    if seen:
        # A follow-up asks something new: what this conversation was just shown comes last, unless
        # it gives the kind of answer now asked for ("is it free?" after a sentence that says so).
        pieces = [replace(p, score=p.score - SEEN_PENALTY) if fingerprint(p.text) in seen and not p.typed else p
                  for p in pieces]
    min_len = 25 if lang == "ja" else 8  # a short line out of its context says little
    ranked = sorted(pieces, key=lambda p: (-p.score, p.rank, p.index))
    best = ranked[0]
    by_key = {(p.rank, p.index): p for p in pieces}
    with_sims = best.similarity is not None
    top_overlap = max((p.overlap for p in pieces if p.rank == 0), default=0.0)
    bar = max(0.15, 0.6 * top_overlap)

    def relevant(p: Piece) -> bool:
        if p is best:
            return True
        if with_sims:
            # a section is written to answer as a whole: its other sentences may follow more freely
            slack = SAME_SECTION_SLACK if p.rank == best.rank else (0.15 if p.typed else 0.1)
            return p.score >= best.score - slack and measure(p.text, lang) >= min_len
        return p.rank == 0 or (p.overlap >= bar and measure(p.text, lang) >= min_len)

    items_of: dict[tuple[int, int], list[Piece]] = {}
    for p in pieces:
        if p.leans_on >= 0:
            items_of.setdefault((p.rank, p.leans_on), []).append(p)
    chosen: list[Piece] = []
    used = 0

    def cost_of(group: Sequence[Piece]) -> int:
        return sum(measure(x.text, lang) + (4 if lang == "ja" else 1) for x in group)

    for p in ranked:
        if not relevant(p) or p in chosen or (chosen and _redundant(p, chosen)):
            continue
        group = [p]
        lead = by_key.get((p.rank, p.leans_on)) if p.leans_on >= 0 else None
        if lead is not None and lead not in chosen:
            group.insert(0, lead)
        # A line that announces a list ("...asks for the following measures.") says nothing
        # without its items: it comes with as many of them as fit, at least one.
        items = [x for x in items_of.get((p.rank, p.index), []) if x not in chosen]
        if items:
            group.append(items[0])
        if chosen and used + cost_of(group) > budget:
            continue
        chosen.extend(group)
        used += cost_of(group)
        for x in items[1:]:
            if used + cost_of([x]) > budget:
                break
            chosen.append(x)
            used += cost_of([x])
    if not with_sims:
        chosen.sort(key=lambda p: (p.rank, p.index))  # the old composer's order: document order
    else:
        chosen = _best_first(chosen)
    chosen_keys = {(p.rank, p.index) for p in chosen}
    order = lambda p: (p.rank, p.index)  # noqa: E731
    related = [p for p in pieces if p.rank == 0 or (p.overlap > 0 and measure(p.text, lang) >= min_len)]
    rest = [p for p in sorted(related, key=order) if (p.rank, p.index) not in chosen_keys and not _is_meta(p.text)]
    return chosen, rest


def _best_first(chosen: list[Piece]) -> list[Piece]:
    """The best sentence first (with the lead it leans on), then the others grouped by passage in
    document order, the passage of the best sentence first."""
    if not chosen:
        return chosen
    top = max(chosen, key=lambda p: p.score)
    head = [p for p in chosen if p.rank == top.rank and p.index == top.leans_on] + [top]
    others = sorted((p for p in chosen if p not in head), key=lambda p: (p.rank != top.rank, p.rank, p.index))
    return head + others


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


def render(pieces: Iterable[Piece], lang: str, book: CitationBook) -> str:
    """Sentences with a [n] marker after each run from one document; one paragraph per run."""
    runs: list[tuple[Source, list[str]]] = []
    for p in pieces:
        if runs and runs[-1][0].doc_id == p.source.doc_id:
            runs[-1][1].append(p.text)
        else:
            runs.append((p.source, [p.text]))
    lines = []
    for src, sents in runs:
        n = book.number(src)
        marker = f"[{n}]" if src.language == "ja" else f" [{n}]"
        lines.append(f"{_join(sents, src.language)}{marker}")
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
