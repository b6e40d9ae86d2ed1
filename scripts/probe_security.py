"""Figures for the security targets of issue 13, measured the way an attacker would see them.

    python scripts/probe_security.py [--cost 12] [--tries 8]

- login timing: a wrong password for an existing operator vs an unknown name (median ms, ratio),
  with bcrypt hashes of --cost (12 is bcrypt's default);
- guessing: guesses answered (401) vs refused (429) in one minute, from one address and from 60
  addresses, at one account; whether the operator still logs in (known device, known address);
- bearer guessing from one address;
- slow clients: how long a real server (uvicorn as `pbxbot serve` configures it) keeps a client
  that drips its headers or its body (timeouts from the settings, 10 s and 30 s by default; pass
  PBXBOT_HTTP_HEADER_TIMEOUT=2 etc. to shorten the run).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "probe-operator-token-0123456789"
PROXY = "10.9.9.9"


def _app(accounts: str, **kw):
    from bot.config import load_settings
    from bot.web.app import create_app
    from tests.web_fakes import FakeCore

    settings = load_settings(operator_token=TOKEN, operators=accounts, trusted_proxies=PROXY, session_secret="s" * 32,
                             data_dir="/tmp/pbxbot-probe", **kw)
    return create_app(settings, core=FakeCore())


def _login(client, name: str, secret: str, frm: str) -> tuple[int, float]:
    headers = {"X-Forwarded-For": frm}
    page = client.get("/console/login", headers=headers)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    t0 = time.perf_counter()
    r = client.post("/console/login", data={"csrf": csrf, "name": name, "secret": secret}, headers=headers,
                    follow_redirects=False)
    return r.status_code, time.perf_counter() - t0


def probe_login(cost: int, tries: int) -> None:
    import bcrypt
    from fastapi.testclient import TestClient

    hashed = bcrypt.hashpw(b"the-right-password", bcrypt.gensalt(rounds=cost)).decode()
    app = _app(f"alice:{hashed}")
    known, unknown = [], []
    with TestClient(app, client=(PROXY, 40000)) as c:
        for i in range(tries):
            for name, bucket in (("alice", known), (f"nobody{i}", unknown)):
                c.cookies.clear()
                status, took = _login(c, name, "wrong", f"198.51.100.{len(known) + len(unknown)}")
                assert status == 401, status
                bucket.append(took * 1000)
    k, u = statistics.median(known), statistics.median(unknown)
    print(f"login timing (bcrypt cost {cost}, {tries} tries each): existing name {k:.0f} ms, unknown name {u:.0f} ms, "
          f"ratio {u / k:.2f}")

    app = _app(f"alice:{bcrypt.hashpw(b'the-right-password', bcrypt.gensalt(rounds=4)).decode()}")
    with TestClient(app, client=(PROXY, 40000)) as c:
        assert _login(c, "alice", "the-right-password", "192.0.2.50")[0] == 303  # alice, before the attack
        device = c.cookies.get("pbxbot_device", path="/console")
        c.cookies.clear()
        one = [_login(c, "alice", f"guess{i}", "198.51.100.7")[0] for i in range(100)]
        c.cookies.clear()
        many = [_login(c, "alice", f"guess{i}", f"203.0.113.{i % 60}")[0] for i in range(100)]
        c.cookies.clear()
        c.cookies.set("pbxbot_device", device, path="/console")
        with_device = _login(c, "alice", "the-right-password", "198.18.0.1")[0]
        c.cookies.clear()
        from_office = _login(c, "alice", "the-right-password", "192.0.2.50")[0]
        c.cookies.clear()
        stranger = _login(c, "alice", "the-right-password", "198.18.0.2")[0]
        bearer = [c.get("/console/api/tickets", headers={"Authorization": f"Bearer g{i}",
                                                         "X-Forwarded-For": "198.51.100.9"}).status_code
                  for i in range(100)]
    print(f"login guesses at one account within a minute: from one address {one.count(401)} checked, "
          f"{one.count(429)} refused; then from 60 more addresses {many.count(401)} checked, {many.count(429)} refused")
    print(f"during that attack the operator logs in: with her browser from a new address -> {with_device}, "
          f"from her known address -> {from_office}; a new browser at a new address -> {stranger}")
    print(f"bearer guesses from one address within a minute: {bearer.count(401)} checked, {bearer.count(429)} refused")


def probe_slow_clients() -> None:
    import uvicorn

    from bot.commands.serve import uvicorn_config
    from tests.integration.test_web_timeouts import connect, drip_until_closed
    from tests.web_fakes import free_port

    app = _app("")
    settings = app.state.settings
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, app.state.settings, "warning", host="127.0.0.1", port=port))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    limit = max(settings.http_header_timeout, settings.http_body_timeout) + 15
    with connect(port) as s:
        held, got = drip_until_closed(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 1.0, limit)
    print(f"a client dripping its headers (a line a second) is cut off after {held:.1f} s "
          f"(PBXBOT_HTTP_HEADER_TIMEOUT {settings.http_header_timeout:g}): {got[:12]!r}")
    head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    with connect(port) as s:
        held, got = drip_until_closed(s, head + b'{"text": "', b"a", 1.0, limit)
    print(f"a client dripping its body (a byte a second) gets {got[:12]!r} after {held:.1f} s "
          f"(PBXBOT_HTTP_BODY_TIMEOUT {settings.http_body_timeout:g})")
    server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", type=int, default=12)
    ap.add_argument("--tries", type=int, default=8)
    ap.add_argument("--skip-slow-clients", action="store_true")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("bot").setLevel(logging.CRITICAL)
    probe_login(args.cost, args.tries)
    if not args.skip_slow_clients:
        probe_slow_clients()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
