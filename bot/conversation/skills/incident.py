"""An incident: fraudulent calls going out now, or a bill just found with calls nobody made.

The reply gives the containment steps first (for the user's carrier when known), asks only for the
facts still missing, answers the other question the same message asked (who pays, how long a
block takes...), and opens an urgent ticket."""

from __future__ import annotations

from bot.conversation import composer
from bot.conversation.answering import WEAK_TYPES, Answerer
from bot.conversation.containment import containment
from bot.conversation.escalation import TurnSignals
from bot.conversation.skills.base import PLACEHOLDER_TICKET, Toolkit, Turn
from bot.conversation.texts import LIST_SEP, t
from bot.conversation.understanding.facts import FactExtractor, IncidentFacts, missing_facts
from bot.conversation.understanding.text import kana_to_kanji
from bot.conversation.who_pays import only_who_pays, who_pays
from bot.messages import Reply

# Labels that mean "and I also ask something" next to an incident; answer types that do too.
_QUESTION_LABELS = frozenset({"billing_question", "dispute", "question", "incoming_scam"})
_QUESTION_TYPES = ("payment", "duration", "cost", "number")
WHO_PAYS_SENTENCES = 2  # the who-pays guide's opening: the general rule, then the one relief found
WHAT_NOW_MAX = {"ja": 12, "en": 4}  # a question this short that asks no kind of answer asks what to do


class Incident:
    claims = frozenset({"fraud_now", "fraud_bill"})

    def __init__(self, answerer: Answerer, extractor: FactExtractor) -> None:
        self.answerer = answerer
        self.extractor = extractor

    def applies(self, turn: Turn) -> bool:
        return turn.meaning.incident

    def second_question(self, turn: Turn) -> str:
        """What the message asks besides "what do I do": its question sentences, or the whole message
        when it is one sentence that also asks (who pays, how long, which number); "" when none. A short
        question asking no kind of answer ("What now?", 「どうする？」, "What should we do?") asks what to
        do: the steps answer it (it had "On your question:" repeat the first step)."""
        if turn.meaning.questions:
            return " ".join(q for q in turn.meaning.questions if not self._what_now(q, turn.lang))
        if turn.meaning.intents & _QUESTION_LABELS or any(
                a in _QUESTION_TYPES for a in self.answerer.answer_types.asked(turn.text)):
            return turn.text
        return ""

    def _what_now(self, question: str, lang: str) -> bool:
        return composer.measure(question, lang) <= WHAT_NOW_MAX[lang] and not (
            set(self.answerer.answer_types.asked(question)) - set(WEAK_TYPES))

    def asks_who_pays(self, turn: Turn, question: str) -> bool:
        """The other question is who pays, and only that: the classifier reads a who-pays question in
        the message, or a question sentence of it asks for a payment ("Do we have to pay for these
        calls?"); and it asks for nothing more specific ("how much did NTT refund?" asks an amount the
        composer finds). Not a message that only says it was billed ("...請求された会社の事例を知りたい")."""
        asked = set(self.answerer.answer_types.asked(question))
        if not only_who_pays(asked):
            return False
        return turn.meaning.has("billing_question") or (bool(turn.meaning.questions) and "payment" in asked)

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        st, lang = turn.state, turn.lang
        facts = IncidentFacts.from_dict(st.facts)
        carrier = facts.carrier or st.carrier
        missing = missing_facts(IncidentFacts.from_dict({**st.facts, "carrier": carrier}))
        ask = t("ask_facts", lang, items=LIST_SEP[lang].join(t(f"fact_{m}", lang) for m in missing)) if missing else ""
        decision = kit.policy.decide(TurnSignals(incident=True, requested_human=turn.requested_human))
        fixed = [t("incident_header", lang), ask, t("handoff_urgent", lang, ticket=PLACEHOLDER_TICKET)]
        second: list[composer.Piece] = []
        reserve = 0
        question = self.second_question(turn)
        if question:
            reserve = kit.budget(lang, fixed) * 2 // 5  # two fifths of the reply answer the other question
            if self.asks_who_pays(turn, question):
                # "do we have to pay for this?": the general rule and the one relief, as a dispute hears it,
                # both whatever their length (the guide's opening; its next sentence, "first stop the calls",
                # the steps above already say). In two fifths of the reply the relief and "no refund can be
                # promised" did not fit, and a user asking "will they refund any of it?" heard only "you
                # generally pay". The steps get what is left, at least their first one.
                second = who_pays(kit, lang, kit.budget(lang, fixed))[0][:WHO_PAYS_SENTENCES]
                reserve = sum(composer.measure(p.text, lang) for p in second)
            else:
                query = kana_to_kanji(question)
                # judged as the same question asked alone would be (its reply's room), shown in the reserve
                answer = self.answerer.answer(kit.search(query, lang, None), lang, query=query, focus=question,
                                              budget=reserve, judge_budget=kit.budget(lang, [t("more_hint", lang)]))
                second = answer.shown if answer.covered else []
        name = self.extractor.carrier_name(carrier, lang) if carrier else ""
        book = composer.CitationBook()
        steps = containment(kit, lang, carrier, "050" in turn.norm, fixed, name, book=book, reserve=reserve)
        kit.keep_more(st, steps.rest, lang)
        parts = [t("incident_header", lang), steps.text]
        if second:
            parts += [t("also_asked", lang), composer.render(second, lang, book)]
        citations = book.citations()
        if ask:
            parts.append(ask)
        st.last_query = turn.text
        return [kit.escalate(turn, "\n".join(x for x in parts if x), citations, steps.confidence, decision, kind="incident")]

