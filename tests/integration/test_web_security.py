"""What an attacker sees (issue 13, "Security"): hostile tokens get 4xx, never 500 or a traceback;
credential guessing is limited per address and per account without locking the real operator out;
unknown names cost what real ones do; forwarded headers only from trusted proxies; logout kills
the session everywhere; a widget conversation needs its token to be written into; numbers in
queries and Last-Event-ID are bounded."""

from __future__ import annotations

import logging
import re
import statistics
import time

import bcrypt
import pytest
from fastapi.testclient import TestClient

from bot.config import ConfigError
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address
from bot.web.app import create_app
from tests.integration.test_web_api import make_settings
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.integration

TOKEN = "op-token-for-tests-123"
PASSWORD = "correct horse battery"
ALICE_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
PROXY = "10.9.9.9"
HOSTILE = ["トークン", "é" * 40, "\u00ff" * 300, "x" * 5000, "\x00", "Bearer", "'; DROP TABLE tickets;--", "😀" * 20]


def latin1(text: str) -> bytes:
    """How a raw client can put any bytes in a header (UTF-8 bytes; the server decodes latin-1)."""
    return text.encode("utf-8")


@pytest.fixture
def core():
    c = FakeCore()
    c.handoff.open_ticket(Address("web", "web:u1", "web:u1"), reason="user_request", priority="normal",
                          summary={"language": "ja"})
    return c


def proxied_app(core, **kw):
    return create_app(make_settings(operators=f"alice:{ALICE_HASH}", trusted_proxies=PROXY, **kw), core=core)


@pytest.fixture
def client(core):
    with TestClient(proxied_app(core), client=(PROXY, 40000)) as c:
        yield c


def login(client, *, secret=TOKEN, name="", frm="203.0.113.1"):
    headers = {"X-Forwarded-For": frm}
    page = client.get("/console/login", headers=headers)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/console/login", data={"csrf": csrf, "name": name, "secret": secret},
                       headers=headers, follow_redirects=False)


def no_traceback(caplog) -> None:
    text = "\n".join(r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records)
    assert "Traceback" not in text and not any(r.exc_info for r in caplog.records), text[-2000:]
    assert not any(r.levelno >= logging.ERROR for r in caplog.records), text[-2000:]


# ---------------------------------------------------------------- hostile tokens: 4xx, never 500


def test_hostile_tokens_are_refused_with_4xx_and_no_traceback(core, caplog):
    caplog.set_level(logging.INFO)
    app = create_app(make_settings(login_attempts_per_minute=1000), core=core)
    with TestClient(app) as c:
        first = c.post("/api/chat", json={"text": "hello"}).json()
        cid = first["conversation_id"]
        for bad in HOSTILE:
            r = c.get("/console/api/tickets", headers={"Authorization": latin1(f"Bearer {bad}")})
            assert r.status_code == 401, bad
            r = c.get("/api/chat/history", params={"conversation_id": cid, "token": bad[:128]})
            assert r.status_code in (403, 422), bad
            r = c.post("/api/chat", json={"text": "hi", "conversation_id": cid, "conversation_token": bad[:128]})
            assert r.status_code in (403, 422), bad
            cookie = {"Cookie": latin1(f"pbxbot_console={bad[:1000]}")}
            assert c.get("/console/api/tickets", headers=cookie).status_code == 401
            assert c.get("/console", headers=cookie, follow_redirects=False).status_code == 303
        # the login form's nonce and a session's CSRF value, hostile
        page = c.get("/console/login")
        for bad in HOSTILE:
            r = c.post("/console/login", data={"csrf": bad, "secret": TOKEN}, follow_redirects=False)
            assert r.status_code == 403
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        c.cookies.clear()
        r = c.post("/console/login", data={"csrf": csrf, "secret": TOKEN}, follow_redirects=False,
                   headers={"Cookie": latin1("pbxbot_login=" + "ü" * 20)})
        assert r.status_code == 403
        page = c.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert c.post("/console/login", data={"csrf": csrf, "secret": TOKEN}, follow_redirects=False).status_code == 303
        tid = core.handoff.list_queue()[0].id
        for bad in HOSTILE:
            r = c.post(f"/console/tickets/{tid}/claim", data={"csrf": bad}, follow_redirects=False)
            assert r.status_code == 403
            r = c.post(f"/console/api/tickets/{tid}/claim", headers={"X-CSRF-Token": latin1(bad[:200])})
            assert r.status_code == 403
    assert core.handoff.list_queue()[0].status == "open"
    no_traceback(caplog)


# ---------------------------------------------------------------- guessing limits


def test_bearer_guesses_are_limited_per_address_and_others_keep_working(client):
    # a script that used the token from its own address before the attack
    assert client.get("/console/api/tickets", headers={"Authorization": f"Bearer {TOKEN}",
                                                       "X-Forwarded-For": "192.0.2.10"}).status_code == 200
    for i in range(10):
        r = client.get("/console/api/tickets", headers={"Authorization": f"Bearer guess-{i}",
                                                        "X-Forwarded-For": "198.51.100.7"})
        assert r.status_code == 401
    r = client.get("/console/api/tickets", headers={"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "198.51.100.7"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # even the right token: not checked
    # the script keeps working during the attack
    ok = client.get("/console/api/tickets", headers={"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "192.0.2.10"})
    assert ok.status_code == 200


def test_a_distributed_bearer_attack_gets_ten_guesses_a_minute(client):
    # the script's address authenticated before the attack
    assert client.get("/console/api/tickets", headers={"Authorization": f"Bearer {TOKEN}",
                                                       "X-Forwarded-For": "192.0.2.10"}).status_code == 200
    statuses = [client.get("/console/api/tickets", headers={"Authorization": f"Bearer g{i}",
                                                            "X-Forwarded-For": f"198.51.100.{i}"}).status_code
                for i in range(30)]
    assert statuses.count(401) == 10 and statuses.count(429) == 20  # 10 guesses at the token account
    assert client.get("/console/api/tickets", headers={"Authorization": f"Bearer {TOKEN}",
                                                       "X-Forwarded-For": "192.0.2.10"}).status_code == 200


def test_login_guesses_are_limited_per_address_across_accounts(client):
    names = ["alice", "bob", "carol", "dave", "erin"]
    for i in range(10):
        assert login(client, name=names[i % 5], secret=f"guess{i}", frm="198.51.100.7").status_code == 401
    r = login(client, name="frank", secret="guess", frm="198.51.100.7")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_an_attack_on_an_account_does_not_lock_out_its_operator(client):
    # alice logged in before from her browser (it keeps a known-device cookie) and from her office
    assert login(client, name="alice", secret=PASSWORD, frm="192.0.2.50").status_code == 303
    device = client.cookies.get("pbxbot_device", path="/console")
    assert device
    client.cookies.clear()
    # an attacker from many addresses: at most 10 guesses a minute at the account
    statuses = [login(client, name="alice", secret=f"guess{i}", frm=f"198.51.100.{i}").status_code for i in range(14)]
    client.cookies.clear()
    assert statuses.count(401) == 10 and statuses.count(429) == 4
    # an unknown browser at a new address gets no guess either, even with the right password
    assert login(client, name="alice", secret=PASSWORD, frm="203.0.113.99").status_code == 429
    client.cookies.clear()
    # alice, with her browser, from a new address: in
    client.cookies.set("pbxbot_device", device, path="/console")
    r = login(client, name="alice", secret=PASSWORD, frm="203.0.113.77")
    assert r.status_code == 303 and r.headers["location"] == "/console"
    client.cookies.clear()
    # and from her office address without the cookie (another browser there): in
    assert login(client, name="alice", secret=PASSWORD, frm="192.0.2.50").status_code == 303


def test_guessing_unknown_names_costs_what_guessing_a_real_one_costs():
    real = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=11)).decode()  # not the old dummy's 10
    app = create_app(make_settings(operators=f"alice:{real}", trusted_proxies=PROXY), core=FakeCore())
    known, unknown = [], []
    with TestClient(app, client=(PROXY, 40000)) as c:
        for i in range(6):
            for name, bucket in (("alice", known), (f"nobody{i}", unknown)):
                c.cookies.clear()
                frm = f"198.51.100.{len(known) + len(unknown)}"
                page = c.get("/console/login", headers={"X-Forwarded-For": frm})
                csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
                t0 = time.perf_counter()
                r = c.post("/console/login", data={"csrf": csrf, "name": name, "secret": "wrong"},
                           headers={"X-Forwarded-For": frm}, follow_redirects=False)
                bucket.append(time.perf_counter() - t0)
                assert r.status_code == 401
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.7 < ratio < 1.4, (known, unknown)


# ---------------------------------------------------------------- proxies, cookies


def test_forwarded_headers_count_only_from_trusted_proxies(core):
    app = create_app(make_settings(trusted_proxies=PROXY), core=core)
    with TestClient(app, client=("203.0.113.5", 40000)) as direct:
        # a client that is not a proxy cannot escape the per-address limit by inventing addresses
        for i in range(10):
            r = direct.get("/console/api/tickets", headers={"Authorization": f"Bearer g{i}",
                                                            "X-Forwarded-For": f"198.51.100.{i}"})
            assert r.status_code == 401
        r = direct.get("/console/api/tickets", headers={"Authorization": "Bearer g", "X-Forwarded-For": "192.0.2.1"})
        assert r.status_code == 429
        # nor claim https for its cookies
        r = direct.get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in r.headers["set-cookie"].lower()


def test_cookies_are_secure_behind_a_tls_proxy_or_when_configured(core):
    app = create_app(make_settings(trusted_proxies=f"{PROXY}/32"), core=core)
    with TestClient(app, client=(PROXY, 40000)) as c:
        assert "secure" in c.get("/console/login", headers={"X-Forwarded-Proto": "https"}).headers["set-cookie"].lower()
        assert "secure" not in c.get("/console/login", headers={"X-Forwarded-Proto": "http"}).headers["set-cookie"].lower()
        page = c.get("/console/login")  # (a Secure login cookie would not come back over the test's http)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/console/login", data={"csrf": csrf, "secret": TOKEN}, follow_redirects=False,
                   headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.3"})
        assert r.status_code == 303
        assert all("secure" in v.lower() for v in r.headers.get_list("set-cookie"))
    forced = create_app(make_settings(secure_cookies=True), core=core)
    with TestClient(forced) as c:
        assert "secure" in c.get("/console/login").headers["set-cookie"].lower()


def test_a_bad_trusted_proxies_setting_is_a_clear_error(core):
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        create_app(make_settings(trusted_proxies="10.0.0.1,proxy.example"), core=core)


# ---------------------------------------------------------------- logout


def test_logout_revokes_the_session_on_every_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'sessions.sqlite3'}"
    store_a, store_b = SqlHandoffStore(url), SqlHandoffStore(url)
    try:
        app_a = create_app(make_settings(), core=FakeCore(store_a))  # two workers, one database
        app_b = create_app(make_settings(), core=FakeCore(store_b))
        with TestClient(app_a) as a, TestClient(app_b) as b:
            assert login(a).status_code == 303
            stolen = a.cookies.get("pbxbot_console", path="/console")
            b.cookies.set("pbxbot_console", stolen, path="/console")
            assert b.get("/console/api/tickets").status_code == 200
            csrf = re.search(r'name="csrf" value="([^"]+)"', a.get("/console").text).group(1)
            assert a.post("/console/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
            # the copy of the cookie is dead on the other worker too
            assert b.get("/console/api/tickets").status_code == 401
            assert b.get("/console", follow_redirects=False).headers["location"] == "/console/login"
            a.cookies.set("pbxbot_console", stolen, path="/console")
            assert a.get("/console/api/tickets").status_code == 401
    finally:
        store_a.close()
        store_b.close()


# ---------------------------------------------------------------- the widget


def test_nobody_writes_into_a_widget_conversation_without_its_token(core):
    app = create_app(make_settings(), core=core)
    with TestClient(app) as owner, TestClient(app) as stranger:
        first = owner.post("/api/chat", json={"text": "hello"}).json()
        cid, token = first["conversation_id"], first["conversation_token"]
        before = len(core.store.transcript(cid))
        for bad in (None, "", "0" * 40, token[:-1] + "x", "ü" * 40):
            body = {"text": "I am someone else", "conversation_id": cid}
            if bad is not None:
                body["conversation_token"] = bad
            r = stranger.post("/api/chat", json=body)
            assert r.status_code == 403 and r.json()["error"] == "invalid_token"
        r = stranger.post("/api/chat", json={"text": "", "action": "request_human", "conversation_id": cid})
        assert r.status_code == 403
        assert len(core.store.transcript(cid)) == before
        assert core.handoff.active_ticket(cid) is None
        ok = owner.post("/api/chat", json={"text": "again", "conversation_id": cid, "conversation_token": token})
        assert ok.status_code == 200 and len(core.store.transcript(cid)) > before


@pytest.mark.parametrize("after", [2**63, 2**64, 10**30, -1])
def test_out_of_range_sequence_numbers_are_a_clear_4xx(core, after, caplog):
    app = create_app(make_settings(), core=core)
    with TestClient(app) as c:
        first = c.post("/api/chat", json={"text": "hello"}).json()
        ident = {"conversation_id": first["conversation_id"], "token": first["conversation_token"]}
        assert c.get("/api/chat/history", params={**ident, "after": after}).status_code == 422
        assert c.get("/api/chat/events", params={**ident, "after": after}).status_code == 422
        assert c.get("/api/chat/history", params={**ident, "after": 2**63 - 1}).json()["events"] == []
    no_traceback(caplog)


@pytest.mark.parametrize("last_id, status", [(str(2**63), 400), ("9" * 32, 400), ("٣", 200), ("²", 200), ("abc", 200)])
def test_last_event_id_is_bounded(core, last_id, status, caplog):
    app = create_app(make_settings(), core=core)
    with TestClient(app) as c:
        first = c.post("/api/chat", json={"text": "hello"}).json()
        params = {"conversation_id": first["conversation_id"], "token": first["conversation_token"]}
        app.state.web_channel.closing = True  # streams end after their history (the test can read to the end)
        r = c.get("/api/chat/events", params=params, headers={"Last-Event-ID": latin1(last_id)})
        assert r.status_code == status
        if status == 200:
            assert r.text.startswith("retry:")  # not a number of ours: ignored, the stream starts
    no_traceback(caplog)


def test_the_widget_limits_each_client_behind_the_proxy_not_the_proxy(core):
    # 1 message a minute per conversation, 15 per address (PER_ADDRESS_FACTOR): new conversations each time
    app = create_app(make_settings(trusted_proxies=PROXY, rate_limit_per_minute=1), core=core)
    with TestClient(app, client=(PROXY, 40000)) as c:
        one = [c.post("/api/chat", json={"text": "hello"}, headers={"X-Forwarded-For": "198.51.100.1"}).status_code
               for _ in range(16)]
        assert one.count(200) == 15 and one[-1] == 429
        other = c.post("/api/chat", json={"text": "hello"}, headers={"X-Forwarded-For": "198.51.100.2"})
        assert other.status_code == 200  # another user behind the same proxy is not capped
