"""The per-user rate limit shared by worker processes (bot/channels/shared_rate_limit.py)."""

from __future__ import annotations

import multiprocessing
import time

from bot.channels.base import RateLimiter
from bot.channels.registry import ChannelRegistry
from bot.channels.shared_rate_limit import MAX_SHARED_PER_MINUTE, SharedRateLimiter, new_table, new_tables
from tests.fakes import make_settings

SPAWN = multiprocessing.get_context("spawn")


def checks_in_another_process(table, key, n, results):
    limiter = SharedRateLimiter(table)
    results.put([limiter.check(key) for _ in range(n)])


def test_two_processes_share_one_limit_per_user():
    table = new_table(SPAWN, 3)
    here = SharedRateLimiter(table)
    assert [here.check("line:U1"), here.check("line:U1")] == [0.0, 0.0]
    results = SPAWN.Queue()
    other = SPAWN.Process(target=checks_in_another_process, args=(table, "line:U1", 2, results))
    other.start()
    allowed, refused = results.get(timeout=60)
    other.join(30)
    assert allowed == 0.0  # the third message of the minute, in the other worker
    assert 59 < refused <= 60  # the fourth: over the limit of 3, counted across both processes
    assert here.check("line:U2") == 0.0  # another user is not affected


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def test_a_full_table_takes_over_the_slot_idle_longest_and_never_refuses_a_newcomer():
    clock = Clock()
    limiter = SharedRateLimiter(new_table(SPAWN, 1, slots=4), clock=clock)
    for i in range(4):  # every slot busy within the window
        assert limiter.check(f"user-{i}") == 0.0
        clock.t += 1
    assert limiter.check("newcomer") == 0.0  # takes user-0's slot (idle longest)
    assert limiter.check("newcomer") > 0  # and is limited from then on
    assert limiter.check("user-3") > 0  # the users still in the table keep their window


def test_expired_slots_are_reused():
    clock = Clock()
    limiter = SharedRateLimiter(new_table(SPAWN, 1, slots=2), clock=clock)
    assert limiter.check("a") == 0.0 and limiter.check("b") == 0.0
    clock.t += 61
    assert limiter.check("c") == 0.0 and limiter.check("d") == 0.0
    assert limiter.check("c") > 0 and limiter.check("d") > 0


def test_limits_that_are_off_or_too_high_are_not_shared_and_the_registry_counts_them_itself():
    assert new_table(SPAWN, 0) is None
    assert new_table(SPAWN, MAX_SHARED_PER_MINUTE + 1) is None
    tables = new_tables(SPAWN, {"user": 20, "address": 1_000_000})
    assert set(tables) == {"user"}
    registry = ChannelRegistry(make_settings(rate_limit_per_minute=20), shared_limits=tables)
    assert isinstance(registry.rate_limiter, SharedRateLimiter)
    assert isinstance(registry.limiter("address", 1_000_000), RateLimiter)
    assert isinstance(ChannelRegistry(make_settings(rate_limit_per_minute=20)).rate_limiter, RateLimiter)


def take_the_lock_and_die(table):
    import os
    import signal

    table.lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)  # killed inside the critical section: never released


def test_a_lock_left_taken_by_a_killed_worker_does_not_stall_the_others(caplog):
    table = new_table(SPAWN, 2)
    limiter = SharedRateLimiter(table, lock_timeout=0.2)
    assert limiter.check("web:a") == 0.0  # counted in the table
    dead = SPAWN.Process(target=take_the_lock_and_die, args=(table,))
    dead.start()
    dead.join(30)
    assert dead.exitcode == -9
    # This process goes on counting by itself: one wait of 0.2 s, then no more waiting.
    t0 = time.monotonic()
    assert limiter.check("web:a") == 0.0
    assert 0.15 < time.monotonic() - t0 < 2
    t0 = time.monotonic()
    results = [limiter.check("web:a"), limiter.check("web:a")]
    assert time.monotonic() - t0 < 0.1
    assert results[0] == 0.0 and 59 < results[1] <= 60  # the limit of 2 still holds, in this process
    assert "stays locked; counting in this process" in caplog.text
