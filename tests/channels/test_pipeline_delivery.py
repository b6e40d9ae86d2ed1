"""What the pipeline cannot deliver now goes to the outbox, and only that: a turn's replies that went
out are not queued again."""

from __future__ import annotations

from bot.channels.base import Inbound
from bot.channels.memory import MemoryChannel
from bot.channels.registry import ChannelRegistry
from bot.config import Settings
from bot.messages import Address, Reply
from tests.web_fakes import FakeCore


class FailsSecond(MemoryChannel):
    async def send(self, address: Address, reply: Reply) -> None:
        if self.sent:
            raise OSError("the platform went away")
        await super().send(address, reply)


async def test_only_the_replies_that_did_not_go_out_are_queued():
    core = FakeCore()
    registry = ChannelRegistry(Settings(_env_file=None), core)
    channel = registry.add(FailsSecond("memory"))
    address = Address("memory", "memory:1")
    replies = [Reply("memory:1", "en", "first"), Reply("memory:1", "en", "second"), Reply("memory:1", "en", "third")]
    await registry.pipeline.deliver(channel, Inbound(address), replies)
    assert [r.answer for _a, r in channel.sent] == ["first"]
    assert [item.reply["answer"] for item in core.handoff.pending_outbox()] == ["second", "third"]
