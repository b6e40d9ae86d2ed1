"""A message's retrieval work is bounded (bot/wiring.py BoundedRetriever): whatever its length,
analysis, BM25 and the embedding see at most settings.max_search_chars of the query."""

from __future__ import annotations

from bot.config import Settings
from bot.wiring import BoundedRetriever


class Recording:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.prefetched: list[str] = []
        self.manifest = {"build_id": "b1"}

    def search(self, query, k=5, **kw):
        self.queries.append(query)
        return ("result", k, kw)

    def prefetch(self, query):
        self.prefetched.append(query)


def test_a_long_query_is_cut_to_its_start_and_its_end_and_prefetch_agrees():
    inner = Recording()
    r = BoundedRetriever(inner, 200)
    query = "PBXの乗っ取り" + "あ" * 5000 + " 末尾のヒント"
    assert r.search(query, 3, language="ja") == ("result", 3, {"language": "ja"})
    r.prefetch(query)
    [sent] = inner.queries
    assert len(sent) == 200 and sent.startswith("PBXの乗っ取り") and sent.endswith(" 末尾のヒント")
    assert inner.prefetched == [sent]  # the waiting message announces exactly what its turn embeds


def test_a_short_query_and_everything_else_pass_through():
    inner = Recording()
    r = BoundedRetriever(inner, 200)
    r.search("国際電話を止めるには")
    assert inner.queries == ["国際電話を止めるには"]
    assert r.manifest == {"build_id": "b1"}


def test_the_default_bound():
    assert Settings(_env_file=None).max_search_chars == 200
