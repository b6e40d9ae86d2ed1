"""An unreachable database at start: tried again with one clear line per attempt, then one line
naming the database (never its password) and no traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from bot.config import ConfigError, Settings
from bot.wiring import build_store
from tests.web_fakes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_opens_once_the_database_comes_up(tmp_path, monkeypatch, caplog):
    from bot.handoff import sql_store

    real = sql_store.SqlHandoffStore.from_settings
    calls = []

    def flaky(settings, **kw):
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("connect", {}, Exception("connection refused (starting up)"))
        return real(settings, **kw)

    monkeypatch.setattr(sql_store.SqlHandoffStore, "from_settings", flaky)
    slept: list[float] = []
    with caplog.at_level(logging.WARNING):
        store = build_store(Settings(_env_file=None, data_dir=tmp_path), sleep=slept.append)
    store.close()
    assert slept == [1.0, 2.0]
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.wiring"]
    assert len(lines) == 2 and all("attempt" in x and "\n" not in x for x in lines)


def test_unreachable_postgres_gives_a_line_per_attempt_then_one_error(tmp_path):
    url = f"postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:{free_port()}/pbxbot"
    slept: list[float] = []
    with pytest.raises(ConfigError) as err:
        build_store(Settings(_env_file=None, data_dir=tmp_path, database_url=url, database_start_attempts=4),
                    sleep=slept.append)
    assert slept == [1.0, 2.0, 4.0]
    assert "after 4 attempts" in str(err.value) and "hunter2" not in str(err.value)


def test_serve_with_an_unreachable_database_prints_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env.update(PBXBOT_DATABASE_URL=f"postgresql://postgres:hunter2-secret@127.0.0.1:{free_port()}/pbxbot",
               PBXBOT_DATABASE_START_ATTEMPTS="2", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "bot", "serve", "--port", str(free_port())], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "hunter2" not in run.stderr
    attempts = [x for x in run.stderr.splitlines() if "not reachable" in x]
    assert len(attempts) == 1 and "attempt 1 of 2" in attempts[0]
    assert run.stderr.strip().splitlines()[-1].startswith("pbxbot: cannot use the database at postgresql://postgres:***@")


def test_a_refused_login_is_not_retried(tmp_path):
    import psycopg

    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3").close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({type(exc).__name__})")
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/pbxbot_no_such_database_here"
    slept: list[float] = []
    with pytest.raises(ConfigError, match="does not exist"):
        build_store(Settings(_env_file=None, data_dir=tmp_path, database_url=url), sleep=slept.append)
    assert slept == []
