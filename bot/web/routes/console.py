"""The operator console's pages: login, logout, the queue, one ticket and its form actions.

Pages are Jinja2 templates (bot/web/templates) with autoescaping on: the console shows what users
wrote, so escaping is the template engine's default, never each call site's. No inline script or
style, a strict CSP; console.js refreshes the queue and the open ticket through the JSON API
(console_api.py). Every POST form carries the session's CSRF token; nothing but the login page is
visible without a session. A reply is recorded and put in the outbox in one transaction, then the
dispatcher delivers it through the user's own channel.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bot.ports import HandoffError, Ticket, UndeliveredItem
from bot.proxy import client_address, cookie_secure
from bot.web.auth import DEVICE_COOKIE, DEVICE_MAX_AGE, LOGIN_COOKIE, SESSION_COOKIE, SESSION_MAX_AGE, Operator
from bot.web.deps import PageOperator, State, WebState
from bot.ticket_json import iso, ticket_json
from bot.web.queue import age_text

log = logging.getLogger("bot.web.console")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
TICKET_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
ACTIONS = ("claim", "reply", "resolve")

# What the handlers read themselves, described for the OpenAPI schema (the fuzz tests generate
# requests from it): credentials, CSRF values and bodies.
STRING = {"type": "string"}
OPERATOR_PARAMETERS = [{"name": "Authorization", "in": "header", "required": False, "schema": STRING,
                        "description": "Bearer <operator token>"},
                       {"name": "X-Operator-Name", "in": "header", "required": False, "schema": STRING},
                       {"name": "pbxbot_console", "in": "cookie", "required": False, "schema": STRING}]


def form_body(**fields: dict) -> dict:
    return {"requestBody": {"content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "properties": fields}}}}}


LOGIN_DOC = {"parameters": [{"name": "pbxbot_login", "in": "cookie", "required": False, "schema": STRING},
                            {"name": "pbxbot_device", "in": "cookie", "required": False, "schema": STRING}],
             **form_body(csrf=STRING, name=STRING, secret=STRING)}
FORM_DOC = {"parameters": [OPERATOR_PARAMETERS[2]], **form_body(csrf=STRING, text=STRING)}
PAGE_DOC = {"parameters": [OPERATOR_PARAMETERS[2]]}

TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
TEMPLATES.globals.update(age_text=age_text, iso=iso)
SPEAKERS = {"user": "User / 利用者", "bot": "Bot", "system": "System"}

router = APIRouter(tags=["console"])


def page(template: str, *, status: int = 200, operator: Operator | None = None, **values: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(operator=operator, **values)
    return HTMLResponse(html, status_code=status,
                        headers={"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-store"})


def form_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# ------------------------------------------------------------ login / logout


@router.get("/console/login")
async def login_page(request: Request, state: State, error: str | None = None) -> Response:
    if await state.auth.current_session(request) is not None:
        return RedirectResponse("/console", status_code=303)
    return login_form(request, state, error=error)


def login_form(request: Request, state: WebState, *, error: str | None = None, status: int = 200,
               headers: dict[str, str] | None = None) -> Response:
    nonce, signed = state.auth.new_login_nonce()
    resp = page("login.html", status=status, title="Log in", configured=state.auth.configured, error=error,
                csrf=signed)
    resp.headers.update(headers or {})
    resp.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                    secure=cookie_secure(request, state.settings), path="/console")
    return resp


@router.post("/console/login", openapi_extra=LOGIN_DOC)
async def login(request: Request, state: State) -> Response:
    auth, form = state.auth, await request.form()
    if not auth.login_nonce_ok(request, form_text(form.get("csrf"))):
        return login_form(request, state, error="The form expired; please try again. / もう一度お試しください。",
                          status=403)
    client, typed = client_address(request, state.settings), form_text(form.get("name"))[:64]
    account = auth.account_of(typed)
    with auth.guesses.attempt(client, account, auth.device_id(request, account)) as attempt:
        if attempt.wait:
            seconds = max(1, int(attempt.wait + 0.999))
            log.warning("console login from %s refused for %d s: too many guesses", client, seconds)
            return login_form(request, state, status=429, headers={"Retry-After": str(seconds)},
                              error=f"Too many attempts; please wait {seconds} s. / {seconds}秒ほどお待ちください。")
        name = await state.registry.run_sync(auth.login, typed, form_text(form.get("secret"))[:512])
        if name is None:
            attempt.failed()
    if name is None:
        log.warning("console login failed from %s", client)
        return login_form(request, state, error="Wrong name, password or token. / 認証に失敗しました。", status=401)
    auth.guesses.succeeded(client, account)
    log.info("operator %s logged in", name)
    return logged_in(request, state, name, account)


def logged_in(request: Request, state: WebState, name: str, account: str) -> Response:
    secure = cookie_secure(request, state.settings)
    cookie, _csrf = state.auth.new_session(name)
    resp = RedirectResponse("/console", status_code=303)
    resp.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_MAX_AGE, httponly=True, samesite="strict", secure=secure,
                    path="/console")
    if state.auth.device_id(request, account) is None:
        resp.set_cookie(DEVICE_COOKIE, state.auth.new_device(account), max_age=DEVICE_MAX_AGE, httponly=True,
                        samesite="strict", secure=secure, path="/console")
    resp.delete_cookie(LOGIN_COOKIE, path="/console", secure=secure, httponly=True, samesite="strict")
    return resp


@router.post("/console/logout", openapi_extra=FORM_DOC)
async def logout(request: Request, state: State) -> Response:
    op = await state.auth.current_session(request)
    form = await request.form()
    if op is not None and not state.auth.csrf_ok(op, form_text(form.get("csrf"))):
        return page("message.html", status=403, title="Forbidden", heading=None, text="Invalid CSRF token.")
    if op is not None:
        await state.auth.revoke(op)  # the cookie is dead everywhere, not only in this browser
        log.info("operator %s logged out", op.name)
    resp = RedirectResponse("/console/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/console", secure=cookie_secure(request, state.settings),
                       httponly=True, samesite="strict")
    return resp


# ------------------------------------------------------------ pages


@router.get("/console", openapi_extra=PAGE_DOC)
async def queue_page(state: State, op: PageOperator) -> Response:
    tickets = [ticket_json(t) for t in await state.registry.run_sync(state.core.handoff.list_queue)]
    counts = await state.registry.run_sync(state.core.handoff.outbox_counts)
    return page("queue.html", operator=op, title="Queue", tickets=tickets, deliveries=counts)


@router.get("/console/tickets/{ticket_id}", openapi_extra=PAGE_DOC)
async def ticket_page(state: State, op: PageOperator, ticket_id: str, notice: str | None = None,
                      error: str | None = None) -> Response:
    detail = (await state.registry.run_sync(state.core.handoff.get_detail, ticket_id)
              if TICKET_ID.match(ticket_id) else None)
    if detail is None:
        return page("message.html", status=404, operator=op, title="Not found",
                    heading="Ticket not found / 見つかりません")
    undelivered = await state.registry.run_sync(lambda: state.core.handoff.undelivered(100, detail.ticket.id))
    return page("ticket.html", operator=op, title=detail.ticket.id, detail=detail, error=(error or "")[:300] or None,
                notice=notice if notice in ACTIONS + ("retry",) else None, summary=summary_rows(detail.ticket.summary),
                speaker=speaker, undelivered=[delivery_row(u) for u in undelivered])


@router.get("/console/deliveries", openapi_extra=PAGE_DOC)
async def deliveries_page(state: State, op: PageOperator, notice: str | None = None) -> Response:
    """Replies that failed to reach their user (retried with back-off) or never will (dead)."""
    items = await state.registry.run_sync(state.core.handoff.undelivered, 500)
    return page("deliveries.html", operator=op, title="Deliveries", items=[delivery_row(u) for u in items],
                notice="retry" if notice == "retry" else None)


def delivery_row(item: UndeliveredItem) -> dict[str, Any]:
    return {"id": item.id, "status": item.status, "attempts": item.attempts, "channel": item.address.channel,
            "conversation_id": item.address.conversation_id, "ticket_id": item.ticket_id,
            "error": (item.last_error or "")[:200], "created_at": item.created_at,
            "next_attempt_at": item.next_attempt_at if item.status == "pending" else None,
            "text": str(item.reply.get("answer") or "")[:160]}


@router.post("/console/deliveries/{item_id}/retry", openapi_extra=FORM_DOC)
async def retry_delivery(request: Request, state: State, op: PageOperator, item_id: int) -> Response:
    """Send a dead or waiting reply again now; back to the ticket (when given) or the list."""
    form = await request.form()
    if not state.auth.csrf_ok(op, form_text(form.get("csrf"))):
        return page("message.html", status=403, operator=op, title="Forbidden",
                    heading="Invalid or missing CSRF token / 不正なリクエスト")
    if not 0 < item_id < 2**62 or not await state.registry.run_sync(
            state.core.handoff.retry_outbox, item_id, f"operator:{op.name}"):
        return page("message.html", status=404, operator=op, title="Not found",
                    heading="Nothing to retry (sent already, or no such item) / 再送対象がありません")
    log.info("operator %s: retry delivery #%d", op.name, item_id)
    state.dispatcher.wake()
    ticket = form_text(form.get("ticket"))
    if ticket and TICKET_ID.match(ticket):
        return RedirectResponse(f"/console/tickets/{quote(ticket)}?notice=retry", status_code=303)
    return RedirectResponse("/console/deliveries?notice=retry", status_code=303)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in summary.items():
        if key == "reason" or value in (None, "", [], {}):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        rows.append((key, str(value)))
    return rows


def speaker(message: Any) -> str:
    if message.role == "operator":
        return f"Operator / 担当者 {(message.meta or {}).get('operator') or ''}"
    return SPEAKERS.get(message.role, message.role)


# ------------------------------------------------------------ form actions


@router.post("/console/tickets/{ticket_id}/{action}", openapi_extra=FORM_DOC)
async def ticket_action_form(request: Request, state: State, op: PageOperator, ticket_id: str,
                             action: str) -> Response:
    form = await request.form()
    if not state.auth.csrf_ok(op, form_text(form.get("csrf"))):
        log.warning("console: CSRF token rejected for %s on %s", op.name, action)
        return page("message.html", status=403, operator=op, title="Forbidden",
                    heading="Invalid or missing CSRF token / 不正なリクエスト")
    error, _ticket = await act(state, ticket_id, action, op, form_text(form.get("text")))
    target = f"/console/tickets/{quote(ticket_id)}"
    target += f"?error={quote(error)}" if error else f"?notice={quote(action)}"
    return RedirectResponse(target, status_code=303)


async def act(state: WebState, ticket_id: str, action: str, op: Operator, text: str) -> tuple[str | None, Ticket | None]:
    """claim | reply | resolve, as one operator: (error, None) or (None, the ticket after)."""
    if action not in ACTIONS or not TICKET_ID.match(ticket_id):
        return "unknown action or ticket", None
    handoff, limit = state.core.handoff, state.settings.max_text_chars
    text = text.strip()
    if action == "reply" and not text:
        return "reply text is empty / 返信が空です", None
    if action == "reply" and len(text) > limit:
        return f"reply longer than {limit} characters", None
    call = {"claim": (handoff.claim, ticket_id, op.name), "resolve": (handoff.resolve, ticket_id, op.name),
            "reply": (handoff.reply, ticket_id, op.name, text)}[action]
    try:
        ticket = await state.registry.run_sync(*call)
    except HandoffError as exc:
        return str(exc), None
    if action == "reply":
        state.dispatcher.wake()
    log.info("operator %s: %s %s", op.name, action, ticket_id)
    state.queue.publish(ticket.id, ticket.status)
    return None, ticket
