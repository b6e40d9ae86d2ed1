"""Slack: a slash command and an "escalate" button, through slack-bolt's AsyncApp mounted in FastAPI.

Routes (under /webhooks/slack):
  POST /commands       slash command (any command name routed to this app, e.g. /pbx)
  POST /interactions   block actions (the "talk to a person" button, action_id "escalate")

Every request is checked here first (v0 signature, 5-minute window, well-formed headers) so that
forged, replayed or malformed requests get 401 and never reach slack_sdk's SignatureVerifier
(which raises on a non-numeric timestamp or a non-ASCII signature, and Bolt turns that into 500).
Bolt verifies again and dispatches; listeners ack at once and the answer goes to response_url
from a background task (retrieval never runs in the ack path). Retries (X-Slack-Retry-Num, or
the same trigger_id again) are acknowledged and dropped. Operator replies reach the user through
a still-fresh response_url, else chat.postMessage to the user's DM. New (and re-announced)
tickets are posted to settings.slack_operator_channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.channels.base import (
    HUMAN_BUTTON_LABEL,
    BaseChannel,
    DeliveryError,
    SeenCache,
    guess_language,
    rate_limited_reply,
)
from bot.messages import Address, InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry
    from bot.config import Settings
    from bot.ports import ConversationCore, Ticket

log = logging.getLogger("bot.channels.slack")

REPLAY_WINDOW_SECONDS = 300
RESPONSE_URL_TTL = 30 * 60 - 60  # Slack: up to 5 uses within 30 minutes; keep a minute of margin
RESPONSE_URL_MAX_USES = 5
SECTION_MAX = 2900  # a section's text is limited to 3000 characters
ESCALATE_ACTION = "escalate"
WORKERS = 6  # messages handled at once: the rest wait, so that acks stay fast under load

ACK_TEXT = {"ja": "確認しています…", "en": "Looking into it…"}
HELP_TEXT = {
    "ja": "IP-PBX・IP電話の乗っ取り(国際電話の不正発信)について、出典付きでお答えします。"
          "例: `/pbx 国際電話を止めるには？` 担当者と話したいときは `/pbx 担当者` と送るか、ボタンを押してください。",
    "en": "I answer questions about IP-PBX takeover (toll fraud) in Japan, with sources. "
          "Try `/pbx how do I stop international calls?`. To reach a person, press the button or send `/pbx talk to a person`.",
}


# ---------------------------------------------------------------- verification


def verify_signature(secret: bytes, body: bytes, timestamp: str | None, signature: str | None,
                     *, now: float | None = None) -> bool:
    """Slack's v0 request signature, total over hostile headers (never raises)."""
    if not timestamp or not signature:
        return False
    if len(timestamp) > 16 or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if len(signature) > 128 or not signature.isascii() or not signature.startswith("v0="):
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


def parse_delivery(body: bytes, kind: str) -> tuple[bool, str | None]:
    """(well-formed, delivery key). The key is what Slack repeats on a retry of the same delivery:
    the trigger_id. Well-formed: a form with a command (commands) or a JSON object payload
    (interactions), so that Bolt's own parsing cannot raise on a signed but hostile body."""
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=64, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return False, None
    if kind == "interactions":
        try:
            payload = json.loads(form["payload"][0])
        except (KeyError, IndexError, ValueError):
            return False, None
        if not isinstance(payload, dict):
            return False, None
        trigger = payload.get("trigger_id")
        return True, str(trigger) if trigger else None
    if form.get("ssl_check"):
        return True, None  # Slack's certificate check: Bolt answers it
    if "payload" in form or not form.get("command"):
        return False, None
    trigger = form.get("trigger_id")
    return True, trigger[0] if trigger else None


def response_url_allowed(url: Any, api_url: str | None = None) -> bool:
    """Whether the bot may POST to a `response_url` from a (signed) request: only Slack's own
    https://hooks.slack.com, or the host of a configured PBXBOT_SLACK_API_URL other than Slack's
    (the tests' fake API). Anything else (loopback, the metadata service, another site) is never
    contacted; the reply goes through chat.postMessage instead."""
    if not isinstance(url, str) or len(url) > 2048 or not url.isascii() or any(c in url for c in " \r\n\t\\"):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    if parts.username or parts.password:
        return False
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname == "hooks.slack.com" and port in (None, 443):
        return True
    if api_url:
        api = urllib.parse.urlsplit(api_url)
        if api.hostname and api.hostname != "slack.com" and (parts.scheme, parts.hostname, port) == (
                api.scheme, api.hostname, api.port):
            return True
    return False


# ---------------------------------------------------------------- rendering


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    safe_label = escape_mrkdwn(label).replace("|", "¦")
    if url.startswith(("https://", "http://")) and not any(c in url for c in "<>| \n"):
        return f"<{url}|{safe_label}>"
    return f"{safe_label} {escape_mrkdwn(url)}"


def citation_line(c: Any, language: str) -> str:
    date = f" ({c.published})" if c.published else ""
    label = f"{c.publisher}「{c.title}」" if language == "ja" else f"{c.publisher}: {c.title}"
    return f"[{c.n}] " + _link(c.url, label) + date


def _chunks(text: str, size: int) -> list[str]:
    out, rest = [], text
    while len(rest) > size:
        cut = rest.rfind("\n", 0, size)
        cut = cut if cut > size // 2 else size
        out.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    if rest or not out:
        out.append(rest)
    return out


def plain_text(reply: Reply) -> str:
    """The notification/fallback text of a message (no markup)."""
    parts = [reply.answer.strip()]
    if reply.citations:
        head = "出典:" if reply.language == "ja" else "Sources:"
        parts.append(head + "\n" + "\n".join(
            f"[{c.n}] {c.publisher} {c.title} {c.url}" for c in reply.citations))
    return "\n\n".join(p for p in parts if p)[:3000] or " "


def render_message(reply: Reply) -> dict[str, Any]:
    """Block Kit message: the answer, its sources as links, the ticket number, the escalate button."""
    lang = reply.language if reply.language in ("ja", "en") else "ja"
    blocks: list[dict[str, Any]] = []
    answer = reply.answer.strip()
    if reply.kind == "operator":
        who = "担当者" if lang == "ja" else "Operator"
        answer = f"*{who}:* " + escape_mrkdwn(answer)
    else:
        answer = escape_mrkdwn(answer)
    for chunk in _chunks(answer or " ", SECTION_MAX)[:20]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    if reply.citations:
        head = "*出典*" if lang == "ja" else "*Sources*"
        lines = "\n".join(citation_line(c, lang) for c in reply.citations)
        for chunk in _chunks(head + "\n" + lines, SECTION_MAX)[:5]:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    if reply.escalation and reply.escalation.ticket_id and reply.escalation.ticket_id not in reply.answer:
        t = escape_mrkdwn(reply.escalation.ticket_id)
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"受付番号: {t}" if lang == "ja" else f"Ticket: {t}"}]})
    if reply.offer_human:
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "action_id": ESCALATE_ACTION, "value": "request_human",
            "text": {"type": "plain_text", "text": HUMAN_BUTTON_LABEL[lang]}}]})
    return {"text": plain_text(reply), "blocks": blocks[:50]}


def render_ticket(ticket: "Ticket", event: str, console_url: str | None) -> dict[str, Any]:
    """The operator-channel announcement of a new (or still unclaimed) ticket."""
    urgent = ticket.priority == "urgent"
    head = ("再通知: " if event == "reannounced" else "新しい問い合わせ: ") + ("🚨 緊急" if urgent else "通常")
    fields = [f"*Ticket:* `{escape_mrkdwn(ticket.id)}`", f"*Priority:* {escape_mrkdwn(ticket.priority)}",
              f"*Reason:* {escape_mrkdwn(ticket.reason)}", f"*Channel:* {escape_mrkdwn(ticket.address.channel)}"]
    summary = ticket.summary or {}
    for key in ("carrier", "still_happening", "noticed_at", "vendor", "amounts", "destinations", "language"):
        value = summary.get(key)
        if value not in (None, "", [], {}):
            text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            fields.append(f"*{key}:* {escape_mrkdwn(text[:200])}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(fields)[:SECTION_MAX]}},
    ]
    if console_url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _link(console_url, "console")}]})
    text = f"{head} {ticket.id} ({ticket.priority}, {ticket.reason})"
    return {"text": text, "blocks": blocks}


# ---------------------------------------------------------------- the channel


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""



class SlackChannel(BaseChannel):
    name = "slack"

    def __init__(self, settings: "Settings", registry: "ChannelRegistry") -> None:
        assert settings.slack_signing_secret is not None and settings.slack_bot_token is not None
        self.settings = settings
        self.registry = registry
        self._secret = settings.slack_signing_secret.get_secret_value()
        self._secret_bytes = self._secret.encode()
        self.client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(),
                                     base_url=settings.slack_api_url, timeout=15)
        # process_before_response=True: the listeners only ack and hand the work to a background
        # task (registry.spawn), so Bolt answers as soon as they return. (With False, Bolt polls
        # for the ack every 10 ms, which adds 10 ms or more to every acknowledgement.)
        self.bolt = AsyncApp(client=self.client, signing_secret=self._secret,
                             process_before_response=True, request_verification_enabled=True)
        self.bolt.command(re.compile(r"^/.+"))(self._on_command)
        self.bolt.action(ESCALATE_ACTION)(self._on_escalate)
        self.handler = AsyncSlackRequestHandler(self.bolt)
        self.seen = SeenCache(max_items=20_000, ttl=3600)
        # conversation_id -> [response_url, issued at (epoch s), uses]; the freshest one per user
        self._response_urls: dict[str, list[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._workers = asyncio.Semaphore(WORKERS)
        self._inflight: set[asyncio.Task] = set()
        self.router = self._build_router()

    # ------------------------------------------------------------ inbound

    def _spawn(self, coro: Any, name: str) -> None:
        """Work after the ack, tracked so that stop() lets it finish before closing the client."""
        task = self.registry.spawn(coro, name=name)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _drain(self, timeout: float = 5.0) -> None:
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)

    def _build_router(self) -> APIRouter:
        router = APIRouter(tags=["slack"])
        router.add_api_route("/commands", self.commands, methods=["POST"], include_in_schema=False)
        router.add_api_route("/interactions", self.interactions, methods=["POST"], include_in_schema=False)
        return router

    async def commands(self, request: Request) -> Response:
        return await self.dispatch(request, "commands")

    async def interactions(self, request: Request) -> Response:
        return await self.dispatch(request, "interactions")

    async def dispatch(self, request: Request, kind: str) -> Response:
        body = await request.body()
        if not verify_signature(self._secret_bytes, body, request.headers.get("x-slack-request-timestamp"),
                                request.headers.get("x-slack-signature")):
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        well_formed, key = parse_delivery(body, kind)
        if not well_formed:
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        retry = request.headers.get("x-slack-retry-num")
        if (key and self.seen.seen(key)) or (retry and not key):
            log.info("slack: retried delivery dropped (retry=%s)", retry)
            return Response(status_code=200)
        try:
            response = await self.handler.handle(request)
        except Exception as exc:  # a signed body Bolt could not handle: the sender's fault, not ours
            log.warning("slack: request rejected (%s)", type(exc).__name__)
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        if response.status_code >= 500:
            # Bolt answers 500 when its own parsing of a signed but odd payload fails (e.g. "actions": 5).
            log.warning("slack: Bolt could not handle a %s request (HTTP %s); answering 400", kind,
                        response.status_code)
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        return response

    async def _on_command(self, ack, command: dict[str, Any]) -> None:
        text = str(command.get("text") or "").strip()
        lang = guess_language(text)
        if not _str(command.get("user_id")):
            await ack(text=HELP_TEXT[lang])
            return
        address = self._address(command.get("team_id"), command.get("user_id"), command.get("channel_id"),
                                command.get("response_url"))
        if not text:
            await ack(text=HELP_TEXT[lang])
            return
        wait = await self.registry.rate_limiter.check(address.conversation_id)
        if wait:
            await ack(text=rate_limited_reply(address.conversation_id, lang, wait).answer)
            return
        await ack(text=ACK_TEXT[lang])
        message = InboundMessage(address=address, text=text[: self.settings.max_text_chars],
                                 message_id=f"slack:{command.get('trigger_id')}" if command.get("trigger_id") else None)
        self._spawn(self._process(message), name="slack:command")

    async def _on_escalate(self, ack, body: dict[str, Any]) -> None:
        await ack()
        user = _obj(body.get("user"))
        team = _str(_obj(body.get("team")).get("id")) or _str(user.get("team_id"))
        channel = _str(_obj(body.get("channel")).get("id")) or _str(_obj(body.get("container")).get("channel_id"))
        if not _str(user.get("id")):
            return
        address = self._address(team, _str(user.get("id")), channel, body.get("response_url"))
        trigger = _str(body.get("trigger_id"))
        message = InboundMessage(address=address, text="", action="request_human",
                                 message_id=f"slack:{trigger}" if trigger else None)
        self._spawn(self._process(message), name="slack:escalate")

    def _address(self, team_id: Any, user_id: Any, channel_id: Any, response_url: Any) -> Address:
        team, user = str(team_id or "T"), str(user_id or "")
        route: dict[str, Any] = {"team_id": team, "user_id": user, "channel": str(channel_id or "")}
        cid = f"slack:{team}:{user}"
        if response_url and not response_url_allowed(response_url, self.settings.slack_api_url):
            log.warning("slack: ignoring a response_url outside hooks.slack.com")
            response_url = None
        if isinstance(response_url, str):
            route["response_url"] = response_url
            route["response_url_at"] = int(time.time())
            self._response_urls[cid] = [response_url, time.time(), 0]
            if len(self._response_urls) > 50_000:
                self._response_urls.pop(next(iter(self._response_urls)))
        return Address("slack", cid, user_id=user, route=route)

    async def _process(self, message: InboundMessage) -> None:
        lock = self._locks.setdefault(message.conversation_id, asyncio.Lock())
        async with lock, self._workers:
            replies = await self.registry.handle(message)
            for reply in replies:
                await self._deliver(message.address, reply)
        if not lock.locked() and len(self._locks) > 10_000:
            self._locks.pop(message.conversation_id, None)

    # ------------------------------------------------------------ outbound

    async def _deliver(self, address: Address, reply: Reply) -> None:
        """Send an answer now; when that fails, the outbox dispatcher retries it later."""
        try:
            await self.send(address, reply)
        except Exception as exc:
            log.warning("slack: delivery failed (%s); queued in the outbox", type(exc).__name__)
            await self.registry.run_sync(self.registry.core.handoff.enqueue, address, reply)

    def _fresh_response_url(self, address: Address) -> str | None:
        entry = self._response_urls.get(address.conversation_id)
        if entry is None and address.route.get("response_url"):
            entry = [address.route["response_url"], float(address.route.get("response_url_at") or 0), 0]
        if entry is None:
            return None
        url, at, uses = entry
        if time.time() - at > RESPONSE_URL_TTL or uses >= RESPONSE_URL_MAX_USES:
            return None
        if not response_url_allowed(url, self.settings.slack_api_url):  # e.g. stored before this check
            return None
        if address.conversation_id in self._response_urls:
            self._response_urls[address.conversation_id][2] += 1
        return str(url)

    async def send(self, address: Address, reply: Reply) -> None:
        message = render_message(reply)
        url = self._fresh_response_url(address)
        if url:
            try:
                resp = await AsyncWebhookClient(url, timeout=10).send(
                    text=message["text"], blocks=message["blocks"], response_type="ephemeral",
                    replace_original=False)
                if resp.status_code == 200:
                    return
                log.warning("slack: response_url answered %s; falling back to chat.postMessage", resp.status_code)
            except Exception as exc:  # network errors: try the Web API
                log.warning("slack: response_url failed (%s); falling back to chat.postMessage", type(exc).__name__)
        await self._post(self._dm_target(address), message)

    @staticmethod
    def _dm_target(address: Address) -> str:
        channel = str(address.route.get("channel") or "")
        if channel.startswith("D"):
            return channel  # the DM where the user typed the command
        return str(address.route.get("user_id") or address.user_id)  # the bot's DM with the user

    async def _post(self, channel: str, message: dict[str, Any]) -> None:
        if not channel:
            raise DeliveryError("slack: no channel to deliver to")
        try:
            await self.client.chat_postMessage(channel=channel, text=message["text"], blocks=message["blocks"],
                                               unfurl_links=False)
        except SlackApiError as exc:
            raise DeliveryError(f"slack chat.postMessage: {exc.response.get('error', 'error')}") from None
        except (asyncio.TimeoutError, OSError) as exc:
            raise DeliveryError(f"slack chat.postMessage: {type(exc).__name__}") from None

    async def on_ticket(self, event: str, ticket: "Ticket") -> None:
        channel = self.settings.slack_operator_channel
        if not channel or event not in ("opened", "reannounced"):
            return
        base = self.settings.public_base_url
        console = f"{base.rstrip('/')}/console" if base else None
        await self._post(channel, render_ticket(ticket, event, console))

    async def start(self) -> None:
        try:  # warm the token check Bolt does on the first request; a bad token shows here
            await self.client.auth_test()
        except Exception as exc:
            log.error("slack: auth.test failed at start (%s); check PBXBOT_SLACK_BOT_TOKEN", type(exc).__name__)

    async def stop(self) -> None:
        await self._drain()


def register(registry: "ChannelRegistry", settings: "Settings", core: "ConversationCore") -> SlackChannel:
    channel = SlackChannel(settings, registry)
    registry.add(channel)
    return channel
