"""The Alembic migrations shipped in bot/handoff/migrations: in step with the models, reversible,
safe when several processes open a fresh database at once, and found without alembic.ini."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bot.handoff import migrate
from bot.handoff.models import Base
from bot.handoff.sql_store import SqlHandoffStore

ROOT = Path(__file__).resolve().parents[2]


def test_head_constant_matches_the_scripts():
    assert migrate.script_head() == migrate.HEAD_REVISION


def test_migration_files_live_inside_the_package():
    base = ROOT / "bot" / "handoff" / "migrations"
    assert migrate.MIGRATIONS_DIR == base
    assert (base / "env.py").is_file() and (base / "script.py.mako").is_file()
    assert list((base / "versions").glob("0001_*.py"))


def test_migrations_and_models_agree(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = SqlHandoffStore(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    store.close()
    assert diff == []


def test_downgrade_and_upgrade_again(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    store = SqlHandoffStore(url)
    cfg = migrate.alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with store.engine.connect() as conn:
        assert migrate.current_revision(conn) is None
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
    assert not names & {"messages", "tickets", "outbox", "audit", "conversations"}
    store.close()
    again = SqlHandoffStore(url)
    assert again.revision == migrate.HEAD_REVISION and again.health()["ok"] is True
    again.close()


def test_upgrading_a_0001_database_keeps_its_data(tmp_path):
    from alembic import command

    from bot.messages import Address, Reply

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = create_engine(url)
    cfg = migrate.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        now = "2026-11-28 01:00:00.000000"
        conn.execute(text("INSERT INTO conversations VALUES ('web:1', 'web', :a, NULL, :t, :t)"),
                     {"a": '{"channel": "web", "conversation_id": "web:1", "user_id": "", "route": {}}', "t": now})
        conn.execute(text("INSERT INTO messages (conversation_id, role, text, created_at, handled, meta) "
                          "VALUES ('web:1', 'user', 'before the upgrade', :t, 0, '{}')"), {"t": now})
        conn.execute(text("INSERT INTO outbox (address, reply, status, attempts, created_at) "
                          "VALUES (:a, :r, 'pending', 0, :t)"),
                     {"a": '{"channel": "web", "conversation_id": "web:1"}',
                      "r": '{"conversation_id": "web:1", "language": "ja", "answer": "x"}', "t": now})
    engine.dispose()

    store = SqlHandoffStore(url)
    assert store.revision == migrate.HEAD_REVISION
    [m] = store.transcript("web:1")
    assert m.text == "before the upgrade" and m.handled is False and m.created_at.tzinfo is not None
    assert [i.reply["answer"] for i in store.lease_outbox()] == ["x"]
    store.enqueue(Address("web", "web:1"), Reply("web:1", "ja", "after"))
    assert len(store.pending_outbox()) == 2
    store.close()


def test_a_schema_newer_than_the_code_is_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    SqlHandoffStore(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(migrate.SchemaError, match="9999"):
        SqlHandoffStore(url)


def test_migrate_false_leaves_the_database_alone(tmp_path):
    store = SqlHandoffStore(f"sqlite:///{tmp_path / 'm.sqlite3'}", migrate=False)
    assert store.revision is None and store.health()["ok"] is False
    store.close()


def test_processes_opening_a_fresh_database_together_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'pbxbot.sqlite3'}"
    code = (
        "import sys; from bot.handoff.sql_store import SqlHandoffStore; from bot.messages import Address\n"
        "s = SqlHandoffStore(sys.argv[1]); a = Address('cli', 'cli:' + sys.argv[2])\n"
        "s.record_message(a, 'user', 'hello'); print(s.revision)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(i)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    assert [(out.strip(), rc) for out, _, rc in results] == [(migrate.HEAD_REVISION, 0)] * 3, [err for _, err, _ in results]
    store = SqlHandoffStore(url)
    assert sum(len(store.transcript(f"cli:{i}")) for i in range(3)) == 3
    store.close()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = SqlHandoffStore(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_from_settings_creates_the_data_dir(tmp_path):
    from bot.config import Settings

    settings = Settings(data_dir=tmp_path / "new" / "dir", database_url=None, _env_file=None)
    store = SqlHandoffStore.from_settings(settings)
    assert (tmp_path / "new" / "dir" / "pbxbot.sqlite3").exists()
    assert store.backend == "sqlite" and "sqlite" in repr(store)
    store.close()


def test_postgres_urls_use_psycopg3():
    from bot.handoff.sql_store import normalize_url

    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x") == "sqlite:///x"
