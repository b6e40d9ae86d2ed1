"""The one inbound pipeline every channel hands its parsed events to (owned by the registry).

    verify, parse (the adapter's route) -> admit: drop a retried delivery, check the user's rate
    limit -> acknowledge (the route returns) -> the core's turn (one per conversation at a time:
    the turn runner's lock and the store's) -> deliver, or put in the outbox when delivery fails

Work after the acknowledgement runs in background tasks, at most WORKERS at once per channel
(acks stay fast under load; retrieval never runs in the ack path of a platform that retries), and
a channel's tasks are drained before the channel stops. The synchronous core runs in worker
threads (`core_threads`); a message that has to wait for one announces its query so that waiting
messages share an embedding pass (bot/retrieval/batching.py).

Notices (welcome, help, "send text") are the core's fixed texts, answered without the core. The
widget's request/response route uses the same steps without the background part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import anyio
import anyio.to_thread

from bot.channels.base import Inbound, Undelivered
from bot.channels.rate_limit import RateLimit
from bot.conversation.texts import t
from bot.messages import InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.base import BaseChannel
    from bot.config import Settings
    from bot.ports import ConversationCore

log = logging.getLogger("bot.channels")

WORKERS = 6  # events of one channel worked on at once after their ack; the rest wait their turn
DEFAULT_CORE_THREADS = 4  # one server process: a slow turn does not hold every other one back


def core_threads(settings: "Settings") -> int:
    """Worker threads for the synchronous core: 4 in one process, 1 per process when there are
    several (the processes use the cores; threads would only add lock convoys). docs/scale.md."""
    if settings.core_threads:
        return settings.core_threads
    return DEFAULT_CORE_THREADS if settings.workers <= 1 else 1


@dataclass(frozen=True)
class Admission:
    """What admit() decided: go on, or answer `refusal` (rate limited), or drop (a retry)."""

    accepted: bool
    duplicate: bool = False
    refusal: Reply | None = None
    retry_after: float = 0.0


def notice_reply(conversation_id: str, key: str, language: str | None,
                 reach: tuple[str, dict[str, str]] = ("reach_button", {})) -> Reply:
    """A fixed text of the core as a reply, with the channel's way to reach a person (`reach`: a
    text key and its values); in both languages when the user's is unknown."""
    def text(lang: str) -> str:
        return t(key, lang, reach=t(reach[0], lang, **reach[1]))

    lang = language if language in ("ja", "en") else None
    answer = text(lang) if lang else text("ja") + "\n\n" + text("en")
    return Reply(conversation_id, lang or "ja", answer, kind="notice", offer_human=True)  # type: ignore[arg-type]


def rate_limited_reply(conversation_id: str, language: str | None, retry_after: float) -> Reply:
    lang = language if language in ("ja", "en") else "ja"
    seconds = str(max(1, int(retry_after + 0.999)))
    return Reply(conversation_id, lang, t("rate_limited", lang, seconds=seconds), kind="notice")  # type: ignore[arg-type]


class SeenDeliveries:
    """Delivery ids seen recently (bounded, with a time to live): a platform's retry is dropped."""

    def __init__(self, max_items: int = 50_000, ttl: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items, self.ttl, self._clock = max_items, ttl, clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        """True when `key` was seen before (within ttl); records it otherwise."""
        now = self._clock()
        with self._lock:
            while self._seen:
                first, at = next(iter(self._seen.items()))
                if at > now - self.ttl and len(self._seen) <= self.max_items:
                    break
                self._seen.popitem(last=False)
            if key in self._seen:
                return True
            self._seen[key] = now
            return False


class InboundPipeline:
    def __init__(self, settings: "Settings", core: "ConversationCore | None", user_limit: RateLimit) -> None:
        self.settings, self.core, self.user_limit = settings, core, user_limit
        self.seen = SeenDeliveries()
        self._threads: anyio.CapacityLimiter | None = None
        self._workers: dict[str, asyncio.Semaphore] = {}
        self._tasks: dict[asyncio.Task, str] = {}  # task -> channel name ("" for the registry's own)

    # ------------------------------------------------------------ the steps

    async def admit(self, channel: str, inbound: Inbound) -> Admission:
        """Dedupe by the platform's delivery id, then the user's rate limit (notices are free)."""
        if inbound.event_id and self.seen.seen(f"{channel}:{inbound.event_id}"):
            log.info("%s: retried delivery %s dropped", channel, inbound.event_id)
            return Admission(False, duplicate=True)
        if inbound.notice:
            return Admission(True)
        wait = await self.user_limit.check(inbound.conversation_id)
        if wait:
            return Admission(False, refusal=rate_limited_reply(inbound.conversation_id, inbound.language, wait),
                             retry_after=wait)
        return Admission(True)

    async def accept(self, channel: "BaseChannel", inbound: Inbound) -> Admission:
        """admit() the event and, when admitted, answer it in the background (after the caller's ack)."""
        admission = await self.admit(channel.name, inbound)
        if admission.accepted:
            self.spawn(self.process(channel, inbound), channel=channel.name)
        return admission

    async def receive(self, channel: "BaseChannel", events: list[Inbound]) -> None:
        """accept() each event; a refusal (rate limited) is delivered in the background too."""
        for inbound in events:
            admission = await self.accept(channel, inbound)
            if admission.refusal is not None:
                self.spawn(self.deliver(channel, inbound, [admission.refusal]), channel=channel.name)

    async def process(self, channel: "BaseChannel", inbound: Inbound) -> None:
        async with self._workers.setdefault(channel.name, asyncio.Semaphore(WORKERS)):
            try:
                if inbound.notice:
                    replies = [notice_reply(inbound.conversation_id, inbound.notice, inbound.language,
                                            channel.reach_person)]
                elif inbound.message is not None:
                    replies = await self.handle(inbound.message)
                else:
                    return
                await self.deliver(channel, inbound, replies)
            except Exception:
                log.exception("%s: event %s failed", channel.name, inbound.event_id or "?")

    async def handle(self, message: InboundMessage) -> list[Reply]:
        """core.handle in a worker thread, so that the event loop stays responsive."""
        if self.core is None:
            raise RuntimeError("the pipeline has no core")
        threads = self.threads
        prefetch = getattr(self.core, "prefetch", None)
        if prefetch is not None and threads.available_tokens == 0:
            prefetch(message)  # it waits: its query can ride along in a running turn's embedding pass
        return await anyio.to_thread.run_sync(self.core.handle, message, limiter=threads)

    async def deliver(self, channel: "BaseChannel", inbound: Inbound, replies: list[Reply]) -> None:
        """Answer in the event's context; what cannot be delivered now goes to the outbox."""
        if not replies:
            return
        try:
            await channel.reply(inbound, replies)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, Undelivered) and exc.__cause__ else exc
            log.warning("%s: delivery failed (%s); queued in the outbox", channel.name, type(cause).__name__)
            if self.core is not None:
                for reply in exc.replies if isinstance(exc, Undelivered) else replies:
                    await self.run_sync(self.core.handoff.enqueue, inbound.address, reply)

    # ------------------------------------------------------------ threads and tasks

    @property
    def threads(self) -> anyio.CapacityLimiter:
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(core_threads(self.settings))
        return self._threads

    async def run_sync(self, func: Callable[..., Any], *args: Any) -> Any:
        """Any other synchronous core or store call, in a worker thread."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self.threads)

    def spawn(self, coro: Awaitable[Any], *, channel: str = "", name: str | None = None) -> asyncio.Task:
        """Run `coro` in the background; errors are logged, never lost."""
        task = asyncio.ensure_future(coro)
        task.set_name(name or f"{channel or 'registry'}:work")
        self._tasks[task] = channel
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("background task %s failed: %s", task.get_name(), exc, exc_info=exc)

    @property
    def busy(self) -> bool:
        """Work spawned after an ack is still running."""
        return bool(self._tasks)

    async def drain(self, channel: str | None = None, timeout: float = 5.0) -> None:
        """Let the background work (of one channel) finish; cancel what is still running after `timeout`."""
        tasks = [task for task, owner in self._tasks.items() if channel is None or owner == channel]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        if channel is None:
            for task in pending:
                task.cancel()
