"""The console's JSON API: the queue, one ticket, its actions, and the queue's push stream.
`Authorization: Bearer <operator token>` or a console session; 401 without (429 while too many wrong
tokens come from one address); an action with a session needs its X-CSRF-Token."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bot.web.deps import ApiOperator, State
from bot.ticket_json import detail_json, ticket_json
from bot.web.routes.console import ACTIONS, OPERATOR_PARAMETERS, STRING, TICKET_ID, act

API_DOC = {"parameters": OPERATOR_PARAMETERS}
API_ACTION_DOC = {"parameters": OPERATOR_PARAMETERS + [{"name": "X-CSRF-Token", "in": "header", "required": False,
                                                        "schema": STRING}],
                  "requestBody": {"content": {"application/json": {
                      "schema": {"type": "object", "properties": {"text": STRING}}}}}}
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/console/api", tags=["console"])


@router.get("/tickets", openapi_extra=API_DOC)
async def api_tickets(state: State, op: ApiOperator, all: bool = False) -> Response:
    statuses = ("open", "claimed", "resolved") if all else ("open", "claimed")
    tickets = await state.registry.run_sync(state.core.handoff.list_queue, statuses)
    now = datetime.now(timezone.utc)
    return JSONResponse({"tickets": [ticket_json(t, now) for t in tickets]}, headers=NO_STORE)


@router.get("/events", openapi_extra=API_DOC)
async def api_events(state: State, op: ApiOperator) -> Response:
    return StreamingResponse(state.queue.stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})


@router.get("/tickets/{ticket_id}", openapi_extra=API_DOC)
async def api_ticket(state: State, op: ApiOperator, ticket_id: str) -> Response:
    detail = (await state.registry.run_sync(state.core.handoff.get_detail, ticket_id)
              if TICKET_ID.match(ticket_id) else None)
    if detail is None:
        return JSONResponse({"error": "not_found", "message": f"no ticket {ticket_id}"}, status_code=404)
    return JSONResponse(detail_json(detail), headers=NO_STORE)


@router.post("/tickets/{ticket_id}/{action}", openapi_extra=API_ACTION_DOC)
async def api_ticket_action(request: Request, state: State, op: ApiOperator, ticket_id: str, action: str) -> Response:
    if not state.auth.csrf_ok(op, request.headers.get("x-csrf-token")):
        return JSONResponse({"error": "csrf", "message": "X-CSRF-Token header missing or wrong"}, status_code=403)
    text = ""
    if action == "reply":
        try:
            data = await request.json()
        except Exception:
            return JSONResponse({"error": "invalid_json", "message": "body must be {\"text\": ...}"}, status_code=400)
        text = data.get("text") if isinstance(data, dict) and isinstance(data.get("text"), str) else ""
    if action not in ACTIONS:
        return JSONResponse({"error": "not_found", "message": "unknown action"}, status_code=404)
    error, ticket = await act(state, ticket_id, action, op, text)
    if error:
        status = 404 if "no ticket" in error else (422 if "reply" in error else 409)
        return JSONResponse({"error": "rejected", "message": error}, status_code=status)
    return JSONResponse({"ticket": ticket_json(ticket)})
