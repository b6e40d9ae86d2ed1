"""The bot's behaviours, one module each, and the order in which they are asked.

A new capability is one skill module (claims, applies, respond) plus its intents file in
knowledge/intents/, and one entry in `build_skills`'s precedence below.
"""

from __future__ import annotations

from bot.conversation.answering import Answerer
from bot.conversation.skills.base import Skill
from bot.conversation.skills.dispute import Dispute
from bot.conversation.skills.incident import Incident
from bot.conversation.skills.question import Question
from bot.conversation.skills.simple import (Empty, HumanRequest, More, NotHelped, Refusal, Smalltalk, UnknownLanguage,
                                            Unreadable)
from bot.conversation.skills.ticket_open import TicketOpen
from bot.conversation.understanding.facts import FactExtractor


def build_skills(answerer: Answerer, extractor: FactExtractor,
                 answer_hints: dict[str, dict[str, str]] | None = None) -> tuple[Skill, ...]:
    """The precedence: the first skill that applies answers the turn. An open ticket takes every
    message; a request for a person comes after an incident (which opens an urgent ticket anyway);
    the question skill answers whatever no other skill claims."""
    incident = Incident(answerer, extractor)
    return (
        TicketOpen(incident),
        Empty(),
        Unreadable(),
        Refusal(),
        UnknownLanguage(),
        incident,
        HumanRequest(),
        More(),
        Smalltalk(),
        NotHelped(),
        Dispute(),
        Question(answerer, extractor, answer_hints),
    )
