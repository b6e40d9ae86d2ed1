"""The client behind trusted proxies (bot/proxy.py), constant-time token comparison (bot/tokens.py)
and the guess limits' counting (bot/web/guesses.py), without a server."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from bot.config import Settings
from bot.proxy import client_address, cookie_secure, parse_trusted_proxies
from bot.tokens import tokens_equal
from bot.web.guesses import GuessLimiter, InProcessAttemptStore


class Headers:
    def __init__(self, items):
        self.items = items

    def getlist(self, name):
        return [v for k, v in self.items if k.lower() == name]


def request(peer, *headers, scheme="http"):
    return SimpleNamespace(client=SimpleNamespace(host=peer), headers=Headers(list(headers)),
                           url=SimpleNamespace(scheme=scheme))


def settings(proxies="", **kw):
    return Settings(_env_file=None, trusted_proxies=proxies, **kw)


@pytest.mark.parametrize("peer, xff, proxies, expected", [
    ("203.0.113.9", "1.2.3.4", "", "203.0.113.9"),                      # no proxies configured
    ("203.0.113.9", "1.2.3.4", "10.0.0.1", "203.0.113.9"),              # not from a proxy: ignored
    ("10.0.0.1", "1.2.3.4", "10.0.0.1", "1.2.3.4"),
    ("10.0.0.1", "6.6.6.6, 1.2.3.4", "10.0.0.1", "1.2.3.4"),            # the left entry is the client's own claim
    ("10.0.0.1", "1.2.3.4, 10.0.0.2", "10.0.0.0/8", "1.2.3.4"),         # two proxies of ours
    ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.0/8", "10.0.0.3"),       # all ours: the farthest
    ("10.0.0.1", "1.2.3.4, not-an-ip", "10.0.0.1", "10.0.0.1"),         # garbage where the proxy writes
    ("10.0.0.1", "", "10.0.0.1", "10.0.0.1"),
    ("::1", "2001:db8::7", "::1", "2001:db8::7"),
    ("::ffff:10.0.0.1", "[2001:db8::7]:4711", "10.0.0.1", "2001:db8::7"),
    ("10.0.0.1", "1.2.3.4:5678", "10.0.0.1", "1.2.3.4"),
])
def test_client_address(peer, xff, proxies, expected):
    assert client_address(request(peer, ("x-forwarded-for", xff)), settings(proxies)) == expected


def test_https_and_secure_cookies_only_through_a_trusted_proxy():
    https = ("x-forwarded-proto", "https")
    assert cookie_secure(request("10.0.0.1", https), settings("10.0.0.1"))
    assert not cookie_secure(request("203.0.113.9", https), settings("10.0.0.1"))
    assert not cookie_secure(request("10.0.0.1", ("x-forwarded-proto", "http")), settings("10.0.0.1"))
    assert cookie_secure(request("203.0.113.9", scheme="https"), settings())
    assert cookie_secure(request("203.0.113.9"), settings(secure_cookies=True))


def test_a_bad_proxy_entry_is_named():
    with pytest.raises(ValueError, match="proxy.example"):
        parse_trusted_proxies("10.0.0.1, proxy.example")


@pytest.mark.parametrize("presented", ["", None, "トークン", "é" * 40, "\udcff", b"\xff\xfe", "x" * 100_000, "abc "])
def test_hostile_tokens_are_just_not_equal(presented):
    assert tokens_equal("abc", presented) is False
    assert tokens_equal("abc", "abc") and tokens_equal("é", "é") and not tokens_equal("", "")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_wrong_guesses_are_counted_in_a_sliding_minute():
    clock = Clock()
    limiter = GuessLimiter(InProcessAttemptStore(clock=clock), per_minute=3)
    for _ in range(3):
        with limiter.attempt("1.1.1.1", "alice") as a:
            assert a.wait == 0
            a.failed()
        clock.now += 1
    with limiter.attempt("1.1.1.1", "alice") as a:
        assert 56 < a.wait <= 58  # until the first of the three is a minute old
    with limiter.attempt("1.1.1.1", "alice") as a:  # right guesses are not counted, refused ones neither
        pass
    clock.now += 58
    with limiter.attempt("1.1.1.1", "alice") as a:
        assert a.wait == 0


def test_right_guesses_do_not_count():
    limiter = GuessLimiter(per_minute=2)
    for _ in range(20):  # twenty operators behind one office address log in at nine
        with limiter.attempt("1.1.1.1", f"op{_}") as a:
            assert a.wait == 0


def test_a_parallel_burst_cannot_overshoot_the_limit():
    limiter = GuessLimiter(per_minute=10)
    admitted = []
    barrier = threading.Barrier(50)

    def guess():
        barrier.wait()
        with limiter.attempt("1.1.1.1", "alice") as a:
            if not a.wait:
                admitted.append(1)
                threading.Event().wait(0.05)  # bcrypt
                a.failed()

    threads = [threading.Thread(target=guess) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 10


def test_a_recognised_client_is_not_locked_out_by_the_account_limit():
    limiter = GuessLimiter(per_minute=2)
    limiter.succeeded("192.0.2.1", "alice")
    for i in range(2):
        with limiter.attempt(f"198.51.100.{i}", "alice") as a:
            a.failed()
    with limiter.attempt("198.51.100.9", "alice") as a:
        assert a.wait  # a stranger: the account's budget is spent
    with limiter.attempt("198.51.100.9", "alice", device="dev1") as a:
        assert a.wait == 0  # her browser
    with limiter.attempt("192.0.2.1", "alice") as a:
        assert a.wait == 0  # her address
    with limiter.attempt("192.0.2.1", "bob") as a:
        assert a.wait == 0  # (known for alice only, but bob's budget is untouched)
