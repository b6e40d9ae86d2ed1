"""The conversation core on the real retriever and knowledge base (index built when missing, in
PBXBOT_DATA_DIR as CI sets it): the development conversation set meets its targets, and every
sentence of every answer is a sentence of a passage retrieved in that very turn."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.conversation import composer as C
from bot.conversation.service import ConversationService
from bot.conversation.texts import is_template_line
from bot.handoff.service import HandoffService
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address, InboundMessage
from bot.text import split_sentences
from tests.fakes import shared_understander

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class RecordingRetriever:
    """Wraps the real retriever and remembers what each search returned."""

    def __init__(self, inner):
        self.inner = inner
        self.returned = []

    def search(self, query, k=5, *, language=None, carrier=None, sentences_for=None):
        result = self.inner.search(query, k, language=language, carrier=carrier, sentences_for=sentences_for)
        self.returned.extend(result.passages)
        return result

    def get_document(self, doc_id):
        return self.inner.get_document(doc_id)


@pytest.fixture(scope="module")
def real_retriever():
    from bot.wiring import build_retriever

    return build_retriever(load_settings())


def new_service(retriever) -> ConversationService:
    """The conversation core on `retriever` with an in-memory store and the shared intent model."""
    store = SqlHandoffStore("sqlite://")
    return ConversationService(retriever=retriever, store=store, handoff=HandoffService(store), settings=load_settings(),
                               understander=shared_understander())


def cases():
    path = ROOT / "knowledge" / "eval" / "conversations.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_development_conversation_set_meets_its_targets(real_retriever):
    sys.path.insert(0, str(ROOT))
    from scripts.eval_conversations import run

    service = new_service(real_retriever)
    report = run(cases(), service)
    failures = {r["id"]: r["failures"] for r in report["results"] if r["failures"]}
    assert report["pass_rate"] >= 0.95, failures
    assert report["precision"] >= 0.95 and report["recall"] >= 0.95, failures


def unsupported_text(line: str, allowed: set[str]) -> str:
    """What is left of an answer line once every allowed sentence in it is taken out (list items
    of one passage are shown joined on one line, so a line can hold several sentences)."""
    rest = line
    for s in sorted(allowed, key=len, reverse=True):
        if s in rest:
            rest = rest.replace(s, " ")
    return rest.strip()


def test_every_answer_sentence_comes_from_a_passage_retrieved_this_turn(real_retriever):
    store = SqlHandoffStore("sqlite://")
    rec = RecordingRetriever(real_retriever)
    service = ConversationService(retriever=rec, store=store, handoff=HandoffService(store), settings=load_settings(),
                                  understander=shared_understander())
    checked = 0
    for case in cases():
        address = Address("eval", f"grounding:{case['id']}")
        pending_more: set[str] = set()
        for turn in case["turns"]:
            rec.returned = []
            for reply in service.handle(InboundMessage(address=address, text=turn["user"])):
                if reply.kind == "answer" and reply.answer.startswith(("続き", "Continued")):
                    allowed = pending_more  # "more" shows sentences retrieved in an earlier turn
                else:
                    memo = [p for res in service.kit.fixed_results.values() for p in res.passages]
                    allowed = {s for p in rec.returned + memo for s in split_sentences(p.text)}
                    pending_more = allowed
                # fixed queries (containment steps, stop lines) are searched once per process and
                # their result reused: identical query, identical index, identical passages
                memo = [p for res in service.kit.fixed_results.values() for p in res.passages]
                retrieved_docs = {p.doc_id for p in rec.returned + memo}
                if not reply.answer.startswith(("続き", "Continued")):
                    assert {c.doc_id for c in reply.citations} <= retrieved_docs
                assert C.markers(reply.answer) == {c.n for c in reply.citations}
                for line in reply.answer.splitlines():
                    body = re.sub(r"\s?\[\d+\]$", "", line).strip()
                    if is_template_line(body):
                        continue
                    leftover = unsupported_text(body, allowed)
                    assert not leftover, f"{case['id']}: unsupported text {leftover!r} in {line!r}"
                    checked += 1
    assert checked > 50


def test_pbxbot_ask_jsonl_end_to_end(real_retriever):
    """The console script path: wiring, SQLite store in the data dir, real index; order and bad lines."""
    import os
    import subprocess
    import uuid

    conv = f"it-{uuid.uuid4().hex[:8]}"
    lines = [
        json.dumps({"id": "1", "text": "NTTのひかり電話で国際電話を止めるにはどうすればいい？", "conversation_id": conv}),
        "{broken",
        json.dumps({"id": "3", "text": "KDDIの場合は？", "conversation_id": conv}),
    ]
    env = dict(os.environ, PBXBOT_LOG_LEVEL="WARNING")
    proc = subprocess.run([sys.executable, "-m", "bot", "ask", "--jsonl"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r.get("id") for r in rows] == ["1", None, "3"] and "error" in rows[1]
    assert rows[0]["citations"] and rows[2]["conversation_id"] == conv and "KDDI" in rows[2]["answer"]


@pytest.mark.parametrize("text", ["国際電話の発信を止めるにはどうすればいいですか", "ふせいりようされたら どうすれば",
                                  "How do I block international calls on a Hikari Denwa line?"])
def test_a_waiting_question_announces_exactly_the_query_its_turn_embeds(real_retriever, text):
    """What the web layer prefetches for a waiting message is the text its turn then embeds: the
    turn takes the vector from the shared pass instead of running a pass of its own."""
    batcher = real_retriever.embedder._queries
    service = new_service(real_retriever)
    message = InboundMessage(address=Address("web", f"web:prefetch:{hash(text)}"), text=text)
    hits, passes = batcher.prefetch_hits, batcher.passes
    service.prefetch(message)
    replies = service.handle(message)
    assert replies and replies[0].kind == "answer" and replies[0].citations
    assert batcher.prefetch_hits == hits + 1
    assert batcher.passes == passes + 1  # the announced query's pass; the turn ran none of its own


def test_a_4000_character_message_embeds_and_analyses_no_more_than_the_bound(real_retriever):
    retriever = real_retriever
    inner = retriever.inner
    seen: list[tuple[str, int]] = []
    embed, analyze = inner.embedder.embed_query_np, inner.analyzer.analyze

    def recording_embed(text, *a, **kw):
        seen.append(("embed", len(text)))
        return embed(text, *a, **kw)

    def recording_analyze(text, *a, **kw):
        seen.append(("analyze", len(text)))
        return analyze(text, *a, **kw)

    inner.embedder.embed_query_np, inner.analyzer.analyze = recording_embed, recording_analyze
    try:
        store = SqlHandoffStore("sqlite://")
        service = ConversationService(retriever=retriever, store=store, handoff=HandoffService(store), settings=load_settings())
        text = ("ひかり電話で国際電話を止めるには？\n" + "社内の電話設備について補足します。" * 300)[:4000]
        service.handle(InboundMessage(address=Address("web", "web:long", user_id="u"), text=text))
    finally:
        inner.embedder.embed_query_np, inner.analyzer.analyze = embed, analyze
    bound = load_settings().max_search_chars
    assert seen and all(n <= bound for _, n in seen), seen


@pytest.mark.parametrize("text,lang,carrier", [
    ("国際電話を止めるには？", "ja", None),
    ("うちの会社の電話、国際発信をできないようにしたい", "ja", None),
    ("KDDIで国際電話を止めるには？", "ja", "kddi"),
    ("How do we bar international calls on our SoftBank line?", "en", "softbank"),
])
def test_the_answer_to_how_to_stop_calls_is_for_the_carrier_the_user_names_or_for_every_carrier(real_retriever, text, lang, carrier):
    """A user who names no carrier is not told SoftBank's or OCN's procedure first; one who names
    a carrier gets that carrier's."""
    result = real_retriever.search(text, 5, language=lang)
    top = result.passages[0]
    if carrier is None:
        assert "all" in top.carriers, (top.doc_id, top.carriers)
    else:
        assert carrier in top.carriers, (top.doc_id, top.carriers)


def test_a_follow_up_keeps_the_carrier_named_earlier_in_the_conversation(real_retriever):
    """"Our lines are SoftBank..." then "how long does the block take?": the second answer is about
    SoftBank (or every carrier), never another carrier's procedure."""
    from bot.retrieval.documents import load_documents

    carriers_of = {d.id: set(d.carriers) for d in load_documents(load_settings().knowledge_dir)}
    service = new_service(real_retriever)
    address = Address("eval", "carrier-context")
    service.handle(InboundMessage(address=address, text="Our office phone lines are with SoftBank."))
    replies = service.handle(InboundMessage(address=address, text="How long does the block take to start?"))
    cited = [c.doc_id for r in replies for c in r.citations]
    assert cited, [r.answer for r in replies]
    for doc_id in cited:
        assert carriers_of[doc_id] & {"softbank", "all"}, (doc_id, carriers_of[doc_id])


@pytest.mark.parametrize("text", [
    "Can I set a cap on overseas calls on my Docomo smartphone plan?",
    "Microsoft Teams の通話プランで国際発信を制限する方法は？",
])
def test_a_question_about_a_product_the_sources_never_mention_is_not_covered(real_retriever, text):
    """The sources cover mobile caps and PBX dial rules, but not Docomo's plans or Teams: the reply
    says so, shows the closest facts, and opens no ticket (it used to answer about something else)."""
    service = new_service(real_retriever)
    replies = service.handle(InboundMessage(address=Address("eval", "uncovered-name"), text=text))
    assert [r.kind for r in replies] == ["not_covered"], [r.answer for r in replies]
    assert all(r.escalation is None or r.escalation.ticket_id is None for r in replies)


def test_markup_around_a_question_does_not_stop_it_being_answered(real_retriever):
    """Hostile or pasted markup is no part of the question: the answer is the one the question gets alone."""
    plain = real_retriever.search("who pays for hacked international calls?", 5, language="en")
    marked = real_retriever.search("<img src=x onerror=alert(1)> who pays for hacked international calls?", 5, language="en")
    assert [p.section for p in marked.passages] == [p.section for p in plain.passages]
    assert marked.unknown_terms == plain.unknown_terms


@pytest.mark.parametrize("first, switch, carrier", [
    ("Is there a fee to block international calls with NTT?", "And with KDDI?", "kddi"),
    ("NTTで国際電話を止めるのにお金はかかりますか？", "KDDIの場合は？", "kddi"),
    ("How long does NTT take to apply an international block?", "What about SoftBank?", "softbank"),
])
def test_after_a_carrier_switch_no_sentence_is_about_another_carrier_alone(real_retriever, first, switch, carrier):
    """Under "For KDDI:" the user reads about KDDI or about every carrier, never a sentence that
    names only NTT West, although a guide for every carrier holds such sentences."""
    understander = shared_understander()
    store = SqlHandoffStore("sqlite://")
    service = ConversationService(retriever=real_retriever, store=store, handoff=HandoffService(store),
                                  settings=load_settings(), understander=understander)
    address = Address("eval", f"switch-{carrier}-{len(first)}")
    service.handle(InboundMessage(address=address, text=first))
    replies = service.handle(InboundMessage(address=address, text=switch))
    lines = [x for r in replies for x in r.answer.splitlines() if re.search(r"\[\d+\]", x)]
    assert lines, [r.answer for r in replies]
    for line in lines:
        for sentence in re.split(r"(?<=[.。])\s*", re.sub(r"\[\d+\]", "", line)):
            named = understander.extractor.carriers(sentence)
            assert not named or carrier in named, (sentence, named)


def test_the_development_retrieval_questions_find_their_documents(real_retriever):
    """Document hit@3 over the 264 development retrieval questions, in the served (exact) dense mode.
    With section questions and text ranked in one dense list the questions took every place and
    the text was never searched by meaning: 0.898 then, 0.917 once each kind is ranked apart."""
    from bot.retrieval.evaluation import evaluate, load_eval_rows

    inner = getattr(real_retriever, "inner", real_retriever)
    rows = load_eval_rows([ROOT / "knowledge" / "eval" / "retrieval.jsonl"])
    res = evaluate(lambda q, lang: [p.doc_id for p in inner.search(q, k=12, language=lang).passages], rows)
    assert res.overall["hit@3"] >= 0.90, res.overall


@pytest.mark.parametrize("text,rule", [
    ("The block has been on since Tuesday and nothing odd since. We contest the ¥900k of calls on last month's "
     "invoice and want it cancelled.", "subscriber generally pays"),
    ("先週から国際発信は止めてあります。先月の請求の70万円は納得できないので取り消してほしいです。", "原則として契約者"),
])
def test_a_dispute_hears_who_pays_first_whatever_story_comes_with_it(real_retriever, text, rule):
    """A contested bill gets a normal ticket and, first, the general rule and the one relief found,
    not how to block (the story says it is blocked) nor a list of court cases."""
    service = new_service(real_retriever)
    replies = service.handle(InboundMessage(address=Address("eval", "dispute-" + rule[:4]), text=text))
    reply = replies[0]
    assert reply.escalation is not None and reply.escalation.priority == "normal", reply.answer
    body = [line for line in reply.answer.splitlines() if not is_template_line(line)]
    assert body and rule in body[0], reply.answer
    assert "case-law" not in reply.answer and "判例" not in reply.answer


@pytest.mark.parametrize("text,rule,relief", [
    ("今まさに海外に電話かけられ続けてます！ひかり電話です。止めたあと、この分の料金って払わなきゃいけないんですか？",
     "原則として契約者", "特別措置"),
    ("Our PBX is dialling Sierra Leone nonstop right now. Once it's stopped, do we have to pay for these calls?",
     "subscriber generally pays", "special measure"),
    # (third development set, cases db3-en-055 and db3-ja-026: the relief did not fit; a polite question
    # ending in か without a question mark was not read as asking)
    ("We just got a ¥2M bill for calls to Somalia that nobody here made. Will the carrier refund any of it?",
     "subscriber generally pays", "no refund can be promised"),
    ("事務所のPBXから勝手に海外へ発信されています。すぐ止めてもらうつもりですが、申し込んでから実際に止まるまでの分も請求されるのでしょうか。",
     "原則として契約者", "返金は約束できません"),
])
def test_an_incident_that_asks_who_pays_gets_the_steps_then_the_general_rule_and_the_one_relief(
        real_retriever, text, rule, relief):
    service = new_service(real_retriever)
    reply = service.handle(InboundMessage(address=Address("eval", "incident-pays-" + text[:12]), text=text))[0]
    assert reply.kind == "incident" and reply.escalation is not None and reply.escalation.priority == "urgent"
    from bot.conversation.texts import t

    steps, _, asked = reply.answer.partition(t("also_asked", "en" if rule.isascii() else "ja"))
    assert steps and rule in asked and relief in asked, reply.answer  # the steps first, then the answer to the question


def test_the_question_an_incident_report_also_asks_is_judged_as_if_asked_alone(real_retriever):
    """"...should I tell the police too?" after a bill just found: the steps leave little room, but
    whether the sources answer the question does not depend on that room (the gate judged only the
    one sentence that fitted, and dropped the question)."""
    service = new_service(real_retriever)
    # (development case dq-ja-024)
    text = "請求みたら知らん国への通話で100万超えとる。すぐ止めなあかんのはわかった、で、警察にも言うたほうがええの？"
    reply = service.handle(InboundMessage(address=Address("eval", "incident-police"), text=text))[0]
    assert reply.kind == "incident" and reply.escalation is not None and reply.escalation.priority == "urgent"
    from bot.conversation.texts import t

    steps, _, asked = reply.answer.partition(t("also_asked", "ja"))
    assert steps and "警察" in asked, reply.answer


def test_a_short_follow_up_asking_how_long_is_answered_from_the_topic_of_the_conversation(real_retriever):
    """"how long does it take?" has no topic of its own: searched with the last question, a sentence
    that gives a duration is the answer (the gate alone refused it as not covered)."""
    service = new_service(real_retriever)
    address = Address("eval", "follow-up-duration")
    # (the first question of development case dc-002: its own reply is "not covered")
    service.handle(InboundMessage(address=address, text="So what's this suspension centre thing everyone in Japan "
                                                        "talks about? what does it do for me?"))
    reply = service.handle(InboundMessage(address=address, text="how long does it take?"))[0]
    assert reply.kind == "answer" and re.search(r"\bdays?\b|\bweek\b", reply.answer), reply.answer


@pytest.mark.parametrize("first,switch,carrier", [
    ("OCNで海外にかけられないようにするオプションがあるって聞いたんですけど、有料ですか？", "じゃあKDDIの場合は？", "KDDI"),
    ("NTT Comの国際電話利用休止って、お金かかるんですか？", "KDDIだと？", "KDDI"),
])
def test_a_carrier_switch_is_answered_with_that_carriers_procedure(real_retriever, first, switch, carrier):
    """The last question asked again for another carrier: that carrier's procedure answers it, even
    when the sources do not say its cost (the detail the first question asked)."""
    service = new_service(real_retriever)
    address = Address("eval", "switch-" + str(len(first)))
    service.handle(InboundMessage(address=address, text=first))
    reply = service.handle(InboundMessage(address=address, text=switch))[0]
    assert reply.kind == "answer" and carrier in reply.answer, reply.answer


def test_an_english_question_naming_a_japanese_body_is_not_full_of_unknown_words(real_retriever):
    """The gate reads the share of a question's words no document holds. Beside 警察庁, "back", "put",
    "seeing", "more" were counted in SudachiPy's katakana forms, a third of the question unknown, and
    an answerable question was refused (development case dq-en-086)."""
    result = real_retriever.search("Back in 2016 the 警察庁 put out advice after seeing more SIP scanning. "
                                   "What were their recommendations?", 5, language="en")
    assert result.unknown_terms <= 0.15, result.unknown_terms


def test_a_question_about_stopping_incoming_calls_from_abroad_hears_how_to_stop_them(real_retriever):
    """The best sentence says incoming scam calls are a different problem from a hijack; the next one of
    the same section says how to stop them (the centre). A section answers as a whole: the way to stop
    them must not be left behind "more" (development case dq-ja-001)."""
    service = new_service(real_retriever)
    text = ("最近「+」から始まる海外の番号から何回も電話がかかってきて気持ち悪いです。"
            "出てないけど、そもそもかかってこないようにする方法ってありますか？")
    reply = service.handle(InboundMessage(address=Address("eval", "incoming-stop"), text=text))[0]
    assert reply.kind == "answer" and reply.escalation is None
    assert "国際電話不取扱受付センター" in reply.answer or "0120-210-364" in reply.answer, reply.answer


def test_an_english_question_naming_a_japanese_service_finds_it(real_retriever):
    """An English question with a Japanese name in it ("OCNドットフォン"): its English words were searched
    in SudachiPy's katakana forms only, which no English section holds, and the question was refused as
    not covered although NTT Com's warning about that very service answers it (development case dq-en-084)."""
    service = new_service(real_retriever)
    text = "My landlord 田中さん says his 050 number from OCNドットフォン got hacked years ago. How does that even happen?"
    reply = service.handle(InboundMessage(address=Address("eval", "mixed-ocn"), text=text))[0]
    assert reply.kind == "answer" and reply.language == "en", reply.answer
    assert "OCN Dotphone" in reply.answer, reply.answer


def test_a_follow_up_searched_with_the_last_question_has_its_sentences_scored_for_itself(real_retriever):
    """The pair finds the sections; each sentence's closeness is measured to the follow-up alone, so
    that the sentence which answers the follow-up can lead (not the one closest to the last question)."""
    pair = "ひかり電話の国際電話を止めるのってお金かかるんですか？ それ、うちみたいな普通の家でもやっといた方がいい？"
    follow_up = "それ、うちみたいな普通の家でもやっといた方がいい？"
    plain = real_retriever.search(pair, 5, language="ja")
    scored = real_retriever.search(pair, 5, language="ja", sentences_for=follow_up)
    alone = {p.chunk_id: p for p in real_retriever.search(follow_up, 50, language="ja").passages}
    assert [p.chunk_id for p in scored.passages] == [p.chunk_id for p in plain.passages]  # same sections
    assert [p.sentence_scores for p in scored.passages] != [p.sentence_scores for p in plain.passages]
    shared = [p for p in scored.passages if p.chunk_id in alone]
    assert shared and all(p.sentence_scores == alone[p.chunk_id].sentence_scores for p in shared)


def test_a_follow_up_pointing_back_is_answered_about_itself_within_the_topic(real_retriever):
    """"Should a household like ours do it too?" after "does blocking calls abroad cost anything?":
    the reply is about households (it had repeated where to apply, closest to the first question)."""
    service = new_service(real_retriever)
    address = Address("eval", "follow-up-household")
    # (development case dc-001)
    service.handle(InboundMessage(address=address, text="ひかり電話の国際電話を止めるのってお金かかるんですか？"))
    reply = service.handle(InboundMessage(address=address, text="それ、うちみたいな普通の家でもやっといた方がいい？"))[0]
    assert reply.kind == "answer", reply.answer
    first = split_sentences(reply.answer.splitlines()[0])[0]
    assert "家庭" in first, reply.answer


def test_a_story_of_calls_from_abroad_asking_if_it_is_a_hijack_hears_that_it_is_a_different_problem(real_retriever):
    """Its own reading found the centre's publicity and the gate refused it; searched with what an
    incoming-scam message generally asks (the intent's answer hint), the section saying incoming
    scams are not a hijack answers it."""
    service = new_service(real_retriever)
    # (development case dq-en-001)
    text = ("We keep getting calls from weird +44 and +234 numbers at our Tokyo office. Someone picked up once "
            "and it was some scam pitch. Is this the PBX hacking thing I read about?")
    reply = service.handle(InboundMessage(address=Address("eval", "incoming-story"), text=text))[0]
    assert reply.kind == "answer" and reply.escalation is None, reply.answer
    assert re.search(r"incoming", reply.answer, re.IGNORECASE), reply.answer


@pytest.mark.parametrize("first,switch,expected", [
    # (development probes dp-conv-001 and dp-conv-004)
    ("OCNの国際電話の止め方を教えて", "うちはauひかりなんだけど、同じやり方？", "KDDI"),
    ("Is there a fee for the international call block on Hikari Denwa?",
     "We're actually with OCN, does that change anything?", "NTT Com"),
])
def test_a_short_message_naming_another_carrier_asks_the_last_question_for_it(real_retriever, first, switch, expected):
    """Not just "and KDDI?": a short message that names a carrier and little else of its own is the
    last question asked for that carrier (it was read alone: auひかり got au mobile's spending limit)."""
    service = new_service(real_retriever)
    address = Address("eval", "switch-" + expected)
    service.handle(InboundMessage(address=address, text=first))
    reply = service.handle(InboundMessage(address=address, text=switch))[0]
    assert reply.kind == "answer" and reply.answer.splitlines()[0].startswith(("For " + expected, expected + "の場合")), \
        reply.answer


@pytest.mark.parametrize("text,rule", [
    # (third development set, case db3-ja-022: its own search is refused by the gate, so the who-pays
    # guide's opening answers, as a dispute hears it)
    ("一般論としてお伺いします。第三者に勝手に使われた国際電話の料金は、法律上も支払わなければならないものなのでしょうか。",
     r"原則として契約者"),
    # (second development set, case df-en-033: the search itself now finds the relief for exactly that gap;
    # before the learned sentence match it found nothing about paying and heard the general rule)
    ("Say a customer asks for a block and the hackers keep calling until the block is actually in place. "
     "Who pays for that gap?", r"subscriber generally pays|block request and the completion"),
])
def test_a_general_question_about_who_pays_hears_the_rule_or_the_relief_without_a_ticket(real_retriever, text, rule):
    """A question that asks who pays and nothing more specific: the general rule (the who-pays guide's
    opening when the search has nothing about paying) or the relief that answers it, never a ticket."""
    service = new_service(real_retriever)
    reply = service.handle(InboundMessage(address=Address("eval", "who-pays-general-" + text[:6]), text=text))[0]
    assert reply.kind == "answer" and reply.escalation is None, reply.answer
    assert re.search(rule, reply.answer), reply.answer


@pytest.mark.parametrize("first,switch,lacking", [
    # (third development set, case db3c-011)
    ("NTT東日本で国際電話の発信を止めてもらう電話番号おしえて", "KDDIの場合の番号も教えてほしい", "手元の資料には、KDDIの国際発信規制の受付電話番号"),
    ("What number do I call to stop international calls on NTT Hikari Denwa?", "And KDDI's number?",
     "Our sources give no phone number for KDDI"),
])
def test_a_number_the_sources_say_they_lack_is_not_covered_and_the_reply_says_what_is_missing(
        real_retriever, first, switch, lacking):
    """The number asked for is in no document, and the KDDI guide says so: the reply is "not covered"
    (with the person button), and the sentence saying what the sources lack comes first among the
    closest facts, not a sentence about caller-number authentication that happens to say 番号."""
    service = new_service(real_retriever)
    address = Address("eval", "lacking-" + switch[:6])
    service.handle(InboundMessage(address=address, text=first))
    reply = service.handle(InboundMessage(address=address, text=switch))[0]
    assert reply.kind == "not_covered" and reply.escalation is None, reply.answer
    assert lacking in reply.answer.splitlines()[2], reply.answer


def test_a_longer_follow_up_pointing_back_is_read_with_the_last_question(real_retriever):
    """"So what should we do about it?" after a question about DISA, in a message too long to be a
    short follow-up: read alone it was "not covered"; read with the last question it hears to remove
    the feature or protect it (third development set, case db3c-012)."""
    service = new_service(real_retriever)
    address = Address("eval", "long-follow-up")
    service.handle(InboundMessage(address=address, text="What does DISA mean? Our PBX vendor mentioned it."))
    reply = service.handle(InboundMessage(
        address=address, text="Our sales reps use it when they're on the road. So what should we do about it?"))[0]
    assert reply.kind == "answer", reply.answer
    assert re.search(r"caller-number authentication|remove", reply.answer), reply.answer



def test_a_fee_the_sources_say_they_lack_for_that_carrier_is_not_covered_even_beside_another_free_service(real_retriever):
    """SoftBank's fixed-line block: the SoftBank guide says its fee is not in our sources; a sentence that
    SoftBank's *mobile* barring is free gives "free", but not for what was asked (development twin dq-ja-069)."""
    service = new_service(real_retriever)
    reply = service.handle(InboundMessage(address=Address("eval", "softbank-fee"),
                                          text="ソフトバンクの固定電話で国際発信規制を申し込むと手数料かかりますか？"))[0]
    assert reply.kind == "not_covered" and reply.escalation is None, reply.answer
    assert "手元の資料には、ソフトバンクの国際発信規制" in reply.answer.splitlines()[2], reply.answer


@pytest.mark.parametrize("text", [
    "Bill arrived this morning: 350 pages of international calls. We never call abroad. what now??",
    "ＰＢＸが乗っ取られたかもしれません。まず何をすればいいですか",
])
def test_an_incident_asking_only_what_to_do_hears_the_steps_without_a_second_answer(real_retriever, text):
    """"What now?" is what the steps answer: no "On your question:" block repeating a step, or adding a
    sentence about firmware updates (development scripted cases c-022 and r-ja-001)."""
    from bot.conversation.texts import t

    service = new_service(real_retriever)
    reply = service.handle(InboundMessage(address=Address("eval", "what-now-" + text[:6]), text=text))[0]
    assert reply.kind == "incident", reply.answer
    assert t("also_asked", "en") not in reply.answer and t("also_asked", "ja") not in reply.answer, reply.answer


def test_a_follow_up_asking_again_about_what_the_last_answer_said_hears_it(real_retriever):
    """「うちみたいな小さい店でも？」 after an answer that said small offices are targeted too: that sentence
    still answers it, however recently shown (second development set, case dfc-002)."""
    service = new_service(real_retriever)
    address = Address("eval", "asked-again")
    service.handle(InboundMessage(address=address, text="PBXの乗っ取りって、だいたいどうやってやられるもんなん？"))
    reply = service.handle(InboundMessage(address=address, text="うちみたいな小さい店でも？"))[0]
    assert reply.kind == "answer", reply.answer
    assert re.search(r"無差別|小さな事業所|中小企業", reply.answer), reply.answer


@pytest.mark.parametrize("text,answer", [
    # (development twin dq-ja-002; third development set db3-ja-036)
    ("今月の電話代がいつもの倍くらいになってて焦った。明細みたら国内の携帯あてばっかりで、国際電話は1件もなし。これも乗っ取りなん？",
     r"家族|課金システム|無料通話アプリ"),
    ("電話会社にも責任あるんちゃうの?って思うんやけど、そういうこと言うてる専門家とかおらんの?", r"野村|設置業者|ルール作り"),
])
def test_the_sentence_that_answers_leads_rather_than_one_on_the_same_topic(real_retriever, text, answer):
    """A domestic bill heard "US carriers bill the owner"-like sentences on high bills, and the question for an
    expert's view heard what US carriers say: the learned question-sentence match (SentenceMatch) puts the
    sentence that answers among those shown."""
    service = new_service(real_retriever)
    reply = service.handle(InboundMessage(address=Address("eval", "match-" + text[:6]), text=text))[0]
    assert reply.kind == "answer" and re.search(answer, reply.answer), reply.answer
