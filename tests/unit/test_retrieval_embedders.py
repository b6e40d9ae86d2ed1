"""Embedders: LangChain interface, the test-only hash embedder."""

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from bot.config import ConfigError
from bot.retrieval.embedders import HashEmbedder, make_embedder


def test_hash_embedder_is_deterministic_langchain_embeddings():
    e = HashEmbedder()
    assert isinstance(e, Embeddings)
    a, b = e.embed_documents(["PBX 乗っ取り", "PBX 乗っ取り"])
    assert a == b and abs(np.linalg.norm(a) - 1) < 1e-5
    assert e.embed_documents([]) == []


def test_unknown_embedder_is_a_config_error():
    with pytest.raises(ConfigError):
        make_embedder("word2vec-from-the-internet")
