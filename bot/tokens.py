"""Constant-time comparison of secrets that arrive as text (tokens, nonces, CSRF values).

`hmac.compare_digest` raises TypeError on a `str` with characters outside ASCII, which turned a
non-ASCII token into an unauthenticated 500 with a traceback. Everything is compared as UTF-8
bytes here (lone surrogates included), so hostile input is simply "not equal".
"""

from __future__ import annotations

import hmac


def as_bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def tokens_equal(expected: str | bytes | None, presented: str | bytes | None) -> bool:
    """True when both are non-empty and equal; constant time in the content; never raises."""
    a, b = as_bytes(expected), as_bytes(presented)
    return bool(a) and bool(b) and hmac.compare_digest(a, b)
