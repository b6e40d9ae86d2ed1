"""A dispute about the user's own bill (the incident is over; they contest it or want money back):
a person takes it (a normal ticket), and the user hears now what the sources say about who pays
(the who-pays guide's opening: bot/conversation/who_pays.py), whatever story comes with the claim."""

from __future__ import annotations

from bot.conversation import composer
from bot.conversation.escalation import TurnSignals
from bot.conversation.skills.base import PLACEHOLDER_TICKET, Toolkit, Turn
from bot.conversation.texts import t
from bot.conversation.who_pays import who_pays
from bot.messages import Reply


class Dispute:
    claims = frozenset({"dispute"})

    def applies(self, turn: Turn) -> bool:
        return turn.meaning.has("dispute")

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        lang = turn.lang
        fixed = [t("dispute_header", lang), t("handoff", lang, ticket=PLACEHOLDER_TICKET)]
        shown, rest, confidence = who_pays(kit, lang, kit.budget(lang, fixed))
        kit.keep_more(turn.state, rest, lang)
        book = composer.CitationBook()
        body = composer.render(shown, lang, book) if shown else ""
        text = "\n".join(x for x in (t("dispute_header", lang) if body else "", body) if x)
        turn.state.last_query = turn.text[-300:]
        decision = kit.policy.decide(TurnSignals(billing_dispute=True))
        return [kit.escalate(turn, text, book.citations(), confidence, decision, kind="answer")]
