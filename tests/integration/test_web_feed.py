"""The widget's events come from the transcript in the store, so several server processes (each
with its own feed) serve one set of widgets, and history outlives a restart."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from bot.web.feed import TranscriptFeed, event_of
from bot.handoff.sql_store import SqlHandoffStore
from bot.ports import StoredMessage
from bot.web.app import create_app
from tests.integration.test_web_api import make_settings
from tests.integration.test_web_outbox import wait_until
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.integration


def test_an_operator_reply_written_by_one_worker_reaches_a_widget_connected_to_another(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    worker_a = create_app(make_settings(), core=FakeCore(SqlHandoffStore(url)), outbox_interval=0.05)
    worker_b = create_app(make_settings(), core=FakeCore(SqlHandoffStore(url)), outbox_interval=0.05)
    with TestClient(worker_a) as a, TestClient(worker_b) as b:
        first = a.post("/api/chat", json={"text": "PBXが乗っ取られた", "client_id": "c1"}).json()
        cid, token = first["conversation_id"], first["conversation_token"]
        assert first["replies"][0]["seq"] == first["user_seq"] + 1  # event numbers are transcript ids
        handoff = a.post("/api/chat", json={"text": "", "action": "request_human", "conversation_id": cid,
                                            "conversation_token": token}).json()
        tid = handoff["escalation"]["ticket_id"]

        # the widget reconnects to worker B: it gets the whole conversation so far from the store
        history = b.get("/api/chat/history", params={"conversation_id": cid, "token": token}).json()
        assert [e["role"] for e in history["events"]] == ["user", "bot", "user", "bot"]
        assert history["events"][0]["client_id"] == "c1"  # the widget shows its own message once
        assert history["events"][1]["citations"] and history["events"][3]["escalation"]["ticket_id"] == tid
        queue = b.portal.call(worker_b.state.web_channel.feed.subscribe, cid)

        # an operator answers through worker A (its console, its outbox dispatcher)
        worker_a.state.core.handoff.reply(tid, "yamada", "担当の山田です。回線を止めます")
        pushed: list[dict] = []

        def arrived() -> bool:
            while not queue.empty():
                pushed.append(b.portal.call(queue.get_nowait))
            return any(e["role"] == "operator" for e in pushed)

        assert wait_until(arrived), "worker B never saw the reply written by worker A"
        op = next(e for e in pushed if e["role"] == "operator")
        assert op["answer"] == "担当の山田です。回線を止めます" and op["kind"] == "operator"
        assert op["seq"] > history["last_seq"]


def test_history_outlives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'restart.sqlite3'}"
    with TestClient(create_app(make_settings(), core=FakeCore(SqlHandoffStore(url)))) as c:
        first = c.post("/api/chat", json={"text": "国際電話を止めたい"}).json()
    cid, token = first["conversation_id"], first["conversation_token"]
    with TestClient(create_app(make_settings(), core=FakeCore(SqlHandoffStore(url)))) as c:
        events = c.get("/api/chat/history", params={"conversation_id": cid, "token": token}).json()["events"]
    assert [e["role"] for e in events] == ["user", "bot"]
    assert events[1]["answer"] == first["answer"]


class _GappyStore:
    """PostgreSQL can commit id 2 after id 3 was visible: the feed must still deliver id 2."""

    def __init__(self) -> None:
        self.visible: dict[int, StoredMessage] = {}

    def add(self, mid: int, text: str) -> None:
        self.visible[mid] = StoredMessage(id=mid, conversation_id="web:x", role="bot", text=text,
                                          created_at=datetime.now(timezone.utc), meta={})

    def latest_message_id(self) -> int:
        return max(self.visible, default=0)

    def message_index_after(self, after_id: int, limit: int = 1000):
        return [(i, m.conversation_id) for i, m in sorted(self.visible.items()) if i > after_id][:limit]

    def messages_by_id(self, ids):
        return [self.visible[i] for i in sorted(set(ids)) if i in self.visible]


async def test_a_late_commit_below_the_cursor_is_still_delivered():
    async def run_sync(f, *a):
        return f(*a)

    store = _GappyStore()
    feed = TranscriptFeed(store, run_sync)
    await feed.poll()  # the cursor starts at the newest id (0)
    q = feed.subscribe("web:x")
    store.add(1, "one")
    store.add(3, "three")  # id 2 is still in an open transaction
    await feed.poll()
    store.add(2, "two")  # ... and commits now
    await feed.poll()
    await feed.poll()  # delivered once, not again
    got = [q.get_nowait()["answer"] for _ in range(q.qsize())]
    assert got == ["one", "three", "two"]


def test_events_of_system_messages_are_not_shown_and_old_operator_rows_still_are():
    now = datetime.now(timezone.utc)
    assert event_of(StoredMessage(1, "web:x", "system", "internal note", now)) is None
    old = event_of(StoredMessage(2, "web:x", "operator", "hello from an operator", now, meta={"operator": "sato"}))
    assert old["role"] == "operator" and old["answer"] == "hello from an operator" and "sato" not in str(old)


async def test_a_burst_bigger_than_one_index_batch_is_delivered_in_one_poll(monkeypatch):
    import bot.web.feed as wf

    async def run_sync(f, *a):
        return f(*a)

    monkeypatch.setattr(wf, "INDEX_BATCH", 3)
    store = _GappyStore()
    feed = TranscriptFeed(store, run_sync)
    await feed.poll()
    q = feed.subscribe("web:x")
    for i in range(1, 9):
        store.add(i, f"m{i}")
    assert await feed.poll() == 8
    assert [q.get_nowait()["answer"] for _ in range(q.qsize())] == [f"m{i}" for i in range(1, 9)]
