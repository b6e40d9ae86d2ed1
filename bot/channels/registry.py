"""ChannelRegistry: the channels keyed by name, the ReplySender that dispatches on address.channel,
and the inbound pipeline every channel's routes hand their events to.

PLATFORMS is the list of platform channels this build knows: one line per channel, naming its
module (see bot/channels/base.py for what the module holds). A platform is enabled when its settings
section holds one of its secrets.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

from bot.channels.base import BaseChannel, DeliveryError
from bot.channels.pipeline import InboundPipeline
from bot.channels.rate_limit import RateLimit, limit_storage
from bot.channels.rendering import text_only
from bot.config import ConfigError
from bot.messages import Address, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.config import Settings
    from bot.ports import ConversationCore, Ticket

log = logging.getLogger("bot.channels")

PLATFORMS: dict[str, str] = {
    "telegram": "bot.channels.telegram",
    "line": "bot.channels.line",
    "slack": "bot.channels.slack",
}


def platform_module(name: str) -> ModuleType:
    module_name = PLATFORMS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"channel '{name}' is configured (PBXBOT_{name.upper()}_*) but this build has no "
                              f"{module_name} adapter") from None
        raise ConfigError(f"channel '{name}' needs a package that is not installed: {exc.name}") from None


def enabled_platforms(settings: "Settings") -> list[str]:
    """The platforms whose secrets are set; a half-configured one is a ConfigError naming the variable."""
    enabled = []
    for name in PLATFORMS:
        if not settings.channels.get(name):
            continue  # nothing configured: its module is not even imported
        section = settings.channel(name, platform_module(name).SETTINGS)
        if section.enabled:
            section.check(name)
            enabled.append(name)
    settings.check_operator_token()
    return enabled


class UnknownChannel(DeliveryError):
    pass


class ChannelRegistry:
    """Implements bot.ports.ReplySender."""

    def __init__(self, settings: "Settings", core: "ConversationCore | None" = None) -> None:
        self.settings = settings
        self.core = core
        self.limit_storage = limit_storage(settings.redis_url)
        self.rate_limiter = self.limiter("user", settings.rate_limit_per_minute)
        self.pipeline = InboundPipeline(settings, core, self.rate_limiter)
        self._channels: dict[str, BaseChannel] = {}
        self._ticket_subscribers: list[Callable[[str, "Ticket"], Awaitable[None]]] = []
        # The app's event loop while it runs (for calls from other threads: call_soon_threadsafe).
        self.loop: asyncio.AbstractEventLoop | None = None

    def limiter(self, name: str, per_minute: int) -> RateLimit:
        """A per-key limit of `per_minute` events a minute, named `name`: counted in Redis by every
        process and node when PBXBOT_REDIS_URL is set, else in this process."""
        return RateLimit(name, per_minute, self.limit_storage)

    # ------------------------------------------------------------ the channels

    def add(self, channel: BaseChannel) -> BaseChannel:
        name = channel.name
        if not name or not name.isalnum():
            raise ValueError(f"invalid channel name {name!r}")
        if name in self._channels:
            raise ValueError(f"channel {name!r} registered twice")
        self._channels[name] = channel
        return channel

    def register_platform(self, name: str) -> BaseChannel:
        """Build the platform channel `name` from its module (see PLATFORMS) and add it."""
        return platform_module(name).register(self, self.settings, self.core)

    def __getitem__(self, name: str) -> BaseChannel:
        return self._channels[name]

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def __iter__(self) -> Iterator[BaseChannel]:
        return iter(list(self._channels.values()))

    @property
    def names(self) -> list[str]:
        return list(self._channels)

    # ------------------------------------------------------------ ReplySender

    async def send(self, address: Address, reply: Reply) -> None:
        channel = self._channels.get(address.channel)
        if channel is None:
            raise UnknownChannel(f"no channel {address.channel!r} is enabled")
        try:
            await channel.send(address, reply)
        except (DeliveryError, OSError, asyncio.TimeoutError):
            raise
        except Exception as exc:
            # Degrading output: a rich rendering that the channel could not build falls back
            # to plain text once (answer + sources as text, no buttons).
            if reply.citations or reply.offer_human:
                log.warning("channel %s: rich send failed (%s); falling back to text",
                            address.channel, type(exc).__name__)
                await channel.send(address, text_only(reply))
            else:
                raise

    # ------------------------------------------------------------ the pipeline's worker threads, for routes

    async def run_sync(self, func: Callable[..., Any], *args: Any) -> Any:
        return await self.pipeline.run_sync(func, *args)

    # ------------------------------------------------------------ ticket events

    def add_ticket_subscriber(self, callback: Callable[[str, "Ticket"], Awaitable[None]]) -> None:
        self._ticket_subscribers.append(callback)

    def ticket_listener(self, event: str, ticket: "Ticket") -> None:
        """A bot.ports.TicketListener: called from any thread; fans out on the event loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fan_out(event, ticket)
        else:
            loop.call_soon_threadsafe(self._fan_out, event, ticket)

    def _fan_out(self, event: str, ticket: "Ticket") -> None:
        for ch in self:
            self.pipeline.spawn(ch.on_ticket(event, ticket), name=f"on_ticket:{ch.name}")
        for cb in list(self._ticket_subscribers):
            self.pipeline.spawn(cb(event, ticket), name="ticket_subscriber")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for ch in self:
            await ch.start()
            log.info("channel %s started", ch.name)

    async def stop(self) -> None:
        for ch in reversed(list(self)):
            await self.pipeline.drain(ch.name)  # its answers still in flight go out before it closes
            try:
                await ch.stop()
            except Exception:
                log.exception("channel %s failed to stop cleanly", ch.name)
        await self.pipeline.drain()
        self.loop = None
