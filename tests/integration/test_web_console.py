"""The operator console: nothing without login, token and bcrypt logins, CSRF, the bearer API."""

from __future__ import annotations

import re

import bcrypt
import pytest
from fastapi.testclient import TestClient

from bot.config import ConfigError
from bot.messages import Address
from bot.web.app import create_app
from tests.integration.test_web_api import make_settings
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.integration

TOKEN = "op-token-for-tests-123"
ALICE_HASH = bcrypt.hashpw(b"correct horse battery", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def core():
    c = FakeCore()
    c.handoff.open_ticket(Address("web", "web:u1", "web:u1"), reason="user_request", priority="normal",
                          summary={"language": "ja"})
    c.handoff.open_ticket(Address("web", "web:u2", "web:u2"), reason="incident", priority="urgent",
                          summary={"language": "ja", "carrier": "ntt-east-west", "still_happening": True})
    return c


@pytest.fixture
def client(core):
    app = create_app(make_settings(operators=f"alice:{ALICE_HASH}"), core=core, outbox_interval=0.05)
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def login(client, secret=TOKEN, name=""):
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/console/login", data={"csrf": csrf, "name": name, "secret": secret}, follow_redirects=False)


def session_csrf(client, path="/console"):
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def test_nothing_is_visible_without_login(client, core):
    tid = core.handoff.list_queue()[0].id
    for path in ("/console", f"/console/tickets/{tid}"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert client.get("/console/api/tickets").status_code == 401
    assert client.get(f"/console/api/tickets/{tid}").status_code == 401
    assert client.post(f"/console/api/tickets/{tid}/claim").status_code == 401
    r = client.post(f"/console/tickets/{tid}/claim", data={"csrf": "x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert core.handoff.list_queue()[0].status == "open"


def test_api_with_bearer_token_lists_the_queue_urgent_first(client):
    assert client.get("/console/api/tickets", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/console/api/tickets", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    tickets = r.json()["tickets"]
    assert [t["priority"] for t in tickets] == ["urgent", "normal"]
    assert tickets[0]["summary"]["carrier"] == "ntt-east-west"
    # the same shape as `pbxbot tickets list --json` (tests/unit/test_handoff_cli.py)
    assert {"reannounced_at", "age_seconds", "summary_line"} <= set(tickets[0])
    assert "still happening" in tickets[0]["summary_line"]
    detail = client.get(f"/console/api/tickets/{tickets[0]['id']}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert detail["ticket"]["id"] == tickets[0]["id"] and {"transcript", "audit"} <= set(detail)


def test_token_login_sets_a_strict_httponly_session(client):
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookie = r.headers["set-cookie"]
    assert "pbxbot_console=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = client.get("/console")
    assert page.status_code == 200 and "urgent" in page.text
    assert "content-security-policy" in page.headers
    assert client.get("/console/api/tickets").status_code == 200  # the session works for the API too


def test_operator_account_login_with_bcrypt_password(client):
    assert login(client, secret="wrong password", name="alice").status_code == 401
    assert login(client, secret="correct horse battery", name="nobody").status_code == 401
    r = login(client, secret="correct horse battery", name="alice")
    assert r.status_code == 303
    assert ">alice<" in client.get("/console").text


def test_login_form_without_its_csrf_nonce_is_rejected(client):
    r = client.post("/console/login", data={"secret": TOKEN}, follow_redirects=False)
    assert r.status_code == 403
    assert "pbxbot_console=" not in r.headers.get("set-cookie", "")


def test_form_post_without_or_with_a_wrong_csrf_token_is_rejected(client, core):
    login(client)
    tid = core.handoff.list_queue()[0].id
    for data in ({}, {"csrf": "forged"}):
        r = client.post(f"/console/tickets/{tid}/claim", data=data, follow_redirects=False)
        assert r.status_code == 403
    assert core.handoff.list_queue()[0].status == "open"
    r = client.post(f"/console/api/tickets/{tid}/claim")  # session without X-CSRF-Token
    assert r.status_code == 403


def test_claim_reply_resolve_from_the_console(client, core):
    login(client, name="yamada")
    tid = core.handoff.list_queue()[0].id
    csrf = session_csrf(client, f"/console/tickets/{tid}")
    r = client.post(f"/console/tickets/{tid}/claim", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and "notice=claim" in r.headers["location"]
    assert core.handoff.active_ticket("web:u2").operator == "yamada"
    client.post(f"/console/tickets/{tid}/reply", data={"csrf": csrf, "text": "担当です。"})
    detail = client.get(f"/console/api/tickets/{tid}").json()
    assert detail["transcript"][-1]["role"] == "operator" and detail["transcript"][-1]["text"] == "担当です。"
    page = client.get(f"/console/tickets/{tid}")
    assert "担当です。" in page.text
    r = client.post(f"/console/tickets/{tid}/resolve", data={"csrf": csrf}, follow_redirects=False)
    assert "notice=resolve" in r.headers["location"]
    assert core.handoff.active_ticket("web:u2") is None
    r = client.post(f"/console/tickets/{tid}/resolve", data={"csrf": csrf}, follow_redirects=False)
    assert "error=" in r.headers["location"]  # already resolved: a message, not a crash


def test_bearer_api_actions(client, core):
    h = {"Authorization": f"Bearer {TOKEN}", "X-Operator-Name": "suzuki"}
    tid = core.handoff.list_queue()[1].id
    assert client.post(f"/console/api/tickets/{tid}/claim", headers=h).json()["ticket"]["operator"] == "suzuki"
    r = client.post(f"/console/api/tickets/{tid}/reply", headers=h, json={"text": "hello"})
    assert r.status_code == 200
    assert client.post(f"/console/api/tickets/{tid}/reply", headers=h, json={"text": " "}).status_code == 422
    assert client.post("/console/api/tickets/T-nope/claim", headers=h).status_code == 404


def test_logout_ends_the_session(client):
    login(client)
    csrf = session_csrf(client)
    r = client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_a_tampered_session_cookie_is_ignored(client):
    login(client)
    good = client.cookies.get("pbxbot_console")
    client.cookies.clear()
    assert client.get("/console/api/tickets", headers={"Cookie": f"pbxbot_console={good}"}).status_code == 200
    tampered = good[:-3] + ("abc" if not good.endswith("abc") else "xyz")
    assert client.get("/console/api/tickets", headers={"Cookie": f"pbxbot_console={tampered}"}).status_code == 401


def test_bad_operator_accounts_setting_is_a_clear_error():
    with pytest.raises(ConfigError, match="PBXBOT_OPERATORS"):
        create_app(make_settings(operators="alice-without-hash"), core=FakeCore())


def test_queue_events_need_an_operator(client):
    assert client.get("/console/api/events").status_code == 401


async def test_queue_events_push_each_ticket_change_to_every_open_page():
    from bot.web.queue import QueueEvents

    events = QueueEvents(live=lambda: True)
    first, second = events.stream(keepalive=60), events.stream(keepalive=60)
    assert "event: hello" in await first.__anext__() and '"live": true' in await second.__anext__()
    events.publish("T-20261207-ab12", "claimed")
    for page in (first, second):
        chunk = await page.__anext__()
        assert chunk.startswith("event: ticket\n") and '"T-20261207-ab12"' in chunk and '"claimed"' in chunk
    await first.aclose()
    await second.aclose()
    assert not events._queues  # a closed page stops receiving


async def test_open_queue_streams_end_when_the_server_shuts_down():
    from bot.web.queue import QueueEvents

    events = QueueEvents()
    page = events.stream(keepalive=60)
    assert "event: hello" in await page.__anext__()
    events.close_streams()
    with pytest.raises(StopAsyncIteration):
        await page.__anext__()
    late = events.stream(keepalive=60)  # one opened while shutting down: its first line, then the end
    assert "event: hello" in await late.__anext__()
    with pytest.raises(StopAsyncIteration):
        await late.__anext__()


def test_user_text_is_escaped_by_the_templates(client, core):
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    address = Address("web", "web:u3", "web:u3")
    core.store.record_message(address, "user", hostile)
    ticket = core.handoff.open_ticket(address, reason="user_request", priority="normal",
                                      summary={"language": "ja", "vendor": "<b>ACME</b>"})
    assert login(client).status_code == 303
    for path in ("/console", f"/console/tickets/{ticket.id}"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>ACME</b>" not in page
    page = client.get(f"/console/tickets/{ticket.id}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page and "&lt;b&gt;ACME&lt;/b&gt;" in page
