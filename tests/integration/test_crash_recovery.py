"""Kill the process between recording a user message and its reply; after a restart,
recover_pending() completes the ticket and the transcript, and the reply waits in the outbox."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.handoff.sql_store import SqlHandoffStore
from tests.fakes import make_settings
from bot.handoff.service import HandoffService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from bot.conversation.service import ConversationService
    from bot.handoff.service import HandoffService
    from bot.handoff.sql_store import SqlHandoffStore
    from bot.messages import Address, InboundMessage
    from tests.fakes import FakeRetriever, make_settings

    settings = make_settings(data_dir=Path({data!r}), database_url={url!r})
    store = SqlHandoffStore.from_settings(settings)
    service = ConversationService(retriever=FakeRetriever(), store=store, handoff=HandoffService(store), settings=settings)
    address = Address("telegram", "telegram:4242", route={{"chat_id": 4242}})
    for i, text in enumerate(sys.argv[1:]):
        if text == "--die":
            service.after_record_hook = lambda msg: os._exit(17)  # hard kill: no cleanup, no flush
            continue
        service.handle(InboundMessage(address=address, text=text, message_id=str(i)))
    print("survived")
    """
)


def run_driver(data: Path, *texts: str, url: str | None = None) -> subprocess.CompletedProcess:
    code = DRIVER.format(root=str(ROOT), data=str(data), url=url)
    return subprocess.run([sys.executable, "-c", code, *texts], capture_output=True, text=True, timeout=120, cwd=ROOT)


def open_store(data: Path, url: str | None = None) -> tuple[SqlHandoffStore, object]:
    from bot.conversation.service import ConversationService
    from tests.fakes import FakeRetriever

    settings = make_settings(data_dir=data, database_url=url)
    store = SqlHandoffStore.from_settings(settings)
    return store, ConversationService(retriever=FakeRetriever(), store=store, handoff=HandoffService(store), settings=settings)


def test_crash_between_user_message_and_reply_is_recovered(tmp_path):
    first = "Can I talk to a real person?"
    incident = "calls to Cuba are going out right now, hundreds of them"
    proc = run_driver(tmp_path, first, "--die", incident)
    assert proc.returncode == 17, proc.stderr
    assert "survived" not in proc.stdout

    store, service = open_store(tmp_path)
    try:
        pending = store.unhandled_messages()
        assert [(m.role, m.text) for m in pending] == [("user", incident)]
        ticket = HandoffService(store).active_ticket("telegram:4242")
        assert ticket.priority == "normal"  # the crash came before the incident was understood

        assert service.recover_pending() == 1
        assert store.unhandled_messages() == []
        ticket = HandoffService(store).active_ticket("telegram:4242")
        assert ticket.priority == "urgent"
        detail = HandoffService(store).get_detail(ticket.id)
        roles = [(m.role, m.text[:20]) for m in detail.transcript]
        assert [r for r, _ in roles] == ["user", "bot", "user", "bot"]
        assert detail.transcript[2].text == incident
        queued = store.pending_outbox()
        assert len(queued) == 1 and queued[0].reply["kind"] == "incident"
        assert queued[0].address.route == {"chat_id": 4242}
        assert service.recover_pending() == 0  # idempotent
    finally:
        store.close()


def test_a_retried_delivery_after_recovery_is_not_answered_twice(tmp_path):
    proc = run_driver(tmp_path, "--die", "What is DISA?")
    assert proc.returncode == 17, proc.stderr
    store, service = open_store(tmp_path)
    try:
        assert service.recover_pending() == 1
        from bot.messages import Address, InboundMessage

        # the platform retries the same update (same message id as the driver used: "1")
        again = service.handle(InboundMessage(address=Address("telegram", "telegram:4242"), text="What is DISA?", message_id="1"))
        assert again == []
        assert [m.role for m in store.transcript("telegram:4242")] == ["user", "bot"]
    finally:
        store.close()


def test_workers_recovering_together_answer_a_left_over_message_once(tmp_path, new_pg_database):
    from concurrent.futures import ThreadPoolExecutor

    url = new_pg_database()  # several processes share a store: PostgreSQL (SQLite serves one)
    assert run_driver(tmp_path, "--die", "How do I stop international calls?", url=url).returncode == 17
    workers = [open_store(tmp_path, url) for _ in range(3)]  # three worker processes start at once
    with ThreadPoolExecutor(max_workers=3) as pool:
        counts = list(pool.map(lambda w: w[1].recover_pending(), workers))
    store = workers[0][0]
    assert sum(counts) == 1
    bots = [m for m in store.transcript("telegram:4242") if m.role == "bot"]
    assert len(bots) == 1 and len(store.pending_outbox()) == 1
    assert store.unhandled_messages() == []


def test_a_message_a_dead_worker_left_is_recovered_by_a_live_one_after_a_minute(tmp_path):
    from datetime import timedelta

    from bot.messages import Address, utcnow

    store, live = open_store(tmp_path)  # this worker started before the message arrived
    address = Address("telegram", "telegram:77", route={"chat_id": 77})
    store.record_message(address, "user", "How do I stop international calls?", handled=False)  # its worker died
    assert live.recover_pending() == 0  # it may still be answered by a live turn
    assert live.recover_pending(now=utcnow() + timedelta(seconds=61)) == 1
    assert [m.role for m in store.transcript("telegram:77")] == ["user", "bot"]
