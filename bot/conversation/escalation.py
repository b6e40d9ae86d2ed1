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
    failures: int = 0  # "that did not help" since the last thanks or ticket, this message included
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
            r"(請求|料金|通話料)[^。！？]{0,20}(納得|おかしい|不当|払わない(?!と|で|ければ|もの)|払いたくない|払えない|異議|不服|認めない|間違い|誤り)",
            r"(返して|返金して|払い戻して)(もらえ|もらい|ほしい|欲しい|ください)",
            r"(返金|払い戻し|減額|免除|補償)(の|について|に関して|に関する)?(ご?相談|お願い|手続き|申請|交渉)(を)?(したい|したく|させて|お願い|できますか|できませんか|させてください)",
            r"(請求|料金|通話料|金額)[^。！？]{0,10}(下げて|安くして|減らして|まけて|なしにして|ゼロにして|取り消して|取り下げて|無かったことにして|なかったことにして)(もらえ|もらう|もらい|ほしい|欲しい|ください|いただけ|いただき)",
            r"\b(charges?|bill|fees?|amount)\b[^.!?]{0,10}\b(waived|refunded|reduced|cancelled|canceled|written off)\b",
            r"(払いたくない|支払いたくない|払う気はない|払うつもりはない|支払を拒|支払いを拒|支払いを保留|払わなくていいように)",
            r"(この|今回の|うちの|弊社の|当社の|届いた|先月の|今月の)[^。！？]{0,15}(請求|料金)[^。！？]{0,25}(返金|減額|免除|払わなければ|支払わなければ|払う必要|支払う必要|取り消|取消)",
            r"\b(refund|reimburse|compensat)(e|ed|ion|ement)?\b[^.!?]{0,40}\b(our|my|this|these|we|i)\b",  # not "the": "will NTT refund the charges?" asks about policy
            r"\b(i|we)\b[^.!?]{0,20}\b(want|need|demand|claim|request|expect|deserve|get|ask for|apply for|seek|like)\b[^.!?]{0,20}\b(refund|money back|reimburse|credit|waiver|compensation|reduction|discount|adjustment|write-off)",
            r"\b(disput(e|ed|es|ing)|contest(ed|ing)?|challeng(e|ed|ing)|appeal(ed|ing)?|object(ed|ing)? to)\b[^.!?]{0,20}\b(the|this|that|our|my|a|these|those)\b[^.!?]{0,20}\b(bill|charges?|invoice|amount)",
            r"\b(refus(e|es|ed|ing)|won'?t|will not|do ?n'?t want|not going) to pay\b",
            r"\b(won'?t|will not|can'?t|cannot|refuse to|not going to) pay (this|that|it|our|these|those)\b",
            r"\b(disput(e|ing)|contest(ing)?|challeng(e|ing)|appeal(ing)?)\s+(it|this|that|them)\b",
            # "waive these charges", "please cancel the bill" (not "does blocking calls reduce the bill?")
            r"\b(waive|cancel|reduce|remove|drop|write off|take off)\b[^.!?]{0,15}\b(this|that|our|my|these|those)\b[^.!?]{0,15}\b(bill|charges?|invoice|amount)",
            r"\b(please|can you|could you|would you|will you|i want you to|we want you to)\b[^.!?]{0,15}\b(waive|cancel|reduce|remove|drop|write off|refund)\b[^.!?]{0,15}\b(the|this|that|our|my|these|those|it|them)\b",
            r"\bshould(n'?t| not) (have to |need to )?(be )?pay(ing)?\b", r"\bnot paying\b",
            # money back for this bill: "who do I talk to about getting our money back?"
            r"\b(get|getting|want|wants|recover|recovering|claim|claiming)\s+(our|my|the|this|that|some of (our|my|the|this|that))?\s*money back\b",
            r"\bwho (do|should|can|could) (i|we) (talk|speak|go|turn|write)( to)?\b[^.!?]{0,25}\b(refunds?|money back|waiv\w+|disputes?|this (bill|invoice|charge))",
            r"\b(handles?|handling|in charge of|responsible for|deals? with|dealing with)\s+(billing |bill |charge )?disputes\b",
        )
    )
)


# "Do we have to pay this?" asked about a bill the user has in hand is a dispute about that bill
# (typically for an incident that is over: "it was fixed last month, now a 2M yen bill came"), while
# the same words about fraud bills in general ("do companies have to pay for hackers' calls?") are a
# question. So: the user's own bill, and whether/how they must pay it or can get it reduced.
_OWN_BILL = re.compile(
    "|".join(
        (
            r"(請求|請求書|明細)(が|は|も)?[^。！？]{0,15}(来|届|きた|きて|あり|あっ)|請求され(た|て|まし)|請求書に|"
            r"(この|その|今回の|うちの|弊社の|当社の|届いた|来た)(分|請求|料金|通話料|金額)|(その|この)分の|"
            r"\d[\d,，]*\s*万?円(の|が|も)?(請求|通話料|料金|国際通話料)|(請求|料金|通話料)[^。！？]{0,12}\d[\d,，]*\s*万?円",
            r"\b(we|i)\b[^.!?]{0,25}\b(got|received|were billed|have been billed|'ve been billed|was billed|are (being )?billed|were charged|have been charged|'ve been charged|were sent)\b",
            r"\b(billed|charged|invoiced) (us|me)\b",
            r"\b(our|my|this|that) (bill|invoice|statement|phone bill)\b|\bthe (bill|invoice) (came|arrived|for (those|these|the) calls)\b|\b(these|those) (charges|calls)\b",
            r"\d[\d,.]*\s*(k|m|million|thousand)?\s*(yen|jpy)\b|[¥￥]\s*\d",
        )
    )
)
_MUST_PAY = re.compile(
    "|".join(
        (
            r"(払わ|支払わ)(ないと|なければ|なきゃ|なくちゃ)(いけ|なら|だめ|ダメ)|(払う|支払う|負担する)(必要|義務|しかない|べき)|支払(い)?義務|"
            r"全額(払|支払|負担)|(払|支払)(わなくて|わずに)(いい|済|すむ)|(どうにか|なんとか|何とか)(なら|でき)|"
            r"(請求|料金|通話料|これ)[^。！？]{0,10}(どうすれば|どうしたら|どうにもならない)",
            r"\b(do|must|should|would|will) (we|i) (really |still |actually |even )?(have|need|got) to pay\b|\b(must|should) (we|i) (really |still |actually |even )?pay\b",
            r"\b(have|need|got) to pay (this|it|that|them|for (this|it|that|them|these|those)|the (bill|full|whole|invoice|charges|amount))\b",
            r"\bare (we|i) (really |actually |still |even )?(liable|responsible|on the hook)\b",
            r"\b(we|i)\b[^.!?]{0,25}\b(be|are|is|being)\s+(held\s+)?(liable|responsible)\b",
            r"\b(liable|responsible) for (this|that|these|those|it|them|the (bill|charges?|amount|invoice)|paying)\b",
            r"\bwhat (can|should|do|could) (we|i) do about (this|the|that|our|my|these|those|it)\b",
            r"\b(we|i)\b[^.!?]{0,10}\b(get|have)\s+(it|this|that|them|the (bill|invoice|charges?|amount)|these( charges)?|those( charges)?)\b[^.!?]{0,15}\b(reduced|waived|removed|cancelled|canceled|dropped|refunded|written off|taken off|lowered)\b",
            r"\bway (out of|to avoid|not to) pay",
        )
    )
)
_CONDITIONAL = re.compile(r"\bif (we|i|a|an|the|you|someone|our|my)\b|\bwhat if\b|\bsuppose\b|(?<!か)もし|仮に|万一|万が一|一般(的)?に|\bin general\b|\bgenerally\b")
# What carriers do in general ("is it true carriers sometimes reduce the bill?", "減額してもらえることがあるの？"),
# asked without a bill of the user's own, is a question about policy, not a claim.
_GENERAL = re.compile(
    r"\b(ever|sometimes|usually|generally|typically|normally|often|in general|is it true|in japan)\b|"
    r"こと(が|は|も)(ある|あり)|ケース(が|は|も)|場合(が|は|も)(ある|あり)|ものなの|もの(です|でしょう|なん(です|でしょう))?か|一般(的)?に|普通は|通常は"
)
_OWN = re.compile(r"\b(our|my)\b|うちの|弊社|当社|自社|私の")


def is_billing_dispute(text: str) -> bool:
    norm = normalize(text)
    if _GENERAL.search(norm) and not (_OWN_BILL.search(norm) or _OWN.search(norm)):
        return False
    if _DISPUTE.search(norm):
        return True
    return bool(_OWN_BILL.search(norm) and _MUST_PAY.search(norm)) and not _CONDITIONAL.search(norm)
