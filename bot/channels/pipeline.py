"""The one inbound pipeline every channel hands its parsed events to (owned by the registry).

    verify, parse (the adapter's route) -> admit: drop a retried delivery, check the user's rate
    limit -> record: commit the message (a retry recorded before is dropped here too, across
    restarts and nodes) -> acknowledge (the route returns; 503 instead when the store could not
    commit, so that the platform retries) -> the core's turn (one per conversation at a time: the
    turn runner's lock and the store's), whose replies enter the outbox in the transaction that
    marks the message handled -> deliver now and mark them sent, or leave them to the outbox
    dispatcher (retried with back-off until delivered; a permanent error makes them dead)

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
import dataclasses
import functools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import anyio
import anyio.to_thread

from bot.channels.base import Inbound, PermanentDeliveryError, Undelivered, retry_delay
from bot.channels.rate_limit import RateLimit
from bot.conversation.texts import t
from bot.messages import InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.base import BaseChannel
    from bot.config import Settings
    from bot.ports import ConversationCore, StoredMessage

log = logging.getLogger("bot.channels")

WORKERS = 6  # events of one channel worked on at once after their ack; the rest wait their turn
SEND_TIMEOUT = 15.0  # one delivery in the event's context; then the outbox dispatcher takes over


class NotRecorded(Exception):
    """The store could not commit an inbound message: the webhook answers 503, never 2xx, so that
    the platform delivers it again (bot/web/errors.py)."""

    def __init__(self, channel: str) -> None:
        super().__init__(f"{channel}: the message could not be recorded")
        self.channel = channel
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
        """True when `key` was remembered (within ttl)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            return key in self._seen

    def remember(self, key: str) -> None:
        """Remember `key`: only once its message is committed (a delivery whose recording failed
        must not be taken for a duplicate when the platform sends it again)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            self._seen[key] = now

    def _expire(self, now: float) -> None:
        while self._seen:
            _first, at = next(iter(self._seen.items()))
            if at > now - self.ttl and len(self._seen) <= self.max_items:
                break
            self._seen.popitem(last=False)


class InboundPipeline:
    def __init__(self, settings: "Settings", core: "ConversationCore | None", user_limit: RateLimit) -> None:
        self.settings, self.core, self.user_limit = settings, core, user_limit
        self.seen = SeenDeliveries()
        self._workers: dict[str, asyncio.Semaphore] = {}
        self._tasks: dict[asyncio.Task, str] = {}  # task -> channel name ("" for the registry's own)

    # ------------------------------------------------------------ the steps

    async def admit(self, channel: str, inbound: Inbound) -> Admission:
        """Drop a delivery seen in this process, then the user's rate limit (notices are free)."""
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
        """admit() the event, commit its message and answer it in the background (after the caller's
        ack). Raises NotRecorded when the store cannot commit: the caller must not acknowledge."""
        admission = await self.admit(channel.name, inbound)
        if not admission.accepted:
            return admission
        message, recorded = inbound.message, None
        if message is not None:
            if self.core is None:
                raise RuntimeError("the pipeline has no core")
            message = dataclasses.replace(message, outbox=True)
            try:  # anyio's default thread pool: a write of a few ms must not queue behind turns
                recorded = await anyio.to_thread.run_sync(self.core.record, message)
            except Exception as exc:
                log.error("%s: recording event %s failed (%s); answering 503 so that it is sent again",
                          channel.name, inbound.event_id or "?", type(exc).__name__)
                raise NotRecorded(channel.name) from exc
            if recorded is None:  # recorded before (a retry after a restart, or on another node)
                self._remember(channel.name, inbound)
                log.info("%s: retried delivery %s was recorded before", channel.name, inbound.event_id or "?")
                return Admission(False, duplicate=True)
        self._remember(channel.name, inbound)
        self.spawn(self.process(channel, inbound, message, recorded), channel=channel.name)
        return admission

    def _remember(self, channel: str, inbound: Inbound) -> None:
        if inbound.event_id:
            self.seen.remember(f"{channel}:{inbound.event_id}")

    async def receive(self, channel: "BaseChannel", events: list[Inbound]) -> None:
        """accept() each event; a refusal (rate limited) is delivered in the background too.
        Raises NotRecorded (after accepting the events before it) when one cannot be recorded."""
        for inbound in events:
            admission = await self.accept(channel, inbound)
            if admission.refusal is not None:
                self.spawn(self.deliver(channel, inbound, [admission.refusal]), channel=channel.name)

    async def process(self, channel: "BaseChannel", inbound: Inbound, message: InboundMessage | None = None,
                      recorded: "StoredMessage | None" = None) -> None:
        async with self._workers.setdefault(channel.name, asyncio.Semaphore(WORKERS)):
            try:
                if inbound.notice:
                    replies = [notice_reply(inbound.conversation_id, inbound.notice, inbound.language,
                                            channel.reach_person)]
                elif message is not None:
                    replies = await self.handle(message, recorded)
                else:
                    return
                await self.deliver(channel, inbound, replies)
            except Exception:
                # The message is recorded and unhandled: recover_pending() answers it later.
                log.exception("%s: event %s failed", channel.name, inbound.event_id or "?")

    async def handle(self, message: InboundMessage, recorded: "StoredMessage | None" = None) -> list[Reply]:
        """core.handle in a worker thread, so that the event loop stays responsive."""
        if self.core is None:
            raise RuntimeError("the pipeline has no core")
        threads = self.threads
        prefetch = getattr(self.core, "prefetch", None)
        if prefetch is not None and threads.available_tokens == 0:
            prefetch(message)  # it waits: its query can ride along in a running turn's embedding pass
        return await anyio.to_thread.run_sync(self.core.handle, message, recorded, limiter=threads)

    async def deliver(self, channel: "BaseChannel", inbound: Inbound, replies: list[Reply]) -> None:
        """Answer in the event's context (LINE's reply token). A reply the turn put in the outbox is
        marked sent, or failed (the dispatcher retries it after its back-off); any other reply that
        cannot be delivered now is put in the outbox."""
        if not replies:
            return
        undelivered: list[Reply] = []
        error: BaseException | None = None
        try:
            await asyncio.wait_for(channel.reply(inbound, replies), SEND_TIMEOUT)
        except Exception as exc:
            undelivered = list(exc.replies) if isinstance(exc, Undelivered) else list(replies)
            error = exc.__cause__ if isinstance(exc, Undelivered) and exc.__cause__ else exc
            log.warning("%s: delivery failed (%s); %d repl%s left to the outbox", channel.name,
                        type(error).__name__, len(undelivered), "y" if len(undelivered) == 1 else "ies")
        if self.core is None:
            return
        # Outbox bookkeeping runs in anyio's default thread pool, not behind the turns waiting for a
        # core thread: the shorter the time between a send and its "sent", the fewer replies a crash
        # in between makes the dispatcher send twice.
        handoff = self.core.handoff
        for reply in replies[: len(replies) - len(undelivered)]:
            if reply.outbox_id is not None:
                await anyio.to_thread.run_sync(handoff.mark_sent, reply.outbox_id)
        permanent = isinstance(error, PermanentDeliveryError)
        for reply in undelivered:
            if reply.outbox_id is not None:
                await anyio.to_thread.run_sync(lambda r=reply: handoff.mark_failed(
                    r.outbox_id, f"{type(error).__name__}: {error}"[:500], retry_delay(1, self.settings.outbox_max_backoff),
                    permanent=permanent))
            else:
                await anyio.to_thread.run_sync(handoff.enqueue, inbound.address, reply)

    # ------------------------------------------------------------ threads and tasks

    @functools.cached_property
    def threads(self) -> anyio.CapacityLimiter:
        return anyio.CapacityLimiter(core_threads(self.settings))

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
