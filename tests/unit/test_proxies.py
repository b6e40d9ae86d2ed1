"""The client address behind trusted proxies (bot/proxy.py), as the middleware reads it."""

import pytest

from bot.proxy import forwarded_client as client_address
from bot.proxy import parse_trusted_proxies as trusted_networks

PROXIES = trusted_networks("127.0.0.1, 10.0.0.0/24")


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_forwards():
    assert client_address("203.0.113.9", ["198.51.100.1"], ()) == "203.0.113.9"


def test_a_forwarded_address_from_an_untrusted_peer_is_ignored():
    assert client_address("203.0.113.9", ["198.51.100.1"], PROXIES) == "203.0.113.9"


def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client():
    # the client forged the first entry; nginx appended what it saw; an inner proxy appended nginx
    assert client_address("127.0.0.1", ["6.6.6.6, 198.51.100.7", "10.0.0.5"], PROXIES) == "198.51.100.7"
    assert client_address("127.0.0.1", [], PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", ["10.0.0.5, 10.0.0.6"], PROXIES) == "10.0.0.5"  # all trusted: the first


def test_a_bad_entry_is_named():
    with pytest.raises(ValueError, match="not-an-address"):
        trusted_networks("127.0.0.1,not-an-address")
