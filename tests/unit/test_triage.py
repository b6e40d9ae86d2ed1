import pytest

from bot.conversation.triage import IncidentFacts, detect_incident, extract_facts, missing_facts

INCIDENTS = [
    "今まさに海外に発信され続けてる！NTTのひかり電話です",
    "会社のＰＢＸから勝手に国際電話がかかってる。止め方を教えて！",
    "請求書が今日届いたら国際通話料が180万円になってました",
    "KDDIから、お宅の回線から海外への発信が異常に多いと電話がありました。",
    "発信履歴を見たら、昨夜から数十秒の海外への通話が何百件も並んでます",
    "たすけて　でんわが　かってに　かいがいに　かけてる　いまも",
    "Our PBX is calling Sierra Leone right now, hundreds of calls.",
    "We just got our phone bill and there are 2 million yen of international calls we never made!",
    "NTT East just called us about unusual overseas traffic from our line.",
    "call log is full of 20-second calls to +232 and +252 numbers since last night",
    "HELP!!! phones dialing overseas nonstop",
]
NOT_INCIDENTS = [
    "乗っ取りってどうやって気づくの？",
    "How can I tell if my PBX has been hacked?",
    "不正利用された通話料って、一般的には誰が払うことになるの？",
    "去年乗っ取られたけど、業者が対処してもう止まってます。再発防止に何をすればいいですか",
    "Our PBX was hacked last year; it's been fixed by the vendor.",
    "もし乗っ取られたら何をすればいい？",
    "What is DISA?",
    "国際電話を止める手続きを知りたいです",
]


@pytest.mark.parametrize("text", INCIDENTS)
def test_incidents_in_progress_are_recognised(text):
    assert detect_incident(text)


@pytest.mark.parametrize("text", NOT_INCIDENTS)
def test_questions_and_past_incidents_are_not_incidents(text):
    assert not detect_incident(text)


def test_facts_are_extracted_in_japanese():
    f = extract_facts("今朝気づいた。NTTのひかり電話で、今も止まらない。請求は180万円、フィリピンと+252へ。機種はパナソニック")
    assert f.carrier == "ntt-east-west"
    assert f.still_happening is True
    assert f.noticed_at == "今朝"
    assert "180万円" in f.amounts
    assert "フィリピン" in f.destinations and "+252" in f.destinations
    assert f.vendor == "Panasonic"
    assert missing_facts(f) == []


def test_facts_are_extracted_in_english_and_merge_over_turns():
    f = extract_facts("We're on KDDI, noticed it this morning, calls to Cuba")
    assert (f.carrier, f.noticed_at, f.destinations) == ("kddi", "this morning", ["cuba"])
    assert missing_facts(f) == ["still_happening", "vendor"]
    f2 = extract_facts("it has stopped now; our PBX is an Asterisk box", f)
    assert f2.still_happening is False and f2.vendor == "Asterisk" and f2.carrier == "kddi"
    assert IncidentFacts.from_dict(f2.to_dict()) == f2


def test_missing_facts_are_ordered_by_importance():
    assert missing_facts(IncidentFacts()) == ["carrier", "still_happening", "noticed_at", "vendor"]


@pytest.mark.parametrize("text", [
    "うちの電話から知らない国にずっと電話がかかってます",
    "昨日から国際電話の料金がすごいことになってる",
    "電話機が勝手に発信してる",
    "知らない番号に大量発信されてる",
    "our phone system is making calls to Somalia",
    "there are lots of calls to +370 on our bill this month",
])
def test_more_ways_of_saying_it_is_happening(text):
    assert detect_incident(text)


@pytest.mark.parametrize("text", [
    "勝手に発信されないようにするには？",
    "How do I prevent international calls?",
    "国際電話を大量にかける会社です。規制すべき？",
    "Our staff are calling overseas customers, is that risky?",
])
def test_prevention_and_own_calls_are_not_incidents(text):
    assert not detect_incident(text)


# An incident told as what the user saw (bill, call log, PBX or router screen, carrier warning),
# or said casually; not only "calls are going out now".
@pytest.mark.parametrize("text", [
    "This morning our carrier sent a warning email: about 900,000 yen of international calls since Saturday.",
    "Our router dashboard shows thousands of outgoing calls to foreign numbers overnight",
    "Checked the call history: 400 calls to +881 numbers between 1am and 5am today",
    "KDDI left a voicemail saying our traffic to foreign countries spiked last night",
    "SoftBank texted us that our international usage is abnormally high.",
    "the phone system keeps ringing out to overseas numbers by itself",
    "calls going out rn to some country we've never heard of",
    "Someone's using our phone system to call abroad, I can see it on the panel",
    "なんか海外に電話かけまくってるんだけど",
    "ルーターの管理画面を見たら、夜中に海外の番号への発信が何千件もありました",
    "朝来たら主装置の履歴が国際電話で埋まってた",
    "電話機がひとりでに海外にかけてるっぽいです",
    "止めたけど、今朝も国際通話が大量に発生してる",
])
def test_evidence_and_casual_reports_are_incidents(text):
    assert detect_incident(text)


@pytest.mark.parametrize("text", [
    # questions about evidence, about others, about one's own calls, or about incoming calls
    "how do I read my call log?",
    "How can I see on my router dashboard whether someone is calling abroad?",
    "How long does it take for a bill to show international calls?",
    "How high can the international charges on our bill get if we're hacked?",
    "PBXの管理画面でどこを見れば不正発信がわかる？",
    "ニュースで、ある会社に1000万円の国際通話料の請求が来たと見ました。どうやって防げますか",
    "I saw a news report about a company that got a 5 million yen bill for calls to Africa.",
    "Our sales team makes many international calls; will blocking them at night affect our bill?",
    "Our monthly bill is high because of calls to our office in China. Is that a risk?",
    "海外からの着信履歴に知らない番号がたくさんある",
    # over: the calls have stopped (a bill for it is a billing matter, not an incident)
    "It happened last month and we already blocked international calls. Now we got a 2 million yen bill.",
    "The fraudulent calls stopped three weeks ago after we unplugged the PBX. NTT billed us 600,000 yen.",
    "2月に乗っ取り被害にあいましたが、今は止まっています。その分の請求が120万円来ています",
])
def test_questions_others_own_calls_and_stopped_incidents_are_not_incidents(text):
    assert not detect_incident(text)


def test_stopped_then_going_again_is_an_incident():
    assert detect_incident("We blocked international calls but they're still going out to Cuba right now")
    assert detect_incident("規制したのにまだ海外に発信されてる")
