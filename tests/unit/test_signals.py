"""Small intents by pattern: a request for a person, and "that did not help", in many registers."""

import pytest

from bot.conversation.signals import normalize, says_not_helped, wants_human


@pytest.mark.parametrize("text", [
    # Japanese, polite (keigo) to casual
    "担当の方と直接お話ししたいのですが",
    "恐れ入りますが、担当の方とお話しさせていただけますでしょうか",
    "お電話で相談させていただけますか",
    "お電話でお話しできませんか",
    "詳しい方におつなぎいただけますか",
    "どなたか分かる方に代わっていただけませんか",
    "担当者様から折り返しお電話いただけますか",
    "すみません、担当者さんと話せますか",
    "オペレーターさんに代わってもらえますか",
    "人と話したいです",
    "誰か人に代わってもらえる？",
    "ボットじゃなくて人がいい",
    # English
    "can I speak to someone?",
    "is there a human I can talk to?",
    "Is there someone I can talk to about this?",
    "pass this to someone who handles disputes",
    "Could you hand this over to someone on your team?",
    "can somebody from support give me a call back?",
    "Please have someone contact us as soon as possible.",
    "Could I please speak with a member of your staff?",
    "Please put me through to a specialist",
    "any humans here?",
])
def test_requests_for_a_person(text):
    assert wants_human(normalize(text))


@pytest.mark.parametrize("text", [
    # a person at a carrier, the police, a vendor: a question, not a request to us
    "Who should I talk to at NTT to stop international calls?",
    "NTTの担当者に電話で相談したいのですが、どこにかければいいですか",
    "警察に相談したほうがいいですか",
    "保守業者の人に見てもらったほうがいい？",
    "Can I talk to my carrier about blocking calls?",
    "Should I talk to the police about toll fraud?",
    "電話で相談できる窓口はありますか？",
    "Can someone call abroad from my PBX without a password?",
    "What's the best way to talk to staff about PBX security?",
    "Who is the contact person?",
])
def test_third_parties_and_questions_are_not_requests_for_a_person(text):
    assert not wants_human(normalize(text))


@pytest.mark.parametrize("text", [
    "役に立ってない", "それじゃ意味ない", "聞きたいのはそういうことじゃない", "答えになってないです", "全然ダメ。わかってない",
    "うーん、違うんだよね", "参考になりませんでした", "いまいちピンとこない",
    "not helpful", "this doesn't answer my question", "that's not what I need", "you're not getting it",
    "nope, still not what I asked", "huh? that makes no sense", "still useless",
])
def test_dissatisfaction_in_other_words(text):
    assert says_not_helped(normalize(text))


@pytest.mark.parametrize("text", [
    "Is it not right to block them at night only?",
    "Does the suspension not cover 050 numbers?",
    "Why are calls still not blocked a day after applying?",
    "パスワードだけでは不十分？",
    "数字だけじゃダメ？",
    "NTTとKDDIでは手順が違う？",
])
def test_ordinary_follow_up_questions_are_not_dissatisfaction(text):
    assert not says_not_helped(normalize(text))
