"""The short skills: an empty message, one of punctuation only, a refusal, a language the bot does
not speak, smalltalk, a request for a person, "more", "that did not help"."""

from __future__ import annotations

import unicodedata

from bot.conversation import composer
from bot.conversation.escalation import TurnSignals
from bot.conversation.skills.base import MORE_KEY, Toolkit, Turn, claims
from bot.conversation.texts import t
from bot.messages import Reply


def _in_known_language(turn: Turn, key: str) -> str:
    """A message with no words says no language: the text in the conversation's language, or in
    both until it has one."""
    return t(key, turn.lang) if turn.state.language else f"{t(key, 'en')}\n{t(key, 'ja')}"


class Empty:
    claims = frozenset()

    def applies(self, turn: Turn) -> bool:
        return not turn.text and not turn.requested_human

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        return [kit.reply(turn, _in_known_language(turn, "empty"), kind="notice")]


class Unreadable:
    """Only punctuation ("？？？", "!!!", "...") or a single letter ("あ", "x": a slip of the thumb): no
    words to understand, so ask what happened, instead of whatever a model reads into it ("nothing
    more on that", "you're welcome" for 「あ」). Emoji are left to the model (👍 is thanks)."""

    claims = frozenset()

    def applies(self, turn: Turn) -> bool:
        text = turn.text
        if not text or turn.requested_human or any(unicodedata.category(c) == "So" for c in text):
            return False
        return sum(1 for c in text if c.isalnum()) <= 1

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        return [kit.reply(turn, _in_known_language(turn, "clarify"), kind="clarify")]


class Refusal:
    """Attempts to get the bot's configuration, secrets or instructions: a polite refusal."""

    claims = frozenset({"config_extraction"})

    def applies(self, turn: Turn) -> bool:
        return claims(turn, self.claims)

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        return [kit.reply(turn, t("refusal", turn.lang), kind="scope")]


class UnknownLanguage:
    claims = frozenset()

    def applies(self, turn: Turn) -> bool:
        return turn.meaning.unknown_language and not turn.requested_human

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        note = f"{t('unknown_language', 'en')} / {t('unknown_language', 'ja')}"
        return [kit.reply(turn, f"{note}\n{t('intro', 'en')}", kind="notice", lang="en")]


class HumanRequest:
    claims = frozenset({"human_request"})

    def applies(self, turn: Turn) -> bool:
        return turn.requested_human

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        return [kit.escalate(turn, "", (), 0.0, kit.policy.decide(TurnSignals(requested_human=True)), kind="handoff")]


class Smalltalk:
    """Greetings and "what can you do": the introduction. Thanks: "you're welcome" (and the count of
    "that did not help" starts again)."""

    claims = frozenset({"smalltalk", "thanks"})

    def applies(self, turn: Turn) -> bool:
        return claims(turn, self.claims) and not (turn.meaning.intents - self.claims - {"off_topic"})

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        if turn.meaning.has("thanks"):
            turn.state.failures = 0
            return [kit.reply(turn, t("thanks", turn.lang), kind="greeting")]
        return [kit.reply(turn, t("intro", turn.lang), kind="greeting")]


class More:
    claims = frozenset({"more"})

    def applies(self, turn: Turn) -> bool:
        """"More" when there is more to show; with nothing pending, a message that also reads as
        something else ("何ができるの？" next to "もっと") is left to the skill of that."""
        if not claims(turn, self.claims) or turn.meaning.incident:
            return False
        return bool(turn.state.facts.get(MORE_KEY)) or not (turn.meaning.intents - self.claims)

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        st, lang = turn.state, turn.lang
        pending = st.facts.get(MORE_KEY) or {}
        pieces = composer.unpack(pending)
        if not pieces:
            return [kit.reply(turn, t("no_more", lang), kind="notice")]
        lang = pending.get("lang", lang)
        shown, rest = composer.take_in_order(pieces, lang, kit.budget(lang, [t("more_header", lang), t("more_hint", lang)]))
        book = composer.CitationBook()
        lines = [t("more_header", lang), composer.render(shown, lang, book)]
        kit.keep_more(st, rest, lang)
        if rest:
            lines.append(t("more_hint", lang))
        return [kit.reply(turn, "\n".join(lines), kind="answer", citations=book.citations(), lang=lang)]


class NotHelped:
    """"That did not help": the count grows with each one (a rephrased question in between keeps
    it: the same unmet need); at the policy's limit a person takes over."""

    claims = frozenset({"not_helped"})

    def applies(self, turn: Turn) -> bool:
        return claims(turn, self.claims) and bool(turn.state.last_query) and not turn.meaning.incident

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        st = turn.state
        st.failures += 1
        decision = kit.policy.decide(TurnSignals(failures=st.failures))
        if decision:
            return [kit.escalate(turn, "", (), 0.0, decision, kind="handoff")]
        return [kit.reply(turn, t("not_helped", turn.lang), kind="notice", offer_human=True)]

