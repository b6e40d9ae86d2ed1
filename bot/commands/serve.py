"""`pbxbot serve [--host H] [--port P] [--workers N]`: the whole bot as one HTTP server (uvicorn).

With no settings at all it serves the widget (/), the API and the console on the embedded
default store and index. Without PBXBOT_OPERATOR_TOKEN (and without operator accounts) it makes
a one-time token for this run and prints it on the terminal (stderr, never to the log), so the
console is usable; configured secrets are never printed or logged.

With --workers N (PBXBOT_WORKERS) it binds the port and supervises N worker processes that share
that one socket, each running uvicorn with its own retriever and a connection to the shared store
(SQLite file or PostgreSQL); a new connection goes to the worker holding the fewest
(`bot.web.least_connections`). Everything they
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


def _serve(app, log_level: str, *, balanced=None, **where) -> None:
    """uvicorn on `where` (host, port), or accepting by least connections from a socket shared with
    other workers (`balanced` = (socket, board, worker index)); open event streams end as shutdown
    starts."""
    server = _Server(uvicorn_config(app, log_level, **where))
    server.on_exit = app.state.web_channel.close_streams
    server.balanced = balanced
    # With `balanced`, sockets=[] makes uvicorn build everything but a listener of its own.
    server.run(sockets=[] if balanced else None)


def uvicorn_config(app, log_level: str, **where):
    """uvicorn's configuration for the app (create_app's; its settings on app.state)."""
    import uvicorn

    from bot.web.timeouts import http_protocol

    settings = app.state.settings
    return uvicorn.Config(
        app, log_level=log_level.lower(), access_log=False, proxy_headers=False, server_header=False,
        timeout_graceful_shutdown=3, log_config=None,  # keep the root handlers (and their secret-masking filter)
        # slow clients: headers (bot/web/timeouts.py), idle keep-alive; the body's is in the middleware
        http=http_protocol(settings.http_header_timeout), timeout_keep_alive=settings.http_keep_alive_timeout,
        **where,
    )


def run_workers(settings: Settings, host: str, port: int, workers: int, generated: str | None) -> int:
    import uvicorn

    from bot.config import ConfigError
    from bot.messages import utcnow
    from bot.web.app import SERVE_STARTED_ENV
    from bot.wiring import build_store, prepare_index, prepare_understanding

    if "telegram" in settings.validate_enabled_channels() and settings.telegram_mode == "polling":
        raise ConfigError("Telegram polling runs in one process: use --workers 1, or "
                          "PBXBOT_TELEGRAM_MODE=webhook with several workers")
    print(f"pbxbot: checking the knowledge index and the store (data dir {settings.data_dir})...", file=sys.stderr)
    prepare_index(settings)
    prepare_understanding(settings)  # trained once here, not by N workers at once
    build_store(settings).close()  # migrated once here, not by N workers at once
    # The workers read their settings from this environment (spawned processes inherit it).
    os.environ["PBXBOT_WORKERS"] = str(workers)  # each worker sizes its thread pool by it
    os.environ[SERVE_STARTED_ENV] = utcnow().isoformat()  # one recovery cutoff for all workers
    if settings.session_secret is None or not settings.session_secret.get_secret_value():
        os.environ["PBXBOT_SESSION_SECRET"] = secrets.token_urlsafe(32)  # one for all workers
    if generated:
        os.environ["PBXBOT_OPERATOR_TOKEN"] = generated
    if os.name != "posix":
        # No add_reader on a listening socket (Windows' proactor loop): uvicorn's own supervisor.
        _announce(host, port, generated, workers)
        uvicorn.run(
            "bot.web.app:create_app_from_environment", factory=True, host=host, port=port, workers=workers,
            log_level=settings.log_level.lower(), access_log=False, proxy_headers=False, server_header=False,
            timeout_graceful_shutdown=3, log_config=None,
        )
        return 0
    sock = _listening_socket(host, port)  # a clear error here when the port is taken
    _announce(host, sock.getsockname()[1], generated, workers)
    try:
        return supervise_workers(sock, workers, settings)
    finally:
        sock.close()


# ---------------------------------------------------------------- the worker supervisor
#
# Why not `uvicorn.run(workers=N)`: it binds one socket in the parent and every worker accepts from
# it, and asyncio accepts a whole burst of connections in the worker that wakes first. Measured
# here with 16 keep-alive clients: one worker at 94 % CPU, the other idle, 61 req/s (the known
# uvicorn issue; see Kludex/uvicorn#2472 and Kludex/uvicorn-worker#34). Also, a socket bound that
# way has proto 0, so asyncio leaves Nagle's algorithm on for its connections (Kludex/uvicorn#3149).
# A socket per worker with SO_REUSEPORT (what this did before) spreads connections by a hash, so
# 16 keep-alive connections were often split 10/6 or worse, and the busier worker set the tail.
# Here the workers share one socket (proto TCP) and accept by least connections: see
# bot/web/least_connections.py.

WORKER_RESTART_DELAY = 1.0
STARTUP_GRACE = 20.0  # a worker that dies sooner than this after starting failed to start


def supervise_workers(sock: socket.socket, workers: int, settings: Settings) -> int:
    """Runs `workers` processes on the listening `sock`, restarts one that dies, stops them all on
    SIGINT/SIGTERM. Returns the exit code."""
    import multiprocessing
    import signal
    import time

    from bot.channels.shared_rate_limit import new_tables
    from bot.channels.web import PER_ADDRESS_FACTOR
    from bot.web.least_connections import OFF, all_accepting, new_board

    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker, like uvicorn's
    board = new_board(ctx, workers)
    # One rate limit for all workers: the names are those of ChannelRegistry.limiter's callers.
    per_minute = settings.rate_limit_per_minute
    limits = new_tables(ctx, {"user": per_minute, "address": per_minute * PER_ADDRESS_FACTOR})

    def start(index: int) -> tuple:
        board[index] = OFF  # until the new worker accepts
        # The socket and the shared memory are passed to the child as it is spawned.
        p = ctx.Process(target=worker_main, args=(sock, board, index, settings.log_level, limits),
                        name=f"pbxbot-worker-{index}", daemon=False)
        p.start()
        return p, time.monotonic()

    procs = [start(i) for i in range(workers)]
    stopping = []
    announced_ready = False

    def on_signal(signum, _frame):
        stopping.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    failed_starts = 0
    try:
        while not stopping:
            time.sleep(0.5)
            if not announced_ready and all_accepting(board):
                announced_ready = True
                print(f"pbxbot: all {workers} workers are accepting connections", file=sys.stderr, flush=True)
            for i, (p, started) in enumerate(procs):
                if p.is_alive() or stopping:
                    continue
                board[i] = OFF  # the others stop deferring to it
                quick = time.monotonic() - started < STARTUP_GRACE
                failed_starts = failed_starts + 1 if quick else 0
                log.error("worker %s exited with code %s%s", p.pid, p.exitcode, "; restarting" if failed_starts < 3 else "")
                if failed_starts >= 3:
                    print("pbxbot: workers keep failing at start-up; stopping (see the log above)", file=sys.stderr)
                    stopping.append("failed")
                    break
                time.sleep(WORKER_RESTART_DELAY)
                procs[i] = start(i)
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


def worker_main(sock: socket.socket, board, index: int, log_level: str, shared_limits: dict) -> None:
    """One worker process: its app (settings from the environment), accepting from the shared socket."""
    from bot.web.app import create_app_from_environment

    _die_with_parent()
    app = create_app_from_environment(shared_limits)
    _serve(app, log_level, balanced=(sock, board, index))


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


def _listening_socket(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, so that asyncio turns Nagle's algorithm off on accepted connections.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from bot.config import ConfigError

        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


def _server_class():
    import functools

    import uvicorn

    from bot.web.least_connections import LeastConnectionsAcceptor

    class Server(uvicorn.Server):
        """uvicorn's server, with two additions:
        - it ends the widgets' open event streams as soon as shutdown starts, so that a graceful
          shutdown does not wait for them (uvicorn waits for open responses before the lifespan ends);
        - with `balanced` set, it accepts from the shared socket by least connections instead of
          through asyncio's server (see bot/web/least_connections.py)."""

        on_exit = None
        balanced = None
        acceptor = None

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)  # the lifespan (the app's start-up) first
            if self.balanced is None or self.should_exit:
                return
            sock, board, index = self.balanced
            # What uvicorn's startup hands asyncio's create_server (uvicorn.server.Server.startup).
            protocol_factory = functools.partial(
                self.config.http_protocol_class, config=self.config, server_state=self.server_state,
                app_state=self.lifespan.state,
            )
            self.acceptor = LeastConnectionsAcceptor(sock, board, index, protocol_factory,
                                                     self.server_state.connections)
            self.acceptor.start()
            log.info("worker %d accepting connections", index)

        async def shutdown(self, sockets=None) -> None:
            if self.acceptor is not None:
                self.acceptor.stop()  # no new connections; the rest is uvicorn's graceful shutdown
            await super().shutdown(sockets=sockets)

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if self.on_exit is not None:
                self.on_exit()

    return Server


def _Server(config):
    return _server_class()(config)
