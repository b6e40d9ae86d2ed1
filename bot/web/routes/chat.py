"""The widget's API under /api: POST /api/chat, GET /api/chat/events (server-sent events) and
GET /api/chat/history.

POST /api/chat takes {"text", "conversation_id"?, "conversation_token"?, "action"?, "client_id"?} and
answers the contract's reply JSON (the first reply) plus every reply of the turn (`replies`, each with
`seq` and `role`), the conversation's token and `user_seq`. A new id web:<uuid> is issued when none
is given; a client may choose its own id, but only a new one: every later message needs the
conversation's token (403 without). It is the inbound pipeline without the background part: the
token is verified, the per-user and per-address limits are checked (429 with Retry-After), the core
answers, and the replies are the response. Events are the transcript (feed.py): `seq` is the
message id, so history survives restarts and any worker process can serve any widget.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any, AsyncIterator

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bot.channels.pipeline import rate_limited_reply
from bot.language import detect_language
from bot.messages import Address, InboundMessage, Reply
from bot.proxy import client_address
from bot.web.deps import State, WebState
from bot.web.feed import reply_event
from bot.web.models import ApiError, ChatHistory, ChatReply, ChatRequest
from bot.web.sse import KEEPALIVE, KEEPALIVE_LINE, with_keepalive

log = logging.getLogger("bot.web.chat")

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CLIENT_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
KEEPALIVE_SECONDS = 15.0
# Many users may share one address (an office NAT): this only stops one client from minting a fresh
# conversation id for every message to escape the per-user limit.
PER_ADDRESS_FACTOR = 15
MAX_SEQ = 2**63 - 1  # event numbers are message ids: a signed 64-bit integer in both databases
ERRORS = {403: {"model": ApiError}, 413: {"model": ApiError}, 422: {"model": ApiError}, 429: {"model": ApiError}}

router = APIRouter(prefix="/api", tags=["widget"])


def api_error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


@router.post("/chat", response_model=ChatReply, responses=ERRORS)
async def post_chat(body: ChatRequest, request: Request, state: State) -> JSONResponse:
    text = body.text.strip()
    if not text and body.action is None:
        return api_error(422, "empty_text", "text is empty / メッセージが空です")
    limit = state.settings.max_text_chars
    if len(text) > limit:
        return api_error(413, "text_too_long", f"text is longer than {limit} characters", max_chars=limit)
    conversation = await _conversation(body, state)
    if isinstance(conversation, JSONResponse):
        return conversation
    cid = conversation
    language = detect_language(text) or _accept_language(request)
    refused = await _rate_limited(request, state, cid, language)
    if refused is not None:
        return refused
    client_id = body.client_id if body.client_id and CLIENT_ID.match(body.client_id) else None
    # the core scopes client_id to the conversation: a retried POST counts once
    message = InboundMessage(address=Address("web", cid, user_id=cid), text=text, message_id=client_id,
                             action=body.action)
    replies = await state.registry.pipeline.handle(message)
    return JSONResponse(_chat_reply(cid, language, replies, state.widget.token_for(cid)))


async def _conversation(body: ChatRequest, state: WebState) -> str | JSONResponse:
    """The conversation this message writes into: a new one, or one whose token it holds."""
    if not body.conversation_id:
        return f"web:{uuid.uuid4()}"
    cid = body.conversation_id.strip()
    if not CONVERSATION_ID.match(cid):
        return api_error(422, "invalid_conversation_id", "conversation_id has invalid characters")
    cid = cid if cid.startswith("web:") else "web:" + cid
    # before the per-conversation limit: a stranger's refused posts must not use up its budget
    if not state.widget.token_ok(cid, body.conversation_token) and await anyio.to_thread.run_sync(
            state.widget.exists, cid):
        log.info("web: write into %s without its token refused", cid)
        return api_error(403, "invalid_token", "conversation token missing or invalid")
    return cid  # its own, or a new one under an id the client chose (its token goes to this client)


async def _rate_limited(request: Request, state: WebState, cid: str, language: str) -> JSONResponse | None:
    wait = await state.registry.rate_limiter.check(cid)
    if not wait:
        wait = await state.address_limit.check(f"addr:{client_address(request, state.settings)}")
    if not wait:
        return None
    reply = rate_limited_reply(cid, language, wait)
    data = {**reply.to_json(), "error": "rate_limited", "message": reply.answer, "retry_after": round(wait, 1),
            "replies": [], "conversation_token": state.widget.token_for(cid)}
    return JSONResponse(data, status_code=429, headers={"Retry-After": str(max(1, int(wait + 0.999)))})


def _chat_reply(cid: str, language: str, replies: list[Reply], token: str) -> dict[str, Any]:
    now = time.time()
    events = [reply_event(r.stored_id, now, r.to_payload()) for r in replies]
    if events:
        first = dict(events[0])
    else:  # joined an open ticket silently, or a retried duplicate
        empty = Reply(conversation_id=cid, language=language, answer="", kind="notice")  # type: ignore[arg-type]
        first = {**empty.to_json(), "seq": None, "role": "bot"}
    user_seq = next((r.reply_to for r in replies if r.reply_to is not None), None)
    first.update(conversation_id=cid, replies=events, conversation_token=token, user_seq=user_seq)
    return first


def _access_denied(state: WebState, conversation_id: str, token: str | None) -> JSONResponse | None:
    if not CONVERSATION_ID.match(conversation_id) or not conversation_id.startswith("web:"):
        return api_error(422, "invalid_conversation_id", "conversation_id must be a web conversation")
    if not state.widget.token_ok(conversation_id, token):
        return api_error(403, "invalid_token", "conversation token missing or invalid")
    return None


@router.get("/chat/history", response_model=ChatHistory, responses=ERRORS)
async def get_history(state: State, conversation_id: str = Query(max_length=128),
                      token: str = Query("", max_length=128), after: int = Query(0, ge=0, le=MAX_SEQ)) -> JSONResponse:
    denied = _access_denied(state, conversation_id, token)
    if denied is not None:
        return denied
    events = await anyio.to_thread.run_sync(state.widget.feed.history, conversation_id, after)
    return JSONResponse({"conversation_id": conversation_id, "events": events,
                         "last_seq": events[-1]["seq"] if events else after})


@router.get("/chat/events", responses=ERRORS)
async def get_events(state: State, conversation_id: str = Query(max_length=128),
                     token: str = Query("", max_length=128), after: int = Query(0, ge=0, le=MAX_SEQ),
                     last_event_id: str | None = Header(None, max_length=32)):
    denied = _access_denied(state, conversation_id, token)
    if denied is not None:
        return denied
    last_event_id = (last_event_id or "").strip()
    if last_event_id.isascii() and last_event_id.isdigit():  # anything else: not one of our ids, ignored
        if int(last_event_id) > MAX_SEQ:
            return api_error(400, "invalid_last_event_id", f"Last-Event-ID must be at most {MAX_SEQ}")
        after = max(after, int(last_event_id))
    return StreamingResponse(_stream(state, conversation_id, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})


async def _stream(state: WebState, conversation_id: str, after: int) -> AsyncIterator[str]:
    feed = state.widget.feed
    queue = feed.subscribe(conversation_id)  # before reading history: nothing falls between
    sent: set[int] = set()  # the feed may deliver an event history already gave
    try:
        yield "retry: 2000\n\n"
        if state.widget.closing:
            return
        for event in await anyio.to_thread.run_sync(feed.history, conversation_id, after):
            sent.add(event["seq"])
            yield _sse(event)
        async for event in with_keepalive(queue, KEEPALIVE_SECONDS):
            if event is KEEPALIVE:
                yield KEEPALIVE_LINE
                continue
            if event is None:  # shutting down
                return
            if event["seq"] > after and event["seq"] not in sent:
                sent = sent if len(sent) < 10_000 else set(sorted(sent)[-1000:])
                sent.add(event["seq"])
                yield _sse(event)
    finally:
        feed.unsubscribe(conversation_id, queue)


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: message\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def _accept_language(request: Request) -> str:
    return "en" if (request.headers.get("accept-language") or "").lower().startswith("en") else "ja"
