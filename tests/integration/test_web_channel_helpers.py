"""The small shared helpers of the channels (no server needed)."""

from __future__ import annotations

import time
import uuid

import pytest

from bot.channels.pipeline import SeenDeliveries, rate_limited_reply
from bot.channels.rendering import render_text
from bot.language import detect_language
from bot.channels.rate_limit import RateLimit, limit_storage
from bot.messages import Citation, Escalation, Reply

REDIS_URL = "redis://127.0.0.1:6379/15"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def redis_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return True
    except OSError:
        return False


STORAGES = [pytest.param(None, id="memory"),
            pytest.param(REDIS_URL, id="redis", marks=[pytest.mark.integration,  # the Redis server on 6379
                                                       pytest.mark.skipif(not redis_up(), reason="no Redis on 6379")])]


@pytest.mark.parametrize("redis_url", STORAGES)
async def test_rate_limit_is_a_sliding_window_per_key(redis_url, monkeypatch):
    clock = Clock()
    clock.t = time.time()
    monkeypatch.setattr(time, "time", clock)  # the limits library reads time.time()
    rl = RateLimit(f"test-{uuid.uuid4()}", 2, limit_storage(redis_url))
    assert await rl.check("a") == 0 and await rl.check("a") == 0
    wait = await rl.check("a")
    assert 59 < wait <= 60.1
    assert await rl.check("b") == 0  # other users are not affected
    clock.t += 30
    assert 29 < await rl.check("a") <= 30.1  # a refused message is not counted
    clock.t += 30.01
    assert await rl.check("a") == 0
    clock.t += 0.5
    assert await rl.check("a") == 0  # the window slides: the first two events have left it
    assert 59 < await rl.check("a") <= 60.1


async def test_rate_limit_can_be_disabled_and_lets_messages_through_when_redis_is_down():
    assert all([await RateLimit("off", 0, limit_storage(None)).check("x") == 0 for _ in range(100)])
    down = RateLimit("down", 1, limit_storage("redis://127.0.0.1:1/0"))  # nothing listens on port 1
    assert await down.check("x") == 0 and await down.check("x") == 0
    assert down.last_error is not None


async def test_the_in_process_limit_starts_no_task_on_the_event_loop_per_message():
    """Without Redis the windows live in this process, in the limits library's synchronous memory
    storage: an event costs a dict update, not a task on the event loop (the library's asyncio
    memory storage scheduled one after every event, walking every key with a thread hop each)."""
    import asyncio

    storage = limit_storage(None)
    users, addresses = RateLimit("user", 2, storage), RateLimit("address", 30, storage)
    tasks = len(asyncio.all_tasks())
    for i in range(50):
        assert await users.check(f"conversation-{i}") == 0
    assert all([await addresses.check("addr:1") == 0 for _ in range(30)])
    assert await addresses.check("addr:1") > 59
    assert len(asyncio.all_tasks()) == tasks
    assert await users.check("conversation-0") == 0 and 59 < await users.check("conversation-0") <= 60.1


def test_seen_cache_drops_repeats_within_its_ttl_once_remembered():
    clock = Clock()
    seen = SeenDeliveries(ttl=10, clock=clock)
    assert not seen.seen("update:1")
    assert not seen.seen("update:1")  # looked at, not recorded: a retry is still let through
    seen.remember("update:1")
    assert seen.seen("update:1")
    clock.t += 11
    assert not seen.seen("update:1")


def test_render_text_is_the_plain_fallback_with_sources_and_ticket():
    cit = Citation(1, "d", "国際電話の停止", "NTT東日本", "https://example.jp/x", None)
    reply = Reply("web:1", "ja", "止めてください [1]", citations=(cit,),
                  escalation=Escalation("incident", "urgent", "T-20261128-abcd"))
    text = render_text(reply)
    assert text.startswith("止めてください [1]")
    assert "出典:\n[1] NTT東日本「国際電話の停止」 https://example.jp/x" in text
    assert text.endswith("受付番号: T-20261128-abcd")


def test_polite_rate_limit_reply_and_language_guess():
    assert detect_language("PBXが乗っ取られた") == "ja"
    assert detect_language("our PBX was hacked") == "en"
    assert (detect_language("12345") or "en") == "en"
    r = rate_limited_reply("web:1", "en", 12.2)
    assert r.kind == "notice" and "13 seconds" in r.answer and r.answer.startswith("Sorry")
