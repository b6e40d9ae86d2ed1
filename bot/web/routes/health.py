"""GET /healthz: 200 with the state of the index, the store, the outbox, the widget feed, the rate
limits and the enabled channels; 503 when one of them is not healthy. "degraded" (200): replies are
failing to reach users (a platform outage, a blocked bot); the console lists them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bot.web.deps import State, WebState
from bot.web.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(state: State) -> JSONResponse:
    ok, info = await state.health.check()  # type: ignore[union-attr]
    degraded = bool(info.get("deliveries", {}).get("degraded"))
    status = "unhealthy" if not ok else "degraded" if degraded else "ok"
    return JSONResponse({"status": status, **info}, status_code=200 if ok else 503,
                        headers={"Cache-Control": "no-store"})


def server_state(state: WebState) -> dict[str, Any]:
    """What /healthz adds to the core's state: this server's own loops and limits."""
    dispatcher, feed, listener = state.dispatcher, state.widget.feed, state.listener
    feed_ok = feed.last_error is None
    return {"outbox": {"ok": dispatcher.last_error is None, "delivered": dispatcher.delivered,
                       "failed_attempts": dispatcher.failed},
            "widget_feed": {"ok": feed_ok, **({} if listener is None else {"notifications": listener.connected})},
            "rate_limits": {"storage": "redis" if state.settings.redis_url else "memory",
                            "last_error": state.registry.rate_limiter.last_error},
            "channels": state.registry.names,
            "ok": dispatcher.last_error is None and feed_ok}
