"""Slow clients (slowloris): a real uvicorn server configured as `pbxbot serve` configures it, with
1-second header and body timeouts, and raw sockets that send a request a few bytes at a time."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from bot.commands.serve import uvicorn_config
from bot.web.app import create_app
from tests.integration.test_web_api import make_settings
from tests.web_fakes import FakeCore, free_port

pytestmark = pytest.mark.integration

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server():
    import uvicorn

    app = create_app(make_settings(http_header_timeout=TIMEOUT, http_body_timeout=TIMEOUT,
                                   http_keep_alive_timeout=5.0), core=FakeCore())
    port = free_port()
    srv = uvicorn.Server(uvicorn_config(app, app.state.settings, "warning", host="127.0.0.1", port=port))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield app, port
    app.state.registry.loop.call_soon_threadsafe(app.state.web_channel.close_streams)
    srv.should_exit = True
    thread.join(10)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def drip_until_closed(s: socket.socket, first: bytes, drip: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send `first`, then `drip` every `every` s until the server closes (or `limit` s pass)."""
    started = time.monotonic()
    s.sendall(first)
    s.settimeout(every)
    received = b""
    while time.monotonic() - started < limit:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            try:
                s.sendall(drip)
            except OSError:
                break
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    return time.monotonic() - started, received


def test_a_client_dripping_its_headers_is_cut_off(server):
    _app, port = server
    with connect(port) as s:
        took, received = drip_until_closed(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 0.2, 10)
    assert took < TIMEOUT + 1.0, took
    assert received.startswith(b"HTTP/1.1 408")


def test_a_connection_that_sends_nothing_is_closed(server):
    _app, port = server
    with connect(port) as s:
        took, received = drip_until_closed(s, b"", b"", 0.2, 10)
    assert took < TIMEOUT + 1.0 and received == b""


def test_a_client_dripping_its_body_gets_408(server):
    _app, port = server
    head = (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n")
    with connect(port) as s:
        took, received = drip_until_closed(s, head + b'{"text": "', b"a", 0.2, 10)
    assert took < TIMEOUT + 1.0, took
    status, _, rest = received.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408")
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"


def test_normal_requests_keep_alive_and_long_event_streams_are_untouched(server):
    _app, port = server
    with connect(port) as s:
        body = json.dumps({"text": "hello"}).encode()
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        data = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        time.sleep(TIMEOUT * 0.6)  # idle between requests: within the keep-alive time
        query = f"conversation_id={data['conversation_id']}&token={data['conversation_token']}".encode()
        s.sendall(b"GET /api/chat/events?" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(0.5)
        got = b""
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT * 2.5:  # well past both timeouts
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            assert chunk, "the event stream was cut"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200") and b"text/event-stream" in got and b"id: " in got


def test_many_slow_clients_do_not_starve_a_normal_one(server):
    _app, port = server
    slow = [connect(port) for _ in range(100)]
    try:
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
        with connect(port) as s:
            started = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            assert time.monotonic() - started < 1.0
        time.sleep(TIMEOUT + 0.5)
        closed = 0
        for s in slow:
            s.settimeout(0.5)
            try:
                data = s.recv(65536)
                closed += data.startswith(b"HTTP/1.1 408") or data == b""
            except OSError:
                closed += 1
        assert closed == len(slow)
    finally:
        for s in slow:
            s.close()
