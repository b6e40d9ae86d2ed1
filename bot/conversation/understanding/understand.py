"""From a user message to its Meaning: exact guards first, then the learned classifier.

Guards are the few things that must be exact (knowledge/intents/guards.yaml): commands and button
payloads ("/human", "request_human") and attempts to extract configuration. Everything else is
decided by the intent classifier trained from knowledge/intents/ (classifier.py), and the facts
by the tables of knowledge/lexicon/ (facts.py).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bot.conversation.understanding.classifier import IntentClassifier, Prediction, prepare
from bot.conversation.understanding.facts import FactExtractor, IncidentFacts
from bot.conversation.understanding.intents import IntentData
from bot.conversation.understanding.language import detect_language, has_letters
from bot.conversation.understanding.meaning import Meaning



class Understander:
    def __init__(self, data: IntentData, classifier: IntentClassifier, extractor: FactExtractor) -> None:
        self.data = data
        self.classifier = classifier
        self.extractor = extractor

    def predict(self, text: str) -> Prediction:
        return self.classifier.predict(text)

    def understand(self, text: str, known: IncidentFacts | None, action: str | None = None) -> Meaning:
        detected = detect_language(text)
        unknown = detected is None and has_letters(text)
        carriers = tuple(self.extractor.carriers(text))
        intents: frozenset[str]
        scores: dict[str, float] = {}
        guard = self.data.command(action or "") or self.data.command(text)
        if guard:
            intents = frozenset([guard])
        elif self.data.is_extraction(text):
            intents = frozenset(["config_extraction"])
        elif not text.strip():
            intents = frozenset()
        else:
            pred = self.classifier.predict(text)
            intents, scores = decide(pred), pred.scores
        ongoing = True if "fraud_now" in intents else (False if "dispute" in intents else None)
        facts = self.extractor.extract(text, known, ongoing=ongoing)
        return Meaning(intents=intents, scores=scores, detected_language=detected, unknown_language=unknown,
                       carriers=carriers, facts=facts)


def decide(pred) -> frozenset[str]:
    """The labels the skills act on. Where two labels that exclude each other both pass their
    thresholds, the one that passes it by more wins (near the line, the model's small wobble must
    not open a ticket): a claim about one's own bill against a general question about who pays."""
    labels = set(pred.labels)
    if {"dispute", "billing_question"} <= labels:
        labels.discard("billing_question" if pred.ratios["dispute"] > pred.ratios["billing_question"] else "dispute")
    # A bill contested as it arrives is both fraud_bill and dispute (an incident: the PBX may still be
    # open); a bill for an incident that is over is a dispute. Calls going on now always win.
    if {"dispute", "fraud_bill"} <= labels and "fraud_now" not in labels and pred.ratios["dispute"] > pred.ratios["fraud_bill"]:
        labels.discard("fraud_bill")
    return frozenset(labels)


def searchable(text: str) -> str:
    """The text the classifier embeds, which is also what a plain question's search embeds (the
    retriever cleans a query the same way): one embedding of a message serves both."""
    return prepare(text)


def encoder_from(embed_many: Callable[[Sequence[str]], np.ndarray]) -> Callable[[Sequence[str]], np.ndarray]:
    return lambda texts: np.asarray(embed_many(list(texts)), dtype=np.float64)
