"""The SQLAlchemy engine of the store: SQLite (WAL, BEGIN IMMEDIATE, busy timeout; an in-memory
database copied from one migrated once per process) or PostgreSQL (a pool sized for a turn's
connection and the background loops), and the named non-blocking locks of one process."""

from __future__ import annotations

import select
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

from bot.handoff.migrate import upgrade_to_head

SQLITE_BUSY_TIMEOUT_MS = 15_000


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// (psycopg 3 is the installed driver)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url

class TryLocks:
    """Named non-blocking locks inside one process: `with locks.try_hold(name) as mine:` gives True
    to one holder at a time and False to the others (exclusive() on SQLite, which one process serves)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def try_hold(self, name: str) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()


def _closed_by_peer(dbapi_conn: Any) -> bool:
    """Whether the idle connection's socket has data, an end of file or an error waiting (no
    waiting here), or the driver has closed it already."""
    try:
        fd = dbapi_conn.fileno()
    except Exception:  # noqa: BLE001 - psycopg raises when the connection is closed
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


_MEMORY_TEMPLATE: dict[str, Any] = {}
_MEMORY_TEMPLATE_LOCK = threading.Lock()


def in_memory(url: URL) -> bool:
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (database in ("", ":memory:") or database.startswith("file::memory:"))


def copy_migrated_memory_database(engine: Engine) -> str:
    """An in-memory database (tests, the evaluation scripts) gets the schema by copying one migrated
    once per process (SQLite's backup API), far cheaper than running the migrations for each store."""
    with _MEMORY_TEMPLATE_LOCK:
        if "engine" not in _MEMORY_TEMPLATE:
            template = create_store_engine(make_url("sqlite://"), echo=False)
            _MEMORY_TEMPLATE["revision"] = upgrade_to_head(template)
            _MEMORY_TEMPLATE["engine"] = template
        template = _MEMORY_TEMPLATE["engine"]
        with template.connect() as source, engine.connect() as target:
            source.connection.driver_connection.backup(target.connection.driver_connection)
        return _MEMORY_TEMPLATE["revision"]



def create_store_engine(url: URL, *, echo: bool, synchronous: str = "NORMAL") -> Engine:
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"sqlite_synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
    if url.get_backend_name() != "sqlite":
        # A turn holds one connection (its advisory lock, its transactions); the pool keeps one per
        # core thread and the background loops without opening and closing overflow connections.
        engine = create_engine(url, echo=echo, pool_size=10, max_overflow=20, future=True)

        @event.listens_for(engine, "checkout")
        def _closed_by_server(dbapi_conn, _record, _proxy):  # noqa: ANN001
            # Instead of pool_pre_ping (a `;` round trip on every checkout, one a turn): when the
            # server ends a session (a restart, pg_terminate_backend, idle_session_timeout, a proxy
            # cutting the link) it sends its FATAL error and closes the socket, so an idle pooled
            # connection with anything to read is dead or about to be. A DisconnectionError here
            # makes the pool replace the connection and check out again (PoolEvents.checkout);
            # without either check, SQLAlchemy would raise on the first statement after a restart
            # (it then invalidates the pool) and fail that request: a webhook's record -> 503.
            # What neither check covers is the same: a link that dies silently, or between this
            # check and the first statement (the platform retries a 503; nothing is lost).
            if _closed_by_peer(dbapi_conn):
                raise exc.DisconnectionError("the server closed this pooled connection")

        return engine

    memory = in_memory(url)
    if memory:
        engine = create_engine(url, echo=echo, poolclass=StaticPool,
                               connect_args={"check_same_thread": False})
    else:
        Path(url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False,
                                                             "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # the "begin" listener issues BEGIN itself
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL: a commit survives the process dying (kill -9, crash); FULL also
            # survives the machine losing power, at one more fsync per commit.
            cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Take the write lock up front: a read-then-write transaction can then never fail
        # with SQLITE_BUSY half way when the CLI and the server write at the same time.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("pbxbot_read_only") else "BEGIN IMMEDIATE")

    return engine
