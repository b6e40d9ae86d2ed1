"""What runs while the app lives, besides requests: the channels (started and stopped with the app),
the outbox dispatcher (every 0.5 s, and at once after an operator reply), the recovery of messages a
crash left unanswered (at start, then every 60 s for workers that died mid-turn), the urgent-ticket
re-announcer (every 30 s) and, on PostgreSQL, the change listener (LISTEN/NOTIFY) that tells the
widget feed and the console's queue of messages and tickets written by any node. The loops' store
calls run on anyio's default threads, not behind the chat turns' limiter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator

import anyio.to_thread
from fastapi import FastAPI

from bot.ports import ConversationCore
from bot.web import background
from bot.web.queue import QueueEvents
from bot.web.widget import WidgetChannel

log = logging.getLogger("bot.web")


run_background = anyio.to_thread.run_sync  # the loops' store calls: anyio's default threads (see above)


def background_jobs(core: ConversationCore, dispatcher: background.OutboxDispatcher, *, reannounce_interval: float,
                    recover_interval: float) -> list[background.PeriodicJob]:
    return [background.recovery(core, run_background, interval=recover_interval, on_done=dispatcher.wake),
            background.reannouncer(core, run_background, interval=reannounce_interval, on_done=dispatcher.wake)]


def change_listener(core: ConversationCore, widget: WidgetChannel, queue: QueueEvents) -> Any:
    """The store's LISTEN/NOTIFY listener (PostgreSQL), wired to the widget feed and the console's
    queue; None when the store has none (SQLite: the feed polls)."""
    make = getattr(core.store, "change_listener", None)
    if not callable(make):
        return None

    def on_connect() -> None:  # catch up on whatever happened while not listening
        widget.feed.wake()
        queue.publish("", "resync")

    listener = make(on_message=widget.feed.notify, on_ticket=queue.publish, on_connect=on_connect)
    if listener is not None:
        widget.feed.live = queue.live = lambda: listener.connected
    return listener


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state.web
    await state.registry.start()
    loops = [state.dispatcher, *state.jobs]
    tasks = [asyncio.create_task(state.dispatcher.run(), name="outbox-dispatcher")]
    tasks += [asyncio.create_task(job.run(), name=job.name) for job in state.jobs]
    if state.listener is not None:
        tasks.append(asyncio.create_task(state.listener.run(), name="change-listener"))
    log.info("pbxbot web ready; channels: %s", ", ".join(state.registry.names))
    try:
        yield
    finally:
        for loop in loops:
            loop.stop()
        for task in tasks:
            task.cancel()
        _done, pending = await asyncio.wait(tasks, timeout=5)
        if pending:
            log.warning("background loops did not stop in time: %s", [t.get_name() for t in pending])
        state.queue.close_streams()
        await state.registry.stop()
