"""Escalation policy: when a conversation goes to a person, why, and how urgently.

Small and configurable: each rule can be switched off or given another priority, and the number
of "that did not help" messages that counts as repeated failure is a setting. The policy only
decides; the service opens the ticket and tells the user what happens next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.conversation.signals import normalize

# Reasons (Escalation.reason short codes)
USER_REQUEST = "user_request"
INCIDENT = "incident"
BILLING_DISPUTE = "billing_dispute"
REPEATED_FAILURE = "repeated_failure"
LOW_CONFIDENCE = "low_confidence"

_PRIORITY_RANK = {"urgent": 2, "normal": 1}


@dataclass(frozen=True)
class Decision:
    reason: str
    priority: str  # "urgent" | "normal"


@dataclass(frozen=True)
class Signals:
    """What the service learned about one turn, as the policy needs it."""

    requested_human: bool = False
    incident: bool = False
    billing_dispute: bool = False
    failures: int = 0  # consecutive "that did not help", this message included
    in_scope: bool = True
    confidence: float = 1.0
    answered: bool = True  # False when nothing was retrieved at all


@dataclass
class EscalationPolicy:
    rules: dict[str, str | None] = field(
        default_factory=lambda: {
            INCIDENT: "urgent",
            USER_REQUEST: "normal",
            BILLING_DISPUTE: "normal",
            REPEATED_FAILURE: "normal",
            LOW_CONFIDENCE: "normal",
        }
    )  # reason -> priority; None switches the rule off
    failures_to_escalate: int = 2
    min_confidence: float = 0.35

    def decide(self, s: Signals) -> Decision | None:
        """The highest-priority rule that fires (urgent beats normal; earlier rule on a tie)."""
        fired: list[Decision] = []
        checks = (
            (INCIDENT, s.incident),
            (USER_REQUEST, s.requested_human),
            (BILLING_DISPUTE, s.billing_dispute),
            (REPEATED_FAILURE, s.failures >= self.failures_to_escalate),
            (LOW_CONFIDENCE, s.in_scope and (not s.answered or s.confidence < self.min_confidence)),
        )
        for reason, hit in checks:
            priority = self.rules.get(reason)
            if hit and priority:
                fired.append(Decision(reason, priority))
        if not fired:
            return None
        return max(fired, key=lambda d: _PRIORITY_RANK.get(d.priority, 0))


# A dispute about one specific bill, or a refund claim: the user wants money back or refuses to pay,
# not a general question about who pays.
_DISPUTE = re.compile(
    "|".join(
        (
            r"(返金|払い戻し|払戻|返還|減額|免除|減免|補償|賠償)(して|を?(求め|請求|要求|希望|申請|申し込|してほしい|してもらい|してもら)|してください|してもらえ|され(る|ない)のはおかしい)",
            r"(請求|料金|通話料)[^。！？]{0,20}(納得|おかしい|不当|払わない|払いたくない|払えない|異議|不服|認めない|間違い|誤り)",
            r"(返して|返金して|払い戻して)(もらえ|もらい|ほしい|欲しい|ください)",
            r"\b(charges?|bill|fees?|amount)\b[^.!?]{0,10}\b(waived|refunded|reduced|cancelled|canceled|written off)\b",
            r"(払いたくない|支払いたくない|払う気はない|払うつもりはない|支払を拒|支払いを拒|支払いを保留|払わなくていいように)",
            r"(この|今回の|うちの|弊社の|当社の|届いた|先月の|今月の)[^。！？]{0,15}(請求|料金)[^。！？]{0,25}(返金|減額|免除|払わなければ|支払わなければ|払う必要|支払う必要|取り消|取消)",
            r"\b(refund|reimburse|compensat)(e|ed|ion|ement)?\b[^.!?]{0,40}\b(our|my|this|these|we|i)\b",  # not "the": "will NTT refund the charges?" asks about policy
            r"\b(i|we)\b[^.!?]{0,20}\b(want|need|demand|claim|request|expect|deserve)\b[^.!?]{0,20}\b(refund|money back|reimburse|credit|waiver|compensation)",
            r"\b(disputed?|contest(ed)?|challenge|appeal|object to)\b[^.!?]{0,20}\b(the|this|our|my|a)\b[^.!?]{0,20}\b(bill|charges?|invoice|amount)",
            r"\b(refuse|won'?t|will not|do ?n'?t want|not going) to pay\b", r"\b(waive|cancel|reduce|remove)\b[^.!?]{0,15}\b(the|this|our|my)\b[^.!?]{0,15}\b(bill|charges?|invoice)",
            r"\bshould(n'?t| not) have to pay\b", r"\bnot paying\b",
        )
    )
)


def is_billing_dispute(text: str) -> bool:
    return bool(_DISPUTE.search(normalize(text)))
