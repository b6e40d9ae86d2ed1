"""Limits on guessing operator credentials (the console login form and the bearer API).

Policy (limit = PBXBOT_LOGIN_ATTEMPTS_PER_MINUTE, 10 by default, over any 60 s):
* per client address (bot.proxy.client_address): at most `limit` guesses, whatever the account;
* per account (the name typed in the login form; "operator-token" for the operator token and
  the bearer API): at most `limit` guesses from clients the account does not recognise.
A recognised client is a browser holding this account's known-device cookie (set at a
successful console login) or an address that authenticated as this account within
RECOGNISED_SECONDS; its guesses count on a budget of its own (device or address), not on the
account's. So an attacker, from however many addresses, gets at most `limit` guesses a minute
per account, but cannot lock out an operator who has logged in before from that browser or
that address: the lockout only reaches clients that never authenticated as the account.

Only wrong guesses are counted (an office behind one address may log in many operators at
nine, scripts poll the bearer API); a guess being checked holds its place in every budget, so
a burst of parallel guesses cannot overshoot. A refused guess is answered 429 with Retry-After
before any credential is checked, so it costs no bcrypt time either.

Counting sits behind `AttemptStore` (four calls): `InProcessAttemptStore` counts in this process
(one process, the embedded default); `RedisAttemptStore` counts in Redis (PBXBOT_REDIS_URL), so the
limits hold across `serve --workers N` and every node. (Not the `limits` library: its moving window
has no "remember this key for 30 days" and no way to count only wrong guesses after the check.)
When Redis cannot be reached the counts fall back to this process's: guessing stays limited.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from contextlib import contextmanager
from typing import Iterator, Protocol

log = logging.getLogger("bot.web.guesses")

TOKEN_ACCOUNT = "operator-token"
WINDOW_SECONDS = 60.0
RECOGNISED_SECONDS = 30 * 24 * 3600.0


class AttemptStore(Protocol):
    """Sliding-window counters and remembered keys (maps onto `limits` + Redis)."""

    def wait(self, key: str, limit: int) -> float:
        """Seconds until `key` has fewer than `limit` counted events in the window (0: it has)."""
        ...

    def add(self, key: str) -> None:
        """Count one event for `key` now."""
        ...

    def remember(self, key: str, seconds: float) -> None: ...

    def remembers(self, key: str) -> bool: ...


class InProcessAttemptStore:
    """AttemptStore in this process's memory; bounded (least recently used keys are forgotten)."""

    def __init__(self, *, window: float = WINDOW_SECONDS, max_keys: int = 100_000, clock=time.monotonic) -> None:
        self.window, self.max_keys, self._clock = window, max_keys, clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._marks: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, key: str, limit: int) -> float:
        now = self._clock()
        with self._lock:
            q = self._events.get(key)
            if q is None:
                return 0.0
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) < limit:
                return 0.0
            return max(0.001, q[-limit] + self.window - now)

    def add(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            q = self._events.get(key)
            if q is None:
                q = self._events[key] = deque(maxlen=1000)
                if len(self._events) > self.max_keys:
                    self._events.popitem(last=False)
            else:
                self._events.move_to_end(key)
            q.append(now)

    def remember(self, key: str, seconds: float) -> None:
        with self._lock:
            self._marks[key] = self._clock() + seconds
            self._marks.move_to_end(key)
            if len(self._marks) > self.max_keys:
                self._marks.popitem(last=False)

    def remembers(self, key: str) -> bool:
        with self._lock:
            until = self._marks.get(key)
            return until is not None and until > self._clock()


class RedisAttemptStore:
    """AttemptStore in Redis, shared by every process and node: a sorted set of event times per key
    (trimmed to the window, expiring with it) and plain keys with a time to live for remembered ones.
    A Redis error falls back to `fallback` (this process's counts) and is logged once a minute."""

    def __init__(self, url: str, *, window: float = WINDOW_SECONDS, prefix: str = "pbxbot:guesses:",
                 fallback: AttemptStore | None = None) -> None:
        import redis  # the dependency of limits' Redis storage

        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.window, self.prefix = window, prefix
        self.fallback = fallback or InProcessAttemptStore(window=window)
        self.last_error: str | None = None
        self._logged_at = float("-inf")

    def _failed(self, exc: Exception) -> None:
        self.last_error = type(exc).__name__
        if time.monotonic() - self._logged_at > 60:
            self._logged_at = time.monotonic()
            log.error("guess limits: Redis unreachable (%s); counting in this process", self.last_error)

    def wait(self, key: str, limit: int) -> float:
        k, now = self.prefix + "n:" + key, time.time()
        try:
            pipe = self._redis.pipeline()
            pipe.zremrangebyscore(k, 0, now - self.window)
            pipe.zrange(k, -limit, -limit, withscores=True)  # the limit-th newest event, if there are that many
            _trimmed, nth = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - redis errors are many classes
            self._failed(exc)
            return self.fallback.wait(key, limit)
        return max(0.001, float(nth[0][1]) + self.window - now) if nth else 0.0

    def add(self, key: str) -> None:
        k, now = self.prefix + "n:" + key, time.time()
        try:
            pipe = self._redis.pipeline()
            pipe.zadd(k, {f"{now:.6f}:{uuid.uuid4().hex[:8]}": now})
            pipe.expire(k, int(self.window) + 1)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            self.fallback.add(key)

    def remember(self, key: str, seconds: float) -> None:
        try:
            self._redis.set(self.prefix + "k:" + key, b"1", ex=max(1, int(seconds)))
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            self.fallback.remember(key, seconds)

    def remembers(self, key: str) -> bool:
        try:
            return bool(self._redis.exists(self.prefix + "k:" + key))
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return self.fallback.remembers(key)


def attempt_store(redis_url: str | None) -> AttemptStore:
    """Redis when PBXBOT_REDIS_URL is set (every process and node counts together), else this process."""
    return RedisAttemptStore(redis_url) if redis_url else InProcessAttemptStore()


class Attempt:
    """One credential check: `wait` > 0 means refused (do not check); call failed() when wrong."""

    def __init__(self, wait: float, keys: list[str]) -> None:
        self.wait = wait
        self.keys = keys
        self.wrong = False

    def failed(self) -> None:
        self.wrong = True


class GuessLimiter:
    """The policy above over an AttemptStore."""

    def __init__(self, store: AttemptStore | None = None, *, per_minute: int = 10) -> None:
        self.store = store or InProcessAttemptStore()
        self.limit = per_minute
        self._inflight: Counter[str] = Counter()  # checks running now (bcrypt runs in a worker thread)
        self._lock = threading.Lock()

    def _keys(self, address: str, account: str, device: str | None) -> list[str]:
        account = account or TOKEN_ACCOUNT
        keys = [f"addr:{address}"]
        if device:
            keys.append(f"dev:{account}:{device}")
        elif not self.store.remembers(f"known:{account}:{address}"):
            keys.append(f"acct:{account}")
        return keys

    def _wait(self, keys: list[str]) -> float:
        waits = [0.0]
        for key in keys:
            room = self.limit - self._inflight[key]
            waits.append(self.store.wait(key, room) if room > 0 else WINDOW_SECONDS)
        return max(waits)

    @contextmanager
    def attempt(self, address: str, account: str, device: str | None = None) -> Iterator[Attempt]:
        """A guess at `account` from `address`. Refused (attempt.wait > 0) when a budget is spent;
        else reserved while it is checked (so a burst of parallel guesses cannot overshoot) and
        counted at the end when attempt.failed() was called."""
        keys = self._keys(address, account, device)
        with self._lock:
            wait = self._wait(keys)
            if not wait:
                self._inflight.update(keys)
        attempt = Attempt(wait, keys)
        if wait:
            yield attempt
            return
        try:
            yield attempt
        finally:
            with self._lock:
                if attempt.wrong:
                    for key in keys:
                        self.store.add(key)
                self._inflight.subtract(keys)
                self._inflight = +self._inflight  # (+: without the keys no check holds any more)

    def succeeded(self, address: str, account: str) -> None:
        """`address` authenticated as `account`: from now on that account recognises it."""
        self.store.remember(f"known:{account or TOKEN_ACCOUNT}:{address}", RECOGNISED_SECONDS)
