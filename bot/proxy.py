"""The client behind trusted reverse proxies (PBXBOT_TRUSTED_PROXIES).

Forwarded headers are believed only when the connection comes from a listed proxy; otherwise
anyone could claim any address (and escape every per-address limit) or claim https. With
`X-Forwarded-For: a, b, c` from a trusted peer, the client is the right-most entry that is not
itself a trusted proxy (each proxy appends the address it saw), so entries a client wrote
itself at the left are never taken.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from bot.config import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def parse_trusted_proxies(spec: str) -> tuple[Network, ...]:
    """"10.0.0.5, 192.168.0.0/24, ::1" -> networks; raises ValueError naming a bad entry."""
    out = []
    for part in (spec or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"PBXBOT_TRUSTED_PROXIES: {part!r} is not an address or network") from None
    return tuple(out)


@functools.lru_cache(maxsize=1024)  # a request parses its peer and hops several times; the same few repeat
def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[::1]:443"
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # "1.2.3.4:5678"
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def _trusted(ip: Any, networks: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in networks)


def _peer(request: Any) -> str:
    client = getattr(request, "client", None)
    return client.host if client and client.host else "-"


def client_address(request: Any, settings: "Settings") -> str:
    """The client's address: the peer's, or (from a trusted proxy) the nearest untrusted hop of
    X-Forwarded-For. (The middleware already puts that address in the request's scope; this is
    for code that is handed a request from elsewhere, and gives the same answer.)"""
    return forwarded_client(_peer(request), request.headers.getlist("x-forwarded-for"),
                            parse_trusted_proxies(settings.trusted_proxies))


def trusted_peer(peer: str, networks: tuple[Network, ...]) -> bool:
    return _trusted(_ip(peer), networks)


def forwarded_client(peer: str, forwarded_for: Iterable[str], networks: tuple[Network, ...]) -> str:
    """`peer` unless it is a trusted proxy; else the right-most X-Forwarded-For hop that is not a
    trusted proxy (the left-most when all are; the last good one before garbage)."""
    if not networks or not _trusted(_ip(peer), networks):
        return peer
    hops = [h for h in ",".join(forwarded_for).split(",") if h.strip()]
    address = peer
    for hop in reversed(hops[-32:]):
        ip = _ip(hop)
        if ip is None:  # garbage where a proxy should have written an address: stop at the last good one
            break
        address = str(ip)
        if not _trusted(ip, networks):
            break
    return address


def request_is_https(request: Any, settings: "Settings") -> bool:
    """https directly, or X-Forwarded-Proto https from a trusted proxy (the nearest proxy's value)."""
    if request.url.scheme == "https":
        return True
    networks = parse_trusted_proxies(settings.trusted_proxies)
    if not networks or not _trusted(_ip(_peer(request)), networks):
        return False
    proto = ",".join(request.headers.getlist("x-forwarded-proto")).split(",")[-1].strip().lower()
    return proto == "https"


def cookie_secure(request: Any, settings: "Settings") -> bool:
    return bool(settings.secure_cookies) or request_is_https(request, settings)
