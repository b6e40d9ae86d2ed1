"""`pbxbot tickets list|show|claim|reply|resolve`: the operator queue without a browser.

Works on the same database as the running server (SQLite in the data dir, or
PBXBOT_DATABASE_URL). A reply is recorded and put in the outbox in one transaction; the
running server's outbox dispatcher delivers it through the user's channel.

Exit status: 0 done; 1 unknown ticket, a transition the lifecycle forbids, or an empty/too long
reply; 2 the database cannot be opened. Always one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from bot.config import Settings
from bot.messages import as_utc
from bot.ports import HandoffError, TicketDetail
from bot.ticket_json import detail_json, ticket_json

ALL_STATUSES = ("open", "claimed", "resolved")
ACTIVE_STATUSES = ("open", "claimed")
# Terminal control characters (ANSI escapes, BEL, backspace...) in user text are shown escaped,
# so a message can never rewrite the operator's screen.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def run(args: Any, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    command = args.tickets_command
    try:
        store = _open_store(settings)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (and never the URL)
        print(f"pbxbot: cannot open the ticket database: {type(exc).__name__}: {_first_line(exc)}", file=err)
        return 2
    from bot.handoff.service import HandoffService

    handoff = HandoffService(store)
    try:
        if command == "list":
            return _list(handoff, args, out)
        if command == "show":
            return _show(handoff, args, out, err)
        if command == "claim":
            t = handoff.claim(args.ticket_id, args.operator)
            print(f"{t.id} claimed by {_clean(t.operator)}", file=out)
            return 0
        if command == "reply":
            text = (args.text or "").strip()
            if not text:
                print("pbxbot: reply text is empty", file=err)
                return 1
            if len(text) > settings.max_text_chars:
                print(f"pbxbot: reply longer than {settings.max_text_chars} characters", file=err)
                return 1
            t = handoff.reply(args.ticket_id, args.operator, text)
            print(f"{t.id}: reply queued for {t.address.channel} ({t.conversation_id}); "
                  "the running server delivers it", file=out)
            return 0
        if command == "resolve":
            t = handoff.resolve(args.ticket_id, args.operator)
            print(f"{t.id} resolved by {_clean(args.operator)}; the bot answers this conversation again", file=out)
            return 0
        print(f"pbxbot: unknown tickets command {command!r}", file=err)
        return 2
    except HandoffError as exc:  # TicketNotFound, TicketStateError
        print(f"pbxbot: {exc}", file=err)
        return 1
    except Exception as exc:  # noqa: BLE001 - the database went away mid-command
        print(f"pbxbot: ticket database error: {type(exc).__name__}: {_first_line(exc)}", file=err)
        return 2
    finally:
        store.close()


def _open_store(settings: Settings):
    from bot.wiring import build_store

    return build_store(settings, attempts=1)  # an operator at a terminal: say so at once, no waiting


# ---------------------------------------------------------------- list


def _list(handoff, args: Any, out: TextIO) -> int:
    statuses = ALL_STATUSES if args.all else ACTIVE_STATUSES
    tickets = handoff.list_queue(statuses)
    now = datetime.now(timezone.utc)
    if args.json:
        json.dump({"tickets": [ticket_json(t, now) for t in tickets]}, out, ensure_ascii=False)
        out.write("\n")
        return 0
    if not tickets:
        print("no tickets" if args.all else "no open tickets", file=out)
        return 0
    rows = [("ID", "PRIORITY", "STATUS", "AGE", "OPERATOR", "REASON", "CONVERSATION", "SUMMARY")]
    rows += [(t.id, t.priority, t.status, _age(t.created_at, now), t.operator or "-", t.reason, t.conversation_id,
              _summary_line(t.summary)) for t in tickets]
    rows = [tuple(_clean(c) for c in r) for r in rows]
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c + " " * (w - _width(c)) for c, w in zip(r, widths)] + [r[-1]]
        print("  ".join(cells).rstrip(), file=out)
    return 0


# ---------------------------------------------------------------- show


def _show(handoff, args: Any, out: TextIO, err: TextIO) -> int:
    detail = handoff.get_detail(args.ticket_id)
    if detail is None:
        print(f"pbxbot: no ticket {args.ticket_id!r}", file=err)
        return 1
    if args.json:
        json.dump(detail_json(detail), out, ensure_ascii=False)
        out.write("\n")
        return 0
    out.write(render_detail(detail))
    return 0


def render_detail(d: TicketDetail, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    t = d.ticket
    lines = [
        f"Ticket {t.id}  {t.priority.upper()}  {t.status}  operator: {t.operator or '-'}",
        f"Conversation: {t.conversation_id} ({t.address.channel})  reason: {t.reason}",
        f"Opened: {_iso(t.created_at)} ({_age(t.created_at, now)} ago)  updated: {_iso(t.updated_at)}"
        + (f"  re-announced: {_iso(t.reannounced_at)}" if t.reannounced_at else ""),
        "",
        "Summary:",
    ]
    lines += [f"  {key}: {_value(value)}" for key, value in t.summary.items()] or ["  (none)"]
    lines += ["", f"Transcript ({len(d.transcript)} messages):"]
    for m in d.transcript:
        who = m.role if m.role != "operator" else f"operator:{(m.meta or {}).get('operator') or '?'}"
        flag = "" if m.handled else " [unanswered]"
        body = _clean(m.text, keep_newlines=True).split("\n")
        lines.append(f"  {m.created_at.astimezone(timezone.utc):%m-%d %H:%M:%SZ} {who}{flag}: {body[0]}")
        lines += [f"      {b}" for b in body[1:]]
    lines += ["", "Audit:"]
    lines += [f"  {_iso(a.at)}  {a.actor}  {a.action}" + (f"  {a.detail}" if a.detail else "") for a in d.audit]
    return "\n".join(_clean(line, keep_newlines=True) for line in lines) + "\n"


# ---------------------------------------------------------------- formatting helpers


def _iso(dt: datetime) -> str:
    return as_utc(dt).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(created: datetime, now: datetime) -> str:
    seconds = max(0, int((now - created).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _summary_line(summary: dict[str, Any], limit: int = 60) -> str:
    parts = [f"{k}={_value(v)}" for k, v in (summary or {}).items() if v not in (None, "", [], {})]
    line = " ".join(parts).replace("\n", " ")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _clean(value: Any, *, keep_newlines: bool = False) -> str:
    text = str(value)
    if not keep_newlines:
        text = text.replace("\r", " ").replace("\n", " ")
    else:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _width(text: str) -> int:
    """Display width: East Asian wide characters take two columns."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _clean(text[0])[:200] if text else ""
