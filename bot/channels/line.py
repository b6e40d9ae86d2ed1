"""LINE: the Messaging API webhook and the async client of line-bot-sdk v3.

POST /webhooks/line: X-Line-Signature (base64 HMAC-SHA256 of the raw body with the channel
secret) is checked in constant time first (401 when missing, malformed or wrong); a signed body
that the SDK cannot parse gets 400; then the route acks at once and the events are handled in a
background task. Duplicate deliveries (the same webhookEventId) are dropped; the core
de-duplicates again by InboundMessage.message_id.

Answers go back with the event's reply token (free, single use, short-lived); when it has
expired or the reply fails, and for operator messages, the message is pushed (with an
X-Line-Retry-Key so a retried push is never delivered twice). Replies that offer a person carry
a quick reply 「担当者と話す」 whose postback becomes action "request_human".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from linebot.v3 import WebhookParser
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    AsyncApiClient,
    AsyncMessagingApi,
    Configuration,
    PostbackAction,
    PushMessageRequest,
    QuickReply,
    QuickReplyItem,
    ReplyMessageRequest,
    TextMessage,
)
from linebot.v3.messaging.exceptions import ApiException
from linebot.v3.webhooks import (
    FollowEvent,
    MessageEvent,
    PostbackEvent,
    TextMessageContent,
)

from bot.channels.base import (
    HUMAN_BUTTON_LABEL,
    BaseChannel,
    DeliveryError,
    SeenCache,
    guess_language,
    rate_limited_reply,
    render_text,
)
from bot.messages import Address, InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry
    from bot.config import Settings
    from bot.ports import ConversationCore

log = logging.getLogger("bot.channels.line")

HUMAN_POSTBACK = "action=request_human"
TEXT_MAX = 5000  # a text message holds at most 5000 characters
MESSAGES_PER_REQUEST = 5
REPLY_TOKEN_MAX_AGE = 50.0  # seconds; LINE's reply tokens are short-lived: push after that
REQUEST_TIMEOUT = 10
PUSH_ATTEMPTS = 3
WORKERS = 6  # deliveries handled at once: the rest wait, so that acks stay fast under load

WELCOME = {
    "ja": "友だち追加ありがとうございます。IP-PBX・IP電話の乗っ取り(国際電話の不正発信)について、出典付きでお答えします。"
          "状況をそのまま書いて送ってください。担当者と話したいときは下のボタンを押してください。",
    "en": "Thanks for adding me. I answer questions about IP-PBX takeover (toll fraud) in Japan, with sources. "
          "Just describe what is happening. To reach a person, press the button below.",
}
TEXT_ONLY = {
    "ja": "テキストでお送りください。担当者と話したいときは下のボタンを押してください。",
    "en": "Please send your question as text. To reach a person, press the button below.",
}


# ---------------------------------------------------------------- verification


def verify_signature(secret: bytes, body: bytes, signature: str | None) -> bool:
    """X-Line-Signature over the raw body, constant time, total over hostile headers."""
    if not signature or len(signature) > 128 or not signature.isascii():
        return False
    try:
        given = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    return hmac.compare_digest(expected, given)


# ---------------------------------------------------------------- rendering


def human_quick_reply(language: str) -> QuickReply:
    label = HUMAN_BUTTON_LABEL.get(language, HUMAN_BUTTON_LABEL["ja"])
    return QuickReply(items=[QuickReplyItem(type="action", action=PostbackAction(
        type="postback", label=label[:20], data=HUMAN_POSTBACK, displayText=label))])


def _split(text: str, size: int = TEXT_MAX) -> list[str]:
    out, rest = [], text
    while len(rest) > size:
        cut = rest.rfind("\n", 0, size)
        cut = cut if cut > size // 2 else size
        out.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    out.append(rest)
    return [p for p in out if p.strip()] or [" "]


def render_messages(reply: Reply) -> list[TextMessage]:
    """Text messages (LINE links bare URLs itself); the last carries the quick reply."""
    text = render_text(reply)
    if reply.kind == "operator":
        text = ("担当者: " if reply.language == "ja" else "Operator: ") + text
    parts = _split(text)
    messages = [TextMessage(type="text", text=p) for p in parts]
    if reply.offer_human:
        messages[-1] = TextMessage(type="text", text=parts[-1], quickReply=human_quick_reply(reply.language))
    return messages


# ---------------------------------------------------------------- the channel


class LineChannel(BaseChannel):
    name = "line"

    def __init__(self, settings: "Settings", registry: "ChannelRegistry") -> None:
        assert settings.line_channel_secret is not None and settings.line_channel_access_token is not None
        self.settings = settings
        self.registry = registry
        secret = settings.line_channel_secret.get_secret_value()
        self._secret = secret.encode("utf-8")
        # Our own check above runs first; the SDK parser checks the same signature again.
        self.parser = WebhookParser(secret)
        self.configuration = Configuration(host=settings.line_api_url.rstrip("/"),
                                           access_token=settings.line_channel_access_token.get_secret_value())
        self._client: AsyncApiClient | None = None
        self.api: AsyncMessagingApi | None = None
        self.seen = SeenCache(max_items=20_000, ttl=3600)
        self._locks: dict[str, asyncio.Lock] = {}
        self._workers = asyncio.Semaphore(WORKERS)
        self._inflight: set[asyncio.Task] = set()
        self.router = APIRouter(tags=["line"])
        self.router.add_api_route("", self.webhook, methods=["POST"], include_in_schema=False)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._client = AsyncApiClient(self.configuration)
        self.api = AsyncMessagingApi(self._client)

    async def stop(self) -> None:
        await self._drain()
        if self._client is not None:
            await self._client.close()
            self._client, self.api = None, None

    def _api(self) -> AsyncMessagingApi:
        if self.api is None:
            raise DeliveryError("line: the channel is not started")
        return self.api

    # ------------------------------------------------------------ inbound

    def _spawn(self, coro: Any, name: str) -> None:
        """Work after the ack, tracked so that stop() lets it finish before closing the client."""
        task = self.registry.spawn(coro, name=name)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _drain(self, timeout: float = 5.0) -> None:
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)

    async def webhook(self, request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get("x-line-signature")
        if not verify_signature(self._secret, body, signature):
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        try:
            payload = self.parser.parse(body.decode("utf-8"), signature, as_payload=True)
            events = list(payload.events or [])
        except InvalidSignatureError:
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        except Exception as exc:  # signed but hostile: the SDK raises plain exceptions
            log.info("line: unparsable webhook body (%s)", type(exc).__name__)
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        fresh = [e for e in events if not self._duplicate(e)]
        if fresh:
            self._spawn(self._process_events(fresh), name="line:events")
        return JSONResponse({"status": "ok"})

    def _duplicate(self, event: Any) -> bool:
        event_id = getattr(event, "webhook_event_id", None)
        return bool(event_id) and self.seen.seen(str(event_id))

    async def _process_events(self, events: list[Any]) -> None:
        async with self._workers:
            for event in events:
                try:
                    await self._process(event)
                except Exception:
                    log.exception("line: event %s failed", getattr(event, "webhook_event_id", "?"))

    async def _process(self, event: Any) -> None:
        source = getattr(event, "source", None)
        to = (getattr(source, "group_id", None) or getattr(source, "room_id", None)
              or getattr(source, "user_id", None))
        if not to:
            return
        user_id = getattr(source, "user_id", None) or ""
        address = Address("line", f"line:{to}", user_id=user_id,
                          route={"to": to, "type": getattr(source, "type", "user")})
        reply_token = getattr(event, "reply_token", None)
        ts = getattr(event, "timestamp", None)
        issued = ts / 1000.0 if isinstance(ts, (int, float)) else time.time()
        event_id = getattr(event, "webhook_event_id", None)
        message_id = f"line:{event_id}" if event_id else None

        if isinstance(event, MessageEvent):
            if isinstance(event.message, TextMessageContent):
                text = (event.message.text or "")[: self.settings.max_text_chars]
                inbound = InboundMessage(address=address, text=text, message_id=message_id)
            else:
                if getattr(source, "type", "user") == "user":
                    await self._answer(address, [self._notice(address, TEXT_ONLY)], reply_token, issued)
                return
        elif isinstance(event, PostbackEvent):
            if getattr(event.postback, "data", None) != HUMAN_POSTBACK:
                return
            inbound = InboundMessage(address=address, text="", action="request_human", message_id=message_id)
        elif isinstance(event, FollowEvent):
            await self._answer(address, [self._notice(address, WELCOME)], reply_token, issued)
            return
        else:
            return  # unfollow, join, stickers in groups...

        wait = await self.registry.rate_limiter.check(address.conversation_id)
        if wait:
            reply = rate_limited_reply(address.conversation_id, guess_language(inbound.text), wait)
            await self._answer(address, [reply], reply_token, issued)
            return
        lock = self._locks.setdefault(address.conversation_id, asyncio.Lock())
        async with lock:
            replies = await self.registry.handle(inbound)
            if replies:
                try:
                    await self._answer(address, replies, reply_token, issued)
                except Exception as exc:  # the outbox dispatcher retries later
                    log.warning("line: delivery failed (%s); queued in the outbox", type(exc).__name__)
                    for reply in replies:
                        await self.registry.run_sync(self.registry.core.handoff.enqueue, address, reply)
        if not lock.locked() and len(self._locks) > 10_000:
            self._locks.pop(address.conversation_id, None)

    @staticmethod
    def _notice(address: Address, texts: dict[str, str]) -> Reply:
        return Reply(address.conversation_id, "ja", texts["ja"] + "\n\n" + texts["en"], kind="notice",
                     offer_human=True)

    # ------------------------------------------------------------ outbound

    async def _answer(self, address: Address, replies: list[Reply], reply_token: str | None, issued: float) -> None:
        """Reply with the token while it is fresh (one request, up to 5 messages); push otherwise."""
        messages = [m for r in replies for m in render_messages(r)]
        if reply_token and time.time() - issued < REPLY_TOKEN_MAX_AGE:
            try:
                await self._api().reply_message(
                    ReplyMessageRequest(replyToken=reply_token, messages=messages[:MESSAGES_PER_REQUEST]),
                    _request_timeout=REQUEST_TIMEOUT)
                messages = messages[MESSAGES_PER_REQUEST:]
            except ApiException as exc:
                log.warning("line: reply failed (HTTP %s); pushing instead", exc.status)
            except (asyncio.TimeoutError, OSError) as exc:
                log.warning("line: reply failed (%s); pushing instead", type(exc).__name__)
        if messages:
            await self._push(address, messages)

    async def _push(self, address: Address, messages: list[TextMessage]) -> None:
        to = str(address.route.get("to") or address.user_id or "")
        if not to:
            raise DeliveryError("line: no recipient in the address")
        for i in range(0, len(messages), MESSAGES_PER_REQUEST):
            request = PushMessageRequest(to=to, messages=messages[i:i + MESSAGES_PER_REQUEST])
            retry_key = str(uuid.uuid4())  # the same key on every attempt: LINE delivers once
            for attempt in range(PUSH_ATTEMPTS):
                try:
                    await self._api().push_message(request, x_line_retry_key=retry_key,
                                                   _request_timeout=REQUEST_TIMEOUT)
                    break
                except ApiException as exc:
                    if exc.status == 409:  # this retry key was already accepted: delivered
                        break
                    if exc.status is not None and exc.status < 500 and exc.status != 429:
                        raise DeliveryError(f"line push: HTTP {exc.status}") from None
                    error = f"HTTP {exc.status}"
                except (asyncio.TimeoutError, OSError) as exc:
                    error = type(exc).__name__
                if attempt == PUSH_ATTEMPTS - 1:
                    raise DeliveryError(f"line push: {error}")
                await asyncio.sleep(0.2 * (attempt + 1))

    async def send(self, address: Address, reply: Reply) -> None:
        """Operator replies, re-announcements and recovered answers: always a push."""
        await self._push(address, render_messages(reply))


def register(registry: "ChannelRegistry", settings: "Settings", core: "ConversationCore") -> LineChannel:
    channel = LineChannel(settings, registry)
    registry.add(channel)
    return channel
