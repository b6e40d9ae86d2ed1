"""The skill router: what a recorded message means, then the first skill that applies answers it."""

from __future__ import annotations

from typing import Sequence

from bot.conversation.skills.base import Skill, Toolkit, Turn
from bot.conversation.understanding.facts import IncidentFacts
from bot.language import has_english_words
from bot.conversation.understanding.text import normalize
from bot.conversation.understanding.understand import Understander
from bot.messages import Address, Reply
from bot.ports import ConversationState, StoredMessage


class SkillRouter:
    def __init__(self, kit: Toolkit, understander: Understander, skills: Sequence[Skill]) -> None:
        self.kit = kit
        self.understander = understander
        self.skills = tuple(skills)

    def respond(self, address: Address, stored: StoredMessage,
                state: ConversationState) -> tuple[list[Reply], ConversationState]:
        """The replies to one recorded user message, and the conversation state after it (unsaved)."""
        state.address = address
        text, action = stored.text, stored.meta.get("action")
        meaning = self.understander.understand(text, IncidentFacts.from_dict(state.facts), action)
        detected = meaning.detected_language
        if detected == "en" and state.language == "ja" and not has_english_words(text):
            detected = None  # "/human", "KDDI?", "OCN": no signal, keep Japanese
        lang = detected or state.language or "en"
        if detected:
            state.language = detected
        state.facts.update(meaning.facts.to_dict())
        if meaning.carriers and meaning.facts.carrier:
            state.carrier = meaning.facts.carrier
        # record_message linked the message to the ticket that was active when it arrived: with
        # none, there is no ticket to look up (one query less per turn).
        ticket = self.kit.handoff.active_ticket(address.conversation_id) if stored.ticket_id is not None else None
        turn = Turn(address=address, stored=stored, text=text, norm=normalize(text), lang=lang, state=state,
                    meaning=meaning, action=action, ticket=ticket)
        for skill in self.skills:
            if skill.applies(turn):
                return skill.respond(turn, self.kit), state
        return [], state  # unreachable: the last skill applies to everything
