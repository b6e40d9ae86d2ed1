"""Pure ASGI middleware: request ids, the client address behind trusted proxies, the body size limit and
read timeout, the last-resort error handler, security headers.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses (SSE) pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException

from bot.proxy import Network, forwarded_client, trusted_peer

log = logging.getLogger("bot.web")
access_log = logging.getLogger("bot.web.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_RID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def current_request_id() -> str:
    return request_id_var.get()


class BodyTooLarge(HTTPException):
    """Raised from receive(): an HTTPException so that FastAPI's body parser re-raises it as is."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="body_too_large")


class BodyTimeout(HTTPException):
    """Raised from receive() when the body did not arrive within the body timeout (slow clients)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(status_code=408, detail=f"the request body did not arrive within {seconds:g} s",
                         headers={"Connection": "close"})


ERROR_MESSAGE = {
    500: "Sorry, something went wrong on our side. Please try again. / 申し訳ありません、エラーが発生しました。もう一度お試しください。",
    413: "The request is too large. / リクエストが大きすぎます。",
}


class RequestContextMiddleware:
    """Outermost layer (inside Starlette's ServerErrorMiddleware, which it makes unreachable):

    * takes X-Request-ID from the request when it is sane, else makes one; echoes it on every
      response and puts it in a context variable for log lines;
    * behind a trusted proxy, sets the request's client and scheme to what it forwarded (bot/proxy.py);
    * enforces max_body_bytes (Content-Length up front, streamed bodies while reading) → 413 JSON;
    * gives a client body_timeout seconds from the end of the headers to send the body → 408 JSON,
      connection closed (the header timeout is uvicorn's part: bot/web/timeouts.py);
    * turns any unhandled exception into a 500 JSON with the request id, logged with the traceback
      (the secret-masking filter on the root handlers sees it like every other record);
    * adds security headers and an access log line.
    """

    def __init__(self, app, *, max_body_bytes: int, body_timeout: float = 30.0,
                 trusted_proxies: tuple[Network, ...] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        scope = self._as_forwarded(scope, headers)
        rid_in = headers.get(b"x-request-id", b"").decode("latin-1")
        exchange = _Exchange(scope, receive, send, rid_in if _VALID_RID.match(rid_in) else uuid.uuid4().hex,
                             self.max_body_bytes, self.body_timeout)
        request_id_var.set(exchange.rid)
        try:
            if not await self._refuse_length(exchange, headers.get(b"content-length")):
                await self.app(scope, exchange.receive, exchange.send)
        except BodyTimeout as exc:
            exchange.log_refusal(exc.detail)
            await exchange.error(408, {"error": "request_timeout", "message": exc.detail}, close=True)
        except BodyTooLarge:
            exchange.log_refusal(f"body over {self.max_body_bytes} bytes")
            await exchange.error(413, {"error": "body_too_large", "message": ERROR_MESSAGE[413],
                                       "max_bytes": self.max_body_bytes})
        except Exception:
            log.exception("rid=%s %s %s failed", exchange.rid, scope.get("method"), exchange.path)
            await exchange.error(500, {"error": "internal_error", "message": ERROR_MESSAGE[500]})
        finally:
            exchange.log_access()

    def _as_forwarded(self, scope: dict, headers: dict[bytes, bytes]) -> dict:
        """Behind a trusted proxy: the client's address it saw, and https when it terminated TLS
        (so that cookies get `Secure` and links use https)."""
        peer = scope.get("client")
        if not (self.trusted_proxies and peer and trusted_peer(peer[0], self.trusted_proxies)):
            return scope
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        scope = {**scope, "client": (forwarded_client(peer[0], forwarded, self.trusted_proxies), 0)}
        proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
        return scope

    async def _refuse_length(self, exchange: "_Exchange", content_length: bytes | None) -> bool:
        """A Content-Length over the limit (413) or not a number (400) is refused before the body."""
        if content_length is None:
            return False
        try:
            length = int(content_length)
        except ValueError:
            length = -1
        if 0 <= length <= self.max_body_bytes:
            return False
        exchange.log_refusal(f"content-length {content_length[:20].decode('latin-1')} (limit {self.max_body_bytes})")
        too_large = length > 0
        await exchange.error(413 if too_large else 400, {
            "error": "body_too_large" if too_large else "bad_request",
            "message": ERROR_MESSAGE[413] if too_large else "invalid Content-Length", "max_bytes": self.max_body_bytes})
        return True


class _Exchange:
    """One request/response through the middleware: its id, its limited body, its answer's status."""

    def __init__(self, scope: dict, receive: Any, send: Any, rid: str, max_body_bytes: int, body_timeout: float) -> None:
        self.scope, self._receive, self._send, self.rid = scope, receive, send, rid
        self.path, self.max_body_bytes, self.body_timeout = scope.get("path", ""), max_body_bytes, body_timeout
        self.started_at = time.perf_counter()
        self.deadline = self.started_at + body_timeout
        self.started, self.status, self.received, self.body_done = False, 0, 0, False

    async def receive(self) -> dict:
        if self.body_done:  # after the body: only http.disconnect is left to wait for, untimed (event streams)
            return await self._receive()
        try:
            # asyncio.timeout, not wait_for: no task wrapped around every receive
            async with asyncio.timeout(max(0.001, self.deadline - time.perf_counter())):
                message = await self._receive()
        except TimeoutError:
            raise BodyTimeout(self.body_timeout) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_body_bytes:
                raise BodyTooLarge()
            self.body_done = not message.get("more_body", False)
        else:
            self.body_done = True
        return message

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started, self.status = True, message["status"]
            hdrs = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            hdrs.append((b"x-request-id", self.rid.encode()))
            present = {k.lower() for k, _ in hdrs}
            hdrs += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": hdrs}
        await self._send(message)

    async def error(self, status: int, payload: dict[str, Any], *, close: bool = False) -> None:
        """Answer with a JSON error, unless the response has already begun."""
        if self.started:
            return
        body = json.dumps({**payload, "request_id": self.rid}, ensure_ascii=False).encode()
        headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", self.rid.encode())]
        if close:
            headers.append((b"connection", b"close"))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
        self.status = status

    def log_refusal(self, why: str) -> None:
        log.warning("rid=%s %s %s rejected: %s", self.rid, self.scope.get("method"), self.path, why)

    def log_access(self) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("rid=%s %s %s %s %.1fms", self.rid, self.scope.get("method"), self.path, self.status,
                            (time.perf_counter() - self.started_at) * 1000)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
