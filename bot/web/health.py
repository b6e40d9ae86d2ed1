"""/healthz: the state of the index and the store (200 when healthy, 503 when not).

Uses `core.health()` when the core offers one (a dict with "ok" and details); otherwise probes
the store with a cheap read (list_queue) and the index with `core.retriever` when present.
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
        ok = True
        core_health = getattr(self.core, "health", None)
        if callable(core_health):
            try:
                data = await asyncio.wait_for(self.run_sync(core_health), PROBE_TIMEOUT)
                data = dict(data or {})
                ok = bool(data.pop("ok", True))
                info.update(data)
            except Exception as exc:
                ok, info["core"] = False, f"error: {type(exc).__name__}"
        else:
            try:
                await asyncio.wait_for(self.run_sync(self.core.handoff.list_queue), PROBE_TIMEOUT)
                info["store"] = {"ok": True, "backend": type(self.core.handoff).__name__}
            except Exception as exc:
                ok, info["store"] = False, {"ok": False, "error": type(exc).__name__}
            retriever = getattr(self.core, "retriever", None)
            if retriever is not None:
                info["index"] = {"ok": True, "backend": type(retriever).__name__}
                stats = getattr(retriever, "stats", None)
                if callable(stats):
                    try:
                        info["index"].update(await asyncio.wait_for(self.run_sync(stats), PROBE_TIMEOUT))
                    except Exception as exc:
                        ok, info["index"] = False, {"ok": False, "error": type(exc).__name__}
        if self.extra is not None:
            extra = self.extra()
            if extra.pop("ok", True) is False:
                ok = False
            info.update(extra)
        return ok, info
