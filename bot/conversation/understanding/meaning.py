"""What one user message means, as the skills read it."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.conversation.understanding.facts import IncidentFacts


@dataclass
class Meaning:
    intents: frozenset[str]  # labels at or above their calibrated threshold (or set by an exact guard)
    scores: dict[str, float] = field(default_factory=dict)  # label -> probability (empty for a guard)
    detected_language: str | None = None  # None: no signal, or a language the bot does not speak
    unknown_language: bool = False  # letters of a language other than ja/en
    carriers: tuple[str, ...] = ()  # carriers named in this very message, in order
    facts: IncidentFacts = field(default_factory=IncidentFacts)  # this message's facts over what was known
    # The sentences of the message that ask something (a question label, or a question mark), when
    # it has several: an incident report's "...and who pays for this?" is answered from these.
    questions: tuple[str, ...] = ()

    def has(self, label: str) -> bool:
        return label in self.intents

    @property
    def incident(self) -> bool:
        """Fraud going on now, or a bill just found with calls nobody made."""
        return bool(self.intents & {"fraud_now", "fraud_bill"})
