"""Local fake platform APIs on 127.0.0.1 for channel tests: Telegram Bot API, LINE Messaging API,
Slack Web API (and Slack response_url endpoints). One aiohttp server records every request.

    async with FakePlatforms() as fake:            # http://127.0.0.1:<free port>
        settings = Settings(telegram_api_url=fake.telegram_base, line_api_url=fake.url, ...)
        ...
        req = await fake.wait_for(lambda r: r.method == "sendMessage")

Also: request-signing helpers as the platforms compute them (LINE X-Line-Signature, Slack v0),
and a minimal app builder (registry + one channel + FastAPI) used when a test is about one channel.
Never reaches beyond the loopback interface.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

BOT_USER = {"id": 424242, "is_bot": True, "first_name": "PBX Bot", "username": "pbx_help_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


@dataclass
class Recorded:
    platform: str  # "telegram" | "line" | "slack" | "slack_response"
    method: str  # Bot API method, LINE path tail ("reply"/"push"), Slack method, or "response"
    path: str
    headers: dict[str, str]
    data: dict[str, Any]  # JSON body, or form fields (values JSON-decoded when they are JSON)
    at: float = field(default_factory=time.monotonic)


def _maybe_json(v: str) -> Any:
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v


class FakePlatforms:
    """An aiohttp server that answers like the three platforms' APIs and records the calls."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._msg_ids = itertools.count(1000)
        # Telegram
        self.telegram_updates: list[dict[str, Any]] = []
        self._update_event = asyncio.Event()
        self.telegram_fail_send = 0  # next N sendMessage calls answer 400
        self.telegram_blocked = False  # sendMessage answers 403: the user blocked the bot
        # LINE
        self.line_reply_fail = False  # reply answers 400 "Invalid reply token"
        self.line_push_fail = 0  # next N pushes answer 500
        self.line_retry_keys: set[str] = set()
        # Slack
        self.slack_post_fail = False  # chat.postMessage answers slack_post_error
        self.slack_post_error = "channel_not_found"
        self.slack_response_fail = False
        self.delay = 0.0  # seconds added to every answer (slow platform)
        self.outage = False  # every API answers 503 (the platform is down), calls still recorded

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> "FakePlatforms":
        @web.middleware
        async def down(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.outage:
                await self._record(request, "down", request.path.rsplit("/", 1)[-1])
                return web.json_response({"ok": False, "error_code": 503, "description": "Service Unavailable",
                                          "message": "Service Unavailable"}, status=503)
            return await handler(request)

        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[down])
        app.router.add_route("POST", "/bot{token}/{method}", self._telegram)
        app.router.add_route("GET", "/bot{token}/{method}", self._telegram)
        app.router.add_route("POST", "/v2/bot/message/{kind}", self._line)
        app.router.add_route("POST", "/api/{method}", self._slack)
        app.router.add_route("POST", "/slack/response/{rid}", self._slack_response)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._update_event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakePlatforms":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def telegram_base(self) -> str:
        return f"{self.url}/bot"

    @property
    def slack_base(self) -> str:
        return f"{self.url}/api/"

    def response_url(self, rid: str = "r1") -> str:
        return f"{self.url}/slack/response/{rid}"

    # ------------------------------------------------------------ observing

    def calls(self, platform: str | None = None, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests
                if (platform is None or r.platform == platform) and (method is None or r.method == method)]

    async def wait_for(self, predicate: Callable[[Recorded], bool], count: int = 1,
                       timeout: float = 5.0) -> list[Recorded]:
        async def _wait() -> list[Recorded]:
            while True:
                found = [r for r in self.requests if predicate(r)]
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(_wait(), timeout)

    async def _record(self, request: web.Request, platform: str, method: str) -> Recorded:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        data: dict[str, Any] = {}
        if raw:
            if "json" in ctype:
                data = json.loads(raw)
            elif "form" in ctype and "multipart" not in ctype:
                data = {k: _maybe_json(v) for k, v in urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True)}
            elif "multipart" in ctype:
                form = await request.post()
                data = {k: _maybe_json(v) for k, v in form.items() if isinstance(v, str)}
            else:
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = {"_raw": raw.decode(errors="replace")}
        rec = Recorded(platform, method, request.path, dict(request.headers), data)
        self.requests.append(rec)
        self._changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return rec

    # ------------------------------------------------------------ Telegram Bot API

    def queue_update(self, update: dict[str, Any]) -> None:
        self.telegram_updates.append(update)
        self._update_event.set()

    async def _telegram(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        rec = await self._record(request, "telegram", method)
        ok = lambda result: web.json_response({"ok": True, "result": result})  # noqa: E731
        if method == "getMe":
            return ok(BOT_USER)
        if method == "getUpdates":
            offset = int(rec.data.get("offset") or 0)
            deadline = time.monotonic() + min(float(rec.data.get("timeout") or 0), 0.3)
            while True:
                pending = [u for u in self.telegram_updates if u["update_id"] >= offset]
                if pending or time.monotonic() >= deadline:
                    return ok(pending)
                self._update_event.clear()
                try:
                    await asyncio.wait_for(self._update_event.wait(), max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        if method == "sendMessage":
            if self.telegram_blocked:
                return web.json_response({"ok": False, "error_code": 403,
                                          "description": "Forbidden: bot was blocked by the user"}, status=403)
            if self.telegram_fail_send > 0:
                self.telegram_fail_send -= 1
                return web.json_response({"ok": False, "error_code": 400,
                                          "description": "Bad Request: can't parse entities"}, status=400)
            chat_id = rec.data.get("chat_id")
            return ok({"message_id": next(self._msg_ids), "date": int(time.time()),
                       "chat": {"id": int(chat_id) if str(chat_id).lstrip("-").isdigit() else 0, "type": "private"},
                       "from": BOT_USER, "text": str(rec.data.get("text", ""))})
        # deleteWebhook, setWebhook, answerCallbackQuery, close, logOut...
        return ok(True)

    # ------------------------------------------------------------ LINE Messaging API

    async def _line(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        rec = await self._record(request, "line", kind)
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"message": "Authentication failed"}, status=401)
        if kind == "reply":
            if self.line_reply_fail:
                return web.json_response({"message": "Invalid reply token"}, status=400)
            return web.json_response({"sentMessages": [{"id": str(next(self._msg_ids)), "quoteToken": "q"}
                                                       for _ in rec.data.get("messages", [])]})
        if kind == "push":
            key = request.headers.get("X-Line-Retry-Key")
            if self.line_push_fail > 0:
                self.line_push_fail -= 1
                return web.json_response({"message": "Internal error"}, status=500)
            if key and key in self.line_retry_keys:
                return web.json_response({"message": "The retry key is already accepted"}, status=409,
                                         headers={"x-line-accepted-request-id": "dup"})
            if key:
                self.line_retry_keys.add(key)
            return web.json_response({"sentMessages": [{"id": str(next(self._msg_ids)), "quoteToken": "q"}
                                                       for _ in rec.data.get("messages", [])]})
        return web.json_response({"message": "Not found"}, status=404)

    # ------------------------------------------------------------ Slack Web API + response_url

    async def _slack(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        rec = await self._record(request, "slack", method)
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"ok": False, "error": "not_authed"})
        if method == "auth.test":
            return web.json_response({"ok": True, "url": "https://example.slack.com/", "team": "Example",
                                      "user": "pbxbot", "team_id": "T0001", "user_id": "U0BOT", "bot_id": "B0001"})
        if method == "chat.postMessage":
            if self.slack_post_fail:
                return web.json_response({"ok": False, "error": self.slack_post_error})
            return web.json_response({"ok": True, "channel": rec.data.get("channel"), "ts": f"{time.time():.6f}",
                                      "message": {"text": rec.data.get("text", "")}})
        return web.json_response({"ok": True})

    async def _slack_response(self, request: web.Request) -> web.Response:
        await self._record(request, "slack_response", "response")
        if self.slack_response_fail:
            return web.Response(status=404, text="expired_url")
        return web.Response(text="ok")


# ---------------------------------------------------------------- signing as the platforms do


def line_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def slack_headers(secret: str, body: bytes, *, timestamp: int | None = None,
                  content_type: str = "application/x-www-form-urlencoded") -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig, "Content-Type": content_type}


# ---------------------------------------------------------------- webhook bodies


def telegram_message_update(update_id: int, text: str, *, chat_id: int = 5551234, user_id: int | None = None,
                            language_code: str = "ja") -> dict[str, Any]:
    user = {"id": user_id or chat_id, "is_bot": False, "first_name": "Taro", "language_code": language_code}
    msg: dict[str, Any] = {"message_id": update_id * 10, "date": int(time.time()), "text": text, "from": user,
                           "chat": {"id": chat_id, "type": "private", "first_name": "Taro"}}
    if text.startswith("/"):
        msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return {"update_id": update_id, "message": msg}


def telegram_callback_update(update_id: int, data: str = "human", *, chat_id: int = 5551234) -> dict[str, Any]:
    user = {"id": chat_id, "is_bot": False, "first_name": "Taro", "language_code": "ja"}
    return {"update_id": update_id, "callback_query": {
        "id": f"cq{update_id}", "from": user, "chat_instance": "ci", "data": data,
        "message": {"message_id": 77, "date": int(time.time()), "text": "answer", "from": BOT_USER,
                    "chat": {"id": chat_id, "type": "private", "first_name": "Taro"}}}}


def line_text_event(text: str, *, event_id: str, user_id: str = "U" + "a" * 32, reply_token: str = "rt-1",
                    timestamp_ms: int | None = None, redelivery: bool = False) -> dict[str, Any]:
    return {"type": "message", "mode": "active", "timestamp": timestamp_ms or int(time.time() * 1000),
            "source": {"type": "user", "userId": user_id}, "webhookEventId": event_id,
            "deliveryContext": {"isRedelivery": redelivery}, "replyToken": reply_token,
            "message": {"id": f"m-{event_id}", "type": "text", "quoteToken": "qt", "text": text}}


def line_postback_event(data: str, *, event_id: str, user_id: str = "U" + "a" * 32,
                        reply_token: str = "rt-pb") -> dict[str, Any]:
    return {"type": "postback", "mode": "active", "timestamp": int(time.time() * 1000),
            "source": {"type": "user", "userId": user_id}, "webhookEventId": event_id,
            "deliveryContext": {"isRedelivery": False}, "replyToken": reply_token,
            "postback": {"data": data}}


def line_body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"destination": "U" + "0" * 32, "events": list(events)}, ensure_ascii=False).encode()


def slack_command_body(text: str, *, response_url: str, trigger_id: str = "13345224609.738474920.8088930838d88f008e0",
                       user_id: str = "U0USER1", channel_id: str = "D0DM0001", team_id: str = "T0001",
                       command: str = "/pbx") -> bytes:
    return urllib.parse.urlencode({
        "token": "legacy-unused", "team_id": team_id, "team_domain": "example", "channel_id": channel_id,
        "channel_name": "directmessage", "user_id": user_id, "user_name": "taro", "command": command,
        "text": text, "api_app_id": "A0001", "response_url": response_url, "trigger_id": trigger_id,
    }).encode()


def slack_action_body(*, response_url: str, trigger_id: str = "trg-action-1", user_id: str = "U0USER1",
                      channel_id: str = "D0DM0001", team_id: str = "T0001",
                      action_id: str = "escalate") -> bytes:
    payload = {
        "type": "block_actions", "team": {"id": team_id, "domain": "example"},
        "user": {"id": user_id, "username": "taro", "team_id": team_id},
        "api_app_id": "A0001", "token": "legacy-unused", "trigger_id": trigger_id,
        "container": {"type": "message", "message_ts": "1.2", "channel_id": channel_id, "is_ephemeral": True},
        "channel": {"id": channel_id, "name": "directmessage"}, "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": "b1", "type": "button", "value": "request_human",
                     "text": {"type": "plain_text", "text": "担当者と話す"}, "action_ts": "1.3"}],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


# ---------------------------------------------------------------- a minimal app around one channel


class ChannelApp:
    """registry + one platform channel + FastAPI, started; `client` posts to it in-process (ASGI)."""

    def __init__(self, settings: Any, core: Any, module: Any) -> None:
        from fastapi import FastAPI

        from bot.channels.registry import ChannelRegistry
        from bot.web.errors import install as install_error_handlers
        from bot.web.routes.webhooks import include_channel_routes

        self.core = core
        self.registry = ChannelRegistry(settings, core)
        core.add_ticket_listener(self.registry.ticket_listener)
        self.channel = module.register(self.registry, settings, core)
        self.app = FastAPI()
        include_channel_routes(self.app, self.registry)
        install_error_handlers(self.app)  # as the real app: a message not recorded is a 503
        self.client: Any = None

    async def __aenter__(self) -> "ChannelApp":
        import httpx

        await self.registry.start()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://testserver")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()
        await self.registry.stop()

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until the background work spawned after acks is done."""
        deadline = time.monotonic() + timeout
        while self.registry.pipeline.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------- the real composition root and core

FIXTURE_CORPUS = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "corpus"
_RETRIEVER: Any = None


def real_retriever() -> Any:
    """The real hybrid retriever over the small fixture corpus (hash embedder), built once per process."""
    global _RETRIEVER
    if _RETRIEVER is None:
        import tempfile

        from bot.config import Settings
        from bot.wiring import build_retriever

        settings = Settings(_env_file=None, data_dir=tempfile.mkdtemp(prefix="pbxbot-channel-index-"),
                            knowledge_dir=FIXTURE_CORPUS, embedder="hash")
        _RETRIEVER = build_retriever(settings)
    return _RETRIEVER


def real_core(settings: Any) -> Any:
    """The real ConversationService (SQLite store of `settings`) over the shared fixture index."""
    from bot.wiring import build_conversation_service
    from tests.fakes import shared_understander

    return build_conversation_service(settings, retriever=real_retriever(), understander=shared_understander())


class ServedApp:
    """bot.web.app.create_app with its lifespan running; `client` talks to it in-process (ASGI)."""

    def __init__(self, settings: Any, core: Any) -> None:
        from bot.web.app import create_app

        self.core = core
        self.app = create_app(settings, core=core, outbox_interval=0.05)
        self.registry = self.app.state.registry
        self._lifespan: Any = None
        self.client: Any = None

    async def __aenter__(self) -> "ServedApp":
        import httpx

        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        # Start-up recovery (core.recover_pending) runs in the background; a message that arrives
        # while it runs can be picked up by both, so the tests wait for it as a deployment's
        # health check would.
        deadline = time.monotonic() + 10
        while any(t.get_name() == "recover-pending" for t in list(self.registry.pipeline._tasks)):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://testserver")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)


def mutations(body: bytes, count: int, seed: int = 5) -> list[bytes]:
    """Deterministic hostile variants of a valid body: truncations, byte flips, splices, JSON type swaps."""
    import random

    rng = random.Random(seed)
    out: list[bytes] = []
    swaps = [b"null", b"1", b"[]", b"{}", b'""', b"true", b"-1e999", b'"\\ud800"', b"[[[[[[[[[[", b"{\"a\":"]
    while len(out) < count:
        kind = rng.randrange(4)
        b = bytearray(body)
        if kind == 0 and b:
            b = b[: rng.randrange(len(b))]
        elif kind == 1 and b:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice(swaps)
        else:
            # replace one JSON value (after a colon) by another type
            positions = [i for i, c in enumerate(b) if c == ord(":")]
            if positions:
                i = rng.choice(positions) + 1
                j = i
                while j < len(b) and b[j] not in b",}":
                    j += 1
                b[i:j] = rng.choice(swaps)
        out.append(bytes(b))
    return out
