"""Shared test setup (kept small): no test may reach the network or download model weights.

Tests that are neither `integration` nor `e2e` run with the network blocked: a connection to another
machine, or a name lookup, fails the test (even when the code under test swallows the error); a
connection to this machine is refused too, except in tests marked `local_server`, which start a
server of their own on loopback (a fake platform API)."""

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

LOCAL_NAMES = {"localhost", "testserver"}


class NetworkBlocked(OSError):
    """A unit test tried to use the network."""


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_network(request, monkeypatch):
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("e2e"):
        yield
        return
    loopback_allowed = request.node.get_closest_marker("local_server") is not None
    outside: list[str] = []

    def check(host: object, what: str) -> None:
        if _is_loopback(host):
            if not loopback_allowed:
                raise NetworkBlocked(f"{what} {host}: loopback only in tests marked local_server")
            return
        outside.append(f"{what} {host}")
        raise NetworkBlocked(f"{what} {host}: unit tests never use the network")

    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0], "connect to")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address[0], "connect to")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None:
            check(host, "look up")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not outside, f"a unit test used the network: {outside}"
