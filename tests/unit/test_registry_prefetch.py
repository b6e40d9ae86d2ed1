"""A message that has to wait for a busy worker thread announces its query (prefetch); one that
starts at once does not, so an idle server never embeds a guess."""

from __future__ import annotations

import asyncio
import threading

from bot.channels.registry import ChannelRegistry
from bot.config import Settings
from bot.messages import Address, InboundMessage, Reply


class SlowCore:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.prefetched: list[str] = []
        self.handled: list[str] = []

    def prefetch(self, message: InboundMessage) -> None:
        self.prefetched.append(message.text)

    def handle(self, message: InboundMessage) -> list[Reply]:
        self.release.wait(5)
        self.handled.append(message.text)
        return [Reply(message.address.conversation_id, "en", f"answer to {message.text}")]


def _message(text: str) -> InboundMessage:
    return InboundMessage(address=Address("web", f"web:{text}"), text=text)


async def test_only_messages_that_wait_for_a_worker_thread_announce_their_query():
    core = SlowCore()
    registry = ChannelRegistry(Settings(core_threads=1), core)
    first = asyncio.ensure_future(registry.handle(_message("first")))
    await asyncio.sleep(0.1)  # the first turn holds the only worker thread
    second = asyncio.ensure_future(registry.handle(_message("second")))
    await asyncio.sleep(0.1)
    assert core.prefetched == ["second"]
    core.release.set()
    replies = await asyncio.gather(first, second)
    assert [r[0].answer for r in replies] == ["answer to first", "answer to second"]
    third = await registry.handle(_message("third"))  # idle again: starts at once, no guess
    assert third[0].answer == "answer to third" and core.prefetched == ["second"]
