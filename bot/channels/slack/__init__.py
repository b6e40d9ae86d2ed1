"""Slack: a slash command and an "escalate" button, answered through response_url.

Routes (under /webhooks/slack): POST /commands (any command name routed to this app, e.g. /pbx) and
POST /interactions (the "talk to a person" button). Each request's v0 signature (5-minute window) is
checked first (payloads.py); the command is acknowledged within Slack's 3 seconds with "looking into
it", the help text or the rate-limit notice, and the answer goes to response_url from the pipeline's
background work. Retries (X-Slack-Retry-Num, the same trigger_id) are acknowledged and dropped.
Operator replies use a still-fresh response_url (Slack: 5 uses in 30 minutes), else chat.postMessage
to the user's DM. New and re-announced tickets are posted to the operator channel (blocks.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.channels.base import BaseChannel, DeliveryError, Inbound, PermanentDeliveryError
from bot.channels.slack.blocks import ESCALATE_ACTION, render_message, render_ticket
from bot.channels.slack.payloads import (
    command_fields, interaction_payload, obj, parse_form, pressed, response_url_allowed, string, verify_signature,
)
from bot.config import ChannelSettings
from bot.conversation.texts import t
from bot.language import detect_language
from bot.messages import Address, InboundMessage, Reply

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry
    from bot.ports import Ticket

__all__ = ["SlackChannel", "SlackSettings", "register", "render_message", "response_url_allowed", "verify_signature"]

log = logging.getLogger("bot.channels.slack")

RESPONSE_URL_TTL = 30 * 60 - 60  # Slack: up to 5 uses within 30 minutes; keep a minute of margin
RESPONSE_URL_MAX_USES = 5


class SlackSettings(ChannelSettings):
    """PBXBOT_SLACK_*: the signing secret (requests) and bot token (Web API); the operator channel."""

    signing_secret: SecretStr | None = None
    bot_token: SecretStr | None = None
    api_url: str = "https://slack.com/api/"
    operator_channel: str | None = None
    secrets = ("signing_secret", "bot_token")


SETTINGS = SlackSettings


# chat.postMessage errors that no retry will cure: the user or the conversation is gone. Others
# (ratelimited, invalid_auth, an outage) are retried: a token can be fixed, an outage ends.
GONE = frozenset({"channel_not_found", "is_archived", "user_not_found", "user_disabled", "cannot_dm_bot"})


class SlackChannel(BaseChannel):
    name = "slack"
    reach_person = ("reach_command", {"command": "`/pbx 担当者`"})

    def __init__(self, section: SlackSettings, registry: "ChannelRegistry") -> None:
        assert section.signing_secret is not None and section.bot_token is not None
        self.section, self.pipeline = section, registry.pipeline
        self.max_chars, self.public_base_url = registry.settings.max_text_chars, registry.settings.public_base_url
        self._secret = section.signing_secret.get_secret_value().encode()
        self.client = AsyncWebClient(token=section.bot_token.get_secret_value(), base_url=section.api_url, timeout=15)
        # conversation_id -> [response_url, issued at (epoch s), uses]; the freshest one per user
        self._response_urls: dict[str, list[Any]] = {}
        self.router = APIRouter(tags=["slack"])
        self.router.add_api_route("/commands", self.commands, methods=["POST"], include_in_schema=False)
        self.router.add_api_route("/interactions", self.interactions, methods=["POST"], include_in_schema=False)

    async def commands(self, request: Request) -> Response:
        form = await self._signed_form(request)
        if isinstance(form, Response) or form.get("ssl_check"):  # Slack's certificate check: 200
            return form if isinstance(form, Response) else Response(status_code=200)
        fields = command_fields(form)
        if fields is None:
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        inbound = self._command(fields)
        if request.headers.get("x-slack-retry-num") and not inbound.event_id:
            return Response(status_code=200)  # a retry we cannot tell apart: the first delivery answers
        if inbound.notice:
            return JSONResponse({"text": t(inbound.notice, inbound.language or "ja", reach=self._reach(inbound))})
        admission = await self.pipeline.accept(self, inbound)
        text = admission.refusal.answer if admission.refusal else t("working_on_it", inbound.language or "ja")
        return Response(status_code=200) if admission.duplicate else JSONResponse({"text": text})

    async def interactions(self, request: Request) -> Response:
        form = await self._signed_form(request)
        if isinstance(form, Response):
            return form
        payload = interaction_payload(form)
        if payload is None:
            return JSONResponse({"error": "malformed_body"}, status_code=400)
        inbound = self._escalation(payload)
        if inbound is not None and not (request.headers.get("x-slack-retry-num") and not inbound.event_id):
            await self.pipeline.receive(self, [inbound])
        return Response(status_code=200)

    async def _signed_form(self, request: Request) -> dict[str, list[str]] | Response:
        body = await request.body()
        if not verify_signature(self._secret, body, request.headers.get("x-slack-request-timestamp"),
                                request.headers.get("x-slack-signature")):
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        form = parse_form(body)
        return JSONResponse({"error": "malformed_body"}, status_code=400) if form is None else form

    # ------------------------------------------------------------ parsing

    def _command(self, fields: dict[str, str]) -> Inbound:
        text = fields.get("text", "").strip()
        address = self._address(fields.get("team_id"), fields.get("user_id"), fields.get("channel_id"),
                                fields.get("response_url"))
        trigger = fields.get("trigger_id") or None
        language = detect_language(text) or "ja"
        if not text or not fields.get("user_id"):
            return Inbound(address, notice="help", language=language)
        message = InboundMessage(address=address, text=text[: self.max_chars],
                                 message_id=f"slack:{trigger}" if trigger else None)
        return Inbound(address, message, language=language, event_id=trigger)

    def _escalation(self, payload: dict[str, Any]) -> Inbound | None:
        user = obj(payload.get("user"))
        if not pressed(payload, ESCALATE_ACTION) or not string(user.get("id")):
            return None
        team = string(obj(payload.get("team")).get("id")) or string(user.get("team_id"))
        channel = string(obj(payload.get("channel")).get("id")) or string(obj(payload.get("container")).get("channel_id"))
        address = self._address(team, string(user.get("id")), channel, payload.get("response_url"))
        trigger = string(payload.get("trigger_id")) or None
        message = InboundMessage(address=address, text="", action="request_human",
                                 message_id=f"slack:{trigger}" if trigger else None)
        return Inbound(address, message, event_id=trigger)

    def _address(self, team_id: Any, user_id: Any, channel_id: Any, response_url: Any) -> Address:
        team, user = str(team_id or "T"), str(user_id or "")
        route: dict[str, Any] = {"team_id": team, "user_id": user, "channel": str(channel_id or "")}
        cid = f"slack:{team}:{user}"
        if response_url and not response_url_allowed(response_url, self.section.api_url):
            log.warning("slack: ignoring a response_url outside hooks.slack.com")
            response_url = None
        if isinstance(response_url, str):
            route.update(response_url=response_url, response_url_at=int(time.time()))
            self._response_urls[cid] = [response_url, time.time(), 0]
            if len(self._response_urls) > 50_000:
                self._response_urls.pop(next(iter(self._response_urls)))
        return Address("slack", cid, user_id=user, route=route)

    def _reach(self, inbound: Inbound) -> str:
        key, values = self.reach_person
        return t(key, inbound.language or "ja", **values)

    # ------------------------------------------------------------ outbound

    async def send(self, address: Address, reply: Reply) -> None:
        message = render_message(reply)
        url = self._fresh_response_url(address)
        if url:
            try:
                resp = await AsyncWebhookClient(url, timeout=10).send(
                    text=message["text"], blocks=message["blocks"], response_type="ephemeral", replace_original=False)
                if resp.status_code == 200:
                    return
                log.warning("slack: response_url answered %s; falling back to chat.postMessage", resp.status_code)
            except Exception as exc:  # network errors: try the Web API
                log.warning("slack: response_url failed (%s); falling back to chat.postMessage", type(exc).__name__)
        channel = str(address.route.get("channel") or "")  # the DM the user typed in, else the bot's DM with them
        await self._post(channel if channel.startswith("D") else str(address.route.get("user_id") or address.user_id),
                         message)

    def _fresh_response_url(self, address: Address) -> str | None:
        entry = self._response_urls.get(address.conversation_id)
        if entry is None and address.route.get("response_url"):
            entry = [address.route["response_url"], float(address.route.get("response_url_at") or 0), 0]
        if entry is None or time.time() - entry[1] > RESPONSE_URL_TTL or entry[2] >= RESPONSE_URL_MAX_USES:
            return None
        if not response_url_allowed(entry[0], self.section.api_url):  # e.g. stored before this check
            return None
        entry[2] += 1
        return str(entry[0])

    async def _post(self, channel: str, message: dict[str, Any]) -> None:
        if not channel:
            raise DeliveryError("slack: no channel to deliver to")
        try:
            await self.client.chat_postMessage(channel=channel, text=message["text"], blocks=message["blocks"],
                                               unfurl_links=False)
        except SlackApiError as exc:
            error = str(exc.response.get("error", "error"))
            if error in GONE:
                raise PermanentDeliveryError(f"slack chat.postMessage: {error}") from None
            raise DeliveryError(f"slack chat.postMessage: {error}") from None
        except (asyncio.TimeoutError, OSError) as exc:
            raise DeliveryError(f"slack chat.postMessage: {type(exc).__name__}") from None

    async def on_ticket(self, event: str, ticket: "Ticket") -> None:
        if self.section.operator_channel and event in ("opened", "reannounced"):
            console = f"{self.public_base_url.rstrip('/')}/console" if self.public_base_url else None
            await self._post(self.section.operator_channel, render_ticket(ticket, event, console))

    async def start(self) -> None:
        try:  # a bad token shows in the log at start, not at the first answer
            await self.client.auth_test()
        except Exception as exc:
            log.error("slack: auth.test failed at start (%s); check PBXBOT_SLACK_BOT_TOKEN", type(exc).__name__)


def register(registry: "ChannelRegistry", settings: Any, core: Any) -> SlackChannel:
    return registry.add(SlackChannel(settings.channel("slack", SlackSettings), registry))  # type: ignore[return-value]
