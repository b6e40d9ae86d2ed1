"""KeyedLocks: one key's holders take turns, other keys do not wait, and nothing piles up."""

from __future__ import annotations

import threading
import time

from bot.conversation.locks import KeyedLocks


def test_same_key_waits_other_keys_do_not_and_locks_are_forgotten_after_use():
    locks = KeyedLocks()
    order: list[str] = []
    inside = threading.Event()

    def slow_a():
        with locks.hold("a"):
            inside.set()
            time.sleep(0.2)
            order.append("a1")

    t = threading.Thread(target=slow_a)
    t.start()
    inside.wait(2)
    t0 = time.perf_counter()
    with locks.hold("b"):  # another conversation: no waiting
        assert time.perf_counter() - t0 < 0.1
    with locks.hold("a"):  # the same conversation: after the first holder
        order.append("a2")
    t.join()
    assert order == ["a1", "a2"]
    assert len(locks) == 0
