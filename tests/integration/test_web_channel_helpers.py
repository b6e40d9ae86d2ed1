"""The small shared helpers of bot.channels.base (no server needed)."""

from __future__ import annotations

import multiprocessing

import pytest

from bot.channels.base import RateLimiter, SeenCache, guess_language, rate_limited_reply, render_text
from bot.channels.shared_rate_limit import SharedRateLimiter, new_table
from bot.messages import Citation, Escalation, Reply


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def in_process(per_minute, clock):
    return RateLimiter(per_minute, clock=clock)


def across_workers(per_minute, clock):
    return SharedRateLimiter(new_table(multiprocessing.get_context("spawn"), per_minute), clock=clock)


@pytest.mark.parametrize("make", [in_process, across_workers])
def test_rate_limiter_is_a_sliding_window_per_key(make):
    clock = Clock()
    rl = make(2, clock)
    assert rl.check("a") == 0 and rl.check("a") == 0
    wait = rl.check("a")
    assert 59 < wait <= 60
    assert rl.check("b") == 0  # other users are not affected
    clock.t += 30
    assert 29 < rl.check("a") <= 30  # a refused message is not counted
    clock.t += 30.01
    assert rl.check("a") == 0
    clock.t += 0.5
    assert rl.check("a") == 0  # the window slides: the first two events have left it
    assert 59 < rl.check("a") <= 60


def test_rate_limiter_forgets_old_keys_and_can_be_disabled():
    rl = RateLimiter(1, max_keys=3)
    for k in "abcd":
        rl.check(k)
    assert len(rl._hits) == 3
    assert all(RateLimiter(0).check("x") == 0 for _ in range(100))


def test_seen_cache_drops_repeats_within_its_ttl():
    clock = Clock()
    seen = SeenCache(ttl=10, clock=clock)
    assert not seen.seen("update:1")
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
    assert guess_language("PBXが乗っ取られた") == "ja"
    assert guess_language("our PBX was hacked") == "en"
    assert guess_language("12345", default="en") == "en"
    r = rate_limited_reply("web:1", "en", 12.2)
    assert r.kind == "notice" and "13 seconds" in r.answer and r.answer.startswith("Sorry")
