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


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` so that a format string may use %(request_id)s."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class BodyTooLarge(HTTPException):
    """Raised from receive(): an HTTPException so that FastAPI's body parser re-raises it as is."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="body_too_large")


class BodyTimeout(HTTPException):
    """Raised from receive() when the body did not arrive within the body timeout (slow clients)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(status_code=408, detail=f"the request body did not arrive within {seconds:g} s",
                         headers={"Connection": "close"})


def _json_body(status: int, payload: dict[str, Any], rid: str) -> tuple[dict, bytes]:
    body = json.dumps(payload, ensure_ascii=False).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ],
    }
    return start, body


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
        peer = scope.get("client")
        if self.trusted_proxies and peer and trusted_peer(peer[0], self.trusted_proxies):
            # What the trusted proxy saw: the client's address, and https when it terminated TLS
            # (so that cookies get `Secure` and links use https).
            forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            scope = {**scope, "client": (forwarded_client(peer[0], forwarded, self.trusted_proxies), 0)}
            proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto
        rid_in = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = rid_in if _VALID_RID.match(rid_in) else uuid.uuid4().hex
        request_id_var.set(rid)
        started = time.perf_counter()
        state = {"started": False, "status": 0}
        path = scope.get("path", "")

        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                length = int(cl)
            except ValueError:
                length = -1
            if length < 0 or length > self.max_body_bytes:
                status = 413 if length > 0 else 400
                log.warning("rid=%s %s %s rejected: content-length %s (limit %d)", rid,
                            scope.get("method"), path, cl[:20].decode("latin-1"), self.max_body_bytes)
                start, body = _json_body(status, {
                    "error": "body_too_large" if status == 413 else "bad_request",
                    "message": ERROR_MESSAGE[413] if status == 413 else "invalid Content-Length",
                    "max_bytes": self.max_body_bytes, "request_id": rid}, rid)
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return

        received = 0
        body_done = False
        deadline = started + self.body_timeout

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # after the body: only http.disconnect is left to wait for, untimed (event streams)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.001, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                hdrs = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                hdrs.append((b"x-request-id", rid.encode()))
                present = {k.lower() for k, _ in hdrs}
                for k, v in SECURITY_HEADERS:
                    if k not in present:
                        hdrs.append((k, v))
                message = {**message, "headers": hdrs}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_wrapper)
        except BodyTimeout as exc:
            log.warning("rid=%s %s %s rejected: %s", rid, scope.get("method"), path, exc.detail)
            if not state["started"]:
                start, body = _json_body(408, {"error": "request_timeout", "message": exc.detail, "request_id": rid}, rid)
                start["headers"].append((b"connection", b"close"))
                await send(start)
                await send({"type": "http.response.body", "body": body})
                state["status"] = 408
        except BodyTooLarge:
            log.warning("rid=%s %s %s rejected: body over %d bytes", rid, scope.get("method"), path,
                        self.max_body_bytes)
            if not state["started"]:
                start, body = _json_body(413, {"error": "body_too_large", "message": ERROR_MESSAGE[413],
                                               "max_bytes": self.max_body_bytes, "request_id": rid}, rid)
                await send(start)
                await send({"type": "http.response.body", "body": body})
                state["status"] = 413
        except Exception:
            log.exception("rid=%s %s %s failed", rid, scope.get("method"), path)
            if not state["started"]:
                start, body = _json_body(500, {"error": "internal_error", "message": ERROR_MESSAGE[500],
                                               "request_id": rid}, rid)
                await send(start)
                await send({"type": "http.response.body", "body": body})
                state["status"] = 500
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("rid=%s %s %s %s %.1fms", rid, scope.get("method"), path, state["status"],
                                (time.perf_counter() - started) * 1000)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
