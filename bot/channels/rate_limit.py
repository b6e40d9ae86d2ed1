"""Per-key rate limits: in this process's memory (ProcessWindows), or in Redis (PBXBOT_REDIS_URL,
the `limits` library) where every process and every node counts in one place.

A moving window: at most N events in any `window` seconds per key (the same rule the limits have
always had). `await limit.check(key)` records the event when it is allowed and returns 0.0, else
returns the seconds until the next event would be allowed (and records nothing). Async: the Redis
round trip never blocks the event loop.

When Redis cannot be reached the check lets the message through and says so in the log (once a
minute) and in /healthz (`last_error`): a limit errs towards answering a user, never towards
refusing one because a guard is down.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from limits import RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.storage import storage_from_string
from limits.aio.strategies import MovingWindowRateLimiter

log = logging.getLogger("bot.channels.rate_limit")

ERROR_LOG_EVERY = 60.0


class ProcessWindows:
    """Moving windows in this process's memory: per key, the times of the events of the last
    `window` seconds, oldest first. The rule of the `limits` library's moving window (an event is
    allowed when fewer than `limit` allowed events happened in the `window` seconds up to now, the
    bounds included; a refused one is not counted; the wait is until the oldest of them leaves).

    Not the library's asyncio memory storage: after each hit it scans every key it holds (here the
    conversations of the last minute) with a thread hop per key, which took ~8 % of a busy
    server's interpreter time (py-spy under scripts/bench_web.py). Here an event costs an append
    and what expired of its own key; keys left idle are dropped once a window. Used from the
    event loop only (RateLimit.check), so it needs no lock."""

    def __init__(self) -> None:
        self._events: dict[tuple, deque[float]] = {}
        self._swept = time.time()
        self._longest = 0.0  # the longest window asked for: the sweep keeps what any limit still counts

    def hit(self, key: tuple, limit: int, window: float) -> float:
        """0.0 when the event is allowed (and recorded), else the seconds until one would be."""
        now = time.time()
        start = now - window
        self._longest = max(self._longest, window)
        if now - self._swept > self._longest:
            self._sweep(now - self._longest)
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque()
        while events and events[0] < start:
            events.popleft()
        if len(events) < limit:
            events.append(now)
            return 0.0
        return max(0.001, events[0] + window - now)

    def _sweep(self, start: float) -> None:
        """Forget the keys whose newest event is older than `start`."""
        self._swept = time.time()
        for key in [k for k, events in self._events.items() if not events or events[-1] < start]:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)


def limit_storage(redis_url: str | None) -> Storage | ProcessWindows:
    """Memory (one process), or Redis for `redis://` / `rediss://` URLs (redis-py's asyncio client)."""
    if not redis_url:
        return ProcessWindows()
    url = redis_url if redis_url.startswith("async+") else "async+" + redis_url
    return storage_from_string(url, implementation="redispy", key_prefix="pbxbot")


class RateLimit:
    """At most `per_minute` events per key in any `window` seconds (per_minute <= 0: no limit)."""

    def __init__(self, name: str, per_minute: int, storage: Storage | ProcessWindows, *, window: int = 60) -> None:
        self.name = name
        self.per_minute = per_minute
        self.window = window
        self._item = RateLimitItemPerSecond(per_minute, window) if per_minute > 0 else None
        self._memory = storage if isinstance(storage, ProcessWindows) else None
        self._limiter = MovingWindowRateLimiter(storage) if self._memory is None else None
        self.last_error: str | None = None
        self._logged_at = float("-inf")

    async def check(self, key: str) -> float:
        if self._item is None:
            return 0.0
        if self._memory is not None:
            return self._memory.hit((self.name, self.per_minute, self.window, key), self.per_minute, self.window)
        try:
            if await self._limiter.hit(self._item, self.name, key):
                self.last_error = None
                return 0.0
            stats = await self._limiter.get_window_stats(self._item, self.name, key)
        except Exception as exc:  # noqa: BLE001 - the storage is down: let the message through
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if time.monotonic() - self._logged_at > ERROR_LOG_EVERY:
                self._logged_at = time.monotonic()
                log.error("rate limit %s not checked (%s); letting messages through", self.name, self.last_error)
            return 0.0
        return max(0.001, stats.reset_time - time.time())
