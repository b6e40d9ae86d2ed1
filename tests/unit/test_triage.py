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
