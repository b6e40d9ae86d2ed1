"""create_app(settings): the composition root of the server (see ../shared/design.md).

It chooses the implementations from settings (the conversation core from bot.wiring unless one
is given), validates the enabled channels (a half-configured one is a clear ConfigError at
start-up), registers the channels (the widget's "web" channel always; each platform module
`bot.channels.<name>` whose settings are present, through its `register(registry, settings, core)`),
mounts their routes, the widget, the operator console and /healthz, and runs in the background
while the app lives: recovery of messages left unanswered by a crash (at start, then every 60 s
for workers that died mid-turn), the outbox dispatcher (every 0.5 s), the urgent-ticket
re-announcer (every 30 s) and, on PostgreSQL, the change listener (LISTEN/NOTIFY) that tells the
widget feed and the console of messages and tickets written by any node. The synchronous core is
always called in worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.channels import web as web_channel
from bot.channels.registry import ChannelRegistry, enabled_platforms
from bot.config import ConfigError, Settings
from bot.ports import ConversationCore
from bot.proxy import parse_trusted_proxies
from bot.web.auth import OperatorAuth
from bot.web import background
from bot.web.console import QueueEvents, build_console_router
from bot.web.health import HealthCheck
from bot.web.middleware import RequestContextMiddleware, current_request_id
from bot.web import timeouts

log = logging.getLogger("bot.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEMO_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
# Set by `pbxbot serve --workers N` for its workers: when this server generation started (ISO,
# UTC). A message recorded before it belongs to a previous run; after it, a live worker may be
# answering it (ConversationService.started_at, the crash-recovery cutoff).
SERVE_STARTED_ENV = "PBXBOT_SERVE_STARTED_AT"


def create_app(
    settings: Settings,
    *,
    core: ConversationCore | None = None,
    outbox_interval: float = 0.5,
    reannounce_interval: float = 30.0,
    recover_interval: float = 60.0,
) -> FastAPI:
    enabled = enabled_platforms(settings)
    _ensure_secret_masking(settings)
    secret_key = (settings.session_secret.get_secret_value().encode()
                  if settings.session_secret and settings.session_secret.get_secret_value()
                  else secrets.token_bytes(32))
    try:
        trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    auth = OperatorAuth(settings, secret_key=secret_key)  # validates PBXBOT_OPERATORS
    timeouts.configure(settings.http_header_timeout)  # this process's HTTP protocol (bot/web/timeouts.py)
    if core is None:
        from bot.wiring import build_conversation_service

        core = build_conversation_service(settings)

    registry = ChannelRegistry(settings, core)
    if hasattr(core.store, "session_revoked"):  # revoked sessions in the store: every worker sees them
        auth.revocations = core.store
    auth.run_sync = registry.run_sync
    web = web_channel.register(registry, settings, core, signing_key=secret_key)
    for name in enabled:
        registry.register_platform(name)
    core.add_ticket_listener(registry.ticket_listener)
    queue_events = QueueEvents()
    registry.add_ticket_subscriber(_publish_ticket(queue_events))
    listener = _change_listener(core, web, queue_events)

    async def run_background(func, *args):  # store calls of the loops: not behind the chat traffic
        return await anyio.to_thread.run_sync(func, *args)

    dispatcher = background.OutboxDispatcher(core.handoff, registry, run_background, interval=outbox_interval)
    jobs = [
        background.recovery(core, run_background, interval=recover_interval, on_done=dispatcher.wake),
        background.reannouncer(core, run_background, interval=reannounce_interval, on_done=dispatcher.wake),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        tasks = [asyncio.create_task(dispatcher.run(), name="outbox-dispatcher")]
        if listener is not None:
            tasks.append(asyncio.create_task(listener.run(), name="change-listener"))
        tasks += [asyncio.create_task(job.run(), name=job.name) for job in jobs]
        log.info("pbxbot web ready; channels: %s", ", ".join(registry.names))
        try:
            yield
        finally:
            dispatcher.stop()
            for job in jobs:
                job.stop()
            for t in tasks:
                t.cancel()
            _done, pending = await asyncio.wait(tasks, timeout=5)
            if pending:
                log.warning("background loops did not stop in time: %s", [t.get_name() for t in pending])
            await registry.stop()
            close = getattr(core, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(close)

    app = FastAPI(title="pbxbot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.core = core
    app.state.registry = registry
    app.state.web_channel = web
    app.state.dispatcher = dispatcher
    app.state.auth = auth

    def dispatcher_state() -> dict[str, Any]:
        feed_ok = web.feed.last_error is None
        return {"outbox": {"ok": dispatcher.last_error is None, "delivered": dispatcher.delivered,
                           "failed_attempts": dispatcher.failed},
                "widget_feed": {"ok": feed_ok, **({} if listener is None else {"notifications": listener.connected})},
                "rate_limits": {"storage": "redis" if settings.redis_url else "memory",
                                "last_error": registry.rate_limiter.last_error},
                "channels": registry.names,
                "ok": dispatcher.last_error is None and feed_ok}

    health = HealthCheck(core, registry.run_sync, extra=dispatcher_state)

    # ------------------------------------------------------------ errors as JSON, never 500 for bad input

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type")}
                  for e in exc.errors()[:10]]
        json_broken = any(e["type"] == "json_invalid" for e in errors)
        log.info("rid=%s %s %s invalid request: %s", current_request_id(), request.method, request.url.path,
                 "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        return JSONResponse({"error": "invalid_json" if json_broken else "invalid_request",
                             "message": "The request body is not valid JSON of the expected shape.",
                             "detail": errors, "request_id": current_request_id()}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            code = "invalid_json"
        if exc.status_code >= 500:
            log.error("rid=%s %s %s -> %d", current_request_id(), request.method, request.url.path, exc.status_code)
        return JSONResponse({"error": code, "message": str(exc.detail), "request_id": current_request_id()},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    # ------------------------------------------------------------ routes

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok, info = await health.check()
        return JSONResponse({"status": "ok" if ok else "unhealthy", **info}, status_code=200 if ok else 503,
                            headers={"Cache-Control": "no-store"})

    @app.get("/", response_class=HTMLResponse)
    async def demo_page() -> Response:
        return HTMLResponse(_static("demo.html"), headers={"Content-Security-Policy": DEMO_CSP})

    @app.get("/widget.js")
    async def widget_js() -> Response:
        return Response(_static("widget.js"), media_type="application/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300"})

    @app.get("/console/static/{name}")
    async def console_static(name: str) -> Response:
        types = {"console.js": "application/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
        if name not in types:
            return JSONResponse({"error": "not_found", "message": "no such file"}, status_code=404)
        return Response(_static(name), media_type=types[name], headers={"Cache-Control": "no-cache"})

    @app.get("/console/")
    async def console_slash() -> Response:
        return RedirectResponse("/console", status_code=308)

    app.include_router(build_console_router(auth, core, registry.run_sync, max_text_chars=settings.max_text_chars,
                                            on_reply=dispatcher.wake, events=queue_events))
    registry.mount(app)

    origins = [o.strip() for o in settings.widget_origins.split(",") if o.strip()]
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["content-type", "x-request-id"], allow_credentials=False, max_age=600)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       body_timeout=settings.http_body_timeout, trusted_proxies=trusted_proxies)
    return app


def create_app_from_environment() -> FastAPI:
    """uvicorn's app factory for each worker of `pbxbot serve --workers N` (a fresh process: it
    sets up logging with secret masking and reads its settings from the environment)."""
    import os
    from datetime import datetime

    from bot.config import load_settings
    from bot.logging_setup import configure_logging
    from bot.wiring import build_conversation_service

    settings = load_settings()
    configure_logging(settings)
    core = build_conversation_service(settings)
    started = os.environ.get(SERVE_STARTED_ENV)
    if started:  # recovery: older messages belong to the previous run, newer ones to live workers
        try:
            core.started_at = datetime.fromisoformat(started)
        except ValueError:
            log.warning("ignoring an invalid %s", SERVE_STARTED_ENV)
    return create_app(settings, core=core)


def _change_listener(core: ConversationCore, web: "web_channel.WebChannel", queue_events: QueueEvents):
    """The store's LISTEN/NOTIFY listener (PostgreSQL), wired to the widget feed and the console's
    queue; None when the store has none (SQLite: the feed polls)."""
    make = getattr(core.store, "change_listener", None)
    if not callable(make):
        return None

    def on_connect() -> None:  # catch up on whatever happened while not listening
        web.feed.wake()
        queue_events.publish("", "resync")

    listener = make(on_message=web.feed.notify, on_ticket=queue_events.publish, on_connect=on_connect)
    if listener is not None:
        web.feed.live = queue_events.live = lambda: listener.connected
    return listener


def _publish_ticket(queue_events: QueueEvents):
    async def publish(_event: str, ticket: Any) -> None:
        queue_events.publish(ticket.id, ticket.status)

    return publish


def _ensure_secret_masking(settings: Settings) -> None:
    """The CLI installs the masking filter; an app built by other means (tests, `uvicorn --factory`)
    gets one too, so that no configured secret reaches a log line."""
    from bot.logging_setup import SecretMaskingFilter, install_secret_filter

    root = logging.getLogger()
    wanted = set(s for s in settings.secret_values() if len(s) >= 4)
    for handler in root.handlers:
        for flt in handler.filters:
            if isinstance(flt, SecretMaskingFilter) and wanted <= set(flt.secrets):
                return
    install_secret_filter(settings)


_STATIC_CACHE: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    data = _STATIC_CACHE.get(name)
    if data is None:
        data = _STATIC_CACHE[name] = (STATIC_DIR / name).read_bytes()
    return data
