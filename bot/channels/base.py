"""The channel role: a thin two-way adapter between one chat platform and the core.

A channel module (bot/channels/telegram.py, line.py, slack/) holds three things:

* its settings section, a `ChannelSettings` subclass (`PBXBOT_<NAME>_*`), naming the secrets that
  enable it and the ones it needs;
* the channel (subclass `BaseChannel`): `router` (webhook routes, mounted under /webhooks/<name>)
  that only **verify** the request, **parse** it into `Inbound` events and hand them to the
  registry's pipeline (bot/channels/pipeline.py: dedupe, rate limit, ack, the core, delivery),
  and `send(address, reply)`, which **renders** a neutral Reply for the platform (every channel
  sends at least text, bot/channels/rendering.py; buttons and links are extras);
* `register(registry, settings, core)`, which builds the channel and adds it to the registry.

The module's name is the channel's name, its settings section, URL segment and log label; it is
enabled by one line in bot/channels/registry.py (PLATFORMS).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.messages import Address, InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import APIRouter

    from bot.ports import Ticket


@dataclass
class Inbound:
    """One platform event, parsed: a message for the core, or a notice answered with fixed text.

    `notice` is a key of the core's texts ("welcome", "help", "text_only"); `language` is the one
    the user reads (None: both); `event_id` is the platform's delivery id (a retry repeats it);
    `context` is the adapter's own (LINE's reply token and when it was issued)."""

    address: Address
    message: InboundMessage | None = None
    notice: str | None = None
    language: str | None = None
    event_id: str | None = None
    context: Any = None

    @property
    def conversation_id(self) -> str:
        return self.address.conversation_id


class BaseChannel:
    """What every channel is (the registry holds these), with defaults for its optional parts.

    `reply(inbound, replies)` answers an event in its context (LINE's reply token); by default each
    reply is sent. `on_ticket(event, ticket)` hears ticket events ("opened", "reannounced", ...)."""

    name: str = ""
    router: "APIRouter | None" = None
    prefix: str | None = None  # None: /webhooks/<name>
    # How a person is reached here, said in the welcome and help texts: a text key and its values.
    reach_person: tuple[str, dict[str, str]] = ("reach_button", {})

    async def send(self, address: Address, reply: Reply) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def reply(self, inbound: Inbound, replies: list[Reply]) -> None:
        for i, reply in enumerate(replies):
            try:
                await self.send(inbound.address, reply)
            except Exception as exc:
                raise Undelivered(replies[i:]) from exc

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def on_ticket(self, event: str, ticket: "Ticket") -> None:
        return None


class DeliveryError(Exception):
    """A channel could not deliver a reply for now (the outbox dispatcher retries later)."""


class PermanentDeliveryError(DeliveryError):
    """The platform says this reply can never be delivered: the user blocked the bot, the chat or
    channel no longer exists. The outbox item becomes dead (listed in the console, not retried).
    Never raised for an outage, a rate limit or a wrong token: those are fixed and retried."""


def retry_delay(failures: int, cap: float) -> float:
    """Seconds before the next attempt after `failures` failed ones: 1, 2, 4... up to `cap`
    (PBXBOT_OUTBOX_MAX_BACKOFF), with up to 10% jitter so that a queue does not retry in lockstep."""
    base = min(cap, 2.0 ** min(max(failures - 1, 0), 30))
    return base * (1.0 + random.random() * 0.1)


class Undelivered(DeliveryError):
    """Some replies of a turn went out, these did not (they go to the outbox, the others do not)."""

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__(f"{len(replies)} replies not delivered")
        self.replies = replies
