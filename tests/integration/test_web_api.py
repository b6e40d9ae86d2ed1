"""/healthz and POST /api/chat through the real ASGI app (FastAPI TestClient), with a fake core."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from bot.config import ConfigError, Settings
from bot.web.app import create_app
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.integration


def make_settings(**kw) -> Settings:
    base = dict(_env_file=None, operator_token="op-token-for-tests-123", session_secret="s" * 32,
                data_dir="/tmp/pbxbot-web-tests")
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def core():
    return FakeCore()


@pytest.fixture
def client(core):
    app = create_app(make_settings(), core=core, outbox_interval=0.05)
    with TestClient(app) as c:
        yield c


def test_healthz_reports_store_state(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["store"]["ok"] is True
    assert "web" in body["channels"]


def test_healthz_is_503_when_the_store_fails(core):
    def broken(*a, **k):
        raise RuntimeError("database is down")

    core.store.health = broken
    with TestClient(create_app(make_settings(), core=core)) as c:
        r = c.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"


def test_healthz_reports_a_widget_feed_that_cannot_read_the_store(core):
    import time

    def broken(*a, **k):
        raise RuntimeError("transcript unreadable")

    core.store.latest_message_id = broken
    with TestClient(create_app(make_settings(), core=core)) as c:
        deadline = time.monotonic() + 5
        while c.app.state.web_channel.feed.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/healthz")
    assert r.status_code == 503
    assert r.json()["widget_feed"] == {"ok": False}


def test_chat_answers_with_the_contract_reply_and_a_new_conversation(client):
    r = client.post("/api/chat", json={"text": "PBXが乗っ取られたかもしれません"})
    assert r.status_code == 200
    body = r.json()
    for key in ("id", "conversation_id", "language", "answer", "citations", "escalation", "confidence"):
        assert key in body
    assert body["conversation_id"].startswith("web:")
    assert body["language"] == "ja"
    assert body["citations"][0]["n"] == 1 and body["citations"][0]["url"].startswith("https://")
    assert "[1]" in body["answer"]
    assert body["conversation_token"]
    assert r.headers["x-request-id"]


def test_chat_continues_a_conversation_and_requests_a_human(client, core):
    first = client.post("/api/chat", json={"text": "hello, our PBX makes strange calls"}).json()
    cid, token = first["conversation_id"], first["conversation_token"]
    r = client.post("/api/chat", json={"text": "", "action": "request_human", "conversation_id": cid,
                                       "conversation_token": token})
    assert r.status_code == 200
    body = r.json()
    assert body["conversation_id"] == cid
    assert body["escalation"]["ticket_id"]
    assert core.handled[-1].action == "request_human"
    assert core.handoff.active_ticket(cid) is not None


def test_a_client_chosen_conversation_id_stays_in_the_web_channel(client, core):
    r = client.post("/api/chat", json={"text": "hi there", "conversation_id": "telegram:12345"})
    assert r.status_code == 200
    assert r.json()["conversation_id"] == "web:telegram:12345"
    token = r.json()["conversation_token"]  # the client that created it holds its token
    assert token and core.handled[-1].address.channel == "web"
    again = client.post("/api/chat", json={"text": "and then?", "conversation_id": "telegram:12345",
                                           "conversation_token": token})
    assert again.status_code == 200
    stranger = client.post("/api/chat", json={"text": "me too", "conversation_id": "telegram:12345"})
    assert stranger.status_code == 403 and stranger.json()["error"] == "invalid_token"


@pytest.mark.parametrize("payload", [{"text": ""}, {"text": "   \n "}, {}])
def test_empty_text_is_a_clear_422(client, payload):
    r = client.post("/api/chat", json=payload)
    assert r.status_code == 422
    assert r.json()["error"] == "empty_text"


def test_huge_body_is_413_json_never_500(client):
    r = client.post("/api/chat", content=b'{"text": "' + b"a" * 300_000 + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_huge_chunked_body_without_content_length_is_413(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    r = client.post("/api/chat", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_text_over_the_character_limit_is_rejected(client):
    r = client.post("/api/chat", json={"text": "あ" * 4001})
    assert r.status_code == 413
    assert r.json()["error"] == "text_too_long"


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2,3]", b'{"text": 5}', b'"just a string"', b"\xff\xfe\x00",
                                 b'{"text": "hi", "action": "delete_everything"}'])
def test_malformed_json_is_422_never_500(client, raw):
    r = client.post("/api/chat", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"] in ("invalid_json", "invalid_request")


def test_rate_limit_answers_politely_with_429(core):
    app = create_app(make_settings(rate_limit_per_minute=3), core=core)
    with TestClient(app) as c:
        first = c.post("/api/chat", json={"text": "PBXの設定について"}).json()
        ident = {"conversation_id": first["conversation_id"], "conversation_token": first["conversation_token"]}
        codes = [c.post("/api/chat", json={"text": "もう一度", **ident}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/api/chat", json={"text": "まだですか", **ident})
    assert r.status_code == 429
    body = r.json()
    assert body["error"] == "rate_limited"
    assert "お待ち" in body["answer"] and body["message"] == body["answer"]
    assert int(r.headers["retry-after"]) >= 1
    assert len(core.handled) == 3  # the limited messages never reached the core


def test_request_id_is_echoed_and_errors_are_logged_with_it(core, caplog):
    core.fail_on = "explode"
    app = create_app(make_settings(), core=core)
    with TestClient(app) as c, caplog.at_level(logging.ERROR):
        r = c.post("/api/chat", json={"text": "please explode"}, headers={"X-Request-ID": "req-abc-123"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "req-abc-123"
    assert r.json() == {"error": "internal_error", "message": r.json()["message"], "request_id": "req-abc-123"}
    assert any("req-abc-123" in rec.getMessage() for rec in caplog.records)


def test_history_needs_the_conversation_token(client):
    first = client.post("/api/chat", json={"text": "hello"}).json()
    cid, token = first["conversation_id"], first["conversation_token"]
    assert client.get("/api/chat/history", params={"conversation_id": cid, "token": "x" * 40}).status_code == 403
    r = client.get("/api/chat/history", params={"conversation_id": cid, "token": token})
    assert r.status_code == 200
    roles = [e["role"] for e in r.json()["events"]]
    assert roles == ["user", "bot"]


def test_widget_and_demo_page_are_served(client):
    r = client.get("/widget.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert "担当者と話す" in r.text and "Talk to a person" in r.text
    r = client.get("/")
    assert r.status_code == 200 and '<script src="/widget.js"' in r.text
    assert "content-security-policy" in r.headers


def test_half_configured_channel_stops_start_up_with_a_clear_error(core):
    with pytest.raises(ConfigError, match="PBXBOT_LINE_CHANNEL_ACCESS_TOKEN"):
        create_app(make_settings(line_channel_secret="abc123secret"), core=core)


def test_secrets_never_reach_the_logs(core, caplog):
    from bot.logging_setup import SecretMaskingFilter

    settings = make_settings()
    flt = SecretMaskingFilter(settings.secret_values())
    app = create_app(settings, core=core)
    with TestClient(app) as c, caplog.at_level(logging.INFO):
        caplog.handler.addFilter(flt)
        c.post("/console/login", data={"secret": settings.operator_token.get_secret_value(), "csrf": "x"})
        logging.getLogger("bot.web").info("token is %s", settings.operator_token.get_secret_value())
    assert "op-token-for-tests-123" not in caplog.text
