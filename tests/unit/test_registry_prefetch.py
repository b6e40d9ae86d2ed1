"""A message that has to wait for a busy worker thread announces its query (prefetch); one that
starts at once does not, so an idle server never embeds a guess."""

from __future__ import annotations

import asyncio
import threading

from bot.channels.registry import ChannelRegistry
from bot.config import Settings
from bot.messages import Address, InboundMessage
from tests.web_fakes import FakeCore


def _message(text: str) -> InboundMessage:
    return InboundMessage(address=Address("web", f"web:{text}"), text=text)


async def test_only_messages_that_wait_for_a_worker_thread_announce_their_query():
    release = threading.Event()
    core = FakeCore(hold=release)
    registry = ChannelRegistry(Settings(_env_file=None, core_threads=1), core)
    first = asyncio.ensure_future(registry.pipeline.handle(_message("first")))
    await asyncio.sleep(0.1)  # the first turn holds the only worker thread
    second = asyncio.ensure_future(registry.pipeline.handle(_message("second")))
    await asyncio.sleep(0.1)
    assert core.prefetched == ["second"]
    release.set()
    replies = await asyncio.gather(first, second)
    assert [r[0].conversation_id for r in replies] == ["web:first", "web:second"]
    third = await registry.pipeline.handle(_message("third"))  # idle again: starts at once, no guess
    assert third[0].conversation_id == "web:third" and core.prefetched == ["second"]
