from bot.conversation.escalation import (
    BILLING_DISPUTE,
    INCIDENT,
    REPEATED_FAILURE,
    USER_REQUEST,
    EscalationPolicy,
    TurnSignals as Signals,
)
from tests.fakes import shared_understander


def is_billing_dispute(text: str) -> bool:
    return shared_understander().understand(text, None).has("dispute")


def assert_told_apart(disputes: list[str], general: list[str]) -> None:
    """A learned model, not a pattern list: nearly every dispute is recognised (a missed one still
    reaches a person through the button), and a general question about who pays opens no ticket."""
    missed = [t for t in disputes if not is_billing_dispute(t)]
    wrong = [t for t in general if is_billing_dispute(t)]
    assert len(missed) <= len(disputes) // 6, missed
    assert wrong == [], wrong


def test_nothing_to_escalate_for_a_plain_question():
    assert EscalationPolicy().decide(Signals()) is None


def test_incident_is_urgent():
    d = EscalationPolicy().decide(Signals(incident=True))
    assert (d.reason, d.priority) == (INCIDENT, "urgent")


def test_explicit_request_for_a_person_is_normal():
    d = EscalationPolicy().decide(Signals(requested_human=True))
    assert (d.reason, d.priority) == (USER_REQUEST, "normal")


def test_incident_beats_a_request_for_a_person():
    d = EscalationPolicy().decide(Signals(incident=True, requested_human=True))
    assert d.priority == "urgent" and d.reason == INCIDENT


def test_billing_dispute_is_normal():
    d = EscalationPolicy().decide(Signals(billing_dispute=True))
    assert (d.reason, d.priority) == (BILLING_DISPUTE, "normal")


def test_repeated_failure_needs_two_failures_by_default():
    p = EscalationPolicy()
    assert p.decide(Signals(failures=1)) is None
    assert p.decide(Signals(failures=2)).reason == REPEATED_FAILURE


def test_failures_threshold_is_configurable():
    assert EscalationPolicy(failures_to_escalate=3).decide(Signals(failures=2)) is None


def test_a_rule_can_be_switched_off_or_reprioritised():
    p = EscalationPolicy()
    p.rules[REPEATED_FAILURE] = None
    p.rules[BILLING_DISPUTE] = "urgent"
    assert p.decide(Signals(failures=5)) is None
    assert p.decide(Signals(billing_dispute=True)).priority == "urgent"


def test_billing_disputes_are_told_apart_from_general_questions():
    disputes = [
        "4月分として253万円請求されたのですが、NTTに返金してもらいたいです",
        "止めてと電話したあとの分まで請求されています。この分は返してもらえますよね？",
        "そのときの約74万円の請求に異議を申し立てたいです",
        "I want a refund from NTT for last month's bill.",
        "can you help me get those charges waived?",
        "Please refund our March charges, the calls were not ours.",
        "I disputed my March bill with KDDI and got nowhere.",
    ]
    general = [
        "不正利用された通話料って、一般的には誰が払うことになるの？",
        "Will NTT refund fraudulent international charges?",
        "Will NTT refund the fraudulent international charges?",
        "Does KDDI ever refund the charges after a PBX hack?",
        "Who pays for fraudulent calls in Japan?",
    ]
    assert_told_apart(disputes, general)


def test_own_bill_questions_and_english_requests_are_disputes_but_policy_questions_are_not():
    disputes = [
        # "must we pay this?" about the user's own bill (the incident is over)
        "It happened last month and we already blocked it. Now we got a 2 million yen bill. Do we have to pay it?",
        "The hack was in March, fixed since then, but NTT billed us 800,000 yen for it. Are we really liable for this bill?",
        "先月乗っ取られて、もう止めてあります。でも200万円の請求が来ました。これ払わないといけないんですか？",
        "被害は対処済みです。請求書に90万円の国際通話料があるのですが、支払う必要はありますか",
        # English refund, waiver and dispute requests
        "we want a refund",
        "can you waive these charges?",
        "We are disputing this invoice, the calls weren't ours.",
        "who do I talk to about getting this money back?",
        "Our company refuses to pay for calls we didn't make",
        "Can we get a reduction on this bill?",
        "Please pass this on to whoever handles billing disputes.",
        # Japanese requests in other words
        "返金の相談をしたいです",
        "請求額を下げてもらうことはできますか？うちは被害者なので",
    ]
    general = [
        "Do companies have to pay for fraudulent calls in Japan?",
        "不正利用の通話料は払わないといけないものなんですか？一般論として",
        "does KDDI ever waive fraud charges?",
        "Is it true that carriers sometimes reduce the bill after fraud?",
        "被害にあった会社は請求を減額してもらえることがあるの？",
        "Does blocking international calls reduce the bill?",
        "If we get a big bill after a hack, do we have to pay it?",
    ]
    assert_told_apart(disputes, general)
