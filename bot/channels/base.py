"""The channel role, and the small helpers every channel adapter shares.

A *channel* is one way users reach the bot (the helpdesk widget, Telegram, LINE, Slack...).
It is a thin two-way adapter:

* inbound: an optional FastAPI ``APIRouter`` (webhook routes) that verifies, parses, hands an
  :class:`~bot.messages.InboundMessage` to the core and returns fast;
* outbound: ``async send(address, reply)`` renders a neutral :class:`~bot.messages.Reply` for
  the platform. Every channel must at least send text (:func:`render_text` is the fallback);
  buttons and citation cards are extras.

How a platform module plugs in (``bot/channels/telegram.py``, ``line.py``, ``slack.py``)
---------------------------------------------------------------------------------------
The module's name is the channel's name, its settings prefix (``PBXBOT_TELEGRAM_*``), its URL
segment (``/webhooks/telegram``) and its log label. It exposes one function::

    def register(registry: ChannelRegistry, settings: Settings, core: ConversationCore) -> Channel:
        channel = TelegramChannel(settings, core, registry)
        registry.add(channel)          # mounts channel.router under /webhooks/telegram
        return channel

``bot.web.app.create_app`` calls ``register`` for every name returned by
``settings.validate_enabled_channels()`` (import ``bot.channels.<name>``), before the app
starts. The channel object (subclass :class:`BaseChannel` or satisfy :class:`Channel`):

* ``name = "telegram"``;
* ``router``: an ``APIRouter`` whose paths are relative to the mount prefix
  (``@router.post("")`` → ``POST /webhooks/telegram``; ``@router.post("/commands")`` →
  ``POST /webhooks/slack/commands``), or ``None`` (polling-only). ``prefix`` overrides the
  default ``/webhooks/<name>``;
* ``async send(address, reply)``: deliver one reply (operator replies, re-announcements,
  recovered answers arrive here from the outbox dispatcher; raise on failure so the
  dispatcher retries with back-off);
* ``async start()`` / ``async stop()``: run at app start-up / shut-down (open SDK clients,
  start polling, close sessions);
* optional ``async on_ticket(event, ticket)``: ticket events ("opened", "reannounced",
  "claimed", "resolved"), e.g. Slack posting new tickets to the operator channel.

Inside a webhook route, use the registry's helpers instead of calling the core directly:

* ``await registry.rate_limiter.check(key)`` → seconds to wait (0 when allowed); reply
  :func:`rate_limited_reply` when > 0;
* ``await registry.handle(message)`` runs the (synchronous, possibly slow) core in a worker
  thread and returns the replies;
* ``registry.spawn(coro)`` runs work after the ack ("ack fast, work after": retrieval never
  runs inside the ack path of a platform that retries); tasks are awaited/cancelled at stop;
* :class:`SeenCache` drops retried webhook deliveries (update_id, webhookEventId,
  X-Slack-Retry-Num) before they reach the core (the core de-duplicates again by
  ``InboundMessage.message_id``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bot.messages import Address, Reply

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import APIRouter

    from bot.ports import Ticket


@runtime_checkable
class Channel(Protocol):
    name: str
    router: "APIRouter | None"
    prefix: str | None  # None: /webhooks/<name>

    async def send(self, address: Address, reply: Reply) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class BaseChannel:
    """Defaults for the optional parts of :class:`Channel`."""

    name: str = ""
    router: "APIRouter | None" = None
    prefix: str | None = None

    async def send(self, address: Address, reply: Reply) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def on_ticket(self, event: str, ticket: "Ticket") -> None:
        return None


class DeliveryError(Exception):
    """A channel could not deliver a reply (the outbox dispatcher retries later)."""


# ---------------------------------------------------------------- rendering fallbacks

_JA_CHARS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")


def guess_language(text: str, default: str = "ja") -> str:
    """'ja' when the text has kana/kanji, 'en' when it has latin letters only; default otherwise."""
    if not text:
        return default
    if _JA_CHARS.search(text):
        return "ja"
    if re.search(r"[A-Za-z]", text):
        return "en"
    return default


def format_citation(c: Any, language: str = "ja") -> str:
    """"[1] Publisher 「Title」 (2026-01-02) https://..." — one line per source."""
    date = f" ({c.published})" if c.published else ""
    if language == "ja":
        return f"[{c.n}] {c.publisher}「{c.title}」{date} {c.url}".strip()
    return f"[{c.n}] {c.publisher}: {c.title}{date} {c.url}".strip()


def render_text(reply: Reply) -> str:
    """The plain-text rendering every channel can send: answer, sources, ticket number."""
    parts = [reply.answer.strip()]
    if reply.citations:
        head = "出典:" if reply.language == "ja" else "Sources:"
        parts.append(head + "\n" + "\n".join(format_citation(c, reply.language) for c in reply.citations))
    if reply.escalation and reply.escalation.ticket_id and reply.escalation.ticket_id not in reply.answer:
        t = reply.escalation.ticket_id
        parts.append(f"受付番号: {t}" if reply.language == "ja" else f"Ticket: {t}")
    return "\n\n".join(p for p in parts if p)


HUMAN_BUTTON_LABEL = {"ja": "担当者と話す", "en": "Talk to a person"}

RATE_LIMIT_MESSAGE = {
    "ja": "申し訳ありません、短い時間にたくさんのメッセージを受け取りました。{seconds}秒ほどお待ちいただいてから、もう一度お送りください。",
    "en": "Sorry, we received many messages in a short time. Please wait about {seconds} seconds and send it again.",
}


def rate_limited_reply(conversation_id: str, language: str, retry_after: float) -> Reply:
    lang = language if language in ("ja", "en") else "ja"
    seconds = max(1, int(retry_after + 0.999))
    return Reply(conversation_id=conversation_id, language=lang,  # type: ignore[arg-type]
                 answer=RATE_LIMIT_MESSAGE[lang].format(seconds=seconds), kind="notice")


class SeenCache:
    """Bounded set of recently seen delivery ids (retried webhooks), with a time to live."""

    def __init__(self, max_items: int = 10_000, ttl: float = 3600.0, clock=time.monotonic) -> None:
        self.max_items, self.ttl, self._clock = max_items, ttl, clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        """True when `key` was seen before (within ttl); records it otherwise."""
        now = self._clock()
        with self._lock:
            while self._seen:
                k, at = next(iter(self._seen.items()))
                if at > now - self.ttl and len(self._seen) <= self.max_items:
                    break
                self._seen.popitem(last=False)
            if key in self._seen:
                return True
            self._seen[key] = now
            return False
