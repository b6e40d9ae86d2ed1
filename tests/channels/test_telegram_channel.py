"""Telegram channel: the real python-telegram-bot Application talking HTTP to a local fake Bot API.

Webhook path (secret token checked, hostile JSON rejected, duplicates dropped, replies observed as
sendMessage at the fake API) and polling path (the fake getUpdates hands out an update, the
reply is observed).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.channels import telegram as telegram_module
from bot.channels.registry import enabled_platforms
from bot.config import Settings
from bot.messages import Address, Citation, Reply
from tests.fakes_platforms import (
    ChannelApp,
    FakePlatforms,
    telegram_callback_update,
    telegram_message_update,
)
from tests.web_fakes import FakeCore

pytestmark = pytest.mark.local_server  # the fake platform API listens on loopback

TOKEN = "123456:TEST-telegram-token_abcdef"
SECRET = "webhook-secret_TOKEN-42"
CHAT = 5551234


def make_settings(fake: FakePlatforms, tmp_path, **kw) -> Settings:
    base = dict(_env_file=None, data_dir=tmp_path, telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                telegram_api_url=fake.telegram_base)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
async def fake():
    async with FakePlatforms() as f:
        yield f


@pytest.fixture
async def tg(fake, tmp_path):
    async with ChannelApp(make_settings(fake, tmp_path), FakeCore(), telegram_module) as app:
        yield app


async def post_update(app: ChannelApp, update: dict | bytes, secret: str | None = SECRET):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    if isinstance(update, bytes):
        return await app.client.post("/webhooks/telegram", content=update, headers=headers)
    return await app.client.post("/webhooks/telegram", json=update, headers=headers)


def sends(fake: FakePlatforms):
    return fake.calls("telegram", "sendMessage")


async def test_application_calls_get_me_at_start_against_the_fake_api(tg, fake):
    [get_me] = fake.calls("telegram", "getMe")
    assert get_me.path == f"/bot{TOKEN}/getMe"


async def test_webhook_with_the_right_secret_is_answered_with_send_message(tg, fake):
    resp = await post_update(tg, telegram_message_update(1001, "国際電話を止めるには？"))
    assert resp.status_code == 200
    [sent] = await fake.wait_for(lambda r: r.method == "sendMessage")
    assert int(sent.data["chat_id"]) == CHAT
    assert sent.data["parse_mode"] == "HTML"
    assert "通信事業者" in sent.data["text"]
    assert '<a href="https://www.soumu.go.jp/example">' in sent.data["text"]
    keyboard = sent.data["reply_markup"]["inline_keyboard"]
    assert keyboard[0][0]["callback_data"] == "human" and keyboard[0][0]["text"] == "担当者と話す"
    handled = tg.core.handled[0]
    assert handled.address.conversation_id == f"telegram:{CHAT}"
    assert handled.message_id == "telegram:1001"


@pytest.mark.parametrize("secret,status", [(None, 401), ("wrong-secret", 403), ("", 403),
                                           (SECRET + "x", 403), (SECRET[:-1], 403)])
async def test_missing_or_wrong_secret_token_is_rejected(tg, fake, secret, status):
    resp = await post_update(tg, telegram_message_update(1002, "hello"), secret=secret)
    assert resp.status_code == status
    await asyncio.sleep(0.05)
    assert tg.core.handled == [] and not sends(fake)


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"null", b'{"update_id": "1"}', b'{"update_id": true}',
                                  b'{"update_id": 5, "message": 7}', b'{"update_id": 5, "message": {"chat": 1}}',
                                  b'{"update_id": 6, "callback_query": []}', b"\xff\xfe"])
async def test_hostile_json_gets_400_never_500(tg, fake, body):
    resp = await post_update(tg, body)
    assert resp.status_code == 400
    await tg.settle()


async def test_malformed_update_gets_400(tg, fake):
    assert (await post_update(tg, b'{"update_id": 5, "message": 7}')).status_code == 400
    assert (await post_update(tg, b"[1]")).status_code == 400


async def test_duplicate_update_id_is_processed_once(tg, fake):
    update = telegram_message_update(1003, "国際電話を止めるには？")
    for _ in range(3):
        assert (await post_update(tg, update)).status_code == 200
    await tg.settle()
    await asyncio.sleep(0.05)
    assert len(tg.core.handled) == 1
    assert len(sends(fake)) == 1


async def test_start_and_help_answer_without_the_core(tg, fake):
    await post_update(tg, telegram_message_update(1004, "/start"))
    await post_update(tg, telegram_message_update(1005, "/help@pbx_help_bot", language_code="en"))
    msgs = await fake.wait_for(lambda r: r.method == "sendMessage", count=2)
    texts = sorted(m.data["text"] for m in msgs)
    assert any("出典付き" in t for t in texts) and any("Try:" in t for t in texts)
    assert tg.core.handled == []


async def test_human_command_and_button_request_a_person(tg, fake):
    await post_update(tg, telegram_message_update(1006, "/human"))
    [first] = await fake.wait_for(lambda r: r.method == "sendMessage")
    ticket = tg.core.handoff.list_queue()[0]
    assert ticket.id in first.data["text"]
    await post_update(tg, telegram_callback_update(1007, "human", chat_id=777))
    await fake.wait_for(lambda r: r.method == "sendMessage", count=2)
    assert [m.action for m in tg.core.handled] == ["request_human", "request_human"]
    assert fake.calls("telegram", "answerCallbackQuery")


async def test_operator_reply_is_delivered_with_send_message(tg, fake):
    address = Address("telegram", f"telegram:{CHAT}", str(CHAT), {"chat_id": CHAT})
    await tg.registry.send(address, Reply(f"telegram:{CHAT}", "ja", "<回線>を止めました & 確認済み", kind="operator"))
    [sent] = sends(fake)
    assert sent.data["text"] == "<b>担当者:</b> &lt;回線&gt;を止めました &amp; 確認済み"


async def test_refused_html_degrades_to_plain_text(tg, fake):
    fake.telegram_fail_send = 1
    address = Address("telegram", f"telegram:{CHAT}", str(CHAT), {"chat_id": CHAT})
    cit = Citation(1, "d", "T", "P", "https://example.org/x", None)
    await tg.channel.send(address, Reply(f"telegram:{CHAT}", "en", "answer [1]", citations=(cit,)))
    first, second = sends(fake)
    assert first.data["parse_mode"] == "HTML" and "parse_mode" not in second.data
    assert "https://example.org/x" in second.data["text"]


def test_render_escapes_text_and_links_citations():
    cit = Citation(1, "d", "<script>", "A&B", 'https://example.org/?a=1&b="2"', "2024-01-01")
    [text] = telegram_module.render_html(Reply("c", "en", "x < y", citations=(cit,)))
    assert "x &lt; y" in text and "<script>" not in text
    assert '<a href="https://example.org/?a=1&amp;b=&quot;2&quot;">A&amp;B: &lt;script&gt;</a>' in text
    bad = Citation(2, "d", "t", "p", "javascript:alert(1)", None)
    [text] = telegram_module.render_html(Reply("c", "en", "x", citations=(bad,)))
    assert "<a " not in text
    long = telegram_module.render_html(Reply("c", "ja", "あ" * 8000, citations=(cit,)))
    assert len(long) == 3 and all(len(p) <= 4096 for p in long) and "example.org" in long[-1]


async def test_polling_mode_replies_to_an_update_from_get_updates(fake, tmp_path):
    settings = make_settings(fake, tmp_path, telegram_mode="polling", telegram_webhook_secret=None)
    assert enabled_platforms(settings) == ["telegram"]
    async with ChannelApp(settings, FakeCore(), telegram_module) as app:
        assert app.channel.router is None
        fake.queue_update(telegram_message_update(2001, "国際電話を止めるには？", chat_id=888))
        [sent] = await fake.wait_for(lambda r: r.method == "sendMessage", timeout=10)
        assert int(sent.data["chat_id"]) == 888
        assert "通信事業者" in sent.data["text"]
        assert fake.calls("telegram", "getUpdates")
    assert len(app.core.handled) == 1


async def test_real_service_answers_escalates_and_relays_the_operator_reply(fake, tmp_path):
    from tests.fakes_platforms import FIXTURE_CORPUS, ServedApp, real_core

    settings = make_settings(fake, tmp_path, database_url=f"sqlite:///{tmp_path / 'tg.sqlite3'}",
                             knowledge_dir=FIXTURE_CORPUS, embedder="hash")
    core = await asyncio.to_thread(real_core, settings)
    async with ServedApp(settings, core) as srv:  # bot.web.app.create_app, lifespan running
        assert "telegram" in srv.registry
        assert (await post_update(srv, telegram_message_update(3001, "国際電話を止めるには？"))).status_code == 200
        [answer] = await fake.wait_for(lambda r: r.method == "sendMessage", timeout=10)
        assert '<a href="https://example.org/fixture/' in answer.data["text"]
        assert (await post_update(srv, telegram_callback_update(3002, "human"))).status_code == 200
        [_, handoff] = await fake.wait_for(lambda r: r.method == "sendMessage", count=2, timeout=10)
        [ticket] = core.handoff.list_queue()
        assert ticket.id in handoff.data["text"]
        assert ticket.address.route == {"chat_id": CHAT}
        core.handoff.claim(ticket.id, "yamada")
        core.handoff.reply(ticket.id, "yamada", "回線を止めました。")
        [reply] = await fake.wait_for(lambda r: r.method == "sendMessage" and "回線を止めました" in r.data["text"],
                                      timeout=10)
        assert int(reply.data["chat_id"]) == CHAT


async def test_bot_token_in_the_api_url_never_reaches_the_logs(fake, tmp_path, caplog):
    import logging

    from bot.logging_setup import install_secret_filter

    settings = make_settings(fake, tmp_path)
    caplog.set_level(logging.DEBUG)
    flt = install_secret_filter(settings)
    try:
        async with ChannelApp(settings, FakeCore(), telegram_module) as app:
            await post_update(app, telegram_message_update(4001, "国際電話を止めるには？"))
            await fake.wait_for(lambda r: r.method == "sendMessage")
            await post_update(app, telegram_message_update(4002, "hello"), secret="wrong")
    finally:
        for h in logging.getLogger().handlers:
            h.removeFilter(flt)
    assert "sendMessage" in caplog.text  # httpx logged the request URL...
    assert TOKEN not in caplog.text and SECRET not in caplog.text  # ...with the token masked


def test_platforms_are_enabled_only_by_their_settings(fake, tmp_path):
    from bot.config import ConfigError
    from bot.web.app import create_app

    none = Settings(_env_file=None, data_dir=tmp_path)
    assert enabled_platforms(none) == []
    app = create_app(make_settings(fake, tmp_path), core=FakeCore())
    assert set(app.state.registry.names) == {"web", "telegram"}
    with pytest.raises(ConfigError, match="PBXBOT_TELEGRAM_WEBHOOK_SECRET"):
        create_app(make_settings(fake, tmp_path, telegram_webhook_secret="changeme"), core=FakeCore())
    with pytest.raises(ConfigError, match="PBXBOT_LINE_CHANNEL_ACCESS_TOKEN"):
        create_app(Settings(_env_file=None, data_dir=tmp_path, line_channel_secret="s" * 32), core=FakeCore())
    everything = Settings(_env_file=None, data_dir=tmp_path, telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                          telegram_api_url=fake.telegram_base, line_channel_secret="l" * 32,
                          line_channel_access_token="line-token", line_api_url=fake.url,
                          slack_signing_secret="s" * 32, slack_bot_token="xoxb-1", slack_api_url=fake.slack_base)
    app = create_app(everything, core=FakeCore())
    assert set(app.state.registry.names) == {"web", "telegram", "line", "slack"}
    from fastapi.testclient import TestClient

    client = TestClient(app)  # no lifespan: only the unsigned requests' rejection is exercised
    for path in ("/webhooks/telegram", "/webhooks/line", "/webhooks/slack/commands", "/webhooks/slack/interactions"):
        assert client.post(path, content=b"{}").status_code == 401, path


async def test_unreachable_bot_api_does_not_block_start_in_polling_mode(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(_env_file=None, data_dir=tmp_path, telegram_token=TOKEN, telegram_mode="polling",
                        telegram_api_url=f"http://127.0.0.1:{port}/bot")
    started = time.monotonic()
    async with ChannelApp(settings, FakeCore(), telegram_module) as app:
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.2)
        assert not app.channel._ready


async def test_mutated_updates_with_the_right_secret_never_get_5xx(tg, fake):
    from tests.fakes_platforms import mutations

    base = json.dumps(telegram_callback_update(9000, "human")).encode()
    base2 = json.dumps(telegram_message_update(9001, "/human")).encode()
    statuses = set()
    for body in mutations(base, 150, seed=1) + mutations(base2, 150, seed=2):
        resp = await post_update(tg, body)
        statuses.add(resp.status_code)
        assert resp.status_code in (200, 400), (body, resp.status_code)
    await tg.settle()
    assert 400 in statuses
