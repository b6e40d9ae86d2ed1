"""Escalation policy: when a conversation goes to a person, why, and how urgently.

Small and configurable: each rule can be switched off or given another priority, and the number
of "that did not help" messages that counts as repeated failure is a setting. The policy only
decides; the skills open the ticket and tell the user what happens next. A question the sources
do not cover is not a reason by itself: the user is offered a person and decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Reasons (Escalation.reason short codes)
USER_REQUEST = "user_request"
INCIDENT = "incident"
BILLING_DISPUTE = "billing_dispute"
REPEATED_FAILURE = "repeated_failure"

_PRIORITY_RANK = {"urgent": 2, "normal": 1}


@dataclass(frozen=True)
class Decision:
    reason: str
    priority: str  # "urgent" | "normal"


@dataclass(frozen=True)
class TurnSignals:
    """What the skill learned about one turn, as the policy needs it."""

    requested_human: bool = False
    incident: bool = False
    billing_dispute: bool = False
    failures: int = 0  # "that did not help" since the last thanks or ticket, this message included


@dataclass
class EscalationPolicy:
    rules: dict[str, str | None] = field(
        default_factory=lambda: {
            INCIDENT: "urgent",
            USER_REQUEST: "normal",
            BILLING_DISPUTE: "normal",
            REPEATED_FAILURE: "normal",
        }
    )  # reason -> priority; None switches the rule off
    failures_to_escalate: int = 2

    def decide(self, s: TurnSignals) -> Decision | None:
        """The highest-priority rule that fires (urgent beats normal; earlier rule on a tie)."""
        checks = (
            (INCIDENT, s.incident),
            (USER_REQUEST, s.requested_human),
            (BILLING_DISPUTE, s.billing_dispute),
            (REPEATED_FAILURE, s.failures >= self.failures_to_escalate),
        )
        fired = [Decision(reason, self.rules[reason]) for reason, hit in checks if hit and self.rules.get(reason)]
        return max(fired, key=lambda d: _PRIORITY_RANK.get(d.priority, 0), default=None)
