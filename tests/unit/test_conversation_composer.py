"""Composer invariants: citations match markers, chat-sized, every sentence from a cited passage."""

import re

import pytest

from bot.conversation import composer as C
from bot.conversation.texts import is_template_line
from tests.fakes import PASSAGES, FakeRetriever, make_service
from bot.messages import Address, InboundMessage
from bot.text import split_sentences


def test_sentences_keep_brackets_whole_and_drop_markup():
    text = "## 見出し\n- **NTT Com**(2016年6月。OCNも同内容)は3つを挙げます。次に[記録](https://x.example/a)を残す！\n| a | b |"
    assert split_sentences(text) == ["NTT Com(2016年6月。OCNも同内容)は3つを挙げます。", "次に記録を残す！"]


def test_english_sentences_do_not_split_after_abbreviations():
    text = "Ask the carrier, e.g. NTT East, to bar calls. As of July 2015, relief existed. Then call the maintainer."
    assert split_sentences(text) == [
        "Ask the carrier, e.g. NTT East, to bar calls.",
        "As of July 2015, relief existed.",
        "Then call the maintainer.",
    ]


def _compose(query, lang, budget):
    res = FakeRetriever().search(query, 5, language=lang)
    shown, rest = C.select(C.pieces_of(res.passages, query, max_passages=5), lang, budget)
    book = C.CitationBook()
    return C.render(shown, lang, book), book.citations(), shown, rest, res


@pytest.mark.parametrize("query,lang", [("国際電話を止めるには", "ja"), ("how do I stop international calls with KDDI", "en"),
                                        ("who pays for fraudulent calls", "en"), ("DISAとは", "ja")])
def test_every_marker_has_a_citation_and_every_citation_a_marker(query, lang):
    text, citations, shown, _, res = _compose(query, lang, 400 if lang == "ja" else 120)
    assert citations, "an answer from passages cites them"
    assert C.markers(text) == {c.n for c in citations}
    assert [c.n for c in citations] == list(range(1, len(citations) + 1))
    retrieved = {p.doc_id for p in res.passages}
    assert {c.doc_id for c in citations} <= retrieved


def test_answers_stay_within_the_budget_and_keep_the_rest_for_more():
    text, _, shown, rest, _ = _compose("国際電話 止める 発信規制 申し込み パスワード", "ja", 120)
    assert C.measure(re.sub(r"\[\d+\]", "", text).replace("\n", ""), "ja") <= 120
    assert rest, "what did not fit is kept for 'more'"
    assert not {(p.rank, p.index) for p in shown} & {(p.rank, p.index) for p in rest}


def test_at_least_one_sentence_even_when_it_is_longer_than_the_budget():
    _, _, shown, _, _ = _compose("国際電話を止めるには", "ja", 5)
    assert len(shown) == 1


def test_dates_in_sentences_survive_as_of():
    text, *_ = _compose("refund special measure NTT", "en", 120)
    assert "As of July 2015" in text


# ---- grounding over whole replies of the service -------------------------------------------

QUESTIONS = [
    "NTTのひかり電話で国際電話を止めるにはどうすればいい？",
    "KDDIの場合は？",
    "詳しく",
    "What is DISA?",
    "more",
    "Who pays for fraudulent calls in Japan?",
    "今まさに海外に発信され続けてる！KDDIです",
]


def test_every_answer_line_is_a_passage_sentence_or_template_text():
    service, _, _ = make_service()
    passage_sentences = {s for p in PASSAGES for s in split_sentences(p.text)}
    addr = Address("test", "test:grounding")
    for q in QUESTIONS:
        for reply in service.handle(InboundMessage(address=addr, text=q)):
            cited = {c.doc_id for c in reply.citations}
            for line in reply.answer.splitlines():
                body = re.sub(r"\s?\[\d+\]$", "", line).strip()
                if is_template_line(body):
                    continue
                sentences = split_sentences(body)
                assert sentences, line
                for s in sentences:
                    assert s in passage_sentences, f"unsupported sentence: {s!r}"
                    owners = {p.doc_id for p in PASSAGES if s in split_sentences(p.text)}
                    assert owners & cited, f"sentence not from a cited document: {s!r}"
            assert C.markers(reply.answer) == {c.n for c in reply.citations}


def test_replies_are_chat_sized():
    service, _, _ = make_service()
    addr = Address("test", "test:size")
    for q in QUESTIONS:
        for reply in service.handle(InboundMessage(address=addr, text=q)):
            text = re.sub(r"\[\d+\]", "", reply.answer)
            if reply.language == "ja":
                assert len(text) <= 400 + 40, reply.answer
            else:
                assert len(text.split()) <= 120 + 15, reply.answer


def test_a_guide_is_cited_as_our_summary_with_its_main_source_not_as_the_carriers_page():
    base = dict(title="T", publisher="KDDI", url="https://news.kddi.com/kddi/business-topic/2014/04/278.html",
                published="2014-04-15", language="en")
    guide = C.Source(doc_id="guide-x-en", kind="guide", **base)
    source = C.Source(doc_id="src-x-en", kind="source", **base)
    book = C.CitationBook()
    book.number(guide), book.number(source)
    cited_guide, cited_source = book.citations()
    assert cited_guide.publisher == "pbxbot guide (main source: KDDI)"
    assert cited_source.publisher == "KDDI"
    assert cited_guide.url == cited_source.url, "the link still goes to the real advisory"


def _seen_piece(text, score, *, typed=False, index=0):
    src = C.Source("guide-x-en", "t", "p", "https://example.org", None, "en")
    return C.Piece(text, src, 0, index, score, 0.0, -1, 0.5, typed, 0.0)


def test_a_follow_up_is_not_shown_the_last_answer_again_unless_it_gives_what_is_now_asked():
    shown = _seen_piece("The mobile operator takes free requests for a block on its member page.", 1.0, typed=True)
    other = _seen_piece("Attacks cluster at night and on holidays when offices are empty.", 0.9, index=1)
    seen = frozenset({C.fingerprint(shown.text)})
    chosen, _ = C.select([shown, other], "en", 20, seen)
    assert chosen[0] is shown  # "is it free?": the sentence that says so leads, shown before or not
    plain = _seen_piece(shown.text, 1.0, typed=False)
    chosen, _ = C.select([plain, other], "en", 20, seen)
    assert chosen[0] is other  # nothing asked for in particular: something not said yet comes first
