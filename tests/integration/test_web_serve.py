"""`pbxbot serve` as a user runs it: a subprocess on a free loopback port, no operator token set."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scripts.bench_web import tree_pids
from tests.web_fakes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_serve_without_settings_prints_a_one_time_console_token_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env["PBXBOT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.sqlite3'}"  # keep the shared data dir's DB clean
    err = open(tmp_path / "stderr.txt", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.3)
        output = (tmp_path / "stderr.txt").read_text(errors="replace")
        token = re.search(r"console token for this run is:\s+(\S+)", output).group(1)
        health = httpx.get(f"{base}/healthz").json()
        assert health["index"]["ok"] and health["store"]["ok"]
        assert httpx.get(f"{base}/console/api/tickets").status_code == 401
        r = httpx.get(f"{base}/console/api/tickets", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == {"tickets": []}
        r = httpx.post(f"{base}/api/chat", json={"text": "国際電話の不正利用を防ぐには？"}, timeout=30)
        assert r.status_code == 200 and r.json()["citations"]
        assert httpx.get(f"{base}/widget.js").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            # uvicorn re-raises the signal after a graceful shutdown: -SIGTERM is a clean stop
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert output.count(token) == 1, "the generated token is printed once and never logged"
    assert "Traceback" not in output
    assert "Application shutdown complete" in output


def test_serve_refuses_several_workers_on_sqlite(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env["PBXBOT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    r = subprocess.run([sys.executable, "-m", "bot", "serve", "--port", str(free_port()), "--workers", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--workers 2 needs PostgreSQL" in r.stderr and "Traceback" not in r.stderr


def test_serve_with_two_workers_on_postgresql_shares_tokens_conversations_and_limits(tmp_path, new_pg_database):
    """uvicorn's own worker processes: whichever worker a request reaches, the console token, the
    widget token, the conversation and the user's rate limit (Redis) are the same."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env.update(PBXBOT_DATABASE_URL=new_pg_database(), PBXBOT_RATE_LIMIT_PER_MINUTE="5",
               PBXBOT_REDIS_URL="redis://127.0.0.1:6379/13")
    import redis

    try:
        redis.Redis.from_url(env["PBXBOT_REDIS_URL"]).flushdb()
    except redis.RedisError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    err = open(tmp_path / "stderr.txt", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"

    def log() -> str:
        return (tmp_path / "stderr.txt").read_text(errors="replace")

    try:
        deadline = time.monotonic() + 600
        while len(tree_pids(proc.pid)) < 3 or log().count("Application startup complete") < 2:  # both workers up
            assert proc.poll() is None, log()[-2000:]
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.3)
        token = re.search(r"console token for this run is:\s+(\S+)", log()).group(1)
        first = httpx.post(f"{base}/api/chat", json={"text": "How do I stop international calls?"}, timeout=30).json()
        cid, ctoken = first["conversation_id"], first["conversation_token"]
        statuses = []
        for i in range(6):  # fresh connections land on either worker
            r = httpx.get(f"{base}/console/api/tickets", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            h = httpx.get(f"{base}/api/chat/history", params={"conversation_id": cid, "token": ctoken})
            assert h.status_code == 200 and [e["role"] for e in h.json()["events"]][:2] == ["user", "bot"]
            r = httpx.post(f"{base}/api/chat", json={"text": f"Which logs should we keep? ({i})", "conversation_id": cid,
                                                     "conversation_token": ctoken}, timeout=30)
            statuses.append(r.status_code)
        assert statuses == [200, 200, 200, 200, 429, 429], statuses
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log()
    assert output.count(token) == 1, "the generated token is printed once and never logged"
    assert "Traceback" not in output
    assert output.count("Application shutdown complete") == 2


def test_serve_refuses_telegram_polling_with_several_workers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env.update(PBXBOT_TELEGRAM_TOKEN="123456:abcdefghijklmnopqrstuvwxyz", PBXBOT_TELEGRAM_MODE="polling",
               PBXBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    r = subprocess.run([sys.executable, "-m", "bot", "serve", "--port", str(free_port()), "--workers", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Telegram polling runs in one process" in r.stderr
    assert "abcdefghijklmnopqrstuvwxyz" not in r.stderr
