"""LINE: the Messaging API webhook and the async client of line-bot-sdk v3.

POST /webhooks/line: X-Line-Signature (base64 HMAC-SHA256 of the raw body with the channel secret)
is checked in constant time first (401 when missing, malformed or wrong); a signed body the SDK
cannot parse gets 400. Each event is one delivery (webhookEventId: a redelivery is dropped).

Answers use the event's reply token (free, single use, short-lived); when it has expired or the
reply fails, and for operator messages, the message is pushed with an X-Line-Retry-Key, so a
retried push is delivered once. Replies that offer a person carry the quick reply 「担当者と話す」.
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
    AsyncApiClient, AsyncMessagingApi, Configuration, PostbackAction, PushMessageRequest, QuickReply, QuickReplyItem,
    ReplyMessageRequest, TextMessage,
)
from linebot.v3.messaging.exceptions import ApiException
from linebot.v3.webhooks import FollowEvent, MessageEvent, PostbackEvent, TextMessageContent
from pydantic import SecretStr

from bot.channels.base import BaseChannel, DeliveryError, Inbound, PermanentDeliveryError
from bot.channels.rendering import HUMAN_BUTTON_LABEL, OPERATOR_LABEL, language_of, render_text, split_text
from bot.config import ChannelSettings
from bot.language import detect_language
from bot.messages import Address, InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry

log = logging.getLogger("bot.channels.line")

HUMAN_POSTBACK = "action=request_human"
TEXT_MAX = 5000  # a text message holds at most 5000 characters
MESSAGES_PER_REQUEST = 5
REPLY_TOKEN_MAX_AGE = 50.0  # seconds; LINE's reply tokens are short-lived: push after that
REQUEST_TIMEOUT = 10
PUSH_ATTEMPTS = 3


class LineSettings(ChannelSettings):
    """PBXBOT_LINE_*: the channel secret (signatures) and access token (the Messaging API)."""

    channel_secret: SecretStr | None = None
    channel_access_token: SecretStr | None = None
    api_url: str = "https://api.line.me"
    secrets = ("channel_secret", "channel_access_token")


SETTINGS = LineSettings


def verify_signature(secret: bytes, body: bytes, signature: str | None) -> bool:
    """X-Line-Signature over the raw body, constant time, total over hostile headers."""
    if not signature or len(signature) > 128 or not signature.isascii():
        return False
    try:
        given = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest(), given)


def inbound_of(event: Any, max_chars: int) -> Inbound | None:
    """The pipeline's event for a LINE event (None: unfollow, join, stickers in groups...)."""
    source = getattr(event, "source", None)
    to = getattr(source, "group_id", None) or getattr(source, "room_id", None) or getattr(source, "user_id", None)
    if not to:
        return None
    kind = getattr(source, "type", "user")
    address = Address("line", f"line:{to}", user_id=getattr(source, "user_id", None) or "", route={"to": to, "type": kind})
    event_id = getattr(event, "webhook_event_id", None) or None
    ts = getattr(event, "timestamp", None)
    context = (getattr(event, "reply_token", None), ts / 1000.0 if isinstance(ts, (int, float)) else time.time())
    message_id = f"line:{event_id}" if event_id else None
    if isinstance(event, MessageEvent) and isinstance(event.message, TextMessageContent):
        text = (event.message.text or "")[:max_chars]
        return Inbound(address, InboundMessage(address=address, text=text, message_id=message_id),
                       language=detect_language(text), event_id=event_id, context=context)
    if isinstance(event, PostbackEvent) and getattr(event.postback, "data", None) == HUMAN_POSTBACK:
        message = InboundMessage(address=address, text="", action="request_human", message_id=message_id)
        return Inbound(address, message, event_id=event_id, context=context)
    if isinstance(event, FollowEvent) or (isinstance(event, MessageEvent) and kind == "user"):
        notice = "welcome" if isinstance(event, FollowEvent) else "text_only"
        return Inbound(address, notice=notice, event_id=event_id, context=context)
    return None


def human_quick_reply(language: str) -> QuickReply:
    label = HUMAN_BUTTON_LABEL.get(language, HUMAN_BUTTON_LABEL["ja"])
    return QuickReply(items=[QuickReplyItem(type="action", action=PostbackAction(
        type="postback", label=label[:20], data=HUMAN_POSTBACK, displayText=label))])


def render_messages(reply: Reply) -> list[TextMessage]:
    """Text messages (LINE links bare URLs itself); the last carries the quick reply."""
    text = render_text(reply)
    if reply.kind == "operator":
        text = f"{OPERATOR_LABEL[language_of(reply)]}: " + text
    parts = split_text(text, TEXT_MAX)
    messages = [TextMessage(type="text", text=p) for p in parts]
    if reply.offer_human:
        messages[-1] = TextMessage(type="text", text=parts[-1], quickReply=human_quick_reply(reply.language))
    return messages


class LineChannel(BaseChannel):
    name = "line"

    def __init__(self, section: LineSettings, registry: "ChannelRegistry") -> None:
        assert section.channel_secret is not None and section.channel_access_token is not None
        self.pipeline, self.max_chars = registry.pipeline, registry.settings.max_text_chars
        secret = section.channel_secret.get_secret_value()
        self._secret = secret.encode("utf-8")
        self.parser = WebhookParser(secret)  # checks the same signature again
        self.configuration = Configuration(host=section.api_url.rstrip("/"),
                                           access_token=section.channel_access_token.get_secret_value())
        self._client: AsyncApiClient | None = None
        self.api: AsyncMessagingApi | None = None
        self.router = APIRouter(tags=["line"])
        self.router.add_api_route("", self.webhook, methods=["POST"], include_in_schema=False)

    async def webhook(self, request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get("x-line-signature")
        if not verify_signature(self._secret, body, signature):
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        try:
            events = list(self.parser.parse(body.decode("utf-8"), signature, as_payload=True).events or [])
        except InvalidSignatureError:
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        except Exception as exc:  # signed but hostile: the SDK raises plain exceptions
            log.info("line: unparsable webhook body (%s)", type(exc).__name__)
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        await self.pipeline.receive(self, [i for i in (inbound_of(e, self.max_chars) for e in events) if i])
        return JSONResponse({"status": "ok"})

    # ------------------------------------------------------------ outbound

    async def reply(self, inbound: Inbound, replies: list[Reply]) -> None:
        """With the reply token while it is fresh (one request, up to 5 messages); push the rest."""
        messages = [m for r in replies for m in render_messages(r)]
        reply_token, issued = inbound.context or (None, 0.0)
        if reply_token and time.time() - issued < REPLY_TOKEN_MAX_AGE:
            try:
                await self._api().reply_message(ReplyMessageRequest(
                    replyToken=reply_token, messages=messages[:MESSAGES_PER_REQUEST]), _request_timeout=REQUEST_TIMEOUT)
                messages = messages[MESSAGES_PER_REQUEST:]
            except (ApiException, asyncio.TimeoutError, OSError) as exc:
                log.warning("line: reply failed (%s); pushing instead", getattr(exc, "status", None) or type(exc).__name__)
        if messages:
            await self._push(inbound.address, messages, replies[0] if replies else None)

    async def send(self, address: Address, reply: Reply) -> None:
        """Operator replies, re-announcements and recovered answers: always a push."""
        await self._push(address, render_messages(reply), reply)

    async def _push(self, address: Address, messages: list[TextMessage], reply: Reply | None = None) -> None:
        to = str(address.route.get("to") or address.user_id or "")
        if not to:
            raise DeliveryError("line: no recipient in the address")
        for i in range(0, len(messages), MESSAGES_PER_REQUEST):
            request = PushMessageRequest(to=to, messages=messages[i:i + MESSAGES_PER_REQUEST])
            retry_key = push_retry_key(reply, address, i)  # the same key on every attempt: LINE delivers once
            for attempt in range(PUSH_ATTEMPTS):
                try:
                    await self._api().push_message(request, x_line_retry_key=retry_key, _request_timeout=REQUEST_TIMEOUT)
                    break
                except ApiException as exc:
                    if exc.status == 409:  # this retry key was already accepted: delivered
                        break
                    if exc.status in (400, 404):  # no such user (or one who never added the bot)
                        raise PermanentDeliveryError(f"line push: HTTP {exc.status}") from None
                    if exc.status is not None and exc.status < 500 and exc.status != 429:
                        raise DeliveryError(f"line push: HTTP {exc.status}") from None  # a token to fix: retried
                    error = f"HTTP {exc.status}"
                except (asyncio.TimeoutError, OSError) as exc:
                    error = type(exc).__name__
                if attempt == PUSH_ATTEMPTS - 1:
                    raise DeliveryError(f"line push: {error}")
                await asyncio.sleep(0.2 * (attempt + 1))

    def _api(self) -> AsyncMessagingApi:
        if self.api is None:
            raise DeliveryError("line: the channel is not started")
        return self.api

    async def start(self) -> None:
        self._client = AsyncApiClient(self.configuration)
        self.api = AsyncMessagingApi(self._client)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client, self.api = None, None


def push_retry_key(reply: Reply | None, address: Address, part: int) -> str:
    """X-Line-Retry-Key of one push request. For a reply owed by the outbox, derived from its item
    (and the text, so that a database started afresh never repeats an old key): every attempt, by
    any worker and after a restart, carries the same key and LINE accepts it once (409 after)."""
    if reply is None or reply.outbox_id is None:
        return str(uuid.uuid4())
    text_hash = hashlib.sha256(reply.answer.encode("utf-8")).hexdigest()[:16]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pbxbot:outbox:{reply.outbox_id}:{address.conversation_id}:{part}:{text_hash}"))


def register(registry: "ChannelRegistry", settings: Any, core: Any) -> LineChannel:
    return registry.add(LineChannel(settings.channel("line", LineSettings), registry))  # type: ignore[return-value]
