"""`pbxbot ask --jsonl` batch semantics (contract): order, shared conversations, bad lines."""

import io
import json

from bot.commands.ask import merge_replies, render_text, run_batch
from bot.messages import Citation, Reply
from tests.fakes import make_service


def batch(lines):
    service, store, _ = make_service()
    out = io.StringIO()
    assert run_batch(service, io.StringIO("\n".join(lines) + "\n"), out) == 0
    return [json.loads(x) for x in out.getvalue().splitlines()], store


def test_one_reply_line_per_request_in_input_order_with_ids_echoed():
    rows, _ = batch([
        json.dumps({"id": "a", "text": "What is DISA?"}),
        json.dumps({"id": "b", "text": "こんにちは"}),
        json.dumps({"id": 3, "text": "Who pays for fraudulent calls in Japan?"}),
    ])
    assert [r["id"] for r in rows] == ["a", "b", "3"]
    assert rows[0]["citations"] and rows[1]["language"] == "ja"
    for r in rows:
        assert set(r) >= {"id", "conversation_id", "language", "answer", "citations", "escalation", "confidence"}


def test_lines_with_the_same_conversation_id_share_a_conversation():
    rows, store = batch([
        json.dumps({"id": "1", "text": "NTTのひかり電話で国際電話を止めるにはどうすればいい？", "conversation_id": "c1"}),
        json.dumps({"id": "2", "text": "KDDIの場合は？", "conversation_id": "c1"}),
        json.dumps({"id": "3", "text": "KDDIの場合は？"}),
    ])
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"] == "c1"
    assert any(c["doc_id"] == "guide-stop-calls-kddi-ja" for c in rows[1]["citations"])
    assert rows[2]["conversation_id"] != "c1"
    assert len(store.transcript("c1")) == 4


def test_malformed_lines_give_an_error_line_and_the_batch_goes_on():
    rows, _ = batch(["not json", "[1, 2]", json.dumps({"id": "x"}), json.dumps({"id": "y", "text": 5}),
                     json.dumps({"id": "ok", "text": "What is DISA?"})])
    assert [("error" in r) for r in rows] == [True, True, True, True, False]
    assert rows[2]["id"] == "x" and rows[4]["id"] == "ok"


def test_a_message_that_joins_a_ticket_silently_still_gets_its_line():
    rows, _ = batch([json.dumps({"id": str(i), "text": t, "conversation_id": "c"}) for i, t in
                     enumerate(["Can I talk to a real person?", "It is about our KDDI line", "The PBX is a Panasonic"])])
    assert len(rows) == 3 and rows[2]["answer"] == "" and rows[2]["escalation"] is None


def test_merge_renumbers_citations_of_several_replies():
    c = Citation(1, "d1", "t", "p", "https://x", None)
    r1 = Reply("c", "en", "one [1]", citations=(c,))
    r2 = Reply("c", "en", "two [1]", citations=(Citation(1, "d2", "t", "p", "https://y", None),))
    merged = merge_replies([r1, r2], "c", None)
    assert merged["answer"] == "one [1]\ntwo [2]" and [x["n"] for x in merged["citations"]] == [1, 2]


def test_text_rendering_lists_citations_and_the_ticket():
    service, _, _ = make_service()
    from bot.messages import Address, InboundMessage

    (r,) = service.handle(InboundMessage(address=Address("cli", "cli:x"), text="HELP!!! phones dialing overseas nonstop"))
    text = render_text(r)
    assert "[1] " in text and "https://" in text and "-> ticket T-" in text and "urgent" in text
