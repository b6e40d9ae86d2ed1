"""Telegram: python-telegram-bot's Application, by webhook or (without a public URL) long polling.

Webhook (mode "webhook"): POST /webhooks/telegram checks X-Telegram-Bot-Api-Secret-Token in constant
time (401 missing, 403 wrong) and parses the update with Update.de_json, which raises plain
exceptions on hostile JSON (then 400, never 500). Polling: the same Application's Updater polls
getUpdates from the app's lifespan, with back-off, so an unreachable Bot API never holds up start.
The Application is built with the configured Bot API URL and initialised (getMe) at start.

/start and /help get the welcome and help texts, /human and the inline button ask for a person.
Answers are HTML (every text escaped) with citations as links; refused HTML degrades to plain text.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from telegram import LinkPreviewOptions, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

from bot.channels.base import BaseChannel, DeliveryError, Inbound, PermanentDeliveryError
from bot.channels.rendering import render_text, split_text
from bot.channels.telegram.render import CHUNK, human_button, render_html
from bot.channels.telegram.updates import inbound_of, parse_update
from bot.config import ChannelSettings
from bot.messages import Address, Reply
from bot.tokens import tokens_equal

__all__ = ["TelegramChannel", "TelegramSettings", "register", "render_html", "parse_update"]

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry

log = logging.getLogger("bot.channels.telegram")

SECRET_HEADER = "x-telegram-bot-api-secret-token"
ALLOWED_UPDATES = ["message", "callback_query"]


class TelegramSettings(ChannelSettings):
    """PBXBOT_TELEGRAM_*: the bot token, the webhook's secret token (not needed to poll)."""

    token: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    api_url: str = "https://api.telegram.org/bot"
    mode: str = "webhook"  # webhook | polling
    secrets = ("token", "webhook_secret")

    def required(self) -> tuple[str, ...]:
        return ("token",) if self.mode == "polling" else self.secrets

    def one_process_only(self) -> str | None:
        if self.mode == "polling":
            return "Telegram polling runs in one process: use --workers 1, or PBXBOT_TELEGRAM_MODE=webhook with several workers"
        return None


SETTINGS = TelegramSettings


class TelegramChannel(BaseChannel):
    name = "telegram"
    reach_person = ("reach_command", {"command": "/human"})

    def __init__(self, section: TelegramSettings, registry: "ChannelRegistry") -> None:
        assert section.token is not None
        self.section, self.pipeline = section, registry.pipeline
        self.max_chars = registry.settings.max_text_chars
        self.public_base_url = registry.settings.public_base_url
        self.polling = section.mode == "polling"
        builder = Application.builder().token(section.token.get_secret_value()).base_url(section.api_url)
        self.app = (builder if self.polling else builder.updater(None)).concurrent_updates(True).build()
        self.app.add_handler(TypeHandler(Update, self._on_polled_update))
        self._secret = section.webhook_secret.get_secret_value() if section.webhook_secret else ""
        self._ready, self._ready_lock, self._poll_task = False, asyncio.Lock(), None
        self.router = None if self.polling else APIRouter(tags=["telegram"])
        if self.router is not None:
            self.router.add_api_route("", self.webhook, methods=["POST"], include_in_schema=False)

    @property
    def bot(self):
        return self.app.bot

    async def webhook(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER)
        if given is None or not tokens_equal(self._secret, given):
            error = "missing_secret_token" if given is None else "invalid_secret_token"
            return JSONResponse({"error": error}, status_code=401 if given is None else 403)
        update = parse_update(await request.body(), self.bot)
        if update is None:
            return JSONResponse({"error": "malformed_update"}, status_code=400)
        inbound = inbound_of(update, self.max_chars)
        await self.pipeline.receive(self, [inbound] if inbound else [])
        return JSONResponse({"ok": True})

    async def _on_polled_update(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        inbound = inbound_of(update, self.max_chars) if isinstance(update, Update) else None
        await self.pipeline.receive(self, [inbound] if inbound else [])

    # ------------------------------------------------------------ outbound

    async def reply(self, inbound: Inbound, replies: list[Reply]) -> None:
        if inbound.context is not None:  # a button press: stop its spinner
            try:
                await inbound.context.answer()
            except TelegramError:
                pass
        await super().reply(inbound, replies)

    async def send(self, address: Address, reply: Reply) -> None:
        if not await self._ensure_ready():
            raise DeliveryError("telegram: bot not initialised")
        chat_id = address.route.get("chat_id") or address.conversation_id.split(":", 1)[-1]
        parts = render_html(reply)
        markup = human_button(reply.language) if reply.offer_human else None
        try:
            for i, part in enumerate(parts):
                await self._send(chat_id, part, ParseMode.HTML, markup if i == len(parts) - 1 else None)
        except BadRequest as exc:  # the HTML was refused: the plain text, once
            log.warning("telegram: HTML message refused (%s); sending plain text", type(exc).__name__)
            for part in split_text(render_text(reply), CHUNK):
                await self._send(chat_id, part)

    async def _send(self, chat_id: Any, text: str, parse_mode: str | None = None, markup: Any = None) -> None:
        try:
            await self.bot.send_message(chat_id=chat_id, text=text, parse_mode=parse_mode, reply_markup=markup,
                                        link_preview_options=LinkPreviewOptions(is_disabled=True))
        except Forbidden:  # blocked by the user, removed from the group, a deactivated account
            raise PermanentDeliveryError("telegram sendMessage: Forbidden (the bot was blocked or removed)") from None
        except BadRequest as exc:
            if "chat not found" in str(getattr(exc, "message", "")).lower():
                raise PermanentDeliveryError("telegram sendMessage: chat not found") from None
            if parse_mode is None:
                raise DeliveryError("telegram sendMessage: BadRequest") from None
            raise
        except TelegramError as exc:
            raise DeliveryError(f"telegram sendMessage: {type(exc).__name__}") from None

    # ------------------------------------------------------------ lifecycle

    async def _ensure_ready(self) -> bool:
        if self._ready:
            return True
        async with self._ready_lock:
            if not self._ready:
                try:
                    await self.app.initialize()  # getMe
                    self._ready = True
                except Exception as exc:  # never log str(exc): it may carry the URL with the token
                    log.error("telegram: initialisation (getMe) failed: %s; check PBXBOT_TELEGRAM_TOKEN",
                              type(exc).__name__)
        return self._ready

    async def start(self) -> None:
        if self.polling:  # in the background: an unreachable Bot API must not hold up the app's start
            self._poll_task = asyncio.create_task(self._start_polling(), name="telegram:start-polling")
        elif await self._ensure_ready() and self.public_base_url:
            url = self.public_base_url.rstrip("/") + "/webhooks/telegram"
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
                    return
                except Exception as exc:
                    log.error("telegram: could not start polling (%s); retrying in %.0f s", type(exc).__name__, delay)
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
            if self.app.running:
                await self.app.stop()
            await self.app.shutdown()
        finally:
            self._ready = False


def register(registry: "ChannelRegistry", settings: Any, core: Any) -> TelegramChannel:
    return registry.add(TelegramChannel(settings.channel("telegram", TelegramSettings), registry))  # type: ignore[return-value]
