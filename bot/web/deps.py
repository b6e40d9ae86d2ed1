"""What the routes depend on, as Annotated dependencies: the app's parts (WebState) and the operator
behind a request. A dependency that refuses raises Refused with the exact response to send (the
console redirects to its login page, the API answers 401 or 429)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from bot.web.auth import Operator, OperatorAuth

if TYPE_CHECKING:  # pragma: no cover
    from bot.channels.registry import ChannelRegistry
    from bot.config import Settings
    from bot.ports import ConversationCore
    from bot.channels.rate_limit import RateLimit
    from bot.web.background import OutboxDispatcher, PeriodicJob
    from bot.web.health import HealthCheck
    from bot.web.queue import QueueEvents
    from bot.web.widget import WidgetChannel


@dataclass
class WebState:
    """The parts of one app, chosen and wired by create_app (app.state.web)."""

    settings: "Settings"
    core: "ConversationCore"
    registry: "ChannelRegistry"
    widget: "WidgetChannel"
    auth: OperatorAuth
    queue: "QueueEvents"
    dispatcher: "OutboxDispatcher"
    jobs: list["PeriodicJob"]
    address_limit: "RateLimit"  # messages per client address (many users may share one)
    listener: Any = None  # the store's change listener (PostgreSQL), or None
    health: "HealthCheck | None" = None


class Refused(Exception):
    """Raised by a dependency: send `response` instead of running the route."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def web_state(request: Request) -> WebState:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop (queue, wake-up,
    # call back into the event loop) on every request for an attribute read
    return request.app.state.web


State = Annotated[WebState, Depends(web_state)]


async def page_operator(request: Request, state: State) -> Operator:
    """The console session's operator; without one, the login page."""
    op = await state.auth.current_session(request)
    if op is None:
        raise Refused(RedirectResponse("/console/login", status_code=303))
    return op


async def api_operator(request: Request, state: State) -> Operator:
    """The operator token (bearer) or a console session; else 401 (429 while guesses are refused)."""
    op, wait = await state.auth.authenticate(request)
    if wait:
        seconds = max(1, int(wait + 0.999))
        raise Refused(JSONResponse({"error": "rate_limited", "retry_after": seconds,
                                    "message": f"too many wrong tokens from this address; retry in {seconds} s"},
                                   status_code=429, headers={"Retry-After": str(seconds)}))
    if op is None:
        raise Refused(JSONResponse({"error": "unauthorized", "message": "operator token or console session required"},
                                   status_code=401, headers={"WWW-Authenticate": 'Bearer realm="pbxbot"'}))
    return op


PageOperator = Annotated[Operator, Depends(page_operator)]
ApiOperator = Annotated[Operator, Depends(api_operator)]
