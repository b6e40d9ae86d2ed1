"""The SQL store's SQLite specifics: connection set-up, the writers' gate, and the lean turn path.

Why a lean path: every conversation turn runs two write transactions (begin_turn, complete_turn)
of a few statements each. Through SQLAlchemy a statement costs ~76 µs of CPU and a transaction
~150 µs on top; on the sqlite3 driver itself, ~2 µs. With two workers on two cores that was a
sixth of a turn's CPU. So the turn's statements, still written once as SQLAlchemy Core in
sql_store._Q, are compiled here once for SQLite (SQL text, parameter order, SQLAlchemy's own
bind and result processors: the same stored bytes and the same Python values as through the
engine) and run on plain sqlite3 connections. Errors are re-raised as SQLAlchemy's exceptions, so
callers catch one family. SQLAlchemy's echo does not show these statements.

Used only for a file database with the stock pysqlite driver and no URL query options; anything
else (PostgreSQL, in-memory SQLite) runs the same statements through the engine.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import DBAPIError

SQLITE_BUSY_TIMEOUT_MS = 15_000


def configure_connection(dbapi_conn: Any, *, memory: bool, synchronous: str) -> None:
    """Every SQLite connection, the engine's and the lean path's, is set up here."""
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    if not memory:
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a commit survives the process dying (kill -9, crash); FULL also
        # survives the machine losing power, at one more fsync per commit.
        cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def file_database(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database (one process only)."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def lock_path(url: URL, name: str) -> Path | None:
    """A lock file beside a SQLite database file; None for an in-memory database."""
    database = file_database(url)
    if database is None:
        return None
    safe = "".join(c if c.isalnum() else "-" for c in name)[:64]
    return database.with_name(database.name + f".{safe}.lock")


@contextmanager
def file_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """An flock of `path` for the block; True when this holder got it (always, with wait). A new
    open file each time: flocks of separate opens exclude each other also between threads of one
    process (one shared descriptor would let a second thread in, and its release would free the
    first one's lock). The kernel releases it when the holder dies, so a crashed worker never
    leaves it taken."""
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class WriteGate:
    """The writers of one SQLite file take turns here before BEGIN IMMEDIATE.

    Threads of this process queue on a reentrant lock; processes sharing the file (serve
    --workers, the CLI) queue on an flock of a file beside it. A blocked flock wakes the moment
    the holder lets go, whereas SQLite's busy handler sleeps 1, 2, 5, 10 ... 100 ms between
    tries: with two workers writing twice a turn, those sleeps left a sixth of the CPU idle
    (vmstat) and cost 10-20 % of the throughput. SQLite's own locking still guards the file
    against any writer that does not come through here."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            except BaseException:
                self._depth -= 1
                self._lock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class _Statement:
    """One Core statement compiled once for SQLite, with SQLAlchemy's processors."""

    __slots__ = ("sql", "names", "defaults", "binders", "row", "readers")

    def __init__(self, stmt: Any, dialect: Dialect, keys: tuple[str, ...]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            # a column default computed in Python would be skipped here: refuse at compile time
            raise ValueError(f"statement needs Python-side defaults, run it through the engine: {stmt}")
        required = {name: None for name, bind in compiled.binds.items() if bind.required}
        # the final SQL with 'IN (...)' lists expanded, and the literal values (LIMIT 1, statuses)
        state = compiled.construct_expanded_state(required)
        self.sql: str = state.statement
        self.names: tuple[str, ...] = tuple(state.positiontup or ())
        self.defaults: dict[str, Any] = {k: v for k, v in state.parameters.items() if k not in required}
        self.binders: tuple[Callable[[Any], Any] | None, ...] = tuple(
            _binder(name, compiled, state.processors, dialect) for name in self.names)
        # a SELECT's columns, or a DML statement's RETURNING columns (none without RETURNING)
        columns = list(stmt.exported_columns)
        self.row = namedtuple("Row", [c.key for c in columns], rename=True) if columns else None  # type: ignore[misc]
        self.readers = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)

    def parameters(self, params: dict[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, binder in zip(self.names, self.binders):
            value = params[name] if name in params else self.defaults[name]
            out.append(binder(value) if binder is not None else value)
        return tuple(out)

    def rows(self, raw_rows: list[tuple[Any, ...]]) -> list[Any]:
        if self.row is None:
            return []
        readers = self.readers
        return [self.row(*(r(v) if r is not None else v for r, v in zip(readers, raw))) for raw in raw_rows]


def _binder(name: str, compiled: Any, expanded: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """SQLAlchemy's bind processor for one positional parameter (the 'IN' list's expanded names
    come with the expanded state; the others are the compiled statement's bind parameters)."""
    if name in expanded:
        return expanded[name]
    bind = compiled.binds.get(name)
    return bind.type.dialect_impl(dialect).bind_processor(dialect) if bind is not None else None


class Result:
    """The few Result methods the store's turn path uses."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class LeanConnection:
    """Runs compiled statements on one sqlite3 connection inside the caller's transaction."""

    __slots__ = ("_raw", "_cache", "_dialect", "_dbapi_error")

    def __init__(self, raw: Any, cache: dict, dialect: Dialect, dbapi_error: type[Exception]) -> None:
        self._raw = raw
        self._cache = cache
        self._dialect = dialect
        self._dbapi_error = dbapi_error

    def execute(self, stmt: Any, params: dict[str, Any] | None = None) -> Result:
        params = params or {}
        key = (id(stmt), tuple(params))
        compiled = self._cache.get(key)
        if compiled is None:
            # keyed by id(): the statements are module constants (sql_store._Q), never freed
            compiled = self._cache[key] = _Statement(stmt, self._dialect, tuple(params))
        values = compiled.parameters(params)
        try:
            cur = self._raw.execute(compiled.sql, values)
            raw_rows = cur.fetchall()
            rowcount = cur.rowcount
        except self._dbapi_error as exc:
            raise DBAPIError.instance(compiled.sql, values, exc, self._dbapi_error) from exc
        return Result(compiled.rows(raw_rows), rowcount)


class LeanSqlite:
    """Plain sqlite3 connections to one database file, handed out per write transaction."""

    def __init__(self, path: Path, dialect: Dialect, gate: WriteGate, *, synchronous: str) -> None:
        self._path = str(path)
        self._dialect = dialect
        self._dbapi = dialect.dbapi  # the module the engine uses (sqlite3)
        self._gate = gate
        self._synchronous = synchronous
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._cache: dict = {}

    @classmethod
    def for_engine(cls, url: URL, dialect: Dialect, gate: WriteGate, *, synchronous: str) -> "LeanSqlite | None":
        path = file_database(url)
        if dialect.name != "sqlite" or dialect.driver != "pysqlite" or path is None or url.query:
            return None
        return cls(path, dialect, gate, synchronous=synchronous)

    def _connection(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        raw = self._dbapi.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        configure_connection(raw, memory=False, synchronous=self._synchronous)
        with self._all_lock:
            self._all.append(raw)
        return raw

    @contextmanager
    def write(self) -> Iterator[LeanConnection]:
        """One write transaction (BEGIN IMMEDIATE after the gate), committed when the block ends."""
        with self._gate:
            raw = self._connection()
            reusable = False  # a connection whose BEGIN, COMMIT or ROLLBACK failed is closed
            try:
                raw.execute("BEGIN IMMEDIATE")
                try:
                    yield LeanConnection(raw, self._cache, self._dialect, self._dbapi.Error)
                except BaseException:
                    raw.rollback()
                    reusable = True
                    raise
                raw.commit()
                reusable = True
            finally:
                if reusable:
                    self._idle.put(raw)
                else:
                    self._discard(raw)

    def _discard(self, raw: Any) -> None:
        with self._all_lock:
            if raw in self._all:
                self._all.remove(raw)
        self._close_quietly(raw)

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for raw in conns:
            self._close_quietly(raw)

    def _close_quietly(self, raw: Any) -> None:
        try:
            raw.close()
        except self._dbapi.Error:
            pass
