"""A dispute about the user's own bill (the incident is over; they contest it or want money back):
a person takes it (a normal ticket), and the user hears now what the sources say about who pays."""

from __future__ import annotations

from bot.conversation import composer
from bot.conversation.answering import Answerer
from bot.conversation.escalation import TurnSignals
from bot.conversation.skills.base import PLACEHOLDER_TICKET, Toolkit, Turn
from bot.conversation.texts import t
from bot.messages import Reply

_WHO_PAYS = {"ja": "乗っ取り 国際通話料 誰が払う 返金 救済", "en": "who pays hijacked international call charges refund relief"}


class Dispute:
    claims = frozenset({"dispute"})

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer

    def applies(self, turn: Turn) -> bool:
        return turn.meaning.has("dispute")

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        lang = turn.lang
        fixed = [t("dispute_header", lang), t("handoff", lang, ticket=PLACEHOLDER_TICKET)]
        query = f"{turn.text} {_WHO_PAYS[lang]}"
        result = kit.search(query, lang, None)
        answer = self.answerer.answer(result, lang, query=query, focus=turn.text, budget=kit.budget(lang, fixed))
        book = composer.CitationBook()
        body = composer.render(answer.shown, lang, book) if answer.shown else ""
        text = "\n".join(x for x in (t("dispute_header", lang) if body else "", body) if x)
        turn.state.last_query = turn.text[-300:]
        decision = kit.policy.decide(TurnSignals(billing_dispute=True))
        return [kit.escalate(turn, text, book.citations(), answer.confidence, decision, kind="answer")]
