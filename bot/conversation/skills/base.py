"""What every skill sees (the Turn) and may use (the Toolkit), and the Skill protocol.

A skill is one behaviour of the bot (incident, question, request for a person, ...). It declares
the intents it claims and whether it searches the message's own text; the router (router.py) asks
the skills in the order of skills.build_skills and the first that applies answers the turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from bot.config import Settings
from bot.conversation import composer
from bot.conversation.escalation import Decision, EscalationPolicy
from bot.conversation.passages import in_language, pick
from bot.conversation.texts import t
from bot.conversation.understanding.meaning import Meaning
from bot.messages import Address, Escalation, Reply
from bot.ports import (ConversationState, Handoff, Passage, Retriever, SearchResult, StoredMessage, Ticket,
                       TicketListener)

log = logging.getLogger("bot.conversation")

MORE_KEY = "_more"  # state.facts: sentences not shown yet, for "more"
ACK_KEY = "_acked_ticket"  # state.facts: ticket id whose first joined message was acknowledged
FACT_KEYS = ("carrier", "still_happening", "noticed_at", "amounts", "destinations", "vendor")
MORE_MAX_PIECES = 16  # sentences kept for "more" (about three pages)
SEARCH_MAX_CHARS = 1000  # a search query is cut here (the dense part sees less still)
PLACEHOLDER_TICKET = "T-00000000-0000"  # sizes the "a person will contact you" line before a ticket exists


@dataclass
class Turn:
    """One user message, what it means, and the conversation it belongs to (state is saved after)."""

    address: Address
    stored: StoredMessage
    text: str
    norm: str
    lang: str
    state: ConversationState
    meaning: Meaning
    action: str | None = None
    ticket: Ticket | None = None  # the conversation's open ticket, if any

    @property
    def requested_human(self) -> bool:
        return self.action == "request_human" or self.meaning.has("human_request")


class Skill(Protocol):
    claims: frozenset[str]  # the intents this skill answers

    def applies(self, turn: Turn) -> bool: ...

    def respond(self, turn: Turn, kit: "Toolkit") -> list[Reply]: ...


@dataclass
class Toolkit:
    """The services and shared steps skills build replies with."""

    retriever: Retriever
    handoff: Handoff
    settings: Settings
    policy: EscalationPolicy
    listeners: list[TicketListener] = field(default_factory=list)
    # Fixed queries (containment steps, a carrier's stop line) give the same passages every time
    # for one opened index: kept per (query, language, carrier).
    fixed_results: dict[tuple, SearchResult] = field(default_factory=dict)

    # ------------------------------------------------------------ searching

    def search(self, query: str, lang: str, carrier: str | None, *, k: int | None = None,
               sentences_for: str | None = None) -> SearchResult:
        # only when asked: a retriever that cannot score sentences for another text need not accept it
        extra = {"sentences_for": sentences_for[:SEARCH_MAX_CHARS]} if sentences_for else {}
        return self.retriever.search(query[:SEARCH_MAX_CHARS], k or self.settings.retrieval_k, language=lang,
                                     carrier=carrier, **extra)

    def fixed_search(self, query: str, lang: str, carrier: str | None) -> SearchResult:
        key = (query, lang, carrier)
        if key not in self.fixed_results:
            result = self.search(query, lang, carrier, k=10)
            if not result.passages:
                return result  # an index being rebuilt: do not remember "nothing"
            self.fixed_results[key] = result
        return self.fixed_results[key]

    def guide_opening(self, query: str, lang: str, topic: str,
                      carrier: str | None = None) -> tuple[Passage | None, SearchResult]:
        """The opening section of the guide on `topic` that a fixed search finds (for `carrier`, else a
        guide for every carrier), and that search. A guide opens with what to do first; the lead is
        fetched by its key when the search returned other sections of the guide (retrievers that can)."""
        result = self.fixed_search(query, lang, carrier)
        passage = pick(in_language(result.passages, lang)[0], topics=(topic,), carrier=carrier, prefer_lead=True)
        get_section = getattr(self.retriever, "get_section", None)
        if passage is None or get_section is None or passage.kind != "guide" or passage.section.endswith("#0"):
            return passage, result
        return get_section(f"{passage.doc_id}#0") or passage, result

    # ------------------------------------------------------------ sizes

    def budget(self, lang: str, fixed: Sequence[str], reserve: int = 0) -> int:
        """Room for sentences in a chat-sized reply, after the fixed lines and `reserve` (room kept
        for another part of the reply)."""
        limit = self.settings.answer_max_chars_ja if lang == "ja" else self.settings.answer_max_words_en
        used = reserve + sum(composer.measure(x, lang) for x in fixed if x)
        return max(limit - used, limit // 3)

    @staticmethod
    def keep_more(state: ConversationState, rest: list[composer.Piece], lang: str) -> None:
        if rest:
            state.facts[MORE_KEY] = {"lang": lang, **composer.pack(rest[:MORE_MAX_PIECES])}
        else:
            state.facts.pop(MORE_KEY, None)

    # ------------------------------------------------------------ replies

    @staticmethod
    def reply(turn: Turn, answer: str, *, kind: str, citations: tuple = (), confidence: float = 0.0,
              escalation: Escalation | None = None, offer_human: bool = False, lang: str | None = None) -> Reply:
        return Reply(
            conversation_id=turn.address.conversation_id, language=lang or turn.lang, answer=answer,  # type: ignore[arg-type]
            citations=tuple(citations), escalation=escalation, confidence=confidence, kind=kind,  # type: ignore[arg-type]
            offer_human=offer_human,
        )

    def escalate(self, turn: Turn, answer: str, citations: tuple, confidence: float, decision: Decision | None, *,
                 kind: str) -> Reply:
        """The reply, with a ticket opened when the policy decided one (and the line saying so)."""
        if decision is None:
            return self.reply(turn, answer, kind=kind, citations=citations, confidence=confidence)
        st = turn.state
        ticket = self.handoff.open_ticket(turn.address, reason=decision.reason, priority=decision.priority,
                                          summary=self.summary(turn, decision.reason))
        st.facts[ACK_KEY] = None
        st.failures = 0
        key = "handoff_urgent" if decision.priority == "urgent" else "handoff"
        text = "\n".join(x for x in (answer, t(key, turn.lang, ticket=ticket.id)) if x)
        self.notify("opened", ticket)
        return self.reply(
            turn, text, kind=kind, citations=citations, confidence=confidence,
            escalation=Escalation(reason=decision.reason, priority=decision.priority, ticket_id=ticket.id),
        )

    def summary(self, turn: Turn, reason: str) -> dict[str, Any]:
        return {**self.facts(turn), "language": turn.lang, "reason": reason, "message": turn.text[:500]}

    @staticmethod
    def facts(turn: Turn) -> dict[str, Any]:
        facts = {k: turn.state.facts.get(k) for k in FACT_KEYS}
        if not facts.get("carrier"):
            facts["carrier"] = turn.state.carrier
        return facts

    def notify(self, event: str, ticket: Ticket) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, ticket)
            except Exception:
                log.exception("ticket listener failed on %s %s", event, ticket.id)


def claims(turn: Turn, labels: frozenset[str]) -> bool:
    return bool(turn.meaning.intents & labels)
