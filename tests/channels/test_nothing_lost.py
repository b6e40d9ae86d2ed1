"""Nothing lost on a platform channel: a message is committed before the platform hears 2xx (503
when the store cannot commit, so that the platform sends it again), a turn's replies are in the
outbox from the transaction that marks the message handled, and the outbox never gives up on a
reply that can still be delivered (a 10-minute platform outage, in simulated time)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.channels import line as line_module
from bot.channels import telegram as telegram_module
from bot.config import Settings
from bot.handoff.service import HandoffService
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address, InboundMessage, Reply
from bot.web.background import OutboxDispatcher
from tests.fakes_platforms import (
    ChannelApp,
    FakePlatforms,
    line_body,
    line_signature,
    line_text_event,
    telegram_message_update,
)
from tests.web_fakes import FakeCore, down_for

pytestmark = pytest.mark.local_server  # the fake platform APIs listen on loopback

TOKEN, SECRET = "123456:TEST-telegram-token_abcdef", "webhook-secret_TOKEN-42"
LINE_SECRET = "line-channel-secret-for-tests"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def fake():
    async with FakePlatforms() as f:
        yield f


def telegram_settings(fake: FakePlatforms, tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                    telegram_api_url=fake.telegram_base, **kw)


async def post_update(app: ChannelApp, update: dict):
    return await app.client.post("/webhooks/telegram", json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})


def user_messages(core: FakeCore, conversation_id: str) -> list[str]:
    return [m.text for m in core.store.transcript(conversation_id) if m.role == "user"]


async def test_a_message_the_store_cannot_commit_gets_503_and_its_resend_is_answered_once(fake, tmp_path):
    core = FakeCore()
    async with ChannelApp(telegram_settings(fake, tmp_path), core, telegram_module) as tg:
        down_for(core.store, 1)
        update = telegram_message_update(2001, "国際電話を止めるには？")
        resp = await post_update(tg, update)
        assert resp.status_code == 503 and resp.json()["error"] == "store_unavailable"
        await tg.settle()
        assert core.handled == [] and fake.calls("telegram", "sendMessage") == []
        for _ in range(2):  # Telegram sends it again (twice: the second is a duplicate)
            assert (await post_update(tg, update)).status_code == 200
        await tg.settle()
    assert user_messages(core, "telegram:5551234") == ["国際電話を止めるには？"]
    assert len(core.handled) == 1 and len(fake.calls("telegram", "sendMessage")) == 1


async def test_a_line_body_is_acknowledged_only_when_every_event_in_it_is_recorded(fake, tmp_path):
    core = FakeCore()
    settings = Settings(_env_file=None, data_dir=tmp_path, line_channel_secret=LINE_SECRET,
                        line_channel_access_token="line-token", line_api_url=fake.url)
    async with ChannelApp(settings, core, line_module) as line:
        body = line_body(line_text_event("一通目", event_id="ev-1", reply_token="rt-1"),
                         line_text_event("二通目", event_id="ev-2", reply_token="rt-2"))
        headers = {"x-line-signature": line_signature(LINE_SECRET, body), "Content-Type": "application/json"}
        down_for(core.store, 2)  # the first event is refused; so is the second on the first resend
        assert (await line.client.post("/webhooks/line", content=body, headers=headers)).status_code == 503
        assert (await line.client.post("/webhooks/line", content=body, headers=headers)).status_code == 503
        assert (await line.client.post("/webhooks/line", content=body, headers=headers)).status_code == 200
        await line.settle()
    conversation = f"line:{'U' + 'a' * 32}"
    assert user_messages(core, conversation) == ["一通目", "二通目"]
    assert sorted(m.text for m in core.handled) == ["一通目", "二通目"]


async def test_a_platform_down_from_start_up_gets_its_answer_after_the_outage(fake, tmp_path):
    core = FakeCore()
    fake.outage = True  # Telegram's API answers 503 from before start-up (no getMe yet); webhooks reach us
    async with ChannelApp(telegram_settings(fake, tmp_path), core, telegram_module) as tg:
        assert (await post_update(tg, telegram_message_update(2101, "国際電話を止めるには？"))).status_code == 200
        await tg.settle()
        [waiting] = core.handoff.undelivered()
        assert waiting.status == "pending" and waiting.attempts == 1
        fake.outage = False
        core.store.retry_outbox(waiting.id)  # its back-off over
        dispatcher = OutboxDispatcher(core.handoff, tg.registry, tg.registry.run_sync)
        assert await dispatcher.tick() == 1
    assert core.handoff.undelivered() == [] and core.handoff.pending_outbox() == []
    [sent] = fake.calls("telegram", "sendMessage")
    assert sent.data["text"]


async def test_a_user_who_blocked_the_bot_is_dead_lettered_not_retried_forever(fake, tmp_path):
    core = FakeCore()
    async with ChannelApp(telegram_settings(fake, tmp_path), core, telegram_module) as tg:
        fake.telegram_blocked = True
        assert (await post_update(tg, telegram_message_update(2201, "国際電話を止めるには？"))).status_code == 200
        await tg.settle()
    [dead] = core.handoff.undelivered()
    assert dead.status == "dead" and "Forbidden" in dead.last_error
    assert core.handoff.pending_outbox() == [] and core.handoff.outbox_counts()["dead"] == 1


def test_a_turns_replies_are_owed_through_the_outbox_from_the_commit_that_handles_the_message():
    clock = Clock()
    core = FakeCore(SqlHandoffStore("sqlite://", clock=clock))
    address = Address("telegram", "telegram:77", route={"chat_id": 77})
    replies = core.handle(InboundMessage(address=address, text="国際電話を止めるには？", message_id="u-1", outbox=True))
    assert replies and all(r.outbox_id is not None for r in replies)
    # The process dies before sending: nothing is lost, the items wait with a short lease...
    assert [i.id for i in core.handoff.pending_outbox()] == [r.outbox_id for r in replies]
    assert core.handoff.lease_outbox() == []  # ...the live sender's, so nobody sends it twice meanwhile
    clock.now += timedelta(seconds=31)
    assert [i.id for i in core.handoff.lease_outbox()] == [r.outbox_id for r in replies]  # then any worker's
    # The widget's request/response route answers in its HTTP response: no outbox item.
    web = core.handle(InboundMessage(address=Address("web", "web:1"), text="hello", message_id="w-1"))
    assert web and all(r.outbox_id is None for r in web)


class PlatformDownUntil:
    """A ReplySender for a platform whose API fails until `until` (simulated time)."""

    def __init__(self, clock: Clock, until: datetime) -> None:
        self.clock, self.until = clock, until
        self.delivered: list[tuple[int | None, str]] = []
        self.refused = 0

    async def send(self, address: Address, reply: Reply) -> None:
        if self.clock.now < self.until:
            self.refused += 1
            raise ConnectionRefusedError("the platform's API is down")
        self.delivered.append((reply.outbox_id, reply.answer))


async def run_sync(func, *args):
    return func(*args)


async def test_every_reply_queued_during_a_ten_minute_outage_is_delivered_once_after_it():
    clock = Clock()
    store = SqlHandoffStore("sqlite://", clock=clock)
    handoff = HandoffService(store)
    start = clock.now
    sender = PlatformDownUntil(clock, until=start + timedelta(minutes=10))
    dispatcher = OutboxDispatcher(handoff, sender, run_sync)  # the default cap: 300 s between attempts
    address = Address("line", "line:U1", user_id="U1")
    ticket = handoff.open_ticket(address, reason="incident", priority="urgent", summary={"language": "ja"})
    expected: list[str] = []
    for second in range(0, 20 * 60, 5):  # 20 simulated minutes, a poll every 5 s
        clock.now = start + timedelta(seconds=second)
        if second % 60 == 0 and second < 10 * 60:  # a reply a minute while the platform is down
            expected.append(f"reply {second}")
            handoff.enqueue(address, Reply("line:U1", "ja", f"reply {second}"))
        if second == 300:  # an operator answers in the middle of the outage
            handoff.claim(ticket.id, "alice")
            handoff.reply(ticket.id, "alice", "担当者です。回線を止めました。")
            expected.append("担当者です。回線を止めました。")
        if second == 9 * 60 + 30:
            counts = handoff.outbox_counts()
            assert counts["failing"] == counts["pending"] > 0  # /healthz says degraded now
        await dispatcher.tick()
    delivered = [text for _id, text in sender.delivered]
    assert sorted(delivered) == sorted(expected)  # every one, each once
    assert sender.refused > len(expected)  # they were tried during the outage and kept
    assert handoff.outbox_counts() == {"pending": 0, "failing": 0, "dead": 0}
