"""ChannelRegistry: the channels keyed by name, and the ReplySender that dispatches on address.channel.

See bot/channels/base.py for how a platform module plugs in. The registry also carries what
webhook routes need so that each stays about ten lines: the per-user rate limiter, `handle()`
(the synchronous core in a worker thread), `spawn()` (work after the ack) and the ticket-event
fan-out to channels (`on_ticket`) and to other listeners (the operator console).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import anyio
import anyio.to_thread

from bot.channels.base import Channel, DeliveryError, render_text
from bot.channels.rate_limit import RateLimit, limit_storage
from bot.messages import Address, InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from bot.config import Settings
    from bot.ports import ConversationCore, Ticket

log = logging.getLogger("bot.channels")

# Worker threads for the synchronous core: retrieval is CPU-bound (GIL), the store does I/O. One
# process keeps 4, so that one slow turn does not hold every other message back (measured with the
# query prefetch, 16 users: 1 thread 83-87 req/s, 2 threads 101, 4 threads 79-88; all within the
# VM's noise, p95 204-270 ms).
CORE_THREADS = 4
# With several worker processes, one turn at a time per process measured best (2 workers on 2 cores,
# 16 users, before the prefetch: 1 thread 114-116 req/s, 4 threads 96 req/s with a 0.9 s maximum):
# the processes use the cores, threads only add GIL and lock convoys. The messages waiting for that
# one thread still share embedding passes through ChannelRegistry.handle's prefetch.


def core_threads(settings: "Settings") -> int:
    if settings.core_threads:
        return settings.core_threads
    return CORE_THREADS if settings.workers <= 1 else 1


class UnknownChannel(DeliveryError):
    pass


class ChannelRegistry:
    """Implements bot.ports.ReplySender."""

    def __init__(self, settings: "Settings", core: "ConversationCore | None" = None) -> None:
        self.settings = settings
        self.core = core
        self.limit_storage = limit_storage(settings.redis_url)
        self.rate_limiter = self.limiter("user", settings.rate_limit_per_minute)
        self._channels: dict[str, Channel] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ticket_subscribers: list[Callable[[str, "Ticket"], Awaitable[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._lock = threading.Lock()

    def limiter(self, name: str, per_minute: int) -> RateLimit:
        """A per-key limit of `per_minute` events a minute, named `name`: counted in Redis by every
        process and node when PBXBOT_REDIS_URL is set, else in this process."""
        return RateLimit(name, per_minute, self.limit_storage)

    # ------------------------------------------------------------ the channels

    def add(self, channel: Channel) -> Channel:
        name = channel.name
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"invalid channel name {name!r}")
        if name in self._channels:
            raise ValueError(f"channel {name!r} registered twice")
        self._channels[name] = channel
        return channel

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def __getitem__(self, name: str) -> Channel:
        return self._channels[name]

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._channels.values()))

    @property
    def names(self) -> list[str]:
        return list(self._channels)

    def prefix_for(self, channel: Channel) -> str:
        prefix = getattr(channel, "prefix", None)
        return f"/webhooks/{channel.name}" if prefix is None else prefix

    def mount(self, app: "FastAPI") -> None:
        """Include every channel's router under its prefix (called once by create_app)."""
        for ch in self:
            router = getattr(ch, "router", None)
            if router is not None:
                app.include_router(router, prefix=self.prefix_for(ch))

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

    # ------------------------------------------------------------ helpers for routes

    async def handle(self, message: InboundMessage) -> list[Reply]:
        """core.handle in a worker thread so that the event loop stays responsive."""
        if self.core is None:
            raise RuntimeError("registry has no core")
        limiter = self._get_limiter()
        prefetch = getattr(self.core, "prefetch", None)
        if prefetch is not None and limiter.available_tokens == 0:
            # every worker thread is busy: this message waits, and its query can ride along in
            # the embedding pass of a running turn meanwhile (bot/retrieval/batching.py)
            prefetch(message)
        return await anyio.to_thread.run_sync(self.core.handle, message, limiter=limiter)

    async def run_sync(self, func: Callable[..., Any], *args: Any) -> Any:
        """Any other synchronous core/store call in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._get_limiter())

    def _get_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(core_threads(self.settings))
        return self._limiter

    def spawn(self, coro: Awaitable[Any], *, name: str | None = None) -> asyncio.Task:
        """Run `coro` in the background (after an ack); errors are logged, never lost."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("background task %s failed: %s", task.get_name(), exc, exc_info=exc)

    # ------------------------------------------------------------ ticket events

    def add_ticket_subscriber(self, callback: Callable[[str, "Ticket"], Awaitable[None]]) -> None:
        self._ticket_subscribers.append(callback)

    def ticket_listener(self, event: str, ticket: "Ticket") -> None:
        """A bot.ports.TicketListener: called from any thread; fans out on the event loop."""
        loop = self._loop
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
            hook = getattr(ch, "on_ticket", None)
            if hook is not None:
                self.spawn(hook(event, ticket), name=f"on_ticket:{ch.name}")
        for cb in list(self._ticket_subscribers):
            self.spawn(cb(event, ticket), name="ticket_subscriber")

    # ------------------------------------------------------------ lifecycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The app's event loop while it runs (for calls from other threads: call_soon_threadsafe)."""
        return self._loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for ch in self:
            await ch.start()
            log.info("channel %s started", ch.name)

    async def stop(self) -> None:
        for ch in reversed(list(self)):
            try:
                await ch.stop()
            except Exception:
                log.exception("channel %s failed to stop cleanly", ch.name)
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
        self._loop = None


def text_only(reply: Reply) -> Reply:
    """The same reply as plain text: sources folded into the answer, no buttons."""
    return dataclasses.replace(reply, answer=render_text(reply), citations=(), offer_human=False)
