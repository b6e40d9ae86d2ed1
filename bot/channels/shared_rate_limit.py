"""The per-user rate limit shared by the worker processes of `pbxbot serve --workers N`.

`RateLimiter` (bot.channels.base) counts in one process, so with N workers a user whose
messages reach several of them (webhooks arrive over several connections) could send N times the
limit. `SharedRateLimiter` keeps the same sliding window, with the same `check(key)` contract, in
shared memory made by the supervisor before it spawns the workers: a table of slots, one per
recently active key, each holding the times of that key's last `per_minute` events. One lock
(a process-shared semaphore) guards the table; a check takes a few microseconds.

The table has a fixed size (about TABLE_BYTES). A key is found by open addressing over a stable
hash (Python's own hash() differs between processes). A slot whose newest event has left the
window is free; when all the slots a key may use are busy, the one idle longest is taken over, and
that user starts a fresh window (the limit errs towards letting a message through, never towards
refusing someone for another user's traffic).

Limits above MAX_SHARED_PER_MINUTE are not shared (each slot holds that many times); they are
high enough to be a guard against floods only, and each process counts them itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from bot.channels.base import RateLimiter

log = logging.getLogger("bot.channels")

MAX_SHARED_PER_MINUTE = 1000
LOCK_TIMEOUT = 0.25  # seconds; a check holds the lock for microseconds
TABLE_BYTES = 4 << 20
PROBES = 16


@dataclass
class SharedWindowTable:
    """The shared memory of one limit. Picklable at spawn time (arrays and lock of `context`)."""

    per_minute: int
    window: float
    keys: Any  # RawArray q: the key's hash, 0 = never used
    heads: Any  # RawArray q: ring index of the oldest event
    counts: Any  # RawArray q: events in the ring
    times: Any  # RawArray d: slots * per_minute event times (time.monotonic, the same in every process)
    lock: Any

    @property
    def slots(self) -> int:
        return len(self.keys)


def new_table(context, per_minute: int, *, window: float = 60.0, slots: int | None = None) -> SharedWindowTable | None:
    """A table for `per_minute` events per key; None when the limit is off or too high to share."""
    if per_minute <= 0 or per_minute > MAX_SHARED_PER_MINUTE:
        return None
    if slots is None:
        slots = max(256, min(65536, TABLE_BYTES // (8 * (per_minute + 3))))
    return SharedWindowTable(
        per_minute=per_minute, window=window,
        keys=context.RawArray("q", slots), heads=context.RawArray("q", slots),
        counts=context.RawArray("q", slots), times=context.RawArray("d", slots * per_minute),
        lock=context.Lock(),
    )


def new_tables(context, limits: dict[str, int]) -> dict[str, SharedWindowTable]:
    """Tables for named limits ({name: per_minute}); the limits that cannot be shared are left out."""
    tables = {name: new_table(context, per_minute) for name, per_minute in limits.items()}
    return {name: table for name, table in tables.items() if table is not None}


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True) or 1


class SharedRateLimiter:
    """Sliding-window limit per key over a SharedWindowTable: at most `per_minute` events in any
    `window` seconds. `check(key)` records the event when allowed and returns 0.0, else returns
    the seconds until the next event would be allowed (and records nothing), like RateLimiter."""

    def __init__(self, table: SharedWindowTable, *, clock: Callable[[], float] = time.monotonic,
                 lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.table = table
        self.per_minute = table.per_minute
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._fallback: RateLimiter | None = None

    def check(self, key: str) -> float:
        if self._fallback is not None:
            return self._fallback.check(key)
        # A worker killed inside the few microseconds it holds the lock would leave it taken for
        # good (a semaphore has no owner): then this process counts on its own from now on,
        # rather than stall every message.
        if not self.table.lock.acquire(timeout=self._lock_timeout):
            log.error("the shared rate-limit table stays locked; counting in this process from now on")
            self._fallback = RateLimiter(self.per_minute, window=self.table.window, clock=self._clock)
            return self._fallback.check(key)
        try:
            return self._check(key)
        finally:
            self.table.lock.release()

    def _check(self, key: str) -> float:
        t = self.table
        ring, window = t.per_minute, t.window
        h = _hash(key)
        now = self._clock()
        slot = self._slot(h, now)
        base, head, count = slot * ring, t.heads[slot], t.counts[slot]
        while count and t.times[base + head] <= now - window:
            head, count = (head + 1) % ring, count - 1
        t.heads[slot] = head
        if count >= ring:
            t.counts[slot] = count
            return max(0.001, t.times[base + head] + window - now)
        t.times[base + (head + count) % ring] = now
        t.counts[slot] = count + 1
        return 0.0

    def _slot(self, h: int, now: float) -> int:
        """The slot of hash `h`: its own, else a free one, else the one idle longest (taken over)."""
        t = self.table
        ring, slots = t.per_minute, t.slots
        free = idlest = None
        idlest_newest = float("inf")
        for i in range(min(PROBES, slots)):
            slot = (h + i) % slots
            k = t.keys[slot]
            if k == h:
                return slot
            count = t.counts[slot]
            newest = t.times[slot * ring + (t.heads[slot] + count - 1) % ring] if count else float("-inf")
            if free is None and (k == 0 or newest <= now - t.window):
                free = slot
            if newest < idlest_newest:
                idlest, idlest_newest = slot, newest
        slot = free if free is not None else idlest
        t.keys[slot], t.heads[slot], t.counts[slot] = h, 0, 0
        return slot
