"""Answering a question from the knowledge base: search, pick the sentences that answer, and say
whether they do (the answerability gate).

    answer = answerer.answer(turn, query, focus=turn.text, carrier=None, budget=...)
    answer.covered    # False: say the sources do not cover it, show the closest facts, offer a person

The gate is a logistic model over what the search and the composer saw (how close the best
sentence and the best section question are to the query, the retrieval confidence, the word
overlap, whether the kind of answer asked for was found). Its coefficients and threshold are
fitted on development questions, some answerable and some not (scripts/fit_answerability.py), and
live in answerability.json next to this file.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import yaml

from bot.config import ConfigError, Settings
from bot.conversation import composer
from bot.conversation.passages import for_carrier, in_language
from bot.conversation.understanding.text import asks, message_sentences
from bot.ports import Passage, SearchResult

GATE_PATH = Path(__file__).with_name("answerability.json")
WEAK_TYPES = ("steps", "yesno")
FEATURES = ("sentence", "question", "confidence", "typed", "missing", "coverage", "unknown", "unnamed")
# Until a fit exists: a close sentence or section question with a confident search answers.
DEFAULT_GATE = {"intercept": -6.0, "weights": {"sentence": 6.0, "question": 4.0, "confidence": 2.0,
                                                "typed": 0.5, "coverage": 2.0, "unknown": -2.0}, "threshold": 0.5}


@lru_cache(maxsize=65536)  # (answer pattern, passage sentence): both come from static tables and documents
def _gives(pattern: re.Pattern[str], sentence: str) -> bool:
    return pattern.search(sentence) is not None


def _words_pattern(words: Sequence[object]) -> re.Pattern[str] | None:
    """A table's words as one pattern over NFKC lower-case text, the longest first; ASCII ones as whole
    words ("fee" not in "coffee"), others as substrings (Japanese has no spaces)."""
    forms = sorted({unicodedata.normalize("NFKC", str(w)).lower() for w in words}, key=len, reverse=True)
    parts = [rf"(?<![a-z]){re.escape(w)}(?![a-z])" if w.isascii() else re.escape(w) for w in forms]
    return re.compile("|".join(parts)) if parts else None


class AnswerTypes:
    """The kinds of answer a question asks for (knowledge/lexicon/answer_types.yaml)."""

    def __init__(self, types: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str], float]],
                 not_asking: re.Pattern[str] | None = None, gap: re.Pattern[str] | None = None,
                 named: dict[str, re.Pattern[str] | None] | None = None):
        self.types = types
        self.not_asking = not_asking  # words holding a question word that do not ask ("いつも")
        self.gap = gap  # a sentence saying our sources lack something ("Our sources give no phone number for…")
        self.named = named or {}  # type -> the words by which a sentence names that kind ("電話番号", "fee")
        # cue() and strength() read the same question in one answer: its patterns run once
        self._asked = lru_cache(maxsize=64)(self._read_asked)

    @classmethod
    def load(cls, knowledge_dir: Path | str) -> "AnswerTypes":
        path = Path(knowledge_dir) / "lexicon" / "answer_types.yaml"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return cls({})  # no table: no answer types (a knowledge base without one)
        # A table that is there but cannot be read stops the start with one line naming it: read
        # silently as empty, it had every answer lose its answer types without a word.
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        types, named = {}, {}
        for name, spec in (data.get("types") or {}).items():
            if spec.get("named"):
                named[name] = _words_pattern(spec["named"])
            try:
                answer = re.compile(spec["answer"], re.IGNORECASE)
            except (KeyError, re.error) as exc:
                raise ConfigError(f"{path}: type '{name}', field 'answer': {type(exc).__name__}: {exc}") from None
            types[name] = (_words_pattern(spec.get("question") or []), answer, float(spec.get("strength", 1.0)))
        words = sorted({unicodedata.normalize("NFKC", str(w)).lower() for w in data.get("not_asking") or []}, key=len, reverse=True)
        try:
            gaps = [re.compile(str(x)) for x in data.get("gap_statements") or []]
        except re.error as exc:
            raise ConfigError(f"{path}: field 'gap_statements': {exc}") from None
        gap = re.compile("|".join(g.pattern for g in gaps), re.IGNORECASE) if gaps else None
        return cls(types, re.compile("|".join(map(re.escape, words))) if words else None, gap, named)

    def states_gap(self, sentence: str) -> bool:
        """The sentence says our sources lack something (`gap_statements`)."""
        return self.gap is not None and _gives(self.gap, sentence)

    def lacks(self, sentence: str, question: str) -> bool:
        """The sentence says our sources lack a kind of answer the question asks ("Our sources give no
        phone number for KDDI's block" for "KDDI's number?"): a gap statement naming that kind."""
        if not self.states_gap(sentence):
            return False
        low = unicodedata.normalize("NFKC", sentence).lower()
        return any((rx := self.named.get(n)) is not None and _gives(rx, low) for n in self.asked(question))

    def asked(self, question: str) -> list[str]:
        return list(self._asked(question))

    def _read_asked(self, question: str) -> tuple[str, ...]:
        q = asking_part(unicodedata.normalize("NFKC", question or "").lower())
        if self.not_asking is not None:
            q = self.not_asking.sub(" ", q)
        return tuple(name for name, (rx, _, _) in self.types.items() if rx is not None and rx.search(q))

    def cue(self, question: str) -> composer.Cue | None:
        """How strongly a sentence gives the asked kind of answer (0: not at all; a type's `strength`,
        1 unless the table says more: a phone number asked for is the answer), or None when none is asked.
        `steps` and `yesno` are too weak to pick a sentence by (nearly every sentence of a guide
        gives a step): they never count here."""
        names = [a for a in self.asked(question) if a not in WEAK_TYPES]
        if not names:
            return None
        patterns = [(self.types[n][1], self.types[n][2]) for n in names]
        return lambda sentence: max((w for p, w in patterns if _gives(p, sentence)), default=0.0)

    def strength(self, question: str) -> float:
        """How much finding the asked kind of answer matters (the strongest asked type's `strength`;
        0 when none that counts is asked): a phone number or a web address asked for and not found
        says more about coverage than a duration not found."""
        return max((self.types[n][2] for n in self.asked(question) if n not in WEAK_TYPES), default=0.0)


# A Japanese condition clause ("電話番号が変わったら、", "いつも通りなら、") states a situation; the
# question is asked after it. Its words do not say what kind of answer is wanted.
_JA_CONDITION = re.compile(r"^.*(?:たら|れば|なら|場合は?|ときは?|時は?)[、,]")


def asking_part(question: str) -> str:
    """The part of a question that asks: its sentences that ask (a question mark, or a Japanese final
    か: understanding.text.asks) when it has others too ("I got a letter that mentions a web page. Are
    they the same service?" does not ask for a web page), without a leading Japanese condition clause."""
    sentences = message_sentences(question)
    asking = [x for x in sentences if asks(x)]
    if asking and len(asking) < len(sentences):
        question = " ".join(asking)
    rest = _JA_CONDITION.sub("", question, count=1)
    return rest if rest.strip() else question


@dataclass
class Gate:
    intercept: float
    weights: dict[str, float]
    threshold: float

    @classmethod
    def load(cls, path: Path = GATE_PATH) -> "Gate":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = DEFAULT_GATE
        return cls(float(data.get("intercept", DEFAULT_GATE["intercept"])),
                   {k: float(v) for k, v in (data.get("weights") or DEFAULT_GATE["weights"]).items()},
                   float(data.get("threshold", DEFAULT_GATE["threshold"])))

    def score(self, features: dict[str, float]) -> float:
        z = self.intercept + sum(self.weights.get(k, 0.0) * features.get(k, 0.0) for k in FEATURES)
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@dataclass
class Answer:
    query: str
    result: SearchResult
    passages: list[Passage]
    other_language: bool
    shown: list[composer.Piece]
    rest: list[composer.Piece]
    features: dict[str, float] = field(default_factory=dict)
    answerability: float = 0.0
    covered: bool = False
    followup: bool = False  # read together with the conversation's last question
    lacking: bool = False  # the sources say they lack the kind of answer asked for ("no phone number for KDDI")

    @property
    def confidence(self) -> float:
        return self.result.confidence


def gate_features(question: str, shown: Sequence[composer.Piece], passages: Sequence[Passage],
                  result: SearchResult, asked_strength: float,
                  carriers_in: Callable[[str], Sequence[str]] | None = None) -> dict[str, float]:
    """What the gate looks at: how close the best shown sentence and the best section question are
    to the question, the search's confidence, whether the kind of answer asked for was found, how
    much of the question's words (rare ones weigh more) the best shown sentence contains, and the
    share of its words no document contains at all ("Vietnam": a sign the sources do not cover the
    question), and the share of the names it mentions that the shown sentences never do."""
    sims = [p.similarity for p in shown if p.similarity is not None]
    # the asked kind of answer found (1), or not found (`missing`: the asked type's strength, so a
    # phone number or a web address asked for and absent weighs more than a duration)
    typed = missing = 0.0
    if asked_strength:
        found = any(p.typed for p in shown)
        typed, missing = (1.0, 0.0) if found else (0.0, asked_strength)
    if any(p.coverage for p in shown):
        coverage = max(p.coverage for p in shown)
    else:  # a retriever without word analysis: the composer's word overlap over the top sections
        q_terms = composer.terms(question)
        found = composer.terms(" ".join(p.text + " " + p.title for p in passages[:3])) if q_terms else frozenset()
        coverage = len(q_terms & found) / len(q_terms) if q_terms else 0.0
    return {
        "sentence": max(sims) if sims else 0.0,
        "question": max((p.question_score for p in passages[:3]), default=0.0),
        "confidence": float(result.confidence),
        "typed": typed,
        "missing": missing,
        "coverage": coverage,
        "unknown": float(result.unknown_terms),
        "unnamed": unnamed(result.names, shown, carriers_in),
    }


def unnamed(names: Sequence[str], shown: Sequence[composer.Piece],
            carriers_in: Callable[[str], Sequence[str]] | None = None) -> float:
    """The share of the names the question mentions (products, companies: "ドコモ", "Teams") that no
    shown sentence mentions: an answer about NTT's block does not answer a question about Docomo's.
    A carrier's other name (東日本電信電話, a carriers.yaml alias) is mentioned by a sentence that
    names that carrier in any of its names ("NTT東日本")."""
    if not names:
        return 0.0
    text = unicodedata.normalize("NFKC", " ".join(p.text for p in shown)).lower()
    named = {c for p in shown for c in carriers_in(p.text)} if carriers_in is not None else set()

    def mentioned(name: str) -> bool:
        return name in text or bool(carriers_in is not None and set(carriers_in(name)) & named)

    return sum(1 for n in names if not mentioned(n)) / len(names)


def _sentence_cache(carriers_in: Callable[[str], Sequence[str]]) -> Callable[[str], Sequence[str]]:
    @lru_cache(maxsize=16384)
    def cached(sentence: str) -> tuple[str, ...]:
        return tuple(carriers_in(sentence))

    return cached


class Answerer:
    def __init__(self, answer_types: AnswerTypes, gate: Gate | None = None, *, min_confidence: float = 0.35,
                 carriers_in: Callable[[str], Sequence[str]] | None = None) -> None:
        self.answer_types = answer_types
        self.gate = gate or Gate.load()
        self.min_confidence = min_confidence  # the bar when there are no sentence similarities
        # The carrier ids a sentence names (the facts tables). Asked of passage sentences only,
        # which repeat across turns (the documents and the tables are static): each is read once.
        self.carriers_in = _sentence_cache(carriers_in) if carriers_in is not None else None

    @classmethod
    def served(cls, settings: Settings, carriers_in: Callable[[str], Sequence[str]]) -> "Answerer":
        """The answerer the conversation core serves with, and the one the gate is fitted with
        (scripts/fit_answerability.py): the same answer types, bar and carrier reading, so that the
        features the gate was fitted on are the features it judges."""
        return cls(AnswerTypes.load(settings.knowledge_dir), min_confidence=settings.min_confidence,
                   carriers_in=carriers_in)

    def _for_carrier(self, pieces: list[composer.Piece], carrier: str | None) -> list[composer.Piece]:
        """Under "For KDDI:", no sentence about NTT West alone: a guide for every carrier also has
        sentences about one carrier, and a sentence that names others but not the one asked about
        answers for them, not for it."""
        if not carrier or self.carriers_in is None:
            return pieces
        kept = [p for p in pieces if carrier in (named := self.carriers_in(p.text)) or not named]
        return kept or pieces

    def _lacking(self, pieces: list[composer.Piece], shown: list[composer.Piece], question: str,
                 carrier: str | None, missing: bool) -> list[composer.Piece]:
        """The sentences saying the sources lack what the question asks: of the carrier it names, among
        every composed sentence; with no carrier named, among the shown ones when none gives the asked kind."""
        if carrier and self.carriers_in is not None:
            return [p for p in pieces if carrier in self.carriers_in(p.text) and self.answer_types.lacks(p.text, question)][:1]
        if missing:
            return [p for p in shown if self.answer_types.lacks(p.text, question)][:1]
        return []

    def answer(self, result: SearchResult, lang: str, *, query: str, focus: str | None, budget: int,
               carrier: str | None = None, seen: frozenset[str] = frozenset(), judge_budget: int | None = None) -> Answer:
        """`judge_budget`: the room the gate judges by, when the reply shows the answer in less room
        (the incident's second question): whether the sources answer a question does not depend on
        how much of the reply is left for it. The gate was fitted on whole question replies."""
        passages, other_language = in_language(result.passages, lang)
        passages = for_carrier(passages, carrier)
        cue = self.answer_types.cue(focus or query)
        pieces = composer.pieces_of(passages, query, focus=focus, cue=cue, max_passages=max(3, len(passages)))
        pieces = self._for_carrier(pieces, carrier)
        shown, rest = composer.select(pieces, lang, budget, seen)
        judged = shown
        if judge_budget is not None and judge_budget > budget:
            judged = composer.select(pieces, lang, judge_budget, seen)[0]
        features = gate_features(focus or query, judged, passages, result, self.answer_types.strength(focus or query),
                                 self.carriers_in)
        with_sims = any(p.similarity is not None for p in judged)
        # A retriever without sentence vectors (test doubles) leaves only its confidence to go by.
        score = self.gate.score(features) if with_sims else float(result.confidence)
        covered = bool(shown) and score >= (self.gate.threshold if with_sims else self.min_confidence)
        gaps = self._lacking(pieces, shown, focus or query, carrier, features["missing"] > 0)
        lacking = bool(gaps)
        if lacking:
            # A kind of answer asked for (a phone number, a fee, a duration) that the sources say they lack
            # ("Our sources give no phone number for KDDI's block"): not an answer, even when a sentence
            # about something else gives that kind ("SoftBank's mobile barring is free" for the fee of its
            # fixed-line block). The reply says the sources do not cover the question and shows that
            # sentence first, among the closest facts.
            covered = False
            shown = gaps + [p for p in shown if p not in gaps]
        return Answer(query, result, passages, other_language, shown, rest, features, round(score, 4), covered,
                      lacking=lacking)
