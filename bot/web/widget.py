"""The widget's channel ("web"): conversation tokens and the live feed; its routes are routes/chat.py.

The conversation token is an HMAC of the conversation id: only the browser that started the
conversation can read its events or write into it. Every message of a web conversation is already in
the transcript, so outbound delivery (operator replies, re-announcements and recovered answers from
the outbox) only wakes the feed (feed.py), which every open event stream follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac

import anyio.to_thread

from bot.channels.base import BaseChannel
from bot.messages import Address, Reply
from bot.ports import ConversationStore
from bot.tokens import tokens_equal
from bot.web.feed import POLL_SECONDS, TranscriptFeed


class WidgetChannel(BaseChannel):
    name = "web"
    prefix = "/api"

    def __init__(self, *, signing_key: bytes, store: ConversationStore, poll_seconds: float = POLL_SECONDS) -> None:
        self._key = hashlib.sha256(b"pbxbot-web-conversation\0" + signing_key).digest()
        # Feed polls run on anyio's default thread pool, not behind the chat turns' limiter.
        self.feed = TranscriptFeed(store, anyio.to_thread.run_sync, poll_seconds=poll_seconds)
        self._feed_task: asyncio.Task | None = None
        self.closing = False

    def token_for(self, conversation_id: str) -> str:
        return hmac.new(self._key, conversation_id.encode(), hashlib.sha256).hexdigest()[:40]

    def token_ok(self, conversation_id: str, token: str | None) -> bool:
        return tokens_equal(self.token_for(conversation_id), token)

    def exists(self, conversation_id: str) -> bool:
        """Has this conversation any message? (sync: call in a worker thread)"""
        return bool(self.feed.store.transcript(conversation_id, 1))

    async def send(self, address: Address, reply: Reply) -> None:
        self.feed.wake()  # the outbox only holds replies that are already in the transcript: show them now

    async def start(self) -> None:
        self._feed_task = asyncio.create_task(self.feed.run(), name="web-feed")

    def close_streams(self) -> None:
        """End every open event stream (server shutting down; widgets reconnect to the next one).
        Call on the event loop's thread (uvicorn's signal handler runs there)."""
        self.closing = True
        self.feed.close_streams()

    async def stop(self) -> None:
        self.close_streams()
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feed_task
            self._feed_task = None
