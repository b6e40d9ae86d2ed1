"""The operator console (/console) and its JSON API (/console/api/...).

Pages are rendered on the server (escaped f-strings, no inline script or style, a strict CSP);
console.js refreshes the queue and the open ticket every 2 s through the JSON API. The queue page
also follows /console/api/events (server-sent events): a ticket opened or changed on any node is
pushed at once (PostgreSQL's change notifications, else this process's own ticket events), and
while those notifications flow the page polls only every 16 s. Every POST
form carries the session's CSRF token. Nothing but the login page is visible without a session:
pages redirect to /console/login, the API answers 401.

Operator actions call the HandoffService (claim / reply / resolve); a reply is recorded and put
in the outbox in one transaction, then the outbox dispatcher delivers it through the user's own
channel (the registry's ReplySender).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from bot.ports import ConversationCore, HandoffError, Ticket, TicketDetail
from bot.proxy import client_address, cookie_secure
from bot.web.auth import (
    DEVICE_COOKIE,
    DEVICE_MAX_AGE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Operator,
    OperatorAuth,
)

log = logging.getLogger("bot.web.console")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
_TICKET_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
ACTIONS = ("claim", "reply", "resolve")

# What the handlers read themselves, described for the OpenAPI schema (app.openapi(); the fuzz tests
# generate requests from it): credentials, CSRF values and bodies.
_STR = {"type": "string"}
_OPERATOR = [{"name": "Authorization", "in": "header", "required": False, "schema": _STR,
              "description": "Bearer <operator token>"},
             {"name": "X-Operator-Name", "in": "header", "required": False, "schema": _STR},
             {"name": "pbxbot_console", "in": "cookie", "required": False, "schema": _STR}]
_CSRF = [{"name": "X-CSRF-Token", "in": "header", "required": False, "schema": _STR}]


def _form(**fields: dict) -> dict:
    return {"requestBody": {"content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "properties": fields}}}}}


API_DOC = {"parameters": _OPERATOR}
API_ACTION_DOC = {"parameters": _OPERATOR + _CSRF, "requestBody": {"content": {"application/json": {
    "schema": {"type": "object", "properties": {"text": _STR}}}}}}
LOGIN_DOC = {"parameters": [{"name": "pbxbot_login", "in": "cookie", "required": False, "schema": _STR},
                            {"name": "pbxbot_device", "in": "cookie", "required": False, "schema": _STR}],
             **_form(csrf=_STR, name=_STR, secret=_STR)}
FORM_DOC = {"parameters": [_OPERATOR[2]], **_form(csrf=_STR, text=_STR)}
PAGE_DOC = {"parameters": [_OPERATOR[2]]}


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def ticket_json(t: Ticket, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    created = t.created_at if t.created_at.tzinfo else t.created_at.replace(tzinfo=timezone.utc)
    return {
        "id": t.id, "conversation_id": t.conversation_id, "channel": t.address.channel,
        "status": t.status, "priority": t.priority, "reason": t.reason, "summary": t.summary,
        "operator": t.operator, "created_at": _iso(t.created_at), "updated_at": _iso(t.updated_at),
        "age_seconds": max(0, int((now - created).total_seconds())),
        "summary_line": summary_line(t.summary),
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the queue: carrier · still happening · amounts · language."""
    parts = []
    if summary.get("carrier"):
        parts.append(str(summary["carrier"]))
    if summary.get("still_happening") is True:
        parts.append("still happening / 継続中")
    for key in ("amounts", "destinations"):
        value = summary.get(key)
        if value:
            parts.append(", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    if summary.get("language"):
        parts.append(str(summary["language"]))
    return " · ".join(parts)[:160]


def detail_json(d: TicketDetail) -> dict[str, Any]:
    return {
        "ticket": ticket_json(d.ticket),
        "transcript": [{"id": m.id, "role": m.role, "text": m.text, "created_at": _iso(m.created_at),
                        "operator": (m.meta or {}).get("operator")} for m in d.transcript],
        "audit": [{"actor": a.actor, "action": a.action, "detail": a.detail, "at": _iso(a.at)} for a in d.audit],
    }


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, *, operator: Operator | None = None, status: int = 200) -> HTMLResponse:
    nav = ""
    if operator is not None:
        nav = (f'<nav class="top"><a href="/console">Queue / 受付一覧</a>'
               f'<span class="who">{_e(operator.name)}</span>'
               f'<form method="post" action="/console/logout" class="inline">'
               f'<input type="hidden" name="csrf" value="{_e(operator.csrf)}">'
               f'<button type="submit">Log out / ログアウト</button></form></nav>')
    doc = f"""<!doctype html>
<html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · pbxbot console</title>
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head><body>
<a class="skip" href="#main">Skip to content / 本文へ</a>
{nav}
<main id="main" tabindex="-1">
{body}
</main></body></html>"""
    return HTMLResponse(doc, status_code=status, headers=_page_headers())


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


def _summary_rows(summary: dict[str, Any]) -> str:
    rows = []
    for key, value in summary.items():
        if key == "reason" or value in (None, "", [], {}):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        rows.append(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>")
    return "".join(rows) or "<dt>—</dt><dd>(no facts gathered / 情報なし)</dd>"


def _queue_rows(tickets: list[dict[str, Any]]) -> str:
    if not tickets:
        return '<tr class="empty"><td colspan="8">No open tickets / 未対応の問い合わせはありません</td></tr>'
    out = []
    for t in tickets:
        out.append(
            f'<tr class="prio-{_e(t["priority"])}">'
            f'<td><span class="badge {_e(t["priority"])}">{_e(t["priority"])}</span></td>'
            f'<td><a href="/console/tickets/{quote(t["id"])}">{_e(t["id"])}</a></td>'
            f'<td>{_e(t["status"])}</td><td>{_e(t["channel"])}</td><td>{_e(t["reason"])}</td>'
            f'<td>{_e(t["summary_line"])}</td>'
            f'<td>{_e(t["operator"] or "")}</td><td data-age="{t["age_seconds"]}">{_e(_age(t["age_seconds"]))}</td></tr>')
    return "".join(out)


def _age(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class QueueEvents:
    """Ticket changes for the console pages that follow /console/api/events (event-loop thread)."""

    def __init__(self, live: Callable[[], bool] = lambda: False) -> None:
        self.live = live  # are changes of other processes and nodes pushed too?
        self._queues: set[asyncio.Queue] = set()

    def publish(self, ticket_id: str, status: str) -> None:
        for q in list(self._queues):
            if q.qsize() < 100:  # a client that stopped reading misses events, and polls
                q.put_nowait({"id": ticket_id, "status": status})

    async def stream(self, keepalive: float = 15.0):
        q: asyncio.Queue = asyncio.Queue()
        self._queues.add(q)
        try:
            yield f"retry: 3000\nevent: hello\ndata: {json.dumps({'live': self.live()})}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), keepalive)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: ticket\ndata: {json.dumps(event)}\n\n"
        finally:
            self._queues.discard(q)


def build_console_router(
    auth: OperatorAuth,
    core: ConversationCore,
    run_sync: Callable[..., Awaitable[Any]],
    *,
    max_text_chars: int,
    on_reply: Callable[[], None] = lambda: None,
    events: QueueEvents | None = None,
) -> APIRouter:
    """Login guesses are limited by auth.guesses (bot/web/guesses.py); events: the queue's push stream."""
    router = APIRouter(tags=["console"])
    events = events or QueueEvents()
    handoff = core.handoff
    settings = auth.settings

    def _secure(request: Request) -> bool:
        return cookie_secure(request, settings)

    # ------------------------------------------------------------ login / logout

    @router.get("/console/login")
    async def login_page(request: Request, error: str | None = None) -> Response:
        if await auth.current_session(request) is not None:
            return RedirectResponse("/console", status_code=303)
        return _login_form(request, error=error)

    def _login_form(request: Request, *, error: str | None = None, status: int = 200,
                    headers: dict[str, str] | None = None) -> Response:
        nonce, signed = auth.new_login_nonce()
        note = "" if auth.configured else (
            '<p class="warn" role="alert">No operator credentials are configured (PBXBOT_OPERATOR_TOKEN or '
            'PBXBOT_OPERATORS). / オペレーターの認証情報が設定されていません。</p>')
        err = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        body = f"""<h1>Operator console / オペレーターコンソール</h1>
{note}{err}
<form method="post" action="/console/login" class="login">
<input type="hidden" name="csrf" value="{_e(signed)}">
<label for="name">Name / 名前 <small>(optional with the operator token / トークンの場合は任意)</small></label>
<input id="name" name="name" autocomplete="username" maxlength="64" autofocus>
<label for="secret">Password or operator token / パスワードまたはトークン</label>
<input id="secret" name="secret" type="password" autocomplete="current-password" required maxlength="512">
<button type="submit">Log in / ログイン</button>
</form>"""
        resp = _page("Log in", body, status=status)
        resp.headers.update(headers or {})
        resp.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                        secure=_secure(request), path="/console")
        return resp

    @router.post("/console/login", openapi_extra=LOGIN_DOC)
    async def login(request: Request) -> Response:
        form = await request.form()
        if not auth.login_nonce_ok(request, _str(form.get("csrf"))):
            return _login_form(request, error="The form expired; please try again. / もう一度お試しください。",
                               status=403)
        client = client_address(request, settings)
        typed = _str(form.get("name"))[:64]
        account = auth.account_of(typed)
        with auth.guesses.attempt(client, account, auth.device_id(request, account)) as attempt:
            if attempt.wait:
                seconds = max(1, int(attempt.wait + 0.999))
                log.warning("console login from %s refused for %d s: too many guesses", client, seconds)
                return _login_form(request, status=429, headers={"Retry-After": str(seconds)},
                                   error=f"Too many attempts; please wait {seconds} s. / "
                                         f"{seconds}秒ほどお待ちください。")
            name = await run_sync(auth.login, typed, _str(form.get("secret"))[:512])
            if name is None:
                attempt.failed()
        if name is None:
            log.warning("console login failed from %s", client)
            return _login_form(request, error="Wrong name, password or token. / 認証に失敗しました。", status=401)
        auth.guesses.succeeded(client, account)
        cookie, _csrf = auth.new_session(name)
        log.info("operator %s logged in", name)
        resp = RedirectResponse("/console", status_code=303)
        resp.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_MAX_AGE, httponly=True, samesite="strict",
                        secure=_secure(request), path="/console")
        if auth.device_id(request, account) is None:
            resp.set_cookie(DEVICE_COOKIE, auth.new_device(account), max_age=DEVICE_MAX_AGE, httponly=True,
                            samesite="strict", secure=_secure(request), path="/console")
        resp.delete_cookie(LOGIN_COOKIE, path="/console", secure=_secure(request), httponly=True, samesite="strict")
        return resp

    @router.post("/console/logout", openapi_extra=FORM_DOC)
    async def logout(request: Request) -> Response:
        op = await auth.current_session(request)
        form = await request.form()
        if op is not None and not auth.csrf_ok(op, _str(form.get("csrf"))):
            return _page("Forbidden", "<p>Invalid CSRF token.</p>", status=403)
        if op is not None:
            await auth.revoke(op)  # the cookie is dead everywhere, not only in this browser
            log.info("operator %s logged out", op.name)
        resp = RedirectResponse("/console/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/console", secure=_secure(request), httponly=True, samesite="strict")
        return resp

    # ------------------------------------------------------------ pages

    @router.get("/console", openapi_extra=PAGE_DOC)
    async def queue_page(request: Request) -> Response:
        op = await auth.current_session(request)
        if op is None:
            return RedirectResponse("/console/login", status_code=303)
        tickets = [ticket_json(t) for t in await run_sync(handoff.list_queue)]
        body = f"""<h1>Queue / 受付一覧 <span id="queue-count" aria-live="polite">({len(tickets)})</span></h1>
<p class="hint">Urgent first, then oldest. Updates every few seconds. / 緊急を先に、古い順。自動更新。</p>
<table id="queue" data-live="queue">
<caption class="sr">Open and claimed tickets / 対応中の問い合わせ</caption>
<thead><tr><th scope="col">Priority</th><th scope="col">Ticket</th><th scope="col">Status</th>
<th scope="col">Channel</th><th scope="col">Reason</th><th scope="col">Summary</th><th scope="col">Operator</th><th scope="col">Age</th></tr></thead>
<tbody>{_queue_rows(tickets)}</tbody></table>"""
        return _page("Queue", body, operator=op)

    @router.get("/console/tickets/{ticket_id}", openapi_extra=PAGE_DOC)
    async def ticket_page(request: Request, ticket_id: str, notice: str | None = None,
                          error: str | None = None) -> Response:
        op = await auth.current_session(request)
        if op is None:
            return RedirectResponse("/console/login", status_code=303)
        detail = await run_sync(handoff.get_detail, ticket_id) if _TICKET_ID.match(ticket_id) else None
        if detail is None:
            return _page("Not found", "<h1>Ticket not found / 見つかりません</h1>", operator=op, status=404)
        return _page(detail.ticket.id, _ticket_body(detail, op, notice=notice, error=(error or "")[:300] or None),
                     operator=op)

    # ------------------------------------------------------------ form actions

    @router.post("/console/tickets/{ticket_id}/{action}", openapi_extra=FORM_DOC)
    async def ticket_action_form(request: Request, ticket_id: str, action: str) -> Response:
        op = await auth.current_session(request)
        if op is None:
            return RedirectResponse("/console/login", status_code=303)
        form = await request.form()
        if not auth.csrf_ok(op, _str(form.get("csrf"))):
            log.warning("console: CSRF token rejected for %s on %s", op.name, action)
            return _page("Forbidden", "<h1>Invalid or missing CSRF token / 不正なリクエスト</h1>",
                         operator=op, status=403)
        error, _ticket = await _act(ticket_id, action, op, _str(form.get("text")))
        target = f"/console/tickets/{quote(ticket_id)}"
        target += f"?error={quote(error)}" if error else f"?notice={quote(action)}"
        return RedirectResponse(target, status_code=303)

    async def _act(ticket_id: str, action: str, op: Operator, text: str) -> tuple[str | None, Ticket | None]:
        if action not in ACTIONS or not _TICKET_ID.match(ticket_id):
            return "unknown action or ticket", None
        try:
            if action == "claim":
                ticket = await run_sync(handoff.claim, ticket_id, op.name)
            elif action == "resolve":
                ticket = await run_sync(handoff.resolve, ticket_id, op.name)
            else:
                text = text.strip()
                if not text:
                    return "reply text is empty / 返信が空です", None
                if len(text) > max_text_chars:
                    return f"reply longer than {max_text_chars} characters", None
                ticket = await run_sync(handoff.reply, ticket_id, op.name, text)
                on_reply()
        except HandoffError as exc:
            return str(exc), None
        log.info("operator %s: %s %s", op.name, action, ticket_id)
        events.publish(ticket.id, ticket.status)
        return None, ticket

    # ------------------------------------------------------------ JSON API

    async def _api_operator(request: Request) -> Operator | Response:
        op, wait = await auth.authenticate(request)
        if wait:
            seconds = max(1, int(wait + 0.999))
            return JSONResponse({"error": "rate_limited", "retry_after": seconds,
                                 "message": f"too many wrong tokens from this address; retry in {seconds} s"},
                                status_code=429, headers={"Retry-After": str(seconds)})
        return op if op is not None else _unauthorized()

    def _unauthorized() -> JSONResponse:
        return JSONResponse({"error": "unauthorized", "message": "operator token or console session required"},
                            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="pbxbot"'})

    @router.get("/console/api/tickets", openapi_extra=API_DOC)
    async def api_tickets(request: Request, all: bool = False) -> Response:
        op = await _api_operator(request)
        if isinstance(op, Response):
            return op
        statuses = ("open", "claimed", "resolved") if all else ("open", "claimed")
        tickets = await run_sync(handoff.list_queue, statuses)
        now = datetime.now(timezone.utc)
        return JSONResponse({"tickets": [ticket_json(t, now) for t in tickets]}, headers={"Cache-Control": "no-store"})

    @router.get("/console/api/events", openapi_extra=API_DOC)
    async def api_events(request: Request) -> Response:
        op = await _api_operator(request)
        if isinstance(op, Response):
            return op
        return StreamingResponse(events.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})

    @router.get("/console/api/tickets/{ticket_id}", openapi_extra=API_DOC)
    async def api_ticket(request: Request, ticket_id: str) -> Response:
        op = await _api_operator(request)
        if isinstance(op, Response):
            return op
        detail = await run_sync(handoff.get_detail, ticket_id) if _TICKET_ID.match(ticket_id) else None
        if detail is None:
            return JSONResponse({"error": "not_found", "message": f"no ticket {ticket_id}"}, status_code=404)
        return JSONResponse(detail_json(detail), headers={"Cache-Control": "no-store"})

    @router.post("/console/api/tickets/{ticket_id}/{action}", openapi_extra=API_ACTION_DOC)
    async def api_ticket_action(request: Request, ticket_id: str, action: str) -> Response:
        op = await _api_operator(request)
        if isinstance(op, Response):
            return op
        if not auth.csrf_ok(op, request.headers.get("x-csrf-token")):
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
        error, ticket = await _act(ticket_id, action, op, text)
        if error:
            status = 404 if "no ticket" in error else (422 if "reply" in error else 409)
            return JSONResponse({"error": "rejected", "message": error}, status_code=status)
        return JSONResponse({"ticket": ticket_json(ticket)})

    return router


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _ticket_body(d: TicketDetail, op: Operator, *, notice: str | None, error: str | None) -> str:
    t = d.ticket
    tj = ticket_json(t)
    csrf = _e(op.csrf)
    tid = quote(t.id)
    msgs = []
    for m in d.transcript:
        who = {"user": "User / 利用者", "bot": "Bot", "operator": f"Operator / 担当者 {_e((m.meta or {}).get('operator') or '')}",
               "system": "System"}.get(m.role, m.role)
        msgs.append(f'<li class="msg {_e(m.role)}"><span class="who">{who}</span> '
                    f'<time datetime="{_e(_iso(m.created_at))}">{_e(_iso(m.created_at))}</time>'
                    f'<p>{_e(m.text) or "(talk to a person / 担当者と話す)"}</p></li>')
    audit = "".join(f'<li><time>{_e(_iso(a.at))}</time> {_e(a.actor)} — {_e(a.action)} {_e(a.detail)}</li>'
                    for a in d.audit)
    flash = ""
    if error:
        flash = f'<p class="error" role="alert">{_e(error)}</p>'
    elif notice in ACTIONS:
        flash = f'<p class="notice" role="status">Done: {_e(notice)} / 完了</p>'
    actions = []
    if t.status == "open":
        actions.append(f'<form method="post" action="/console/tickets/{tid}/claim" class="inline">'
                       f'<input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="claim">Claim / 担当する</button></form>')
    if t.status != "resolved":
        actions.append(
            f'<form method="post" action="/console/tickets/{tid}/reply" class="reply">'
            f'<input type="hidden" name="csrf" value="{csrf}">'
            f'<label for="reply-text">Reply to the user (goes back through {_e(t.address.channel)}) / 利用者への返信</label>'
            f'<textarea id="reply-text" name="text" rows="4" required maxlength="4000"></textarea>'
            f'<button type="submit" id="send-reply">Send reply / 返信する</button></form>')
        actions.append(f'<form method="post" action="/console/tickets/{tid}/resolve" class="inline">'
                       f'<input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="resolve">Resolve / 解決済みにする</button></form>')
    return f"""<h1>Ticket {_e(t.id)} <span class="badge {_e(t.priority)}">{_e(t.priority)}</span>
<span id="ticket-status" class="status" aria-live="polite">{_e(t.status)}</span></h1>
{flash}
<section aria-labelledby="sum-h"><h2 id="sum-h">Summary / 概要</h2>
<dl class="summary"><dt>reason</dt><dd>{_e(t.reason)}</dd><dt>channel</dt><dd>{_e(t.address.channel)}</dd>
<dt>conversation</dt><dd>{_e(t.conversation_id)}</dd><dt>operator</dt><dd id="ticket-operator">{_e(t.operator or '—')}</dd>
<dt>opened</dt><dd>{_e(tj['created_at'])}</dd>{_summary_rows(t.summary)}</dl></section>
<section aria-labelledby="act-h"><h2 id="act-h">Actions / 操作</h2>{''.join(actions) or '<p>Resolved / 解決済み</p>'}</section>
<section aria-labelledby="tr-h"><h2 id="tr-h">Transcript / 会話記録</h2>
<ol id="transcript" class="transcript" data-live="ticket" data-ticket="{_e(t.id)}" aria-live="polite">{''.join(msgs)}</ol></section>
<section aria-labelledby="au-h"><h2 id="au-h">Audit / 監査ログ</h2><ul class="audit">{audit}</ul></section>"""
