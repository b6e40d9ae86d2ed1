"""Outbox delivery: operator replies travel handoff.reply → outbox → dispatcher → registry → the user's channel."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from bot.channels.base import BaseChannel
from bot.channels.memory import MemoryChannel
from bot.channels.registry import ChannelRegistry
from bot.messages import Address, Citation, Reply
from bot.web.app import create_app
from bot.web.background import OutboxDispatcher
from tests.integration.test_web_api import make_settings
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_operator_reply_reaches_the_widget_history_and_live_subscribers():
    core = FakeCore()
    app = create_app(make_settings(), core=core, outbox_interval=0.05)
    with TestClient(app) as c:
        first = c.post("/api/chat", json={"text": "PBXが乗っ取られた"}).json()
        cid, token = first["conversation_id"], first["conversation_token"]
        handoff = c.post("/api/chat", json={"text": "", "action": "request_human", "conversation_id": cid,
                                            "conversation_token": token}).json()
        tid = handoff["escalation"]["ticket_id"]
        web = app.state.web_channel
        queue = c.portal.call(web.feed.subscribe, cid)  # a connected widget, on the app's loop
        after = c.get("/api/chat/history", params={"conversation_id": cid, "token": token}).json()["last_seq"]

        core.handoff.claim(tid, "yamada")
        core.handoff.reply(tid, "yamada", "担当の山田です")

        def delivered():
            events = c.get("/api/chat/history", params={"conversation_id": cid, "token": token,
                                                         "after": after}).json()["events"]
            return [e for e in events if e["role"] == "operator"]

        assert wait_until(delivered), "operator reply never reached the web channel"
        event = delivered()[0]
        assert event["answer"] == "担当の山田です" and event["kind"] == "operator"
        pushed: list[dict] = []

        def pushed_operator_reply() -> bool:
            while not queue.empty():
                pushed.append(c.portal.call(queue.get_nowait))
            return any(e["seq"] == event["seq"] for e in pushed)

        assert wait_until(pushed_operator_reply), "the live feed never pushed the operator reply"
        live = next(e for e in pushed if e["seq"] == event["seq"])
        assert live["role"] == "operator" and live["answer"] == "担当の山田です"
        assert app.state.dispatcher.delivered == 1
        assert core.handoff.pending_outbox() == []


def test_failed_delivery_is_retried_and_then_marked_sent():
    core = FakeCore()
    app = create_app(make_settings(), core=core, outbox_interval=0.05)
    registry: ChannelRegistry = app.state.registry
    tg = MemoryChannel("telegram")
    registry.add(tg)
    address = Address("telegram", "telegram:42", "42", {"chat_id": 42})
    with TestClient(app):
        tg.fail_next(1)
        item = core.handoff.enqueue(address, Reply("telegram:42", "ja", "再送テスト"))
        assert wait_until(lambda: len(tg.sent) == 1, timeout=6.0)
        assert tg.sent[0][0] == address and tg.sent[0][1].answer == "再送テスト"
        status = core.handoff.outbox_status(item)
        assert status["status"] == "sent" and status["attempts"] == 2


async def test_unknown_channel_is_marked_failed_not_crashing():
    core = FakeCore()

    async def scenario():
        registry = ChannelRegistry(make_settings(), core)

        async def run_sync(f, *a):
            return f(*a)

        d = OutboxDispatcher(core.handoff, registry, run_sync)
        item = core.handoff.enqueue(Address("fax", "fax:1"), Reply("fax:1", "en", "hello"))
        assert await d.tick() == 0
        return item

    item = await scenario()
    status = core.handoff.outbox_status(item)
    assert status["attempts"] == 1 and "fax" in status["last_error"]


async def test_rich_reply_degrades_to_text_when_the_channel_cannot_render_it():
    class TextOnly(BaseChannel):
        name = "pager"

        def __init__(self):
            self.sent = []

        async def send(self, address, reply):
            if reply.citations:
                raise TypeError("cannot render citations")
            self.sent.append(reply.answer)

    async def scenario():
        registry = ChannelRegistry(make_settings())
        ch = registry.add(TextOnly())
        cit = Citation(1, "d1", "IP-PBXの注意喚起", "総務省", "https://example.jp/a", "2024-01-02")
        await registry.send(Address("pager", "pager:1"), Reply("pager:1", "ja", "止めてください [1]", citations=(cit,)))
        return ch.sent

    sent = await scenario()
    assert len(sent) == 1 and "総務省「IP-PBXの注意喚起」 (2024-01-02) https://example.jp/a" in sent[0]


def test_ticket_events_reach_channels_from_worker_threads():
    core = FakeCore()
    app = create_app(make_settings(), core=core)
    ops = MemoryChannel("opsroom")
    app.state.registry.add(ops)
    with TestClient(app) as c:
        c.post("/api/chat", json={"text": "", "action": "request_human"})
        assert wait_until(lambda: ops.ticket_events and ops.ticket_events[0][0] == "opened")


def test_operator_reply_arrives_live_over_server_sent_events():
    """Over real HTTP (uvicorn on loopback): the widget's event stream gets the operator's reply."""
    import json
    import threading

    import httpx

    from tests.web_fakes import ServerThread, free_port

    core = FakeCore()
    app = create_app(make_settings(), core=core, outbox_interval=0.05)
    srv = ServerThread(app, free_port()).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            first = http.post("/api/chat", json={"text": "", "action": "request_human"}).json()
            cid, token = first["conversation_id"], first["conversation_token"]
            tid = first["escalation"]["ticket_id"]
            got: list[dict] = []
            connected = threading.Event()

            def listen():
                params = {"conversation_id": cid, "token": token, "after": first["seq"]}
                with http.stream("GET", "/api/chat/events", params=params) as r:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    connected.set()
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            got.append(json.loads(line[6:]))
                            return

            t = threading.Thread(target=listen, daemon=True)
            t.start()
            assert connected.wait(5)
            core.handoff.reply(tid, "yamada", "いま確認しています")
            t.join(timeout=10)
        assert got and got[0]["role"] == "operator" and got[0]["answer"] == "いま確認しています"
    finally:
        srv.stop()


def test_start_up_recovers_pending_messages_and_the_reannouncer_runs():
    core = FakeCore()
    calls = []
    core.reannounce_overdue = lambda now: calls.append(now) or 1
    app = create_app(make_settings(), core=core, reannounce_interval=0.05)
    with TestClient(app):
        assert wait_until(lambda: core.recovered == 1 and len(calls) >= 2)
