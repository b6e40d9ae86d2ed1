"""The client's address behind reverse proxies (PBXBOT_TRUSTED_PROXIES).

A request's peer is the proxy, not the user. X-Forwarded-For is believed only when the peer is a
trusted proxy, and then read from the right: each trusted hop appended the address it saw, so
the first address from the right that is not a trusted proxy is the client (anything left of it
was written by the client and proves nothing). With no trusted proxies the peer is the client.
The per-address rate limits (widget, console login) count by this address.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(spec: str) -> tuple[Network, ...]:
    """"127.0.0.1, 10.0.0.0/24, ::1" → networks; raises ValueError naming a bad entry."""
    out = []
    for entry in spec.replace(";", ",").split(","):
        entry = entry.strip()
        if entry:
            try:
                out.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"PBXBOT_TRUSTED_PROXIES: {entry!r} is not an address or network") from None
    return tuple(out)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str, forwarded_for: Iterable[str], networks: tuple[Network, ...]) -> str:
    """The client's address: `peer` unless it is a trusted proxy, else the rightmost address of the
    X-Forwarded-For header values that is not a trusted proxy (the leftmost if all are)."""
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer
