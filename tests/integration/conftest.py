"""Throwaway PostgreSQL databases for the integration tests that need several processes or nodes
on one store (SQLite serves one process). Skipped, with the reason, when the server is unreachable."""

from __future__ import annotations

import os
import secrets

import pytest

PG_ADMIN_DSN = os.environ.get(
    "PBXBOT_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
)


@pytest.fixture(scope="module")
def new_pg_database():
    """`new_pg_database()` → the URL of a new empty database, dropped after the module."""
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 as postgres ({type(exc).__name__}: {exc})")
    created: list[str] = []

    def new_database() -> str:
        name = f"pbxbot_test_{secrets.token_hex(4)}"
        conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql+psycopg://{conn.info.user}@{conn.info.host}:{conn.info.port}/{name}"

    yield new_database
    for name in created:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()
