"""A minimal chat channel, written as a new platform's module would be: a settings section with the
secret that enables it, a webhook route that verifies, parses and hands over to the pipeline, and
`send` (the outbox and operator replies). tests/unit/test_channel_plugin.py adds it to the registry
with one line.

    POST /webhooks/echo  X-Echo-Secret: <PBXBOT_ECHO_SECRET>  {"id": "...", "user": "...", "text": "..."}
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr

from bot.channels.base import BaseChannel, Inbound
from bot.config import ChannelSettings
from bot.language import detect_language
from bot.messages import Address, InboundMessage, Reply
from bot.tokens import tokens_equal


class EchoSettings(ChannelSettings):
    secret: SecretStr | None = None  # PBXBOT_ECHO_SECRET
    secrets = ("secret",)


SETTINGS = EchoSettings


class EchoChannel(BaseChannel):
    name = "echo"

    def __init__(self, section: EchoSettings, registry: Any) -> None:
        self.secret, self.pipeline = section.secret.get_secret_value(), registry.pipeline
        self.sent: list[tuple[Address, Reply]] = []
        self.router = APIRouter()
        self.router.add_api_route("", self.webhook, methods=["POST"], include_in_schema=False)

    async def webhook(self, request: Request) -> Response:
        if not tokens_equal(self.secret, request.headers.get("x-echo-secret")):
            return JSONResponse({"error": "invalid_secret"}, status_code=401)
        try:
            event = json.loads(await request.body())
            address = Address("echo", f"echo:{event['user']}", user_id=str(event["user"]))
            message = InboundMessage(address=address, text=str(event["text"]), message_id=f"echo:{event['id']}")
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "malformed"}, status_code=400)
        inbound = Inbound(address, message, language=detect_language(message.text), event_id=str(event["id"]))
        await self.pipeline.receive(self, [inbound])
        return JSONResponse({"ok": True})

    async def send(self, address: Address, reply: Reply) -> None:
        self.sent.append((address, reply))


def register(registry: Any, settings: Any, core: Any) -> EchoChannel:
    return registry.add(EchoChannel(settings.channel("echo", EchoSettings), registry))
