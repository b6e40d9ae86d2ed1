"""Errors as JSON with the request id, never a 500 for bad input: invalid bodies and parameters (422),
HTTP errors of the framework (404, 405, 408, 413...), a dependency's refusal (deps.Refused), and a
webhook whose message could not be recorded (503)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.channels.pipeline import NotRecorded
from bot.web.deps import Refused
from bot.web.middleware import current_request_id

log = logging.getLogger("bot.web")

HTTP_ERRORS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
               413: "body_too_large"}


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type")}
              for e in exc.errors()[:10]]
    log.info("rid=%s %s %s invalid request: %s", current_request_id(), request.method, request.url.path,
             "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
    json_broken = any(e["type"] == "json_invalid" for e in errors)
    return JSONResponse({"error": "invalid_json" if json_broken else "invalid_request",
                         "message": "The request body is not valid JSON of the expected shape.",
                         "detail": errors, "request_id": current_request_id()}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = HTTP_ERRORS.get(exc.status_code, "http_error")
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):
        code = "invalid_json"
    if exc.status_code >= 500:
        log.error("rid=%s %s %s -> %d", current_request_id(), request.method, request.url.path, exc.status_code)
    return JSONResponse({"error": code, "message": str(exc.detail), "request_id": current_request_id()},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def refused(request: Request, exc: Refused) -> Response:
    return exc.response


async def not_recorded(request: Request, exc: NotRecorded) -> Response:
    """A webhook whose message the store could not commit: 503, so that the platform retries (it
    would drop the message for good after a 2xx)."""
    return JSONResponse({"error": "store_unavailable", "message": "The message could not be recorded; send it again.",
                         "request_id": current_request_id()}, status_code=503, headers={"Retry-After": "5"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, refused)  # type: ignore[arg-type]
    app.add_exception_handler(NotRecorded, not_recorded)  # type: ignore[arg-type]
