"""`pbxbot serve [--host H] [--port P] [--workers N]`: the whole bot as one HTTP server (uvicorn).

With no settings at all it serves the widget (/), the API and the console on the embedded
default store and index. Without PBXBOT_OPERATOR_TOKEN (and without operator accounts) it makes
a one-time token for this run and prints it on the terminal (stderr, never to the log), so the
console is usable; configured secrets are never printed or logged.

With --workers N (PBXBOT_WORKERS) it is uvicorn's own multi-process mode: uvicorn binds the port,
starts N worker processes on it and restarts one that dies. Several processes need PostgreSQL
(PBXBOT_DATABASE_URL): SQLite is the one-process store, and asking for more workers on it stops
start-up with one clear line (see docs/deploy.md for the measurements behind that). Before the
workers start, this process builds the index if needed, migrates the store, and hands the
workers one session secret and one console token through their environment, so a console login
or a widget token is valid whichever worker a request reaches. Several machines: run one
`pbxbot serve` per node behind a reverse proxy (docs/deploy.md).
"""

from __future__ import annotations

import os
import secrets
import sys

from pydantic import SecretStr

from bot.config import ConfigError, Settings
from bot.web.timeouts import PROTOCOL_PATH, http_protocol

GRACEFUL_SHUTDOWN_SECONDS = 3  # open event streams are cut after this; widgets reconnect elsewhere


def prepare_settings(settings: Settings) -> tuple[Settings, str | None]:
    """(settings to run with, the generated operator token or None)."""
    if settings.operator_token is not None or settings.operators is not None:
        return settings, None
    token = secrets.token_urlsafe(24)
    return settings.model_copy(update={"operator_token": SecretStr(token)}), token


def check_workers(settings: Settings, workers: int) -> None:
    """Several processes need a store and a limit shared by processes: PostgreSQL, not SQLite."""
    if workers <= 1:
        return
    from bot.channels.registry import enabled_platforms, platform_module

    for name in enabled_platforms(settings):
        reason = settings.channel(name, platform_module(name).SETTINGS).one_process_only()
        if reason:
            raise ConfigError(reason)
    if not settings.database_url or settings.resolved_database_url.startswith("sqlite"):
        raise ConfigError(f"--workers {workers} needs PostgreSQL (PBXBOT_DATABASE_URL=postgresql+psycopg://...): "
                          "SQLite serves one process; run with --workers 1, or see docs/deploy.md")


def run(args, settings: Settings) -> int:
    import uvicorn

    from bot.logging_setup import install_secret_filter

    from bot.channels.registry import enabled_platforms

    enabled_platforms(settings)  # a clear error before anything slow
    settings, generated = prepare_settings(settings)
    if generated:
        install_secret_filter(settings)  # masks the generated token too, should anything log it
    host, port = args.host, args.port
    workers = args.workers if getattr(args, "workers", None) else settings.workers
    check_workers(settings, workers)
    if workers == 1:
        from bot.web.app import create_app

        print(f"pbxbot: loading the knowledge index and the store (data dir {settings.data_dir})...", file=sys.stderr)
        app = create_app(settings)
        _announce(host, port, generated)
        uvicorn.Server(uvicorn_config(app, settings, host=host, port=port)).run()
        return 0
    _prepare_workers(settings, workers, generated)
    _announce(host, port, generated, workers)
    uvicorn.run("bot.web.app:create_app_from_environment", factory=True, workers=workers,
                **_options(settings, http=PROTOCOL_PATH), host=host, port=port)
    return 0


def _options(settings: Settings, log_level: str | None = None, **extra):
    return dict(log_level=(log_level or settings.log_level).lower(), access_log=False,
                proxy_headers=False,  # forwarded headers: PBXBOT_TRUSTED_PROXIES (bot/proxy.py, the middleware)
                server_header=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                log_config=None,  # keep the root handlers (and their secret-masking filter)
                # slow clients: headers (bot/web/timeouts.py), idle keep-alive; the body's is in the middleware
                timeout_keep_alive=settings.http_keep_alive_timeout, **extra)


def uvicorn_config(app, settings: Settings, log_level: str | None = None, **where):
    """uvicorn's configuration for one process serving `app` (the tests and probes use it too)."""
    import uvicorn

    return uvicorn.Config(app, **_options(settings, log_level, http=http_protocol(settings.http_header_timeout)), **where)


def _prepare_workers(settings: Settings, workers: int, generated: str | None) -> None:
    """Index and schema once here, not by N workers at once; what the workers must share goes
    into the environment they inherit."""
    from bot.messages import utcnow
    from bot.web.app import SERVE_STARTED_ENV
    from bot.wiring import build_store, prepare_index, prepare_understanding

    print(f"pbxbot: checking the knowledge index and the store (data dir {settings.data_dir})...", file=sys.stderr)
    prepare_index(settings)
    prepare_understanding(settings)  # the intent model trained once here, not by N workers at once
    build_store(settings).close()
    os.environ["PBXBOT_WORKERS"] = str(workers)  # each worker sizes its thread pool by it
    os.environ[SERVE_STARTED_ENV] = utcnow().isoformat()  # one recovery cutoff for all workers
    if settings.session_secret is None or not settings.session_secret.get_secret_value():
        os.environ["PBXBOT_SESSION_SECRET"] = secrets.token_urlsafe(32)  # one for all workers
    if generated:
        os.environ["PBXBOT_OPERATOR_TOKEN"] = generated


def _announce(host: str, port: int, generated: str | None, workers: int = 1) -> None:
    """Where to point a browser, and the one-time console token (the terminal only, never the log)."""
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    processes = f" with {workers} worker processes" if workers > 1 else ""
    print(f"pbxbot: serving on http://{shown}:{port}/{processes}  (widget demo /, console /console, health /healthz)",
          file=sys.stderr)
    if generated:
        print("pbxbot: no PBXBOT_OPERATOR_TOKEN is set; the console token for this run is:\n\n"
              f"    {generated}\n\n(set PBXBOT_OPERATOR_TOKEN or PBXBOT_OPERATORS to choose your own)",
              file=sys.stderr, flush=True)
