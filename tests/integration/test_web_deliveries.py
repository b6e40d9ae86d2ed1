"""Replies that fail to reach their user are visible: /healthz says "degraded" (still 200), the
console lists them (per ticket and all together) with a retry button, and a retried one is sent."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from bot.channels.memory import MemoryChannel
from bot.messages import Address, Reply
from bot.web.app import create_app
from tests.integration.test_web_api import make_settings
from tests.integration.test_web_console import login, session_csrf
from tests.integration.test_web_outbox import wait_until
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.integration


def test_dead_and_failing_replies_degrade_health_and_can_be_retried_from_the_console():
    core = FakeCore()
    address = Address("memory", "memory:u1")
    ticket = core.handoff.open_ticket(address, reason="incident", priority="urgent", summary={"language": "ja"})
    dead = core.handoff.enqueue(address, Reply("memory:u1", "ja", "回線を止めました <b>担当</b>"))
    core.handoff.mark_failed(dead, "Forbidden: the bot was blocked", permanent=True)
    app = create_app(make_settings(), core=core, outbox_interval=0.05)
    channel = app.state.registry.add(MemoryChannel("memory"))
    with TestClient(app, base_url="http://testserver") as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["deliveries"]["dead"] == 1

        assert login(client).status_code == 303
        queue = client.get("/console")
        assert "undeliverable" in queue.text and 'href="/console/deliveries"' in queue.text
        listing = client.get("/console/deliveries")
        assert listing.status_code == 200 and "Forbidden: the bot was blocked" in listing.text
        assert "&lt;b&gt;担当&lt;/b&gt;" in listing.text  # user-visible text is escaped
        page = client.get(f"/console/tickets/{ticket.id}")
        assert f'action="/console/deliveries/{dead}/retry"' in page.text

        csrf = session_csrf(client)
        assert client.post(f"/console/deliveries/{dead}/retry", data={"csrf": "wrong"}).status_code == 403
        resp = client.post(f"/console/deliveries/{dead}/retry", data={"csrf": csrf, "ticket": ticket.id},
                           follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith(f"/console/tickets/{ticket.id}")
        assert wait_until(lambda: [r.answer for _a, r in channel.sent] == ["回線を止めました <b>担当</b>"])
        assert wait_until(lambda: core.handoff.outbox_status(dead)["status"] == "sent")
        assert client.post(f"/console/deliveries/{dead}/retry", data={"csrf": csrf}).status_code == 404  # sent
        assert client.post("/console/deliveries/99999999999999999999/retry", data={"csrf": csrf}).status_code < 500
        time.sleep(1.1)  # the health cache
        assert client.get("/healthz").json()["status"] == "ok"
        audit = [a.action for a in core.handoff.get_detail(ticket.id).audit]
        assert "delivery_dead" in audit and "delivery_retry" in audit and "delivered" in audit
