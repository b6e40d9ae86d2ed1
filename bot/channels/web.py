"""The helpdesk widget's channel ("web"): POST /api/chat, live events over SSE, and history.

Routes (mounted under /api):
* ``POST /api/chat`` body ``{"text", "conversation_id"?, "conversation_token"?, "action"?, "client_id"?}``
  → the contract's reply JSON (the first reply) plus ``replies`` (all of them, each with
  ``seq`` and ``role``), ``conversation_token`` and ``user_seq``. A new conversation id
  ``web:<uuid>`` is issued when none is given. ``action: "request_human"`` is the
  "talk to a person" button.
* ``GET /api/chat/events?conversation_id=..&token=..&after=N`` → Server-Sent Events: every
  reply and operator message for the conversation after sequence number N (``Last-Event-ID``
  on reconnect), then live ones. Keep-alive comments every 15 s.
* ``GET /api/chat/history?conversation_id=..&token=..&after=N`` → the same events as JSON, so
  a widget that was disconnected (or reloaded) loses nothing.

The conversation token is an HMAC of the conversation id: only the browser that started the
conversation can read its events or write into it. It is issued with a new id, or echoed when a
valid one is presented. A client may choose its own id: the first message creates the
conversation and returns its token, and every later message needs that token (403 without it),
so nobody who learns a conversation's id can write into it.

Events come from the conversation's transcript in the store (bot/channels/web_feed.py): an
event's ``seq`` is its message id, so history survives restarts and any worker process can serve
any widget. Outbound (`send`: operator replies, re-announcements and recovered answers from the
outbox) only wakes the feed: those messages are already in the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Literal

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from bot.channels.base import BaseChannel
from bot.channels.pipeline import rate_limited_reply
from bot.conversation.understanding.language import detect_language
from bot.channels.web_feed import POLL_SECONDS, WebFeed, reply_event
from bot.messages import Address, InboundMessage, Reply
from bot.proxy import client_address
from bot.tokens import tokens_equal

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry
    from bot.config import Settings
    from bot.ports import ConversationCore, ConversationStore

log = logging.getLogger("bot.channels.web")

_CONV_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
KEEPALIVE_SECONDS = 15.0
# Many users may share one address (an office NAT): this only stops one client from minting
# a fresh conversation id for every message to escape the per-user limit.
PER_ADDRESS_FACTOR = 15
# Event numbers are message ids: a signed 64-bit integer in both databases.
MAX_SEQ = 2**63 - 1


class ChatRequest(BaseModel):
    text: str = Field(default="", max_length=1_000_000)
    conversation_id: str | None = Field(default=None, max_length=128)
    conversation_token: str | None = Field(default=None, max_length=128)
    action: Literal["request_human"] | None = None
    client_id: str | None = Field(default=None, max_length=64)


def api_error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


class WebChannel(BaseChannel):
    name = "web"
    prefix = "/api"

    def __init__(self, settings: "Settings", registry: "ChannelRegistry", *, signing_key: bytes,
                 store: "ConversationStore", poll_seconds: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.registry = registry
        self._key = hashlib.sha256(b"pbxbot-web-conversation\0" + signing_key).digest()
        # Feed polls run on anyio's default thread pool, not behind the chat turns' limiter.
        self.feed = WebFeed(store, anyio.to_thread.run_sync, poll_seconds=poll_seconds)
        self._feed_task: asyncio.Task | None = None
        self._closing = False
        self._address_limiter = registry.limiter("address", settings.rate_limit_per_minute * PER_ADDRESS_FACTOR)
        self.router = self._build_router()

    # ------------------------------------------------------------ conversation tokens

    def token_for(self, conversation_id: str) -> str:
        return hmac.new(self._key, conversation_id.encode(), hashlib.sha256).hexdigest()[:40]

    def token_ok(self, conversation_id: str, token: str | None) -> bool:
        return tokens_equal(self.token_for(conversation_id), token)

    # ------------------------------------------------------------ outbound (ReplySender side)

    async def send(self, address: Address, reply: Reply) -> None:
        # The outbox only holds replies that are already in the transcript: show them now.
        self.feed.wake()

    async def start(self) -> None:
        self._feed_task = asyncio.create_task(self.feed.run(), name="web-feed")

    def close_streams(self) -> None:
        """End every open event stream (server shutting down; widgets reconnect to the next one).

        Call on the event loop's thread (uvicorn's signal handler runs there)."""
        self._closing = True
        self.feed.close_streams()

    async def stop(self) -> None:
        self.close_streams()
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feed_task
            self._feed_task = None

    # ------------------------------------------------------------ inbound routes

    def _build_router(self) -> APIRouter:
        router = APIRouter(tags=["widget"])
        router.add_api_route("/chat", self.post_chat, methods=["POST"])
        router.add_api_route("/chat/events", self.get_events, methods=["GET"])
        router.add_api_route("/chat/history", self.get_history, methods=["GET"])
        return router

    async def post_chat(self, body: ChatRequest, request: Request) -> JSONResponse:
        text = body.text.strip()
        if not text and body.action is None:
            return api_error(422, "empty_text", "text is empty / メッセージが空です")
        if len(text) > self.settings.max_text_chars:
            return api_error(413, "text_too_long",
                             f"text is longer than {self.settings.max_text_chars} characters",
                             max_chars=self.settings.max_text_chars)
        issued = False
        if body.conversation_id:
            cid = body.conversation_id.strip()
            if not _CONV_ID.match(cid):
                return api_error(422, "invalid_conversation_id", "conversation_id has invalid characters")
            if not cid.startswith("web:"):
                cid = "web:" + cid
        else:
            cid, issued = f"web:{uuid.uuid4()}", True
        language = detect_language(text) or _accept_language(request)
        if not issued and not self.token_ok(cid, body.conversation_token):
            # before the per-conversation limit: a stranger's refused posts must not use up its budget
            if await anyio.to_thread.run_sync(self._exists, cid):
                log.info("web: write into %s without its token refused", cid)
                return api_error(403, "invalid_token", "conversation token missing or invalid")
            issued = True  # a new conversation under an id the client chose: its token goes to this client
        token = self.token_for(cid)

        wait = await self.registry.rate_limiter.check(cid)
        if not wait:
            wait = await self._address_limiter.check(f"addr:{client_address(request, self.settings)}")
        if wait:
            reply = rate_limited_reply(cid, language, wait)
            data = {**reply.to_json(), "error": "rate_limited", "message": reply.answer,
                    "retry_after": round(wait, 1), "replies": [], "conversation_token": token}
            return JSONResponse(data, status_code=429, headers={"Retry-After": str(max(1, int(wait + 0.999)))})

        client_id = body.client_id if body.client_id and _CLIENT_ID.match(body.client_id) else None
        message = InboundMessage(
            address=Address("web", cid, user_id=cid),
            text=text,
            message_id=client_id,  # the core scopes it to the conversation (a retried POST counts once)
            action=body.action,
        )
        replies = await self.registry.handle(message)
        now = time.time()
        events = [reply_event(r.stored_id, now, r.to_payload()) for r in replies]
        if events:
            first = dict(events[0])
        else:  # joined an open ticket silently, or a retried duplicate
            first = {**Reply(conversation_id=cid, language=language, answer="", kind="notice").to_json(),  # type: ignore[arg-type]
                     "seq": None, "role": "bot"}
        user_seq = next((r.reply_to for r in replies if r.reply_to is not None), None)
        first.update(conversation_id=cid, replies=events, conversation_token=token, user_seq=user_seq)
        return JSONResponse(first)

    def _exists(self, conversation_id: str) -> bool:
        return bool(self.feed.store.transcript(conversation_id, 1))

    def _check_access(self, conversation_id: str, token: str | None) -> JSONResponse | None:
        if not _CONV_ID.match(conversation_id) or not conversation_id.startswith("web:"):
            return api_error(422, "invalid_conversation_id", "conversation_id must be a web conversation")
        if not self.token_ok(conversation_id, token):
            return api_error(403, "invalid_token", "conversation token missing or invalid")
        return None

    async def get_history(
        self, conversation_id: str = Query(max_length=128), token: str = Query("", max_length=128),
        after: int = Query(0, ge=0, le=MAX_SEQ),
    ) -> JSONResponse:
        denied = self._check_access(conversation_id, token)
        if denied is not None:
            return denied
        events = await anyio.to_thread.run_sync(self.feed.history, conversation_id, after)
        return JSONResponse({"conversation_id": conversation_id, "events": events,
                             "last_seq": events[-1]["seq"] if events else after})

    async def get_events(
        self, request: Request, conversation_id: str = Query(max_length=128),
        token: str = Query("", max_length=128), after: int = Query(0, ge=0, le=MAX_SEQ),
        last_event_id: str | None = Header(None, max_length=32),
    ):
        denied = self._check_access(conversation_id, token)
        if denied is not None:
            return denied
        last_event_id = (last_event_id or "").strip()
        if last_event_id.isascii() and last_event_id.isdigit():  # anything else: not one of our ids, ignored
            if int(last_event_id) > MAX_SEQ:
                return api_error(400, "invalid_last_event_id", f"Last-Event-ID must be at most {MAX_SEQ}")
            after = max(after, int(last_event_id))
        return StreamingResponse(
            self._stream(conversation_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, conversation_id: str, after: int) -> AsyncIterator[str]:
        queue = self.feed.subscribe(conversation_id)  # before reading history: nothing falls between
        sent: set[int] = set()  # the feed may deliver an event history already gave
        try:
            yield "retry: 2000\n\n"
            if self._closing:
                return
            for event in await anyio.to_thread.run_sync(self.feed.history, conversation_id, after):
                sent.add(event["seq"])
                yield _sse(event)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:  # shutting down
                    return
                if event["seq"] > after and event["seq"] not in sent:
                    sent.add(event["seq"])
                    if len(sent) > 10_000:
                        sent = set(sorted(sent)[-1000:])
                    yield _sse(event)
        finally:
            self.feed.unsubscribe(conversation_id, queue)


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: message\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def _accept_language(request: Request) -> str:
    al = (request.headers.get("accept-language") or "").lower()
    return "en" if al.startswith("en") else "ja"


def register(registry: "ChannelRegistry", settings: "Settings", core: "ConversationCore",
             *, signing_key: bytes) -> WebChannel:
    """Always enabled: the widget and POST /api/chat."""
    channel = WebChannel(settings, registry, signing_key=signing_key, store=core.store)
    registry.add(channel)
    return channel
