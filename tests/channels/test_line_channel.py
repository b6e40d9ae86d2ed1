"""LINE channel: line-bot-sdk v3 (WebhookParser, AsyncMessagingApi) against a local fake Messaging API.

Webhook bodies carry real X-Line-Signature values (base64 HMAC-SHA256 of the raw body); wrong,
missing and malformed signatures get 4xx; replies (reply token) and pushes (X-Line-Retry-Key) are
observed at the fake API; retried deliveries are processed once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.channels import line as line_module
from bot.channels.base import DeliveryError
from bot.config import Settings
from bot.messages import Address, Reply
from tests.fakes_platforms import (
    ChannelApp,
    FakePlatforms,
    line_body,
    line_postback_event,
    line_signature,
    line_text_event,
)
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.local_server  # the fake platform API listens on loopback

SECRET = "0123456789abcdef0123456789abcdef"
TOKEN = "line-channel-access-token-test"
USER = "U" + "a" * 32


def make_settings(fake: FakePlatforms, tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, line_channel_secret=SECRET, line_channel_access_token=TOKEN,
                    line_api_url=fake.url, **kw)


@pytest.fixture
async def fake():
    async with FakePlatforms() as f:
        yield f


@pytest.fixture
async def line(fake, tmp_path):
    async with ChannelApp(make_settings(fake, tmp_path), FakeCore(), line_module) as app:
        yield app


async def post(app: ChannelApp, body: bytes, signature: str | None = "auto"):
    headers = {"Content-Type": "application/json"}
    if signature == "auto":
        headers["X-Line-Signature"] = line_signature(SECRET, body)
    elif signature is not None:
        headers["X-Line-Signature"] = signature
    return await app.client.post("/webhooks/line", content=body, headers=headers)


async def test_signed_text_message_is_answered_with_the_reply_token(line, fake):
    body = line_body(line_text_event("国際電話を止めるには？", event_id="01EV1", reply_token="rt-abc"))
    resp = await post(line, body)
    assert resp.status_code == 200
    [reply] = await fake.wait_for(lambda r: r.method == "reply")
    assert reply.headers["Authorization"] == f"Bearer {TOKEN}"
    assert reply.data["replyToken"] == "rt-abc"
    message = reply.data["messages"][0]
    assert "通信事業者" in message["text"] and "https://www.soumu.go.jp/example" in message["text"]
    item = message["quickReply"]["items"][0]["action"]
    assert item["type"] == "postback" and item["label"] == "担当者と話す"
    assert item["data"] == line_module.HUMAN_POSTBACK
    assert not fake.calls("line", "push")
    handled = line.core.handled[0]
    assert handled.address.conversation_id == f"line:{USER}"
    assert handled.message_id == "line:01EV1"


@pytest.mark.parametrize("case", ["wrong", "missing", "empty", "not_base64", "non_ascii", "other_body", "huge"])
async def test_wrong_missing_or_malformed_signature_is_rejected(line, fake, case):
    body = line_body(line_text_event("hello", event_id="01BAD"))
    signature = {
        "wrong": line_signature("another-secret", body),
        "missing": None,
        "empty": "",
        "not_base64": "!!!not-base64!!!",
        "non_ascii": "é" * 44,
        "other_body": line_signature(SECRET, body + b" "),
        "huge": "A" * 10_000,
    }[case]
    if case == "non_ascii":
        resp = await line.client.post("/webhooks/line", content=body,
                                      headers=[(b"X-Line-Signature", signature.encode("utf-8"))])
    else:
        resp = await post(line, body, signature)
    assert 400 <= resp.status_code < 500
    await asyncio.sleep(0.05)
    assert line.core.handled == [] and not fake.calls("line")


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"events": 5}', b'{"events": [5]}', b'{"events": [{}]}',
                                  b"\xff\xfe\xfd", b'{"events": [{"type": "message", "message": 1}]}', b"null"])
async def test_signed_hostile_bodies_get_4xx_never_5xx(line, fake, body):
    resp = await post(line, body)
    assert resp.status_code < 500
    await line.settle()


async def test_redelivered_event_is_processed_once(line, fake):
    event = line_text_event("国際電話を止めるには？", event_id="01DUP", reply_token="rt-1")
    assert (await post(line, line_body(event))).status_code == 200
    again = dict(event, deliveryContext={"isRedelivery": True}, replyToken="rt-2")
    assert (await post(line, line_body(again))).status_code == 200
    await line.settle()
    await asyncio.sleep(0.05)
    assert len(line.core.handled) == 1
    assert len(fake.calls("line", "reply")) == 1


async def test_quick_reply_postback_requests_a_human(line, fake):
    body = line_body(line_postback_event(line_module.HUMAN_POSTBACK, event_id="01PB"))
    assert (await post(line, body)).status_code == 200
    [reply] = await fake.wait_for(lambda r: r.method == "reply")
    ticket = line.core.handoff.list_queue()[0]
    assert ticket.id in reply.data["messages"][0]["text"]
    assert line.core.handled[0].action == "request_human"


async def test_failed_reply_token_falls_back_to_push_with_retry_key(line, fake):
    fake.line_reply_fail = True
    body = line_body(line_text_event("国際電話を止めるには？", event_id="01EXP"))
    assert (await post(line, body)).status_code == 200
    [push] = await fake.wait_for(lambda r: r.method == "push")
    assert push.data["to"] == USER
    assert len(push.headers["X-Line-Retry-Key"]) == 36


async def test_expired_reply_token_is_not_used(line, fake):
    old = int((time.time() - 600) * 1000)
    body = line_body(line_text_event("国際電話を止めるには？", event_id="01OLD", timestamp_ms=old))
    assert (await post(line, body)).status_code == 200
    await fake.wait_for(lambda r: r.method == "push")
    assert not fake.calls("line", "reply")


async def test_operator_message_is_pushed_and_retried_with_the_same_key(line, fake):
    fake.line_push_fail = 1  # the first attempt fails with 500
    address = Address("line", f"line:{USER}", USER, {"to": USER, "type": "user"})
    await line.registry.send(address, Reply(f"line:{USER}", "ja", "回線を止めました。", kind="operator"))
    pushes = fake.calls("line", "push")
    assert len(pushes) == 2
    assert pushes[0].headers["X-Line-Retry-Key"] == pushes[1].headers["X-Line-Retry-Key"]
    assert pushes[1].data["messages"][0]["text"].startswith("担当者: 回線を止めました")


async def test_an_outbox_item_sent_again_by_another_attempt_reaches_line_once(line, fake):
    """The retry key comes from the outbox item: a resend after a crash (delivered, not yet marked
    sent) or by another worker carries the same key, and LINE's 409 counts as delivered."""
    address = Address("line", f"line:{USER}", USER, {"to": USER})
    reply = Reply(f"line:{USER}", "ja", "回線を止めました。", kind="operator", outbox_id=41)
    await line.channel.send(address, reply)
    await line.channel.send(address, reply)  # no error: already accepted
    first, second = fake.calls("line", "push")
    assert first.headers["X-Line-Retry-Key"] == second.headers["X-Line-Retry-Key"]
    assert len(fake.line_retry_keys) == 1
    other = Reply(f"line:{USER}", "ja", "回線を止めました。", kind="operator", outbox_id=42)
    await line.channel.send(address, other)
    assert len(fake.line_retry_keys) == 2  # another item: another key


async def test_push_that_keeps_failing_raises_delivery_error(line, fake):
    fake.line_push_fail = 10
    address = Address("line", f"line:{USER}", USER, {"to": USER})
    with pytest.raises(DeliveryError):
        await line.channel.send(address, Reply(f"line:{USER}", "ja", "x", kind="operator"))


async def test_follow_and_non_text_messages_get_a_notice(line, fake):
    follow = {"type": "follow", "mode": "active", "timestamp": int(time.time() * 1000),
              "source": {"type": "user", "userId": USER}, "webhookEventId": "01FOL",
              "deliveryContext": {"isRedelivery": False}, "replyToken": "rt-follow", "follow": {"isUnblocked": False}}
    sticker = line_text_event("x", event_id="01STK", reply_token="rt-stk")
    sticker["message"] = {"id": "1", "type": "sticker", "packageId": "1", "stickerId": "1",
                          "stickerResourceType": "STATIC", "quoteToken": "q"}
    assert (await post(line, line_body(follow, sticker))).status_code == 200
    replies = await fake.wait_for(lambda r: r.method == "reply", count=2)
    assert {r.data["replyToken"] for r in replies} == {"rt-follow", "rt-stk"}
    assert line.core.handled == []


async def test_long_answers_are_split_within_the_text_limit():
    reply = Reply("c", "ja", "あ" * 12000, offer_human=True)
    messages = line_module.render_messages(reply)
    assert len(messages) == 3 and all(len(m.text) <= 5000 for m in messages)
    assert messages[-1].quick_reply is not None and messages[0].quick_reply is None


def test_verify_signature_is_total():
    for sig in [None, "", "=", "é", "a" * 1000, "YWJj"]:
        assert line_module.verify_signature(b"s", b"{}", sig) is False
    assert line_module.verify_signature(b"s", b"{}", line_signature("s", b"{}")) is True


async def test_real_service_answers_escalates_and_pushes_the_operator_reply(fake, tmp_path):
    from tests.fakes_platforms import FIXTURE_CORPUS, ServedApp, real_core

    settings = make_settings(fake, tmp_path, database_url=f"sqlite:///{tmp_path / 'line.sqlite3'}",
                             knowledge_dir=FIXTURE_CORPUS, embedder="hash")
    core = await asyncio.to_thread(real_core, settings)
    async with ServedApp(settings, core) as srv:  # bot.web.app.create_app, lifespan running
        assert "line" in srv.registry
        body = line_body(line_text_event("国際電話を止めるには？", event_id="01REAL1", reply_token="rt-real"))
        assert (await post(srv, body)).status_code == 200
        [answer] = await fake.wait_for(lambda r: r.method == "reply", timeout=10)
        assert "https://example.org/fixture/" in answer.data["messages"][0]["text"]
        body = line_body(line_postback_event(line_module.HUMAN_POSTBACK, event_id="01REAL2", reply_token="rt-pb"))
        assert (await post(srv, body)).status_code == 200
        await fake.wait_for(lambda r: r.method == "reply", count=2, timeout=10)
        [ticket] = core.handoff.list_queue()
        core.handoff.claim(ticket.id, "yamada")
        core.handoff.reply(ticket.id, "yamada", "回線を止めました。")
        [push] = await fake.wait_for(lambda r: r.method == "push", timeout=10)
        assert push.data["to"] == USER and "回線を止めました" in push.data["messages"][0]["text"]
        assert push.headers["X-Line-Retry-Key"]


async def test_mutated_signed_bodies_never_get_5xx(line, fake):
    from tests.fakes_platforms import mutations

    base = line_body(line_text_event("国際電話", event_id="01MUT"), line_postback_event("action=request_human",
                                                                                      event_id="01MUT2"))
    statuses = set()
    for body in mutations(base, 300):
        resp = await post(line, body)
        statuses.add(resp.status_code)
        assert resp.status_code in (200, 400), (body, resp.status_code)
    await line.settle()
    assert 400 in statuses
