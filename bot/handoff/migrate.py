"""Programmatic Alembic upgrade of the handoff schema (no alembic.ini needed at run time).

Safe when several processes open the same database at once (CLI + server, or several server
workers): on SQLite the upgrade runs inside one BEGIN IMMEDIATE transaction (the store's engine
begins every transaction that way); on PostgreSQL under a transaction-scoped advisory lock.
Both SQLite and PostgreSQL have transactional DDL, so a crash mid-upgrade leaves nothing half done.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x70627862  # "pbxb": serialises concurrent upgrades on one PostgreSQL database


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return ",".join(sorted(heads))


def current_revision(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def upgrade_to_head(engine: Engine) -> str:
    """Bring the schema to the newest revision; returns it. A no-op when already there."""
    cfg = alembic_config()
    head = head_revision()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        if current_revision(conn) == head:
            return head
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head
