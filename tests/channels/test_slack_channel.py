"""Slack channel: the adapter and slack_sdk clients against a local fake Slack API.

Requests carry real v0 signatures computed as Slack does; forged, replayed and malformed ones are
rejected with 4xx; answers are observed at the fake response_url, operator messages and ticket
announcements at the fake chat.postMessage.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.channels import slack as slack_module
from bot.config import Settings
from bot.messages import Address, Citation, Reply
from tests.fakes_platforms import (
    ChannelApp,
    FakePlatforms,
    slack_action_body,
    slack_command_body,
    slack_headers,
)
from tests.web_fakes import FakeCore, down_for

pytestmark = pytest.mark.local_server  # the fake platform API listens on loopback

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-test-token-123"


def make_settings(fake: FakePlatforms, tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, slack_signing_secret=SECRET, slack_bot_token=TOKEN,
                    slack_api_url=fake.slack_base, slack_operator_channel="C0OPS", **kw)


@pytest.fixture
async def fake():
    async with FakePlatforms() as f:
        yield f


@pytest.fixture
async def slack(fake, tmp_path):
    async with ChannelApp(make_settings(fake, tmp_path), FakeCore(), slack_module) as app:
        yield app


async def post_command(app: ChannelApp, body: bytes, headers: dict[str, str] | None = None,
                       path: str = "/webhooks/slack/commands"):
    return await app.client.post(path, content=body, headers=headers if headers is not None
                                 else slack_headers(SECRET, body))


async def test_signed_slash_command_is_acked_then_answered_through_response_url(slack, fake):
    body = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("a1"))
    started = time.perf_counter()
    resp = await post_command(slack, body)
    assert resp.status_code == 200
    assert time.perf_counter() - started < 3.0
    assert "確認しています" in resp.text
    [answer] = await fake.wait_for(lambda r: r.platform == "slack_response")
    assert answer.path.endswith("/a1")
    assert answer.data["response_type"] == "ephemeral"
    blocks = answer.data["blocks"]
    mrkdwn = "\n".join(b["text"]["text"] for b in blocks if b["type"] == "section")
    assert "通信事業者" in mrkdwn
    assert "<https://www.soumu.go.jp/example|[1] 総務省「IP-PBXの不正利用に関する注意喚起」>" not in mrkdwn
    assert "<https://www.soumu.go.jp/example|" in mrkdwn  # citation as a link
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert actions["elements"][0]["action_id"] == "escalate"
    assert slack.core.handled[0].address.conversation_id == "slack:T0001:U0USER1"
    assert slack.core.handled[0].message_id.startswith("slack:")


async def test_auth_test_called_against_fake_api(slack, fake):
    assert fake.calls("slack", "auth.test")
    assert fake.calls("slack", "auth.test")[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("case", ["wrong", "missing", "replayed", "future", "non_numeric_ts", "non_ascii_sig",
                                  "no_prefix", "empty", "huge_ts"])
async def test_forged_replayed_or_malformed_signature_is_rejected_with_4xx(slack, fake, case):
    body = slack_command_body("hello", response_url=fake.response_url())
    headers = slack_headers(SECRET, body)
    if case == "wrong":
        headers = slack_headers("another-secret", body)
    elif case == "missing":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif case == "replayed":
        headers = slack_headers(SECRET, body, timestamp=int(time.time()) - 301)
    elif case == "future":
        headers = slack_headers(SECRET, body, timestamp=int(time.time()) + 600)
    elif case == "non_numeric_ts":
        headers["X-Slack-Request-Timestamp"] = "12ab"
    elif case == "non_ascii_sig":
        headers["X-Slack-Signature"] = "v0=" + "é" * 64
    elif case == "no_prefix":
        headers["X-Slack-Signature"] = headers["X-Slack-Signature"][3:]
    elif case == "empty":
        headers["X-Slack-Signature"] = ""
    elif case == "huge_ts":
        headers["X-Slack-Request-Timestamp"] = "9" * 400
    resp = await slack.client.post("/webhooks/slack/commands",
                                   content=body, headers={k: v for k, v in headers.items()} if case != "non_ascii_sig"
                                   else [(k.encode(), v.encode("utf-8")) for k, v in headers.items()])
    assert 400 <= resp.status_code < 500, resp.text
    await asyncio.sleep(0.05)
    assert slack.core.handled == []
    assert not fake.calls("slack_response")


async def test_tampered_body_is_rejected(slack, fake):
    body = slack_command_body("hello", response_url=fake.response_url())
    headers = slack_headers(SECRET, body)
    resp = await slack.client.post("/webhooks/slack/commands", content=body + b"&x=1", headers=headers)
    assert resp.status_code == 401


async def test_signed_garbage_bodies_get_4xx_never_5xx(slack, fake):
    for body in [b"", b"\xff\xfe\x00garbage", b"payload=%7Bnot-json", b"payload=%5B1%2C2%5D", b"command=&text=",
                 b"a" * 5000]:
        for path in ("/webhooks/slack/commands", "/webhooks/slack/interactions"):
            resp = await post_command(slack, body, path=path)
            assert resp.status_code < 500, (body[:20], path, resp.status_code)
    await slack.settle()


async def test_retry_of_the_same_command_is_not_processed_twice(slack, fake):
    body = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("r"), trigger_id="trg-dup-1")
    assert (await post_command(slack, body)).status_code == 200
    headers = slack_headers(SECRET, body)
    headers["X-Slack-Retry-Num"] = "1"
    headers["X-Slack-Retry-Reason"] = "http_timeout"
    assert (await slack.client.post("/webhooks/slack/commands", content=body, headers=headers)).status_code == 200
    await slack.settle()
    await asyncio.sleep(0.05)
    assert len(slack.core.handled) == 1
    assert len(fake.calls("slack_response")) == 1


async def test_escalate_button_requests_a_human_and_announces_the_ticket(slack, fake):
    body = slack_action_body(response_url=fake.response_url("b1"))
    resp = await post_command(slack, body, path="/webhooks/slack/interactions")
    assert resp.status_code == 200
    [announce] = await fake.wait_for(lambda r: r.method == "chat.postMessage")
    assert announce.data["channel"] == "C0OPS"
    ticket_id = slack.core.handoff.list_queue()[0].id
    assert ticket_id in announce.data["text"]
    [answer] = await fake.wait_for(lambda r: r.platform == "slack_response")
    assert ticket_id in answer.data["text"]
    assert slack.core.handled[0].action == "request_human"


async def test_operator_reply_goes_through_fresh_response_url_then_chat_post_message(slack, fake):
    address = Address("slack", "slack:T0001:U0USER1", "U0USER1",
                      {"team_id": "T0001", "user_id": "U0USER1", "channel": "C0GENERAL",
                       "response_url": fake.response_url("op"), "response_url_at": int(time.time())})
    reply = Reply("slack:T0001:U0USER1", "ja", "回線を止めました。", kind="operator")
    await slack.registry.send(address, reply)
    [first] = await fake.wait_for(lambda r: r.platform == "slack_response")
    assert "担当者" in first.data["blocks"][0]["text"]["text"]
    # an expired response_url: chat.postMessage to the user's DM
    old = Address("slack", "slack:T0001:U0OLD", "U0OLD",
                  {"team_id": "T0001", "user_id": "U0OLD", "channel": "C0GENERAL",
                   "response_url": fake.response_url("old"), "response_url_at": int(time.time()) - 3600})
    await slack.registry.send(old, reply)
    posts = await fake.wait_for(lambda r: r.method == "chat.postMessage" and r.data.get("channel") == "U0OLD")
    assert posts[0].data["text"].startswith("回線を止めました")
    # a response_url that fails: falls back to chat.postMessage
    fake.slack_response_fail = True
    await slack.registry.send(address, reply)
    await fake.wait_for(lambda r: r.method == "chat.postMessage" and r.data.get("channel") == "U0USER1")


async def test_failed_post_message_raises_delivery_error(slack, fake):
    from bot.channels.base import DeliveryError

    fake.slack_post_fail = True
    address = Address("slack", "slack:T0001:U9", "U9", {"user_id": "U9", "channel": "C1"})
    with pytest.raises(DeliveryError):
        await slack.channel.send(address, Reply("slack:T0001:U9", "en", "hello", kind="operator"))


async def test_rate_limited_user_gets_a_polite_wait_message(fake, tmp_path):
    settings = make_settings(fake, tmp_path, rate_limit_per_minute=2)
    async with ChannelApp(settings, FakeCore(), slack_module) as app:
        texts = []
        for i in range(3):
            body = slack_command_body(f"question {i}", response_url=fake.response_url(f"q{i}"),
                                      trigger_id=f"trg-rl-{i}")
            texts.append((await post_command(app, body)).text)
        assert "wait" in texts[-1].lower()
        await app.settle()
        assert len(app.core.handled) == 2


def test_render_escapes_user_and_answer_text():
    reply = Reply("c", "en", "a <b> & <!channel>", offer_human=False,
                  citations=(Citation(1, "d", "T|<x>", "P&Q", "https://example.org/a", "2024-01-01"),))
    msg = slack_module.render_message(reply)
    text = msg["blocks"][0]["text"]["text"]
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "<https://example.org/a|[1] P&amp;Q: T¦&lt;x&gt;>" not in msg["blocks"][1]["text"]["text"]
    assert "<https://example.org/a|P&amp;Q: T¦&lt;x&gt;>" in msg["blocks"][1]["text"]["text"]
    assert not any(b["type"] == "actions" for b in msg["blocks"])


def test_verify_signature_is_total():
    secret = b"s"
    for ts, sig in [(None, None), ("", "v0=x"), ("1e3", "v0=x"), ("١٢٣", "v0=x"), ("123", "v0=\u00e9"),
                    ("123", "x" * 1000), ("-5", "v0=ab")]:
        assert slack_module.verify_signature(secret, b"body", ts, sig) is False


async def test_real_service_answers_announces_the_ticket_and_relays_the_operator_reply(fake, tmp_path):
    from tests.fakes_platforms import FIXTURE_CORPUS, ServedApp, real_core

    settings = make_settings(fake, tmp_path, database_url=f"sqlite:///{tmp_path / 'slack.sqlite3'}",
                             knowledge_dir=FIXTURE_CORPUS, embedder="hash")
    core = await asyncio.to_thread(real_core, settings)
    async with ServedApp(settings, core) as srv:  # bot.web.app.create_app, lifespan running
        assert "slack" in srv.registry
        body = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("real1"), trigger_id="t-real-1")
        assert (await post_command(srv, body)).status_code == 200
        [answer] = await fake.wait_for(lambda r: r.platform == "slack_response", timeout=10)
        assert "<https://example.org/fixture/" in answer.data["blocks"][1]["text"]["text"]
        body = slack_action_body(response_url=fake.response_url("real2"), trigger_id="t-real-2")
        assert (await post_command(srv, body, path="/webhooks/slack/interactions")).status_code == 200
        [announce] = await fake.wait_for(lambda r: r.method == "chat.postMessage", timeout=10)
        [ticket] = core.handoff.list_queue()
        assert announce.data["channel"] == "C0OPS" and ticket.id in announce.data["text"]
        core.handoff.claim(ticket.id, "yamada")
        core.handoff.reply(ticket.id, "yamada", "回線を止めました。")
        await fake.wait_for(lambda r: r.platform == "slack_response" and "回線を止めました" in r.data.get("text", ""),
                            timeout=10)


async def test_answer_that_cannot_be_delivered_waits_in_the_outbox(slack, fake):
    fake.slack_response_fail = True
    fake.slack_post_fail, fake.slack_post_error = True, "ratelimited"  # a passing failure
    body = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("gone"), trigger_id="t-outbox")
    assert (await post_command(slack, body)).status_code == 200
    await slack.settle()
    [item] = slack.core.handoff.pending_outbox()
    assert item.address.conversation_id == "slack:T0001:U0USER1"
    assert "通信事業者" in item.reply["answer"]
    assert slack.core.handoff.outbox_status(item.id)["status"] == "pending"


async def test_an_answer_to_a_channel_that_is_gone_is_dead_lettered_not_retried(slack, fake):
    fake.slack_response_fail = True
    fake.slack_post_fail = True  # channel_not_found: no retry will deliver it
    body = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("gone"), trigger_id="t-dead")
    assert (await post_command(slack, body)).status_code == 200
    await slack.settle()
    assert slack.core.handoff.pending_outbox() == []
    [dead] = slack.core.handoff.undelivered()
    assert dead.status == "dead" and "channel_not_found" in dead.last_error


async def test_ssl_check_is_answered(slack, fake):
    body = b"ssl_check=1&token=legacy-unused"
    resp = await post_command(slack, body)
    assert resp.status_code == 200
    assert slack.core.handled == []


async def test_mutated_signed_bodies_never_get_5xx(slack, fake):
    from tests.fakes_platforms import mutations

    command = slack_command_body("hello", response_url=fake.response_url("m"))
    action = slack_action_body(response_url=fake.response_url("m2"))
    for path, base in (("/webhooks/slack/commands", command), ("/webhooks/slack/interactions", action)):
        for body in mutations(base, 150):
            resp = await post_command(slack, body, path=path)
            assert resp.status_code < 500, (path, body, resp.status_code)
    await slack.settle()


@pytest.mark.parametrize("payload", [
    {"type": "block_actions", "user": 1, "actions": [{"action_id": "escalate"}], "trigger_id": "p1"},
    {"type": "block_actions", "user": {"id": ["x"]}, "team": "T", "channel": 5,
     "actions": [{"action_id": "escalate"}], "response_url": 7, "trigger_id": "p2"},
    {"type": "block_actions", "actions": 5, "trigger_id": "p3"},
    {"type": "block_actions", "actions": [5], "trigger_id": "p4"},
    {"type": "block_actions", "actions": [{"action_id": ["escalate"]}], "trigger_id": "p5"},
    {"type": 5, "trigger_id": "p6"},
    {"type": "view_submission", "view": None, "trigger_id": "p7"},
    {"type": "shortcut", "callback_id": 3, "trigger_id": "p8"},
])
async def test_signed_hostile_interaction_payloads_get_4xx_or_200_never_5xx(slack, fake, payload):
    import json as _json
    import urllib.parse

    body = urllib.parse.urlencode({"payload": _json.dumps(payload)}).encode()
    resp = await post_command(slack, body, path="/webhooks/slack/interactions")
    assert resp.status_code < 500
    await slack.settle()


@pytest.mark.parametrize("fields", [
    {"command": "/pbx", "text": "hi", "user_id": "", "team_id": "", "channel_id": "", "response_url": "ftp://x"},
    {"command": "/pbx"},
    {"command": "/pbx", "text": "x" * 10000, "response_url": "not a url", "trigger_id": "tt-long"},
])
async def test_signed_odd_commands_never_get_5xx(slack, fake, fields):
    import urllib.parse

    body = urllib.parse.urlencode(fields).encode()
    resp = await post_command(slack, body)
    assert resp.status_code < 500
    await slack.settle()


@pytest.mark.parametrize("where", ["http://localhost:{port}/slack/response/evil", "http://169.254.169.254/latest/meta-data",
                                   "https://hooks.slack.com.evil.example/x", "http://hooks.slack.com/commands/1",
                                   "https://user@hooks.slack.com/x", "file:///etc/passwd", "ftp://hooks.slack.com/x"])
async def test_a_response_url_outside_slack_is_never_contacted(slack, fake, where):
    url = where.format(port=fake.port)
    resp = await post_command(slack, slack_command_body("国際電話を止めるには？", response_url=url))
    assert resp.status_code == 200
    [posted] = await fake.wait_for(lambda r: r.platform == "slack" and r.method == "chat.postMessage")
    assert posted.data["channel"] == "D0DM0001"  # the answer went to the user's DM through the Web API instead
    assert not fake.calls("slack_response")


def test_response_url_allowed_only_for_slack_hooks_or_the_configured_fake():
    from bot.channels.slack import response_url_allowed

    assert response_url_allowed("https://hooks.slack.com/commands/T1/2/abc")
    assert response_url_allowed("https://hooks.slack.com:443/actions/T1/2/abc")
    for bad in ("https://hooks.slack.com:8443/x", "http://hooks.slack.com/x", "https://127.0.0.1/x",
                "https://hooks.slack.com@127.0.0.1/x", "https://hooks.slack.com\\@evil/x", "https://hooks.slack.com/\n",
                "https://ｈooks.slack.com/x", None, 5, "", "https://[::1]/x", "https://hooks.slack.com:99999/x"):
        assert not response_url_allowed(bad), bad
    fake_api = "http://127.0.0.1:8765/api/"
    assert response_url_allowed("http://127.0.0.1:8765/slack/response/1", fake_api)
    assert not response_url_allowed("http://127.0.0.1:8766/slack/response/1", fake_api)
    assert not response_url_allowed("https://slack.com/x", "https://slack.com/api/")


async def test_a_command_the_store_cannot_record_is_refused_with_503_not_acknowledged(slack, fake):
    """Slack does not resend a command: the user sees Slack's error and types it again."""
    down_for(slack.core.store, 1)
    first = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("a"), trigger_id="t-down-1")
    assert (await post_command(slack, first)).status_code == 503
    again = slack_command_body("国際電話を止めるには？", response_url=fake.response_url("b"), trigger_id="t-down-2")
    assert (await post_command(slack, again)).status_code == 200
    await slack.settle()
    assert [m.text for m in slack.core.handled] == ["国際電話を止めるには？"]
