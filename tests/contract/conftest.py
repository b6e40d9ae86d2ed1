"""Fixtures of the handoff-store contract suite: one `backend` per implementation.

- memory: SqlHandoffStore on an in-memory SQLite database (what unit tests and the local chat use)
- sqlite: SqlHandoffStore on a file in tmp_path
- postgres (marked integration): SqlHandoffStore on a throwaway database pbxbot_test_<random>
  created on 127.0.0.1:5432 as user postgres for this run and dropped afterwards. Skipped, with
  the reason, when the server is unreachable. PBXBOT_TEST_PG_DSN overrides the admin DSN.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

PG_ADMIN_DSN = os.environ.get(
    "PBXBOT_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
)
TABLES = "audit, messages, outbox, tickets, conversations, revoked_sessions"


class FakeClock:
    """An injectable clock: `clock()` is the current instant; `advance(minutes=...)` moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 28, 1, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@dataclass
class Backend:
    """Makes stores of one implementation. `make()` twice on a persistent backend = a restart."""

    name: str
    persistent: bool
    _factory: Callable[..., Any]
    _stores: list[Any] = field(default_factory=list)

    def make(self, **kwargs: Any) -> Any:
        store = self._factory(**kwargs)
        self._stores.append(store)
        return store

    def close_all(self) -> None:
        for store in self._stores:
            store.close()


def _admin_connect():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 as postgres ({type(exc).__name__}: {exc})")


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway database for this test run; dropped at the end."""
    admin = _admin_connect()
    name = f"pbxbot_test_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    info = admin.info
    url = f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite file, copied for each test (migrating anew every time is slow)."""
    from bot.handoff.sql_store import SqlHandoffStore

    path = tmp_path_factory.mktemp("template") / "pbxbot.sqlite3"
    SqlHandoffStore(f"sqlite:///{path}").close()  # closing checkpoints the WAL into the file
    return path


@pytest.fixture(scope="session")
def postgres_cleaner(postgres_url):
    """One engine for the whole run that empties the tables before each test."""
    from bot.handoff.sql_store import SqlHandoffStore

    store = SqlHandoffStore(postgres_url)  # migrates the throwaway database once

    def clean() -> None:
        with store.engine.begin() as conn:
            for table in TABLES.split(", "):  # DELETE: far cheaper than TRUNCATE on tiny tables
                conn.exec_driver_sql(f"DELETE FROM {table}")

    yield clean
    store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request, tmp_path, clock):
    kind = request.param
    if kind == "memory":
        from bot.handoff.sql_store import SqlHandoffStore

        shared: dict[str, Any] = {}

        def factory(**kw):  # in memory there is no restart: the same instance comes back
            if "store" not in shared:
                shared["store"] = SqlHandoffStore("sqlite://", **{"clock": clock, **kw})
            return shared["store"]

        b = Backend("memory", False, factory)
    elif kind == "sqlite":
        from bot.handoff.sql_store import SqlHandoffStore

        target = tmp_path / "data" / "pbxbot.sqlite3"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        url = f"sqlite:///{target}"
        b = Backend("sqlite", True, lambda **kw: SqlHandoffStore(url, **{"clock": clock, **kw}))
    else:
        from bot.handoff.sql_store import SqlHandoffStore

        url = request.getfixturevalue("postgres_url")
        request.getfixturevalue("postgres_cleaner")()  # a clean slate for this test
        b = Backend("postgres", True, lambda **kw: SqlHandoffStore(url, **{"clock": clock, **kw}))
    yield b
    b.close_all()


@pytest.fixture
def store(backend):
    return backend.make()
