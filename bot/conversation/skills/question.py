"""A question: search, answer with the sentences that answer it, or say the sources do not cover it.

Short follow-ups lean on the conversation: "KDDIの場合は？" asks the last question again for
another carrier; "それって個人でも？" (a word pointing back, or no topic of its own) is searched with
the last question; a message that names no carrier keeps the one named earlier. A question the sources do not cover gets "not
covered", the closest facts there are, and the talk-to-a-person button; no ticket unless asked.
"""

from __future__ import annotations

import re

from bot.conversation import composer
from bot.conversation.answering import Answer, Answerer
from bot.conversation.skills.base import MORE_KEY, Toolkit, Turn
from bot.conversation.texts import t
from bot.conversation.understanding.facts import FactExtractor
from bot.conversation.understanding.text import kana_to_kanji, normalize
from bot.conversation.who_pays import only_who_pays, who_pays
from bot.messages import Reply

SHORT = {"ja": 25, "en": 8}  # a message this short may lean on the previous question (characters / words)
LONG_FOLLOWUP = {"ja": 60, "en": 25}  # up to this long, a message with a word pointing back may too
CARRIER_ONLY = {"ja": 8, "en": 3}  # what is left of "KDDIの場合は？" once the carrier is taken out
CLOSEST_MIN_SIMILARITY = 0.3  # below this, the "closest facts" are not close: none are shown
VAGUE_MAX_TERMS = 2  # "どうすればいいの？": too few content words to search without a context
# Words that point back at what was said before ("what if I do it at night?", 「それって無料？」): a
# short message with one asks about the last topic (function words of the grammar, not topic words).
_REFERS_BACK = re.compile(r"\b(it|its|that|this|those|them|they)\b|それ|あれ|これ|その|あの|この|そっち|こっち|そこ|同じ",
                          re.IGNORECASE)


SHOWN_KEY = "_shown"  # state.facts: fingerprints of the sentences of the last answers, newest first
SHOWN_MAX = 24  # about the last three answers: a follow-up asks something they did not say


def _seen(turn: Turn) -> frozenset[str]:
    """Fingerprints of the sentences the conversation's last answers showed."""
    return frozenset(turn.state.facts.get(SHOWN_KEY) or ())


class Question:
    claims = frozenset({"question", "billing_question", "incoming_scam", "domestic_billing", "off_topic"})

    def __init__(self, answerer: Answerer, extractor: FactExtractor,
                 answer_hints: dict[str, dict[str, str]] | None = None) -> None:
        self.answerer = answerer
        self.extractor = extractor
        self.answer_hints = answer_hints or {}  # label -> {language: what its messages generally ask}

    def applies(self, turn: Turn) -> bool:
        return True  # the default skill: last in the precedence

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        st, lang = turn.state, turn.lang
        query, header, carrier, focus = kana_to_kanji(turn.text), "", None, turn.text
        carriers = list(turn.meaning.carriers)
        switch = self._switch_query(turn)  # the last question asked for the carrier this message names
        if switch and self._carrier_only(turn):
            carrier = carriers[0]
            # "And with KDDI?" asks the last question again: what kind of answer it wanted (how
            # long, which number) picks the sentences, not the two words typed now.
            query = focus = switch
            header = self._carrier_header(turn)
        elif carriers:
            carrier = carriers[0]
        elif st.carrier:
            # The carrier named earlier in the conversation still holds ("ひかり電話を止めたい" then
            # "何日で止まる？" asks about NTT): its sections and the guides for every carrier answer.
            carrier = st.carrier
        off_topic = turn.meaning.has("off_topic") and not (turn.meaning.intents - {"off_topic"})
        fixed = [header, t("more_hint", lang)]
        budget = kit.budget(lang, fixed)
        answer = self._best(turn, kit, query, carrier, budget, focus)
        if not header and self._asks_who_pays(turn) and not (answer.covered and any(p.typed for p in answer.shown)):
            # "Who pays if our PBX gets hijacked?" and nothing more specific, and the search found no
            # sentence about paying: the who-pays guide's opening, as a dispute hears it (no ticket).
            shown, rest, _ = who_pays(kit, lang, budget)
            if shown:
                answer.shown, answer.rest, answer.covered = shown, rest, True
        if header and not answer.covered and not answer.lacking and self._about(answer, carrier):
            # "じゃあKDDIの場合は？": the last question asked again for another carrier. Sentences about
            # that very carrier on the last question's topic answer it, even when they lack one detail
            # the first question asked (its cost): the gate's general features cannot see that.
            answer.covered = True
        elif switch and not header and composer.measure(turn.text, lang) <= SHORT[lang]:
            answer, header = self._maybe_switch(turn, kit, switch, carrier, answer)
        if off_topic and not (answer.covered and answer.answerability >= 0.8):
            st.facts.pop(MORE_KEY, None)
            return [kit.reply(turn, t("scope", lang), kind="scope", confidence=answer.confidence)]
        if not answer.covered:
            st.facts.pop(MORE_KEY, None)
            if not st.last_query and len(composer.terms(turn.text)) <= VAGUE_MAX_TERMS and not carriers:
                return [kit.reply(turn, t("clarify", lang), kind="clarify", confidence=answer.confidence)]
            if not answer.followup:
                st.last_query = answer.query[-300:]  # the topic stays, for the follow-up that rephrases it
            return [self._not_covered(turn, kit, answer)]
        if not answer.followup:
            st.last_query = answer.query[-300:]  # a follow-up keeps the topic it leaned on
        shown = [composer.fingerprint(p.text) for p in answer.shown]
        st.facts[SHOWN_KEY] = list(dict.fromkeys(shown + list(st.facts.get(SHOWN_KEY) or ())))[:SHOWN_MAX]
        if answer.passages:
            st.topics = (st.topics + [tp for tp in answer.passages[0].topics if tp not in st.topics])[-6:]
        book = composer.CitationBook()
        lines = [header, t("other_language_note", lang) if answer.other_language else "",
                 composer.render(answer.shown, lang, book)]
        kit.keep_more(st, answer.rest, lang)
        if answer.rest:
            lines.append(t("more_hint", lang))
        return [kit.reply(turn, "\n".join(x for x in lines if x), kind="answer", citations=book.citations(),
                          confidence=answer.confidence, offer_human=True)]

    # ------------------------------------------------------------------ helpers

    def _about(self, answer: Answer, carrier: str | None) -> bool:
        """The answer's best sentence names `carrier` and is close to the question."""
        carriers_in = self.answerer.carriers_in
        if not carrier or carriers_in is None or not answer.shown:
            return False
        best = answer.shown[0]
        return carrier in carriers_in(best.text) and (best.similarity or 0.0) >= CLOSEST_MIN_SIMILARITY

    def _asks_who_pays(self, turn: Turn) -> bool:
        """A general question about who pays for a hijacker's calls, and only that (the classifier
        reads a billing question; what it asks is a payment, nothing more specific such as an amount)."""
        if not turn.meaning.has("billing_question"):
            return False
        asked = set(self.answerer.answer_types.asked(turn.text))
        return "payment" in asked and only_who_pays(asked)

    def _carrier_header(self, turn: Turn) -> str:
        """"For KDDI:" over an answer that asks the last question again for the carrier named now."""
        return t("carrier_header", turn.lang, carrier=self.extractor.carrier_name(turn.meaning.carriers[0], turn.lang))

    def _switch_query(self, turn: Turn) -> str | None:
        carriers = turn.meaning.carriers
        if not (turn.state.last_query and carriers):
            return None
        name = self.extractor.carrier_name(carriers[0], turn.lang)
        return f"{self.extractor.strip_carriers(normalize(turn.state.last_query))} {name}"

    def _maybe_switch(self, turn: Turn, kit: Toolkit, switch: str, carrier: str | None,
                      own: Answer) -> tuple[Answer, str]:
        """A short message that names a carrier and says more than "and KDDI?" ("うちはauひかりなんだけど、
        同じやり方？", "Same question for NTT Com.", "We're actually with OCN, does that change anything?")
        may still ask the last question again for that carrier. Both readings are searched; the switch is
        taken when the gate passes it and prefers it. Otherwise the message's own reading, without a header."""
        lang = turn.lang
        header = self._carrier_header(turn)
        seen = _seen(turn)
        switched = self._answer(kit, switch, switch, lang, carrier, kit.budget(lang, [header, t("more_hint", lang)]),
                                seen)
        # No benefit of the doubt here (unlike "and KDDI?"): the message may ask something of its own, and
        # "then which number for SoftBank?" is not covered by SoftBank's procedure without its number.
        # A message whose only concept is the carrier ("Same question for NTT West.") has no question of
        # its own: its own reading, however the gate scores it, answers nothing that was asked.
        topicless = all(self.extractor.carriers(term) for term in own.result.expanded_terms)
        if switched.covered and (topicless or not own.covered or switched.answerability > own.answerability):
            return switched, header
        if switched.lacking and not own.covered:
            # Neither reading is answered, and the switch finds the sources saying they lack it ("no
            # phone number for KDDI's block"): that sentence is the closest fact there is.
            return switched, header
        return own, ""

    def _carrier_only(self, turn: Turn) -> bool:
        rest = self.extractor.strip_carriers(turn.text)
        return composer.measure(rest, turn.lang) <= CARRIER_ONLY[turn.lang] if turn.lang == "en" else len(
            [c for c in rest if c.isalnum()]) <= CARRIER_ONLY["ja"]

    def _best(self, turn: Turn, kit: Toolkit, query: str, carrier: str | None, budget: int, focus: str) -> Answer:
        """The message searched on its own; a short one in a conversation that leans on it (no topic
        of its own, or a word pointing back), or that its own reading does not answer, also with the
        last question ("how long does it take?" is about what was just discussed)."""
        lang = turn.lang
        seen = _seen(turn)
        own = self._answer(kit, query, focus, lang, carrier, budget, seen)
        last = turn.state.last_query
        size = composer.measure(turn.text, lang)
        if last and SHORT[lang] < size <= LONG_FOLLOWUP[lang] and query == kana_to_kanji(turn.text) \
                and (_REFERS_BACK.search(turn.text) or not own.covered):
            # A longer message that points back ("Our sales reps use it on the road. So what should we do
            # about it?"), or that its own reading does not answer ("and the Fujitsu FENICS IP phone
            # service at our other site?"), may still lean on the last question; read with it, it is
            # taken only when the gate prefers that reading: a longer message more often has a topic of its own.
            joined = self._with_last(kit, turn, query, carrier, budget, seen)
            if joined.covered and (not own.covered or joined.answerability > own.answerability):
                joined.followup = True
                return joined
        if last and size <= SHORT[lang] and query == kana_to_kanji(turn.text):
            # A message that names no concept of the domain ("how long does it take?", 「無料？」) or
            # points back ("what if I do it at night?") only makes sense with the last question; one
            # with a topic of its own that its own reading answers is not searched a second time.
            leans = not own.result.expanded_terms or bool(_REFERS_BACK.search(turn.text))
            if leans or not own.covered:
                joined = self._with_last(kit, turn, query, carrier, budget, seen)
                # A follow-up that asks a kind of answer ("how long does it take?", 「無料？」) is answered
                # when the conversation's topic holds a sentence of that kind: on a known topic, the
                # kind of answer found is the evidence the gate's general features lack.
                if leans and not joined.covered and joined.shown and joined.features.get("typed") == 1.0:
                    joined.covered = True
                if joined.covered and (leans or not own.covered):
                    joined.followup = True
                    return joined
        if not own.covered:
            hinted = self._hinted(turn, kit, query, focus, carrier, budget, seen)
            if hinted is not None:
                return hinted
        return own

    def _with_last(self, kit: Toolkit, turn: Turn, query: str, carrier: str | None, budget: int,
                   seen: frozenset[str]) -> Answer:
        """The message searched together with the conversation's last question: the pair finds the
        sections, the message alone scores their sentences."""
        return self._answer(kit, f"{turn.state.last_query} {query}", turn.text, turn.lang, carrier, budget, seen,
                            sentences_for=query)

    def _hinted(self, turn: Turn, kit: Toolkit, query: str, focus: str, carrier: str | None, budget: int,
                seen: frozenset[str]) -> Answer | None:
        """A message its own reading does not answer, searched with what its intent generally asks
        (`answer_hint` of knowledge/intents/<label>.yaml): a story of odd calls from abroad that asks
        "is this the hacking thing?" is answered by the section on incoming scams not being a hijack.
        The sentences are still scored against the message itself; None when that is not answered either."""
        for label in sorted(turn.meaning.intents & self.answer_hints.keys()):
            hint = self.answer_hints[label].get(turn.lang)
            if hint:
                hinted = self._answer(kit, f"{query} {hint}", focus, turn.lang, carrier, budget, seen,
                                      sentences_for=query)
                if hinted.covered:
                    return hinted
        return None

    def _answer(self, kit: Toolkit, query: str, focus: str, lang: str, carrier: str | None, budget: int,
                seen: frozenset[str], sentences_for: str | None = None) -> Answer:
        result = kit.search(query, lang, carrier, sentences_for=sentences_for)
        return self.answerer.answer(result, lang, query=query, focus=focus, budget=budget, carrier=carrier, seen=seen)

    def _not_covered(self, turn: Turn, kit: Toolkit, answer: Answer) -> Reply:
        lang = turn.lang
        lines = [t("not_covered", lang)]
        book = composer.CitationBook()
        close = [p for p in answer.shown if (p.similarity or 0.0) >= CLOSEST_MIN_SIMILARITY][:2]
        if answer.lacking:  # the sentence saying the sources lack what was asked comes first, however close
            close = [answer.shown[0]] + [p for p in close if p is not answer.shown[0]][:1]
        if close:
            lines += [t("closest_facts", lang), composer.render(close, lang, book)]
        lines.append(t("offer_person", lang))
        return kit.reply(turn, "\n".join(lines), kind="not_covered", citations=book.citations(),
                         confidence=answer.confidence, offer_human=True)
