"""Background loops of the server: the outbox dispatcher and the urgent-ticket re-announcer.

The outbox (Handoff.enqueue / lease_outbox / mark_sent / mark_failed) holds every message owed
to a user of a platform: each turn's replies (written in the turn's transaction, sent at once by
the pipeline, left here when that fails or the process dies), operator replies, re-announcements,
answers recovered after a crash. The dispatcher polls it, delivers through the ReplySender (the
channel registry) and marks the result. A failed item is retried with capped exponential back-off
(PBXBOT_OUTBOX_MAX_BACKOFF) for as long as it takes; only a PermanentDeliveryError (the user
blocked the bot, the chat is gone) makes it dead. Failing and dead items are listed in the console
and make /healthz say "degraded".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Awaitable, Callable

from bot.channels.base import PermanentDeliveryError, retry_delay
from bot.messages import Reply, utcnow
from bot.ports import ConversationCore, Handoff, OutboxItem, ReplySender

log = logging.getLogger("bot.web.outbox")

RunSync = Callable[..., Awaitable[Any]]


class OutboxDispatcher:
    def __init__(self, handoff: Handoff, sender: ReplySender, run_sync: RunSync, *,
                 interval: float = 0.5, send_timeout: float = 15.0, max_backoff: float = 300.0,
                 batch: int = 50) -> None:
        self.handoff, self.sender, self.run_sync = handoff, sender, run_sync
        self.interval, self.send_timeout, self.max_backoff, self.batch = interval, send_timeout, max_backoff, batch
        self._wake = asyncio.Event()
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self._stopping = False

    def stop(self) -> None:
        """Leave the loop at the next turn. (A plain task.cancel() can be swallowed while a worker
        thread call is shielded, so the loops also check this flag.)"""
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Deliver now rather than at the next poll (after an operator reply)."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep polling, report in /healthz
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("outbox poll failed: %s", self.last_error)
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> int:
        """One poll: lease the due pending items and deliver them; returns how many were delivered.
        Leases (not a plain read) so that several server processes on one database never send an
        item twice; a failed item stays leased for its back-off, in the store, so every worker and
        a restarted one honour it."""
        lease = self.send_timeout + 5.0
        items: list[OutboxItem] = await self.run_sync(self.handoff.lease_outbox, self.batch, lease)
        results = await asyncio.gather(*(self._deliver(it) for it in items))
        self.last_error = None
        return sum(results)

    async def _deliver(self, item: OutboxItem) -> int:
        try:
            # outbox_id: the item's own number is the idempotency key of platforms that have one
            reply = replace(Reply.from_payload(item.reply), outbox_id=item.id)
            await asyncio.wait_for(self.sender.send(item.address, reply), self.send_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            permanent = isinstance(exc, PermanentDeliveryError)
            delay = retry_delay(item.attempts + 1, self.max_backoff)
            self.failed += 1
            if permanent:
                log.warning("outbox #%d to %s can never be delivered (%s): dead-lettered", item.id,
                            item.address.channel, error)
            else:
                log.warning("outbox #%d to %s failed (attempt %d): %s; retry in %.0fs", item.id,
                            item.address.channel, item.attempts + 1, error, delay)
            await self.run_sync(lambda: self.handoff.mark_failed(item.id, error, delay, permanent=permanent))
            return 0
        await self.run_sync(self.handoff.mark_sent, item.id)
        self.delivered += 1
        return 1


class PeriodicJob:
    """Every `interval` seconds (the first time after `first_delay`): `func()` in a worker thread.
    A non-zero result (things done) is logged with `done_message` and followed by
    `on_done()` (the dispatcher is woken to deliver what the job queued). Errors are logged and the
    loop goes on. The re-announcer and the recovery of unanswered messages are two of these."""

    def __init__(self, name: str, func: Callable[[], int], run_sync: RunSync, *, interval: float,
                 first_delay: float | None = None, done_message: str = "%d done",
                 on_done: Callable[[], None] | None = None) -> None:
        self.name, self.func, self.run_sync = name, func, run_sync
        self.interval = interval
        self.first_delay = interval if first_delay is None else first_delay
        self.done_message, self.on_done = done_message, on_done
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        delay = self.first_delay
        while not self._stopping:
            await asyncio.sleep(delay)
            delay = self.interval
            if self._stopping:
                return
            try:
                n = await self.run_sync(self.func)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", self.name)
                continue
            if n:
                log.info(self.done_message, n)
                if self.on_done:
                    self.on_done()


def reannouncer(core: ConversationCore, run_sync: RunSync, *, interval: float = 30.0,
                on_done: Callable[[], None] | None = None) -> PeriodicJob:
    """core.reannounce_overdue(now) every `interval` seconds."""
    return PeriodicJob("re-announcing overdue tickets", lambda: core.reannounce_overdue(utcnow()), run_sync,
                       interval=interval, done_message="re-announced %d overdue urgent ticket(s)", on_done=on_done)


def recovery(core: ConversationCore, run_sync: RunSync, *, interval: float = 60.0,
             on_done: Callable[[], None] | None = None) -> PeriodicJob:
    """core.recover_pending() at start (messages a crash left unanswered), then every `interval`
    seconds (those of a worker that died while others served); the store's lock keeps it to one
    process at a time."""
    return PeriodicJob("recovering unanswered messages", core.recover_pending, run_sync, interval=interval,
                       first_delay=0.0, done_message="recovered %d unanswered message(s)", on_done=on_done)
