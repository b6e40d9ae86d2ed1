"""ConversationService: the one conversation core every channel, the web app and the CLI use.

It is the turn runner (turn.py: locks, transactions, dedupe, recovery; record, handle and
recover_pending are its) answering with the skill router (router.py: what a message means, then the
first skill that applies), plus the re-announcement of urgent tickets nobody has claimed.
Implements bot.ports.ConversationCore.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from bot.config import Settings
from bot.conversation.answering import Answerer
from bot.conversation.containment import containment
from bot.conversation.escalation import EscalationPolicy
from bot.conversation.router import SkillRouter
from bot.conversation.skills import build_skills
from bot.conversation.skills.base import Toolkit
from bot.conversation.texts import t
from bot.conversation.turn import TurnRunner
from bot.conversation.understanding import classifier as intent_classifier
from bot.conversation.understanding.facts import FactExtractor
from bot.conversation.understanding.intents import load_intents
from bot.conversation.understanding.understand import Understander
from bot.conversation.understanding.text import clean_text
from bot.messages import InboundMessage, Reply
from bot.ports import ConversationStore, Handoff, Retriever, Ticket, TicketListener

log = logging.getLogger("bot.conversation")


def build_understander(settings: Settings, encoder: object | None) -> Understander:
    """Intents, guards and fact tables from knowledge/, the classifier trained (or loaded) for the
    encoder: the retriever's embedder when it has one (one embedding of a message serves both)."""
    data = load_intents(settings.knowledge_dir)
    encode = getattr(encoder, "encode_queries", None)
    name = getattr(encoder, "encoder_name", "") if encode is not None else ""
    clf = intent_classifier.load_or_train(data, Path(settings.data_dir) / "models", encode, name)
    return Understander(data, clf, FactExtractor.load(settings.knowledge_dir))


class ConversationService(TurnRunner):
    def __init__(
        self,
        *,
        retriever: Retriever,
        store: ConversationStore,
        handoff: Handoff,
        settings: Settings,
        policy: EscalationPolicy | None = None,
        understander: Understander | None = None,
    ) -> None:
        self.retriever = retriever
        self.kit = Toolkit(retriever=retriever, handoff=handoff, settings=settings, policy=policy or EscalationPolicy())
        self.understander = understander or build_understander(settings, retriever)
        answerer = Answerer.served(settings, self.understander.extractor.carriers)
        self.router = SkillRouter(self.kit, self.understander, build_skills(answerer, self.understander.extractor,
                                                                                self.understander.data.answer_hints))
        super().__init__(store=store, handoff=handoff, settings=settings, respond=self.router.respond)

    # ------------------------------------------------------------------ ConversationCore (with TurnRunner's)

    def add_ticket_listener(self, listener: TicketListener) -> None:
        self.kit.listeners.append(listener)

    def prefetch(self, message: InboundMessage) -> None:
        """The message will wait for a free worker thread: hand the embedder its text now, so that
        the queries of waiting messages share one embedding pass (bot/retrieval/batching.py). The
        classifier embeds exactly this text, and a plain question searches it. Never raises."""
        prefetch = getattr(self.retriever, "prefetch", None)
        if prefetch is None or message.action:
            return
        try:
            text = clean_text(message.text, self.settings.max_text_chars)
            if text:
                prefetch(intent_classifier.prepare(text))  # (the retriever cleans a query the same way)
        except Exception:  # noqa: BLE001 - an optimisation must never fail a message
            log.exception("prefetching a query failed")

    def reannounce_overdue(self, now: datetime) -> int:
        tickets = self.handoff.overdue_urgent(now, self.settings.urgent_reannounce_minutes)
        for ticket in tickets:
            lang = ticket.summary.get("language") if ticket.summary.get("language") in ("ja", "en") else "ja"
            try:
                reply = self._reannounce_reply(ticket, lang, ticket.summary.get("carrier"))
                self.store.record_message(ticket.address, "bot", reply.answer, meta={"reply": reply.to_payload(), "reannounce": True})
                self.handoff.enqueue(ticket.address, reply)
            except Exception:
                log.exception("re-announcing ticket %s: self-help reply failed", ticket.id)
            self.handoff.mark_reannounced(ticket.id, now)
            self.kit.notify("reannounced", ticket)
        return len(tickets)

    def _reannounce_reply(self, ticket: Ticket, lang: str, carrier: str | None) -> Reply:
        header = t("reannounce_header", lang, ticket=ticket.id)
        name = self.understander.extractor.carrier_name(carrier, lang) if carrier else ""
        steps = containment(self.kit, lang, carrier, False, [header], name)
        return Reply(conversation_id=ticket.conversation_id, language=lang, answer=f"{header}\n{steps.text}".strip(),  # type: ignore[arg-type]
                     citations=steps.citations, confidence=steps.confidence, kind="incident")
