"""`pbxbot serve [--host H] [--port P] [--workers N]`: the whole bot as one HTTP server (uvicorn).

With no settings at all it serves the widget (/), the API and the console on the embedded
default store and index. Without PBXBOT_OPERATOR_TOKEN (and without operator accounts) it makes
a one-time token for this run and prints it on the terminal (stderr, never to the log), so the
console is usable; configured secrets are never printed or logged.

With --workers N (PBXBOT_WORKERS) it supervises N worker processes, each running uvicorn on its own
SO_REUSEPORT socket on the one port, with its own retriever and a connection to the shared store
(SQLite file or PostgreSQL). Everything they
share lives in the store: the transcript (the widget's events), tickets, the outbox (leased), the
recovery lock. Before they start, this process builds the index if needed, migrates the store,
and hands the workers one session secret and one console token through their environment, so a
console login or a widget token is valid whichever worker a request reaches.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys

from pydantic import SecretStr

from bot.config import Settings

log = logging.getLogger("bot.serve")


def prepare_settings(settings: Settings) -> tuple[Settings, str | None]:
    """(settings to run with, the generated operator token or None)."""
    if settings.operator_token is not None or settings.operators is not None:
        return settings, None
    token = secrets.token_urlsafe(24)
    return settings.model_copy(update={"operator_token": SecretStr(token)}), token


def run(args, settings: Settings) -> int:
    from bot.logging_setup import install_secret_filter
    from bot.web.app import create_app

    settings.validate_enabled_channels()  # a clear error before anything slow
    settings, generated = prepare_settings(settings)
    if generated:
        install_secret_filter(settings)  # masks the generated token too, should anything log it
    host, port = args.host, args.port
    workers = args.workers if getattr(args, "workers", None) else settings.workers
    if workers > 1:
        return run_workers(settings, host, port, workers, generated)
    print(f"pbxbot: loading the knowledge index and the store (data dir {settings.data_dir})...", file=sys.stderr)
    app = create_app(settings)
    _announce(host, port, generated)
    _serve(app, settings.log_level, host=host, port=port)
    return 0


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


def _serve(app, log_level: str, *, sockets=None, **where) -> None:
    """uvicorn on `where` (host, port) or on `sockets`; open event streams end as shutdown starts."""
    import uvicorn

    config = uvicorn.Config(
        app, log_level=log_level.lower(), access_log=False, proxy_headers=False, server_header=False,
        timeout_graceful_shutdown=3, log_config=None,  # keep the root handlers (and their secret-masking filter)
        **where,
    )
    server = _Server(config)
    server.on_exit = app.state.web_channel.close_streams
    server.run(sockets=sockets)


def run_workers(settings: Settings, host: str, port: int, workers: int, generated: str | None) -> int:
    import uvicorn

    from bot.config import ConfigError
    from bot.messages import utcnow
    from bot.web.app import SERVE_STARTED_ENV
    from bot.wiring import build_store, prepare_index

    if "telegram" in settings.validate_enabled_channels() and settings.telegram_mode == "polling":
        raise ConfigError("Telegram polling runs in one process: use --workers 1, or "
                          "PBXBOT_TELEGRAM_MODE=webhook with several workers")
    print(f"pbxbot: checking the knowledge index and the store (data dir {settings.data_dir})...", file=sys.stderr)
    prepare_index(settings)
    build_store(settings).close()  # migrated once here, not by N workers at once
    # The workers read their settings from this environment (spawned processes inherit it).
    os.environ["PBXBOT_WORKERS"] = str(workers)  # each worker sizes its thread pool by it
    os.environ[SERVE_STARTED_ENV] = utcnow().isoformat()  # one recovery cutoff for all workers
    if settings.session_secret is None or not settings.session_secret.get_secret_value():
        os.environ["PBXBOT_SESSION_SECRET"] = secrets.token_urlsafe(32)  # one for all workers
    if generated:
        os.environ["PBXBOT_OPERATOR_TOKEN"] = generated
    _announce(host, port, generated, workers)
    if not hasattr(socket, "SO_REUSEPORT") or port == 0:
        # Without per-worker sockets: uvicorn's supervisor and one shared socket (uneven, see below).
        uvicorn.run(
            "bot.web.app:create_app_from_environment", factory=True, host=host, port=port, workers=workers,
            log_level=settings.log_level.lower(), access_log=False, proxy_headers=False, server_header=False,
            timeout_graceful_shutdown=3, log_config=None,
        )
        return 0
    return supervise_workers(host, port, workers, settings.log_level)


# ---------------------------------------------------------------- the worker supervisor
#
# Why not `uvicorn.run(workers=N)`: it binds one socket in the parent and every worker accepts from
# it, and asyncio accepts a whole burst of connections in the worker that wakes first. Measured
# here with 16 keep-alive clients: one worker at 94 % CPU, the other idle, 61 req/s (the known
# uvicorn issue; see Kludex/uvicorn#2472 and Kludex/uvicorn-worker#34). Also, a socket bound that
# way has proto 0, so asyncio leaves Nagle's algorithm on for its connections (Kludex/uvicorn#3149).
# Instead each worker binds its own SO_REUSEPORT socket (proto TCP) on the same address, and Linux
# spreads new connections over the workers by hash.

WORKER_RESTART_DELAY = 1.0
STARTUP_GRACE = 20.0  # a worker that dies sooner than this after starting failed to start


def supervise_workers(host: str, port: int, workers: int, log_level: str) -> int:
    import multiprocessing
    import signal
    import time

    _reuseport_socket(host, port).close()  # fail fast here when the port is taken
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker, like uvicorn's

    def start() -> tuple:
        p = ctx.Process(target=worker_main, args=(host, port, log_level), name="pbxbot-worker", daemon=False)
        p.start()
        return p, time.monotonic()

    procs = [start() for _ in range(workers)]
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    failed_starts = 0
    try:
        while not stopping:
            time.sleep(0.5)
            for i, (p, started) in enumerate(procs):
                if p.is_alive() or stopping:
                    continue
                quick = time.monotonic() - started < STARTUP_GRACE
                failed_starts = failed_starts + 1 if quick else 0
                log.error("worker %s exited with code %s%s", p.pid, p.exitcode, "; restarting" if failed_starts < 3 else "")
                if failed_starts >= 3:
                    print("pbxbot: workers keep failing at start-up; stopping (see the log above)", file=sys.stderr)
                    stopping.append("failed")
                    break
                time.sleep(WORKER_RESTART_DELAY)
                procs[i] = start()
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn's graceful shutdown in the worker
        deadline = time.monotonic() + 10
        for p, _ in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(2)
    return 1 if "failed" in stopping else 0


def worker_main(host: str, port: int, log_level: str) -> None:
    """One worker process: its app (settings from the environment) on its own SO_REUSEPORT socket."""
    from bot.web.app import create_app_from_environment

    _die_with_parent()
    app = create_app_from_environment()
    _serve(app, log_level, sockets=[_reuseport_socket(host, port)])


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies (even by SIGKILL), so no orphan keeps
    the port. Best effort: elsewhere the supervisor's own shutdown does it."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from bot.config import ConfigError

        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """Ends the widgets' open event streams as soon as shutdown starts, so that a graceful
        shutdown does not wait for them (uvicorn waits for open responses before the lifespan ends)."""

        on_exit = None

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if self.on_exit is not None:
                self.on_exit()

    return Server


def _Server(config):
    return _server_class()(config)
