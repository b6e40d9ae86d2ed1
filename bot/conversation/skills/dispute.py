"""A dispute about the user's own bill (the incident is over; they contest it or want money back):
a person takes it (a normal ticket), and the user hears now what the sources say about who pays."""

from __future__ import annotations

from bot.conversation import composer
from bot.conversation.escalation import TurnSignals
from bot.conversation.passages import in_language, pick
from bot.conversation.skills.base import PLACEHOLDER_TICKET, Toolkit, Turn
from bot.conversation.texts import t
from bot.messages import Reply

_WHO_PAYS = {"ja": "乗っ取り 国際通話料 誰が払う 返金 救済", "en": "who pays hijacked international call charges refund relief"}


class Dispute:
    """Whatever story comes with the claim ("blocked since Monday", "the bank took it already"), what
    the user needs to hear is the same: who pays in Japan, the one relief found, no refund promised,
    and what to keep for the person who takes the claim. The who-pays guide opens with exactly that,
    so its opening is shown in its own order, as the incident skill shows the first-steps guide's.
    (Sentences picked by similarity to the story led with how to block, or with a list of court
    cases whose content was never checked.)"""

    claims = frozenset({"dispute"})

    def applies(self, turn: Turn) -> bool:
        return turn.meaning.has("dispute")

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        lang = turn.lang
        fixed = [t("dispute_header", lang), t("handoff", lang, ticket=PLACEHOLDER_TICKET)]
        result = kit.fixed_search(_WHO_PAYS[lang], lang, None)
        lead = kit.guide_lead(pick(in_language(result.passages, lang)[0], topics=("refund",), prefer_lead=True))
        shown, rest = (composer.take_in_order(composer.pieces_of([lead], "", max_passages=1), lang,
                                              kit.budget(lang, fixed)) if lead is not None else ([], []))
        kit.keep_more(turn.state, rest, lang)
        book = composer.CitationBook()
        body = composer.render(shown, lang, book) if shown else ""
        text = "\n".join(x for x in (t("dispute_header", lang) if body else "", body) if x)
        turn.state.last_query = turn.text[-300:]
        decision = kit.policy.decide(TurnSignals(billing_dispute=True))
        return [kit.escalate(turn, text, book.citations(), result.confidence, decision, kind="answer")]
