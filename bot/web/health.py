"""/healthz: the state of the index and the store (200 when healthy, 503 when not), and of the
replies owed to users: "degraded" (200) while some have failed to be delivered or are dead.

Probes the store (its health(), else a cheap read: list_queue) and the index (`core.retriever`,
when present).
Results are cached for a second so that a busy probe cannot load the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

PROBE_TIMEOUT = 5.0
CACHE_SECONDS = 1.0


class HealthCheck:
    def __init__(self, core: Any, run_sync: Callable[..., Awaitable[Any]], *,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.core, self.run_sync, self.extra = core, run_sync, extra
        self._cached: tuple[float, bool, dict[str, Any]] | None = None

    async def check(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        if self._cached and now - self._cached[0] < CACHE_SECONDS:
            return self._cached[1], self._cached[2]
        ok, info = await self._probe()
        self._cached = (now, ok, info)
        return ok, info

    async def _probe(self) -> tuple[bool, dict[str, Any]]:
        info: dict[str, Any] = {}
        store_health = getattr(self.core.store, "health", None)
        try:
            if callable(store_health):  # SqlHandoffStore: {"ok", "backend", "revision"}
                info["store"] = dict(await asyncio.wait_for(self.run_sync(store_health), PROBE_TIMEOUT))
            else:
                await asyncio.wait_for(self.run_sync(self.core.handoff.list_queue), PROBE_TIMEOUT)
                info["store"] = {"ok": True, "backend": type(self.core.handoff).__name__}
        except Exception as exc:
            info["store"] = {"ok": False, "error": type(exc).__name__}
        ok = bool(info["store"].get("ok"))
        retriever = getattr(self.core, "retriever", None)
        if retriever is not None:
            info["index"] = index_state(retriever)
            ok = ok and info["index"]["ok"]
        counts = getattr(self.core.handoff, "outbox_counts", None)
        if callable(counts):
            try:
                queue = dict(await asyncio.wait_for(self.run_sync(counts), PROBE_TIMEOUT))
                info["deliveries"] = {**queue, "degraded": bool(queue.get("failing") or queue.get("dead"))}
            except Exception as exc:
                ok, info["deliveries"] = False, {"error": type(exc).__name__}
        if self.extra is not None:
            extra = self.extra()
            if extra.pop("ok", True) is False:
                ok = False
            info.update(extra)
        return ok, info


def index_state(retriever: Any) -> dict[str, Any]:
    """What /healthz says about the loaded index (HybridRetriever: build id, chunk and document counts)."""
    state: dict[str, Any] = {"ok": True, "backend": type(retriever).__name__}
    manifest = getattr(retriever, "manifest", None)
    if isinstance(manifest, dict):
        state.update({key: manifest[key] for key in ("build_id", "embedder") if key in manifest})
    store = getattr(retriever, "store", None)
    chunk_ids = getattr(store, "chunk_ids", None)
    if chunk_ids is not None:
        state["chunks"] = len(chunk_ids)
        state["documents"] = len(getattr(store, "docs", {}) or {})
        state["ok"] = len(chunk_ids) > 0
    return state
