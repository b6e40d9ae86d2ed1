"""One lock per key, kept only while someone holds or waits for it."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class KeyedLocks:
    """`with locks.hold(key):` serializes the holders of one key; other keys run freely."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}  # key -> (lock, [users])

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
