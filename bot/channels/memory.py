"""MemoryChannel: records what it is asked to send (the fake channel for tests).

    registry.add(MemoryChannel("telegram"))   # stands in for any platform
    ...
    channel.sent  -> [(Address, Reply), ...]

`fail_next(n)` makes the next n sends raise DeliveryError (outbox retry tests).
"""

from __future__ import annotations

from bot.channels.base import BaseChannel, DeliveryError
from bot.messages import Address, Reply


class MemoryChannel(BaseChannel):
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.sent: list[tuple[Address, Reply]] = []
        self.ticket_events: list[tuple[str, str]] = []  # (event, ticket id)
        self._failures = 0

    def fail_next(self, n: int = 1) -> None:
        self._failures = n

    async def send(self, address: Address, reply: Reply) -> None:
        if self._failures > 0:
            self._failures -= 1
            raise DeliveryError("simulated delivery failure")
        self.sent.append((address, reply))

    async def on_ticket(self, event, ticket) -> None:
        self.ticket_events.append((event, ticket.id))
