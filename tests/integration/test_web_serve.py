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
