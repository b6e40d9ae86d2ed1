"""create_app(settings): the composition root of the server (see ../shared/design.md).

It chooses the implementations from settings (the conversation core from bot.wiring unless one is
given), validates the enabled channels (a half-configured one is a clear ConfigError at start-up),
registers them (the widget's "web" channel always; each platform of bot.channels.registry.PLATFORMS
whose secrets are set), and puts the routes together: routes/chat.py (the widget's API), widget.py
(its page and script), webhooks.py (the channels' routes), console.py and console_api.py, health.py.
What runs in the background while the app lives is lifespan.py's.
"""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI

from bot.channels.registry import ChannelRegistry, enabled_platforms
from bot.config import ConfigError, Settings
from bot.ports import ConversationCore
from bot.proxy import Network, parse_trusted_proxies
from bot.web import background, errors, timeouts
from bot.web.auth import OperatorAuth
from bot.web.deps import WebState
from bot.web.health import HealthCheck
from bot.web.lifespan import background_jobs, change_listener, lifespan, run_background
from bot.web.middleware import RequestContextMiddleware
from bot.web.queue import QueueEvents
from bot.web.routes import chat, console, console_api, health, widget
from bot.web.routes.webhooks import include_channel_routes
from bot.web.widget import WidgetChannel

log = logging.getLogger("bot.web")

# Set by `pbxbot serve --workers N` for its workers: when this server generation started (ISO,
# UTC). A message recorded before it belongs to a previous run; after it, a live worker may be
# answering it (ConversationService.started_at, the crash-recovery cutoff).
SERVE_STARTED_ENV = "PBXBOT_SERVE_STARTED_AT"


def create_app(settings: Settings, *, core: ConversationCore | None = None, outbox_interval: float = 0.5,
               reannounce_interval: float = 30.0, recover_interval: float = 60.0) -> FastAPI:
    platforms = enabled_platforms(settings)
    _ensure_secret_masking(settings)
    secret_key = (settings.session_secret.get_secret_value().encode()
                  if settings.session_secret and settings.session_secret.get_secret_value() else secrets.token_bytes(32))
    try:
        trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
    except ValueError as exc:  # names the bad entry
        raise ConfigError(str(exc)) from None
    auth = OperatorAuth(settings, secret_key=secret_key)  # validates PBXBOT_OPERATORS
    timeouts.configure(settings.http_header_timeout)  # this process's HTTP protocol (bot/web/timeouts.py)
    if core is None:
        from bot.wiring import build_conversation_service

        core = build_conversation_service(settings)
    state = _wire(settings, core, auth, secret_key, platforms, outbox_interval=outbox_interval,
                  reannounce_interval=reannounce_interval, recover_interval=recover_interval)
    app = FastAPI(title="pbxbot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = state
    # the parts by name, for scripts and tests
    app.state.settings, app.state.core, app.state.registry = settings, core, state.registry
    app.state.web_channel, app.state.dispatcher, app.state.auth = state.widget, state.dispatcher, auth
    errors.install(app)
    # The widget's API first: a request is matched against the routes in this order, and POST
    # /api/chat is most of the traffic (no two areas share a path, so the order decides nothing else).
    for area in (chat, health, widget, console, console_api):
        app.include_router(area.router)
    include_channel_routes(app, state.registry)
    _add_middleware(app, settings, trusted_proxies)
    return app


def _wire(settings: Settings, core: ConversationCore, auth: OperatorAuth, secret_key: bytes, platforms: list[str], *,
          outbox_interval: float, reannounce_interval: float, recover_interval: float) -> WebState:
    registry = ChannelRegistry(settings, core)
    if hasattr(core.store, "session_revoked"):  # revoked sessions in the store: every worker sees them
        auth.revocations = core.store
    auth.run_sync = registry.run_sync
    widget_channel = registry.add(WidgetChannel(signing_key=secret_key, store=core.store))
    for name in platforms:
        registry.register_platform(name)
    core.add_ticket_listener(registry.ticket_listener)
    queue = QueueEvents()

    async def publish(_event: str, ticket) -> None:  # noqa: ANN001 - a bot.ports.Ticket
        queue.publish(ticket.id, ticket.status)

    registry.add_ticket_subscriber(publish)
    dispatcher = background.OutboxDispatcher(core.handoff, registry, run_background, interval=outbox_interval,
                                             max_backoff=settings.outbox_max_backoff)
    state = WebState(settings=settings, core=core, registry=registry, widget=widget_channel, auth=auth, queue=queue,
                     dispatcher=dispatcher, jobs=background_jobs(core, dispatcher, reannounce_interval=reannounce_interval,
                                          recover_interval=recover_interval),
                     address_limit=registry.limiter("address", settings.rate_limit_per_minute * chat.PER_ADDRESS_FACTOR),
                     listener=change_listener(core, widget_channel, queue))
    state.health = HealthCheck(core, registry.run_sync, extra=lambda: health.server_state(state))
    return state


def _add_middleware(app: FastAPI, settings: Settings, trusted_proxies: tuple[Network, ...]) -> None:
    origins = [o.strip() for o in settings.widget_origins.split(",") if o.strip()]
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["content-type", "x-request-id"], allow_credentials=False, max_age=600)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       body_timeout=settings.http_body_timeout, trusted_proxies=trusted_proxies)


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


