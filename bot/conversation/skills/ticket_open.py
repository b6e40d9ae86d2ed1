"""While a ticket is open the bot does not answer by itself: the message is for the operator.

Facts the user gives (the carrier, when it started) fill the gaps of the operator's summary. The
first message after the ticket opened is acknowledged, and so is any new request for a person;
later ones join silently. An incident reported while a normal ticket waits makes the same ticket
urgent, and the user gets the containment steps now rather than after an operator reads it."""

from __future__ import annotations

import logging

from bot.conversation.skills.base import ACK_KEY, Toolkit, Turn
from bot.conversation.skills.incident import Incident
from bot.conversation.texts import t
from bot.messages import Reply

log = logging.getLogger("bot.conversation")
_EMPTY = (None, "", [], {})


class TicketOpen:
    claims = frozenset()

    def __init__(self, incident: Incident) -> None:
        self.incident = incident

    def applies(self, turn: Turn) -> bool:
        return turn.ticket is not None

    def respond(self, turn: Turn, kit: Toolkit) -> list[Reply]:
        ticket, st = turn.ticket, turn.state
        assert ticket is not None
        missing = {k: v for k, v in kit.facts(turn).items() if v not in _EMPTY and ticket.summary.get(k) in _EMPTY}
        if missing:
            try:
                kit.handoff.merge_facts(ticket.id, missing)
            except Exception:  # the summary is a convenience; the message itself is already recorded
                log.exception("updating the summary of ticket %s failed", ticket.id)
        if ticket.priority != "urgent" and turn.meaning.incident:
            return self.incident.respond(turn, kit)
        if st.facts.get(ACK_KEY) == ticket.id and not turn.requested_human:
            return []
        st.facts[ACK_KEY] = ticket.id
        key = "ticket_ack_urgent" if ticket.priority == "urgent" else "ticket_ack"
        return [kit.reply(turn, t(key, turn.lang, ticket=ticket.id), kind="handoff")]
