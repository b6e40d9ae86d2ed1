"""MemoryChannel: records what it is asked to send (the fake channel for tests).

    registry.add(MemoryChannel("telegram"))   # stands in for any platform
    ...
    await channel.wait_for(1)                 # until one reply was delivered
    channel.sent  -> [(Address, Reply), ...]

`fail_next(n)` makes the next n sends raise DeliveryError (outbox retry tests).
"""

from __future__ import annotations

import asyncio

from bot.channels.base import BaseChannel, DeliveryError
from bot.channels.rendering import render_text
from bot.messages import Address, Reply


class MemoryChannel(BaseChannel):
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.sent: list[tuple[Address, Reply]] = []
        self.ticket_events: list[tuple[str, str]] = []  # (event, ticket id)
        self.started = False
        self._failures = 0
        self._changed = asyncio.Event()

    def fail_next(self, n: int = 1) -> None:
        self._failures = n

    async def send(self, address: Address, reply: Reply) -> None:
        if self._failures > 0:
            self._failures -= 1
            raise DeliveryError("simulated delivery failure")
        self.sent.append((address, reply))
        self._changed.set()

    async def on_ticket(self, event, ticket) -> None:
        self.ticket_events.append((event, ticket.id))
        self._changed.set()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[Address, Reply]]:
        async def _wait() -> None:
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)
        return self.sent

    def texts(self) -> list[str]:
        return [render_text(r) for _a, r in self.sent]
