"""Telegram: python-telegram-bot's Application, by webhook or (without a public URL) long polling.

Webhook mode (settings.telegram_mode == "webhook", the default): POST /webhooks/telegram compares
X-Telegram-Bot-Api-Secret-Token with the configured secret in constant time (401 missing, 403
wrong), parses the update with Update.de_json (hostile JSON -> 400, never 500), drops retried
update_ids, acks at once and handles the update in a background task. The Application is built
with `.updater(None)` and `.base_url(settings.telegram_api_url)`; it is initialised at start
(getMe), and when settings.public_base_url is set the webhook is registered with setWebhook.

Polling mode: the same Application with its Updater polls getUpdates from the app's lifespan;
updates reach the same handler through a TypeHandler.

Commands: /start, /help (welcome with the "talk to a person" button), /human (a person).
Answers are HTML (user and answer text escaped) with citations as links; the inline button's
callback becomes action "request_human". Operator replies are sent by send() with sendMessage.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

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

log = logging.getLogger("bot.channels.telegram")

SECRET_HEADER = "x-telegram-bot-api-secret-token"
HUMAN_CALLBACK = "human"
ALLOWED_UPDATES = ["message", "callback_query"]
WORKERS = 6  # updates handled at once: the rest wait, so that acks stay fast under load
CHUNK = 3500  # Telegram allows 4096 characters of text per message; keep room for sources

WELCOME = {
    "ja": "IP-PBX・IP電話の乗っ取り(国際電話の不正発信)について、公的機関や通信会社の情報をもとに出典付きでお答えします。"
          "状況をそのまま書いて送ってください。\n\n/help 使い方\n/human 担当者と話す",
    "en": "I answer questions about IP-PBX / IP phone takeover (toll fraud) in Japan, with sources from carriers "
          "and authorities. Just describe what is happening.\n\n/help how to use\n/human talk to a person",
}
HELP = {
    "ja": "例:「国際電話を止めるには？」「請求が高額だった」。被害が進行中なら、そのまま状況を書いてください。"
          "担当者と話したいときは /human を送るか、下のボタンを押してください。",
    "en": "Try: 'How do I stop international calls?' or 'We got a huge bill'. If calls are going out now, just "
          "describe it. To reach a person, send /human or press the button below.",
}
TEXT_ONLY = {"ja": "テキストでお送りください。", "en": "Please send your question as text."}


# ---------------------------------------------------------------- verification and parsing


def secret_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def parse_update(body: bytes, bot: Any) -> Update | None:
    """Update.de_json over hostile JSON: None instead of the plain exceptions it raises."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            return None
        update_id = data.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            return None
        return Update.de_json(data, bot)
    except Exception:
        return None


# ---------------------------------------------------------------- rendering


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def citation_html(c: Any, language: str) -> str:
    label = f"{c.publisher}「{c.title}」" if language == "ja" else f"{c.publisher}: {c.title}"
    date = f" ({_esc(c.published)})" if c.published else ""
    url = str(c.url or "")
    if url.startswith(("https://", "http://")):
        return f'[{c.n}] <a href="{html.escape(url, quote=True)}">{_esc(label)}</a>{date}'
    return f"[{c.n}] {_esc(label)}{date} {_esc(url)}".rstrip()


def _split(text: str, size: int = CHUNK) -> list[str]:
    out, rest = [], text
    while len(rest) > size:
        cut = rest.rfind("\n", 0, size)
        cut = cut if cut > size // 2 else size
        out.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    out.append(rest)
    return [p for p in out if p.strip()] or [" "]


def human_button(language: str) -> InlineKeyboardMarkup:
    label = HUMAN_BUTTON_LABEL.get(language, HUMAN_BUTTON_LABEL["ja"])
    return InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=HUMAN_CALLBACK)]])


def render_html(reply: Reply) -> list[str]:
    """HTML messages: the answer (split when long), then sources as links and the ticket number."""
    lang = reply.language if reply.language in ("ja", "en") else "ja"
    chunks = [_esc(c) for c in _split(reply.answer.strip())]
    if reply.kind == "operator":
        chunks[0] = ("<b>担当者:</b> " if lang == "ja" else "<b>Operator:</b> ") + chunks[0]
    tail = []
    if reply.citations:
        tail.append(("<b>出典</b>" if lang == "ja" else "<b>Sources</b>") + "\n"
                    + "\n".join(citation_html(c, lang) for c in reply.citations))
    if reply.escalation and reply.escalation.ticket_id and reply.escalation.ticket_id not in reply.answer:
        t = _esc(reply.escalation.ticket_id)
        tail.append(f"受付番号: <code>{t}</code>" if lang == "ja" else f"Ticket: <code>{t}</code>")
    if tail:
        chunks[-1] = "\n\n".join([chunks[-1], *tail])
    return chunks


# ---------------------------------------------------------------- the channel


class TelegramChannel(BaseChannel):
    name = "telegram"

    def __init__(self, settings: "Settings", registry: "ChannelRegistry") -> None:
        assert settings.telegram_token is not None
        self.settings = settings
        self.registry = registry
        self.polling = settings.telegram_mode == "polling"
        builder = (Application.builder()
                   .token(settings.telegram_token.get_secret_value())
                   .base_url(settings.telegram_api_url)
                   .concurrent_updates(True))
        if not self.polling:
            builder = builder.updater(None)
        self.app = builder.build()
        self.app.add_handler(TypeHandler(Update, self._on_polled_update))
        self.seen = SeenCache(max_items=20_000, ttl=3600)
        self._locks: dict[str, asyncio.Lock] = {}
        self._workers = asyncio.Semaphore(WORKERS)
        self._inflight: set[asyncio.Task] = set()
        self._ready = False
        self._poll_task: asyncio.Task | None = None
        self._ready_lock = asyncio.Lock()
        self._secret = (settings.telegram_webhook_secret.get_secret_value()
                        if settings.telegram_webhook_secret is not None else "")
        if self.polling:
            self.router = None
        else:
            self.router = APIRouter(tags=["telegram"])
            self.router.add_api_route("", self.webhook, methods=["POST"], include_in_schema=False)

    @property
    def bot(self):
        return self.app.bot

    # ------------------------------------------------------------ lifecycle

    async def _ensure_ready(self) -> bool:
        if self._ready:
            return True
        async with self._ready_lock:
            if not self._ready:
                try:
                    await self.app.initialize()  # getMe
                    self._ready = True
                except TelegramError as exc:  # never log str(exc): it may carry the URL with the token
                    log.error("telegram: initialisation (getMe) failed: %s; check PBXBOT_TELEGRAM_TOKEN",
                              type(exc).__name__)
                except Exception as exc:
                    log.error("telegram: initialisation (getMe) failed: %s", type(exc).__name__)
        return self._ready

    async def start(self) -> None:
        if self.polling:
            # In the background, with back-off: an unreachable Bot API must not hold up the app's start.
            self._poll_task = asyncio.create_task(self._start_polling(), name="telegram:start-polling")
            return
        if not await self._ensure_ready():
            return  # retried at the first update or send
        if self.settings.public_base_url:
            url = self.settings.public_base_url.rstrip("/") + "/webhooks/telegram"
            try:
                await self.bot.set_webhook(url=url, secret_token=self._secret, allowed_updates=ALLOWED_UPDATES)
            except Exception as exc:
                log.error("telegram: setWebhook failed: %s", type(exc).__name__)

    async def _start_polling(self) -> None:
        delay = 1.0
        while True:
            if await self._ensure_ready():
                try:
                    if not self.app.running:
                        await self.app.start()
                    await self.app.updater.start_polling(allowed_updates=ALLOWED_UPDATES, timeout=10,
                                                         bootstrap_retries=0)
                    log.info("telegram: polling for updates")
                    return
                except Exception as exc:
                    log.error("telegram: could not start polling (%s); retrying in %.0f s",
                              type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        if self._poll_task is not None and not self._poll_task.done():
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
        if not self._ready:
            return
        try:
            if self.polling and self.app.updater is not None and self.app.updater.running:
                await self.app.updater.stop()
            await self._drain()
            if self.app.running:
                await self.app.stop()
            await self.app.shutdown()
        finally:
            self._ready = False

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
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            return JSONResponse({"error": "missing_secret_token"}, status_code=401)
        if not secret_matches(self._secret, given):
            return JSONResponse({"error": "invalid_secret_token"}, status_code=403)
        update = parse_update(await request.body(), self.bot)
        if update is None:
            return JSONResponse({"error": "malformed_update"}, status_code=400)
        if not self.seen.seen(str(update.update_id)):
            self._spawn(self.process_update(update), name="telegram:update")
        return JSONResponse({"ok": True})

    async def _on_polled_update(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if isinstance(update, Update) and not self.seen.seen(str(update.update_id)):
            await self.process_update(update)

    async def process_update(self, update: Update) -> None:
        try:
            async with self._workers:
                await self._process(update)
        except Exception:
            log.exception("telegram: update %s failed", update.update_id)

    async def _process(self, update: Update) -> None:
        if not await self._ensure_ready():
            raise DeliveryError("telegram: bot not initialised")
        message_id = f"telegram:{update.update_id}"
        query = update.callback_query
        if query is not None:
            try:
                await query.answer()
            except TelegramError:
                pass
            if query.data != HUMAN_CALLBACK or query.message is None:
                return
            chat, user = query.message.chat, query.from_user
            address = self._address(chat.id, user.id if user else None)
            await self._handle(InboundMessage(address=address, text="", action="request_human",
                                              message_id=message_id), self._language(user, ""))
            return
        message = update.message
        if message is None or message.chat is None:
            return  # edited messages, channel posts...
        user = message.from_user
        address = self._address(message.chat.id, user.id if user else None)
        text = message.text if isinstance(message.text, str) else ""
        if not text:
            if message.chat.type == "private":
                lang = self._language(user, "")
                await self.send(address, Reply(address.conversation_id, lang, TEXT_ONLY[lang], kind="notice"))
            return
        lang = self._language(user, text)
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0].split("@", 1)[0].lower()
            if command in ("/start", "/help"):
                answer = WELCOME[lang] if command == "/start" else HELP[lang]
                await self.send(address, Reply(address.conversation_id, lang, answer, kind="greeting",
                                               offer_human=True))
                return
            if command == "/human":
                await self._handle(InboundMessage(address=address, text="", action="request_human",
                                                  message_id=message_id), lang)
                return
        text = text[: self.settings.max_text_chars]
        await self._handle(InboundMessage(address=address, text=text, message_id=message_id), lang)

    async def _handle(self, inbound: InboundMessage, lang: str) -> None:
        wait = await self.registry.rate_limiter.check(inbound.conversation_id)
        if wait:
            await self.send(inbound.address, rate_limited_reply(inbound.conversation_id, lang, wait))
            return
        lock = self._locks.setdefault(inbound.conversation_id, asyncio.Lock())
        async with lock:
            for reply in await self.registry.handle(inbound):
                await self._deliver(inbound.address, reply)
        if not lock.locked() and len(self._locks) > 10_000:
            self._locks.pop(inbound.conversation_id, None)

    @staticmethod
    def _address(chat_id: int, user_id: int | None) -> Address:
        return Address("telegram", f"telegram:{chat_id}", user_id=str(user_id or chat_id),
                       route={"chat_id": chat_id})

    @staticmethod
    def _language(user: Any, text: str) -> str:
        code = (getattr(user, "language_code", None) or "").lower()
        default = "ja" if not code or code.startswith("ja") else "en"
        return guess_language(text, default=default) if text and not text.startswith("/") else default

    # ------------------------------------------------------------ outbound

    async def _deliver(self, address: Address, reply: Reply) -> None:
        """Send an answer now; when that fails, the outbox dispatcher retries it later."""
        try:
            await self.send(address, reply)
        except Exception as exc:
            log.warning("telegram: delivery failed (%s); queued in the outbox", type(exc).__name__)
            await self.registry.run_sync(self.registry.core.handoff.enqueue, address, reply)

    async def send(self, address: Address, reply: Reply) -> None:
        if not await self._ensure_ready():
            raise DeliveryError("telegram: bot not initialised")
        chat_id = address.route.get("chat_id") or address.conversation_id.split(":", 1)[-1]
        parts = render_html(reply)
        markup = human_button(reply.language) if reply.offer_human else None
        no_preview = LinkPreviewOptions(is_disabled=True)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                await self.bot.send_message(chat_id=chat_id, text=part, parse_mode=ParseMode.HTML,
                                            reply_markup=markup if last else None, link_preview_options=no_preview)
        except BadRequest as exc:
            # Degrade: the HTML was refused; send the plain text once.
            log.warning("telegram: HTML message refused (%s); sending plain text", type(exc).__name__)
            try:
                for part in _split(render_text(reply)):
                    await self.bot.send_message(chat_id=chat_id, text=part, link_preview_options=no_preview)
            except TelegramError as exc2:
                raise DeliveryError(f"telegram sendMessage: {type(exc2).__name__}") from None
        except TelegramError as exc:
            raise DeliveryError(f"telegram sendMessage: {type(exc).__name__}") from None


def register(registry: "ChannelRegistry", settings: "Settings", core: "ConversationCore") -> TelegramChannel:
    channel = TelegramChannel(settings, registry)
    registry.add(channel)
    return channel
