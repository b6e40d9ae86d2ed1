"""Guess limits counted in Redis hold across processes (serve --workers N, several nodes): two
limiters sharing nothing but Redis refuse the eleventh wrong guess together, and recognise an
operator's address for each other. Redis down: each process still limits on its own."""

from __future__ import annotations

import socket
import uuid

import pytest

from bot.web.guesses import GuessLimiter, InProcessAttemptStore, RedisAttemptStore

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def guess(limiter: GuessLimiter, address: str, account: str) -> float:
    """One wrong guess; returns the wait when it was refused (0: it was checked and counted)."""
    with limiter.attempt(address, account) as attempt:
        if attempt.wait:
            return attempt.wait
        attempt.failed()
    return 0.0


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_two_processes_share_one_budget_per_account_and_per_address():
    prefix = f"pbxbot:test:{uuid.uuid4().hex}:"  # a namespace of this run
    node_a = GuessLimiter(RedisAttemptStore(REDIS_URL, prefix=prefix), per_minute=10)
    node_b = GuessLimiter(RedisAttemptStore(REDIS_URL, prefix=prefix), per_minute=10)
    # an attacker spreads guesses at alice over both nodes and many addresses
    waits = [guess(node_a if i % 2 else node_b, f"203.0.113.{i}", "alice") for i in range(14)]
    assert waits[:10] == [0.0] * 10 and all(w > 0 for w in waits[10:])
    # one address guessing at many accounts, also across nodes
    waits = [guess(node_a if i % 2 else node_b, "198.51.100.7", f"user{i}") for i in range(12)]
    assert waits[:10] == [0.0] * 10 and all(w > 0 for w in waits[10:])
    # alice logged in from her office before (on node A): node B lets her in during the attack
    node_a.succeeded("192.0.2.10", "alice")
    with node_b.attempt("192.0.2.10", "alice") as attempt:
        assert attempt.wait == 0


def test_redis_down_still_limits_in_this_process():
    store = RedisAttemptStore("redis://127.0.0.1:1/0", fallback=InProcessAttemptStore())  # nothing listens on port 1
    limiter = GuessLimiter(store, per_minute=3)
    waits = [guess(limiter, "203.0.113.9", "alice") for _ in range(5)]
    assert waits[:3] == [0.0] * 3 and all(w > 0 for w in waits[3:])
    assert store.last_error is not None
