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

from scripts.bench_web import connections_per_process, tree_pids
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


def test_serve_with_two_workers_shares_tokens_and_conversations_and_stops_cleanly(tmp_path):
    import socket

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env["PBXBOT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'workers.sqlite3'}"
    env["PBXBOT_RATE_LIMIT_PER_MINUTE"] = "5"
    err = open(tmp_path / "stderr.txt", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"

    def log() -> str:
        return (tmp_path / "stderr.txt").read_text(errors="replace")

    try:
        deadline = time.monotonic() + 600
        while "all 2 workers are accepting connections" not in log():  # both workers up
            assert proc.poll() is None, log()[-2000:]
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.3)
        token = re.search(r"console token for this run is:\s+(\S+)", log()).group(1)
        first = httpx.post(f"{base}/api/chat", json={"text": "How do I stop international calls?"}, timeout=30).json()
        cid, ctoken = first["conversation_id"], first["conversation_token"]
        # fresh connections land on either worker: each must accept the token and see the conversation
        for _ in range(12):
            r = httpx.get(f"{base}/console/api/tickets", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            h = httpx.get(f"{base}/api/chat/history", params={"conversation_id": cid, "token": ctoken})
            assert h.status_code == 200 and [e["role"] for e in h.json()["events"]] == ["user", "bot"]
        # One rate limit for both workers: two keep-alive clients, one on each worker (least
        # connections), take turns sending to the conversation; its 6th message of the minute is refused.
        with httpx.Client(base_url=base, timeout=30) as one, httpx.Client(base_url=base, timeout=30) as two:
            statuses = []
            for i in range(6):
                client = one if i % 2 == 0 else two
                r = client.post("/api/chat", json={"text": f"Which logs should we keep? ({i})", "conversation_id": cid,
                                                   "conversation_token": ctoken})
                statuses.append(r.status_code)
            assert connections_per_process(proc.pid, port) == [1, 1]
        assert statuses == [200, 200, 200, 200, 429, 429], statuses
        # Keep-alive connections are shared out by least connections, not by a hash of their ports.
        kept = []
        for _ in range(8):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
            kept.append(c)
        assert connections_per_process(proc.pid, port) == [4, 4]
        for c in kept:
            c.close()
        # A worker that dies: the other answers at once, and its replacement takes its share again.
        workers = [pid for pid in tree_pids(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        for _ in range(6):
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        while log().count("accepting connections") < 4:  # 2 workers, the supervisor's line, the replacement
            assert proc.poll() is None and time.monotonic() < deadline, log()[-2000:]
            time.sleep(0.3)
        kept = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        for c in kept:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        assert connections_per_process(proc.pid, port) == [4, 4]
        for c in kept:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log()
    assert output.count(token) == 1, "the generated token is printed once and never logged"
    assert "Traceback" not in output
    assert output.count("Application shutdown complete") == 2  # the survivor and the replacement
    with socket.socket() as s:  # no worker outlived the supervisor holding the port
        s.bind(("127.0.0.1", port))


def test_serve_refuses_telegram_polling_with_several_workers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
    env.update(PBXBOT_TELEGRAM_TOKEN="123456:abcdefghijklmnopqrstuvwxyz", PBXBOT_TELEGRAM_MODE="polling",
               PBXBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    r = subprocess.run([sys.executable, "-m", "bot", "serve", "--port", str(free_port()), "--workers", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Telegram polling runs in one process" in r.stderr
    assert "abcdefghijklmnopqrstuvwxyz" not in r.stderr
