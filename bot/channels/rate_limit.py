"""Per-key rate limits on the `limits` library: in this process's memory, or in Redis (PBXBOT_REDIS_URL,
where every process and every node counts in one place).

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

from limits import RateLimitItemPerSecond, strategies
from limits.aio.storage import Storage
from limits.storage import MemoryStorage, storage_from_string
from limits.aio.strategies import MovingWindowRateLimiter

log = logging.getLogger("bot.channels.rate_limit")

ERROR_LOG_EVERY = 60.0


def limit_storage(redis_url: str | None) -> Storage | MemoryStorage:
    """Memory (one process), or Redis for `redis://` / `rediss://` URLs (redis-py's asyncio client).

    In memory, the library's *synchronous* storage, called straight from the event loop (a dict and a
    lock, nothing that waits). Its asyncio memory storage schedules, after every hit, a task that
    walks every key it holds with one thread hop per key (limits 5.8, `aio/storage/memory.py`,
    `__expire_events`): ~8 % of a busy server's interpreter time under py-spy. The synchronous one
    expires in a timer thread instead."""
    if not redis_url:
        return MemoryStorage()
    url = redis_url if redis_url.startswith("async+") else "async+" + redis_url
    return storage_from_string(url, implementation="redispy", key_prefix="pbxbot")


class RateLimit:
    """At most `per_minute` events per key in any `window` seconds (per_minute <= 0: no limit)."""

    def __init__(self, name: str, per_minute: int, storage: Storage | MemoryStorage, *, window: int = 60) -> None:
        self.name = name
        self._item = RateLimitItemPerSecond(per_minute, window) if per_minute > 0 else None
        self._memory = strategies.MovingWindowRateLimiter(storage) if isinstance(storage, MemoryStorage) else None
        self._limiter = MovingWindowRateLimiter(storage) if self._memory is None else None
        self.last_error: str | None = None
        self._logged_at = float("-inf")

    async def check(self, key: str) -> float:
        if self._item is None:
            return 0.0
        if self._memory is not None:
            if self._memory.hit(self._item, self.name, key):
                return 0.0
            return max(0.001, self._memory.get_window_stats(self._item, self.name, key).reset_time - time.time())
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
