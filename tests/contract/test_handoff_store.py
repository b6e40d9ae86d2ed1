"""One contract for the stores and the ticket rules over them (HandoffService): SqlHandoffStore in
memory, on a SQLite file and on PostgreSQL (integration) must all pass the same tests.

Fixtures (backend, store, clock) are in conftest.py.
"""

from __future__ import annotations

import contextlib
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest

from bot.messages import Address, Citation, Escalation, Reply
from bot.ports import ConversationState, TicketNotFound, TicketStateError
from bot.handoff.service import HandoffService

JST = timezone(timedelta(hours=9))
TICKET_ID = re.compile(r"^T-\d{8}-[0-9a-f]{4}$")


def addr(n: int = 1, channel: str = "telegram", route: dict | None = None) -> Address:
    return Address(channel, f"{channel}:{n}", user_id=f"u{n}", route=route if route is not None else {"chat_id": n})


def open_incident(store, a: Address, priority: str = "urgent", **summary):
    summary = {"carrier": "kddi", "still_happening": True, "language": "ja", **summary}
    return HandoffService(store).open_ticket(a, reason="incident", priority=priority, summary=summary)


# ---------------------------------------------------------------- messages


def test_record_message_returns_the_stored_message(store, clock):
    m = store.record_message(addr(), "user", "国際電話が勝手に発信されています", handled=False,
                             dedupe_key="upd-1", meta={"lang": "ja"})
    assert m is not None and m.id > 0
    assert (m.conversation_id, m.role, m.handled, m.ticket_id) == ("telegram:1", "user", False, None)
    assert m.text == "国際電話が勝手に発信されています"
    assert m.meta == {"lang": "ja"}
    assert m.created_at == clock.now and m.created_at.tzinfo is not None


def test_messages_survive_a_new_store_instance(backend):
    if not backend.persistent:
        pytest.skip("the in-memory store does not outlive its process by design")
    first = backend.make()
    sent = first.record_message(addr(), "user", "bill of 3,000,000 yen", handled=False, dedupe_key="m1")
    first.close()  # the process dies; nothing was flushed by hand

    restarted = backend.make()
    [again] = restarted.transcript("telegram:1")
    assert (again.id, again.text, again.handled) == (sent.id, "bill of 3,000,000 yen", False)
    assert [m.id for m in restarted.unhandled_messages()] == [sent.id]
    assert restarted.record_message(addr(), "user", "bill of 3,000,000 yen", dedupe_key="m1") is None


def test_a_retried_webhook_is_recorded_once(store):
    a = addr()
    assert store.record_message(a, "user", "hello", dedupe_key="42") is not None
    assert store.record_message(a, "user", "hello", dedupe_key="42") is None
    assert len(store.transcript(a.conversation_id)) == 1


def test_dedupe_keys_are_scoped_to_the_conversation(store):
    # Telegram message_id and similar ids are only unique inside one chat.
    assert store.record_message(addr(1), "user", "a", dedupe_key="7") is not None
    assert store.record_message(addr(2), "user", "b", dedupe_key="7") is not None


def test_messages_without_dedupe_key_are_never_duplicates(store):
    a = addr()
    store.record_message(a, "user", "same")
    store.record_message(a, "user", "same")
    assert [m.text for m in store.transcript(a.conversation_id)] == ["same", "same"]


def test_transcript_is_chronological_and_limit_keeps_the_newest(store, clock):
    a = addr()
    ids = []
    for i in range(5):
        ids.append(store.record_message(a, "user" if i % 2 == 0 else "bot", f"m{i}").id)
        clock.advance(seconds=1)
    store.record_message(addr(2), "user", "other conversation")
    assert [m.text for m in store.transcript(a.conversation_id)] == ["m0", "m1", "m2", "m3", "m4"]
    assert [m.text for m in store.transcript(a.conversation_id, limit=2)] == ["m3", "m4"]
    assert [m.text for m in store.messages_after(a.conversation_id, ids[2])] == ["m3", "m4"]
    assert store.transcript("nobody:0") == []


def test_unhandled_messages_until_marked_handled(store):
    a = addr()
    m1 = store.record_message(a, "user", "first", handled=False)
    store.record_message(a, "bot", "answer")
    m2 = store.record_message(addr(2), "user", "second", handled=False)
    assert [m.id for m in store.unhandled_messages()] == [m1.id, m2.id]
    store.mark_handled(m1.id)
    assert [m.id for m in store.unhandled_messages()] == [m2.id]
    store.mark_handled(999_999)  # unknown id: no error


def test_awkward_text_is_stored_without_error(store):
    big = "あ" * 50_000 + "\x07\x1b[31m"
    m = store.record_message(addr(), "user", big)
    assert store.transcript(addr().conversation_id)[0].text == big == m.text
    nul = store.record_message(addr(), "user", "a\x00b")  # PostgreSQL refuses NUL: both stores replace it
    assert nul.text == "a\ufffdb"
    assert store.transcript(addr().conversation_id)[-1].text == "a\ufffdb"


def test_times_come_back_as_aware_utc(store, clock):
    clock.now = datetime(2026, 11, 28, 10, 30, tzinfo=JST)
    m = store.record_message(addr(), "user", "x")
    [back] = store.transcript(m.conversation_id)
    assert back.created_at == datetime(2026, 11, 28, 1, 30, tzinfo=timezone.utc)
    assert back.created_at.utcoffset() == timedelta(0)


# ---------------------------------------------------------------- conversation state


def test_state_round_trip(store, clock):
    a = addr(route={"chat_id": 5, "thread": "x"})
    assert store.get_state(a.conversation_id) is None
    state = ConversationState(conversation_id=a.conversation_id, address=a, language="ja", carrier="kddi",
                              topics=["incident", "billing"], failures=1, last_query="請求が高額",
                              facts={"still_happening": True, "noticed_at": "今朝", "amounts": ["30万円"]})
    store.save_state(state)
    back = store.get_state(a.conversation_id)
    assert back.address == a
    assert (back.language, back.carrier, back.topics, back.failures, back.last_query) == (
        "ja", "kddi", ["incident", "billing"], 1, "請求が高額")
    assert back.facts == {"still_happening": True, "noticed_at": "今朝", "amounts": ["30万円"]}
    assert back.updated_at == clock.now

    clock.advance(minutes=1)
    back.carrier, back.failures = "ntt-com", 0
    store.save_state(back)
    again = store.get_state(a.conversation_id)
    assert (again.carrier, again.failures, again.updated_at) == ("ntt-com", 0, clock.now)


def test_state_and_messages_share_the_conversation(store):
    a = addr()
    store.record_message(a, "user", "hi")
    assert store.get_state(a.conversation_id) is None  # a message alone saves no state
    store.save_state(ConversationState(conversation_id=a.conversation_id, address=a, language="en"))
    assert store.get_state(a.conversation_id).language == "en"
    assert len(store.transcript(a.conversation_id)) == 1


def test_begin_turn_records_the_message_and_reads_the_state_before_it(store):
    a = addr()
    first, state = store.begin_turn(a, "国際電話が止まらない", dedupe_key="m1", meta={"action": None})
    assert state is None and first is not None and first.handled is False and first.role == "user"
    store.save_state(ConversationState(conversation_id=a.conversation_id, address=a, language="ja", carrier="kddi"))
    second, state = store.begin_turn(a, "まだ続いています", dedupe_key="m2")
    assert (state.language, state.carrier) == ("ja", "kddi") and second.id > first.id
    again, _ = store.begin_turn(a, "まだ続いています", dedupe_key="m2")  # a retried webhook
    assert again is None
    assert [m.id for m in store.unhandled_messages()] == [first.id, second.id]


def test_complete_turn_records_replies_saves_state_and_marks_handled_together(store, clock):
    a = addr()
    m = store.record_message(a, "user", "国際電話を止めたい", handled=False)
    state = ConversationState(conversation_id=a.conversation_id, address=a, language="ja", carrier="kddi")
    recorded = store.complete_turn(a, m.id, state, [("まず発信を止めてください", {"reply_to": m.id}),
                                                    ("詳しくは「続き」", {"reply_to": m.id})])
    assert [r.text for r in recorded] == ["まず発信を止めてください", "詳しくは「続き」"]
    assert all(r.role == "bot" and r.id > m.id for r in recorded)
    assert [x.id for x in store.transcript(a.conversation_id)] == [m.id] + [r.id for r in recorded]
    assert store.unhandled_messages() == []
    assert store.get_state(a.conversation_id).carrier == "kddi"
    assert state.updated_at == clock.now


def test_complete_turn_without_replies_or_state_still_marks_handled(store):
    a = addr()
    m = store.record_message(a, "user", "(joins an open ticket silently)", handled=False)
    assert store.complete_turn(a, m.id, None, []) == []
    assert store.unhandled_messages() == []
    assert store.get_state(a.conversation_id) is None


def test_complete_turn_links_replies_to_the_open_ticket(store):
    a = addr()
    t = open_incident(store, a)
    m = store.record_message(a, "user", "まだ止まらない", handled=False)
    [r] = store.complete_turn(a, m.id, None, [("担当者に引き継ぎました", {})])
    assert r.ticket_id == t.id
    detail = HandoffService(store).get_detail(t.id)
    assert r.id in [x.id for x in detail.transcript]
    assert any(e.action == "bot_message" and f"#{r.id}" in e.detail for e in detail.audit)


def test_a_failed_complete_turn_changes_nothing(store):
    a = addr()
    m = store.record_message(a, "user", "hello", handled=False)
    before = ConversationState(conversation_id=a.conversation_id, address=a, language="en")
    store.save_state(before)
    changed = ConversationState(conversation_id=a.conversation_id, address=a, language="ja")
    with pytest.raises(Exception):
        store.complete_turn(a, m.id, changed, [("ok", {}), ("bad", {"unserializable": object()})])
    assert [x.id for x in store.unhandled_messages()] == [m.id]  # recover_pending will answer it
    assert [x.role for x in store.transcript(a.conversation_id)] == ["user"]
    assert store.get_state(a.conversation_id).language == "en"


def test_the_message_index_follows_every_conversation_in_id_order(store):
    assert store.latest_message_id() == 0
    a, b = addr(1), addr(2)
    m1 = store.record_message(a, "user", "one")
    m2 = store.record_message(b, "user", "two")
    m3 = store.record_message(a, "bot", "three")
    assert store.latest_message_id() == m3.id
    assert store.message_index_after(0) == [(m1.id, a.conversation_id), (m2.id, b.conversation_id),
                                             (m3.id, a.conversation_id)]
    assert store.message_index_after(m1.id, limit=1) == [(m2.id, b.conversation_id)]
    assert store.message_index_after(m3.id) == []
    got = store.messages_by_id([m3.id, 999_999, m1.id])
    assert [(m.id, m.text) for m in got] == [(m1.id, "one"), (m3.id, "three")]
    assert store.messages_by_id([]) == []


def test_an_operator_reply_keeps_its_reply_json_in_the_transcript(store):
    a = addr()
    t = open_incident(store, a, language="en")
    HandoffService(store).reply(t.id, "sato", "I am blocking the line now")
    [msg] = [m for m in store.transcript(a.conversation_id) if m.role == "operator"]
    assert msg.meta["reply"]["kind"] == "operator"
    assert msg.meta["reply"]["answer"] == "I am blocking the line now"
    assert msg.meta["reply"]["language"] == "en"


# ---------------------------------------------------------------- tickets


def test_open_ticket_links_the_transcript_so_far(store, clock):
    a = addr()
    store.record_message(a, "user", "外線が止まらない")
    store.record_message(a, "bot", "まず回線を止めてください")
    store.record_message(addr(2), "user", "unrelated")
    t = open_incident(store, a)
    assert TICKET_ID.match(t.id), t.id
    assert (t.status, t.priority, t.reason, t.operator, t.reannounced_at) == ("open", "urgent", "incident", None, None)
    assert t.summary["carrier"] == "kddi" and t.address == a
    assert t.created_at == t.updated_at == clock.now
    assert HandoffService(store).active_ticket(a.conversation_id).id == t.id
    assert HandoffService(store).active_ticket(addr(2).conversation_id) is None

    detail = HandoffService(store).get_detail(t.id)
    assert [m.text for m in detail.transcript] == ["外線が止まらない", "まず回線を止めてください"]
    assert all(m.ticket_id == t.id for m in store.transcript(a.conversation_id))
    assert [(e.action, e.actor) for e in detail.audit] == [("opened", "bot")]


def test_open_ticket_is_idempotent_while_active(store):
    a = addr()
    first = HandoffService(store).open_ticket(a, reason="low_confidence", priority="normal", summary={"carrier": None})
    again = HandoffService(store).open_ticket(a, reason="incident", priority="urgent",
                              summary={"carrier": "softbank", "vendor": "X"})
    assert again.id == first.id
    assert again.priority == "urgent"  # a later incident raises the priority, never lowers it
    assert again.summary == {"carrier": "softbank", "vendor": "X"}
    lower = HandoffService(store).open_ticket(a, reason="user_request", priority="normal", summary={"carrier": "kddi"})
    assert (lower.id, lower.priority, lower.summary["carrier"]) == (first.id, "urgent", "softbank")
    assert len(HandoffService(store).list_queue()) == 1
    stored = HandoffService(store).get_detail(first.id)  # what was written, read back
    assert (stored.ticket.priority, stored.ticket.summary) == ("urgent", {"carrier": "softbank", "vendor": "X"})
    # the second call changed the ticket and says so; the third changed nothing and writes nothing
    assert [(e.action, e.actor) for e in stored.audit] == [("opened", "bot"), ("updated", "bot")]
    assert "priority urgent" in stored.audit[1].detail and "summary" in stored.audit[1].detail


def test_messages_while_a_ticket_is_open_join_it(store):
    a = addr()
    t = open_incident(store, a)
    m = store.record_message(a, "user", "still calling abroad")
    assert m.ticket_id == t.id
    detail = HandoffService(store).get_detail(t.id)
    assert detail.transcript[-1].text == "still calling abroad"
    assert [e.action for e in detail.audit] == ["opened", "user_message"]
    assert detail.audit[-1].actor == "user"


def test_full_lifecycle_with_audit_trail(store, clock):
    a = addr()
    store.record_message(a, "user", "help")
    t = open_incident(store, a)
    clock.advance(minutes=2)
    t = HandoffService(store).claim(t.id, "sato")
    assert (t.status, t.operator, t.updated_at) == ("claimed", "sato", clock.now)
    clock.advance(minutes=1)
    t = HandoffService(store).reply(t.id, "sato", "回線を止めました。確認します。")
    assert t.status == "claimed"
    clock.advance(minutes=1)
    t = HandoffService(store).resolve(t.id, "sato")
    assert (t.status, t.updated_at) == ("resolved", clock.now)
    assert HandoffService(store).active_ticket(a.conversation_id) is None

    detail = HandoffService(store).get_detail(t.id)
    assert [(e.action, e.actor) for e in detail.audit] == [
        ("opened", "bot"), ("claimed", "operator:sato"), ("replied", "operator:sato"), ("resolved", "operator:sato")]
    ats = [e.at for e in detail.audit]
    assert ats == sorted(ats) and all(x.tzinfo is not None for x in ats)
    op = detail.transcript[-1]
    assert (op.role, op.text, op.ticket_id, op.meta.get("operator")) == (
        "operator", "回線を止めました。確認します。", t.id, "sato")


def test_reply_records_the_message_and_the_outbox_item_together(store):
    a = addr(route={"chat_id": 99})
    t = open_incident(store, a, language="en")
    before = {i.id for i in store.pending_outbox()}
    t = HandoffService(store).reply(t.id, "ito", "We blocked international calls on your line.")
    assert (t.status, t.operator) == ("claimed", "ito")  # replying to an open ticket takes it
    [item] = [i for i in store.pending_outbox() if i.id not in before]
    assert item.address == a and item.attempts == 0
    assert item.reply["kind"] == "operator"
    assert item.reply["answer"] == "We blocked international calls on your line."
    assert item.reply["conversation_id"] == a.conversation_id and item.reply["language"] == "en"
    actions = [e.action for e in HandoffService(store).get_detail(t.id).audit]
    assert actions == ["opened", "claimed", "replied"]
    assert store.transcript(a.conversation_id)[-1].role == "operator"


def test_operator_reply_goes_to_the_newest_address(store):
    t = open_incident(store, addr(route={"response_url": "https://old"}))
    store.record_message(addr(route={"response_url": "https://new"}), "user", "any news?")
    HandoffService(store).reply(t.id, "ito", "yes")
    assert store.pending_outbox()[-1].address.route == {"response_url": "https://new"}


@pytest.mark.parametrize("action", ["claim", "reply", "resolve"])
def test_resolved_tickets_refuse_further_actions(store, action):
    t = open_incident(store, addr())
    HandoffService(store).resolve(t.id, "sato")
    call = {"claim": lambda: HandoffService(store).claim(t.id, "ito"), "reply": lambda: HandoffService(store).reply(t.id, "ito", "late"),
            "resolve": lambda: HandoffService(store).resolve(t.id, "ito")}[action]
    with pytest.raises(TicketStateError, match=t.id):
        call()
    assert HandoffService(store).get_detail(t.id).ticket.status == "resolved"
    assert [e.action for e in HandoffService(store).get_detail(t.id).audit] == ["opened", "resolved"]


def test_claim_rules(store):
    t = open_incident(store, addr())
    HandoffService(store).claim(t.id, "sato")
    assert HandoffService(store).claim(t.id, "sato").operator == "sato"  # repeating one's own claim is harmless
    with pytest.raises(TicketStateError, match="sato"):
        HandoffService(store).claim(t.id, "ito")
    assert [e.action for e in HandoffService(store).get_detail(t.id).audit] == ["opened", "claimed"]


def test_unknown_ticket(store):
    for call in (lambda: HandoffService(store).claim("T-20000101-0000", "x"), lambda: HandoffService(store).reply("T-20000101-0000", "x", "y"),
                 lambda: HandoffService(store).resolve("T-20000101-0000", "x"),
                 lambda: HandoffService(store).mark_reannounced("T-20000101-0000", datetime.now(timezone.utc))):
        with pytest.raises(TicketNotFound):
            call()
    assert HandoffService(store).get_detail("T-20000101-0000") is None
    assert issubclass(TicketNotFound, LookupError)


def test_ticket_ids_typed_by_hand_are_accepted(store):
    t = open_incident(store, addr())
    assert HandoffService(store).get_detail(f"  {t.id.lower().upper()}  ".replace("T-", "t-")).ticket.id == t.id


def test_after_resolve_the_next_escalation_opens_a_new_ticket(store, clock):
    a = addr()
    store.record_message(a, "user", "first incident")
    t1 = open_incident(store, a)
    HandoffService(store).resolve(t1.id, "sato")
    later = store.record_message(a, "user", "thanks, unrelated question")
    assert later.ticket_id is None
    assert [e.action for e in HandoffService(store).get_detail(t1.id).audit] == ["opened", "resolved"]
    clock.advance(minutes=5)
    t2 = HandoffService(store).open_ticket(a, reason="user_request", priority="normal", summary={})
    assert t2.id != t1.id and t2.status == "open"
    assert [m.text for m in HandoffService(store).get_detail(t2.id).transcript] == ["thanks, unrelated question"]
    assert [m.text for m in HandoffService(store).get_detail(t1.id).transcript] == ["first incident"]


def test_invalid_priority_is_rejected(store):
    with pytest.raises(ValueError):
        HandoffService(store).open_ticket(addr(), reason="x", priority="high", summary={})


# ---------------------------------------------------------------- queue and re-announcement


def test_queue_is_urgent_first_then_oldest_first(store, clock):
    made = {}
    for n, prio in enumerate(["normal", "urgent", "normal", "urgent"], start=1):
        made[n] = HandoffService(store).open_ticket(addr(n), reason="r", priority=prio, summary={})
        clock.advance(minutes=1)
    resolved = HandoffService(store).open_ticket(addr(9), reason="r", priority="urgent", summary={})
    HandoffService(store).resolve(resolved.id, "x")
    HandoffService(store).claim(made[3].id, "sato")
    assert [t.id for t in HandoffService(store).list_queue()] == [made[2].id, made[4].id, made[1].id, made[3].id]
    assert [t.id for t in HandoffService(store).list_queue(("open",))] == [made[2].id, made[4].id, made[1].id]
    every = HandoffService(store).list_queue(("open", "claimed", "resolved"))
    assert [t.id for t in every] == [made[2].id, made[4].id, resolved.id, made[1].id, made[3].id]


def test_overdue_urgent(store, clock):
    start = clock.now
    urgent = open_incident(store, addr(1))
    normal = HandoffService(store).open_ticket(addr(2), reason="user_request", priority="normal", summary={})
    claimed = open_incident(store, addr(3))
    HandoffService(store).claim(claimed.id, "sato")
    assert normal and HandoffService(store).overdue_urgent(start + timedelta(minutes=9), 10) == []
    [due] = HandoffService(store).overdue_urgent(start + timedelta(minutes=10), 10)
    assert due.id == urgent.id

    HandoffService(store).mark_reannounced(urgent.id, start + timedelta(minutes=10))
    assert HandoffService(store).get_detail(urgent.id).ticket.reannounced_at == start + timedelta(minutes=10)
    assert HandoffService(store).overdue_urgent(start + timedelta(minutes=15), 10) == []
    assert [t.id for t in HandoffService(store).overdue_urgent(start + timedelta(minutes=20, seconds=1), 10)] == [urgent.id]
    assert HandoffService(store).get_detail(urgent.id).audit[-1].action == "reannounced"

    HandoffService(store).claim(urgent.id, "ito")
    assert HandoffService(store).overdue_urgent(start + timedelta(hours=5), 10) == []


def test_overdue_urgent_accepts_any_timezone(store, clock):
    t = open_incident(store, addr())
    later_jst = (clock.now + timedelta(minutes=11)).astimezone(JST)
    assert [x.id for x in HandoffService(store).overdue_urgent(later_jst, 10)] == [t.id]


# ---------------------------------------------------------------- outbox


def _reply(a: Address, text: str = "hello", **kw) -> Reply:
    return Reply(conversation_id=a.conversation_id, language="ja", answer=text, **kw)


def test_outbox_pending_sent(store, clock):
    a = addr()
    cit = Citation(1, "doc-1", "Title", "NTT", "https://example.jp/x", "2026-01-01")
    i1 = store.enqueue(a, _reply(a, "one [1]", citations=(cit,), kind="incident", offer_human=True))
    i2 = store.enqueue(a, _reply(a, "two"))
    assert i2 > i1
    items = store.pending_outbox()
    assert [i.id for i in items] == [i1, i2]
    first = items[0]
    assert first.address == a and first.created_at == clock.now and first.attempts == 0
    assert first.reply["kind"] == "incident" and first.reply["offer_human"] is True
    assert first.reply["citations"][0]["url"] == "https://example.jp/x"

    assert Reply.from_payload(first.reply) == _reply(a, "one [1]", citations=(cit,), kind="incident",
                                                     offer_human=True)
    assert [i.id for i in store.pending_outbox(limit=1)] == [i1]
    store.mark_sent(i1)
    store.mark_sent(i1)  # twice: harmless
    assert [i.id for i in store.pending_outbox()] == [i2]


def test_outbox_failures_are_retried_for_as_long_as_it_takes(backend):
    store = backend.make()
    a = addr()
    item = store.enqueue(a, _reply(a))
    for _ in range(50):  # an outage of hours
        store.mark_failed(item, "HTTP 502")
    [pending] = store.pending_outbox()
    assert (pending.id, pending.attempts) == (item, 50)
    assert [(u.id, u.status, u.last_error) for u in store.undelivered()] == [(item, "pending", "HTTP 502")]
    assert store.outbox_counts() == {"pending": 1, "failing": 1, "dead": 0}
    store.mark_sent(item)
    assert store.undelivered() == [] and store.outbox_counts() == {"pending": 0, "failing": 0, "dead": 0}
    store.mark_sent(999_999)
    store.mark_failed(999_999, "x")  # unknown ids: no error


def test_a_permanent_failure_dead_letters_an_item_until_someone_retries_it(backend):
    store = backend.make()
    a = addr()
    item = store.enqueue(a, _reply(a))
    store.mark_failed(item, "HTTP 502")
    store.mark_failed(item, "Forbidden: the bot was blocked", permanent=True)
    assert store.pending_outbox() == []
    status = store.outbox_status(item)
    assert (status["status"], status["attempts"], status["last_error"]) == ("dead", 2, "Forbidden: the bot was blocked")
    assert store.outbox_counts()["dead"] == 1
    assert store.retry_outbox(item, "operator:alice")
    assert [i.id for i in store.lease_outbox()] == [item]  # due at once
    store.mark_sent(item)
    assert not store.retry_outbox(item)  # sent: nothing to retry
    assert not store.retry_outbox(999_999)


def test_an_attempt_limit_when_one_is_set_dead_letters_too(backend):
    store = backend.make(max_attempts=3)
    a = addr()
    item = store.enqueue(a, _reply(a))
    for error in ("HTTP 502", "timeout", "HTTP 503"):
        store.mark_failed(item, error)
    assert store.pending_outbox() == []
    assert store.outbox_status(item)["status"] == "dead"


def test_leased_outbox_items_go_to_one_worker_at_a_time(store, clock):
    a = addr()
    ids = [store.enqueue(a, _reply(a, f"r{i}")) for i in range(3)]
    first = store.lease_outbox(limit=2, seconds=60)
    assert [i.id for i in first] == ids[:2]
    assert [i.id for i in store.lease_outbox(seconds=60)] == [ids[2]]  # another worker: the rest
    assert store.lease_outbox() == []
    assert len(store.pending_outbox()) == 3  # inspection still sees everything pending

    store.mark_sent(ids[0])
    store.mark_failed(ids[1], "HTTP 502")  # failed: free for the next attempt at once
    assert [i.id for i in store.lease_outbox()] == [ids[1]]
    clock.advance(seconds=61)  # the worker holding ids[2] died: its lease runs out
    again = store.lease_outbox()
    assert [i.id for i in again] == [ids[1], ids[2]]
    assert again[0].attempts == 1


def test_delivery_of_an_escalation_reply_is_audited_on_its_ticket(store):
    a = addr()
    t = open_incident(store, a)
    item = store.enqueue(a, _reply(a, "受付番号…", kind="handoff",
                                   escalation=Escalation("incident", "urgent", t.id)))
    store.mark_failed(item, "HTTP 500")
    store.mark_sent(item)
    actions = [e.action for e in HandoffService(store).get_detail(t.id).audit]
    assert actions == ["opened", "delivery_failed", "delivered"]


# ---------------------------------------------------------------- concurrency


def test_concurrent_writers_lose_nothing(store):
    a = addr()
    errors = []

    def write(worker: int) -> None:
        try:
            for i in range(10):
                store.record_message(a, "user", f"{worker}-{i}", dedupe_key=f"{worker}-{i % 5}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    msgs = store.transcript(a.conversation_id)
    assert len(msgs) == 20  # 4 workers x 5 distinct keys
    assert len({m.id for m in msgs}) == 20


def test_concurrent_escalations_open_one_ticket(store):
    a = addr()
    ids, errors = [], []

    def escalate() -> None:
        try:
            ids.append(open_incident(store, a).id)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=escalate) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(set(ids)) == 1


def test_a_failed_delivery_waits_out_its_back_off_for_every_worker(store, clock):
    a = addr()
    item = store.enqueue(a, _reply(a, "operator: please call your carrier"))
    (leased,) = store.lease_outbox(seconds=20)
    store.mark_failed(leased.id, "HTTP 503", retry_in=8)
    assert store.lease_outbox() == [], "no worker retries before the back-off has passed"
    clock.advance(seconds=9)
    (again,) = store.lease_outbox()
    assert again.id == item and again.attempts == 1


# ---------------------------------------------------------------- cross-process jobs


def test_exclusive_admits_one_holder_at_a_time_across_store_instances(backend):
    first = backend.make()
    # another worker on the same database (PostgreSQL); SQLite and memory serve one process
    second = backend.make() if backend.name == "postgres" else first
    with first.exclusive("recover-pending") as a:
        assert a is True
        with second.exclusive("recover-pending") as b:
            assert b is False  # the other worker skips the job
        with second.exclusive("another-job") as c:
            assert c is True  # names are independent
    with second.exclusive("recover-pending") as again:
        assert again is True  # released when the holder is done


def test_conversation_turn_admits_one_turn_of_a_conversation_at_a_time_across_store_instances(backend):
    if backend.name != "postgres":
        pytest.skip("one process only (SQLite, memory): the core's in-process lock serializes its turns")
    first, second = backend.make(), backend.make()  # two workers on the same database
    entered = threading.Event()

    def other_worker():
        with second.conversation_turn("web:same"):
            entered.set()

    with first.conversation_turn("web:same"):
        waiting = threading.Thread(target=other_worker)
        waiting.start()
        assert not entered.wait(0.4), "the other worker's turn started while this one ran"
    assert entered.wait(5), "released when the first turn is done"
    waiting.join(5)
    with first.conversation_turn("web:same"):
        pass  # nothing left held


def test_resume_turn_reads_handled_and_the_state_at_once(store):
    a = addr(7)
    assert store.resume_turn(999_999, a.conversation_id) == (True, None)  # no such message, no conversation
    recorded, _ = store.begin_turn(a, "first", dedupe_key="r1")
    assert store.resume_turn(recorded.id, a.conversation_id) == (False, None)
    state = ConversationState(conversation_id=a.conversation_id, address=a, language="ja")
    store.complete_turn(a, recorded.id, state, [("answer", {})])
    handled, back = store.resume_turn(recorded.id, a.conversation_id)
    assert handled is True and back is not None and back.language == "ja"
    second, _ = store.begin_turn(a, "second", dedupe_key="r2")
    handled, back = store.resume_turn(second.id, a.conversation_id)
    assert handled is False and back.language == "ja" and back.updated_at == store.get_state(a.conversation_id).updated_at


def _advisory_locks_held(store) -> int:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
                            ).scalar()


def test_a_turn_releases_its_lock_only_after_its_completing_commit(backend):
    """complete_turn commits and releases the turn's lock in one round trip: the next turn of the
    conversation (another worker) starts only then, and reads the state and replies committed."""
    if backend.name != "postgres":
        pytest.skip("one process only (SQLite, memory): the core's in-process lock serializes its turns")
    first, second = backend.make(), backend.make()
    a = Address("web", "web:turns", user_id="u")
    seen: dict = {}
    entered = threading.Event()

    def other_worker():
        with second.conversation_turn(a.conversation_id):
            entered.set()
            msg, state = second.begin_turn(a, "second", dedupe_key="k2")
            seen["state"], seen["transcript"] = state, [m.text for m in second.transcript(a.conversation_id)]
            second.complete_turn(a, msg.id, state, [])

    with first.conversation_turn(a.conversation_id):
        msg, state = first.begin_turn(a, "first", dedupe_key="k1")
        assert state is None
        waiting = threading.Thread(target=other_worker)
        waiting.start()
        assert not entered.wait(0.4), "the other worker's turn started before this one completed"
        new_state = ConversationState(conversation_id=a.conversation_id, address=a, language="ja")
        first.complete_turn(a, msg.id, new_state, [("answer", {"reply_to": msg.id})])
        assert entered.wait(5), "released by the completing transaction"
    waiting.join(5)
    assert seen["state"] is not None and seen["state"].language == "ja"
    assert seen["transcript"] == ["first", "answer", "second"]
    assert _advisory_locks_held(first) == 0


@pytest.mark.parametrize("ending", ["nothing", "duplicate", "handled", "error"])
def test_a_turn_that_does_not_complete_releases_its_lock(backend, ending):
    if backend.name != "postgres":
        pytest.skip("PostgreSQL's advisory lock")
    store = backend.make()
    a = Address("web", "web:ends", user_id="u")
    recorded, _ = store.begin_turn(a, "hello", dedupe_key="d1")
    with pytest.raises(RuntimeError) if ending == "error" else contextlib.nullcontext():
        with store.conversation_turn(a.conversation_id):
            if ending == "duplicate":
                assert store.begin_turn(a, "hello", dedupe_key="d1")[0] is None
            elif ending == "handled":
                assert store.resume_turn(recorded.id, a.conversation_id)[0] is False
            elif ending == "error":
                store.get_state(a.conversation_id)
                raise RuntimeError("answering failed")
    assert _advisory_locks_held(store) == 0
    with store.conversation_turn(a.conversation_id):  # the connection went back usable
        store.complete_turn(a, recorded.id, None, [])
    assert store.resume_turn(recorded.id, a.conversation_id)[0] and _advisory_locks_held(store) == 0


def test_a_revoked_console_session_is_refused_by_every_store_instance(backend, clock):
    first = backend.make(clock=clock)
    second = backend.make(clock=clock) if backend.persistent else first  # another worker, one database
    assert not second.session_revoked("sid-1")
    first.revoke_session("sid-1", clock() + timedelta(hours=12))
    first.revoke_session("sid-1", clock() + timedelta(hours=12))  # twice (two logouts at once): no error
    assert second.session_revoked("sid-1") and not second.session_revoked("sid-2")
    clock.advance(hours=13)
    first.revoke_session("sid-2", clock() + timedelta(hours=12))  # forgets the expired ones on the way
    assert second.session_revoked("sid-2")
