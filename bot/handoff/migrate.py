"""Programmatic Alembic upgrade of the handoff schema (no alembic.ini needed at run time).

Safe when several processes open the same database at once (CLI + server, or several server
workers): on SQLite the upgrade runs inside one BEGIN IMMEDIATE transaction (the store's engine
begins every transaction that way); on PostgreSQL under a transaction-scoped advisory lock.
Both SQLite and PostgreSQL have transactional DDL, so a crash mid-upgrade leaves nothing half done.

Warm start (schema already at HEAD_REVISION) reads one row and never imports Alembic.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest revision in migrations/versions (a unit test keeps the two in step).
HEAD_REVISION = "0005"
VERSION_TABLE = "alembic_version"
_PG_LOCK_KEY = 0x70627862  # "pbxb": serialises concurrent upgrades on one PostgreSQL database

log = logging.getLogger(__name__)


class SchemaError(RuntimeError):
    """The database holds a schema this code cannot use (e.g. newer than the code)."""


def alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def script_head() -> str:
    from alembic.script import ScriptDirectory

    return ",".join(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return ",".join(sorted(rows)) or None


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs its plugin set-up at INFO on every run; keep the CLI's stderr for us."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def upgrade_to_head(engine: Engine) -> str:
    """Bring the schema to the newest revision; returns it. A cheap no-op when already there."""
    with engine.connect() as conn:
        if current_revision(conn) == HEAD_REVISION:
            return HEAD_REVISION

    with _quiet_alembic():
        from alembic import command  # imported before taking the lock: other processes wait less
        from alembic.util.exc import CommandError

        cfg = alembic_config()
    with _quiet_alembic(), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        before = current_revision(conn)  # again, under the lock: another process may have won
        if before == HEAD_REVISION:
            return HEAD_REVISION
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:
            raise SchemaError(
                f"handoff schema revision {before} is unknown to this version of pbxbot "
                f"(newest known: {HEAD_REVISION}); upgrade pbxbot or use another database"
            ) from exc
    log.info("handoff schema migrated from %s to %s", before or "empty", HEAD_REVISION)
    return HEAD_REVISION
