"""Server-sent events: a queue's items as they come, with a keep-alive comment while none do (proxies
close idle connections)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

KEEPALIVE = object()  # what with_keepalive yields when nothing came for a while
KEEPALIVE_LINE = ": keep-alive\n\n"


async def with_keepalive(queue: asyncio.Queue, seconds: float) -> AsyncIterator[Any]:
    while True:
        try:
            yield await asyncio.wait_for(queue.get(), seconds)
        except asyncio.TimeoutError:
            yield KEEPALIVE
