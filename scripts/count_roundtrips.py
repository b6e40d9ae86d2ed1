"""Round trips a conversation turn makes to PostgreSQL: libpq's own protocol trace (psycopg's public
`pgconn.trace`) on every connection of the store's engine, ConversationService.handle with a fake
retriever (as bench_store.py), one thread, a throwaway database at 127.0.0.1:5432.

    python scripts/count_roundtrips.py               # per turn: round trips, and the statements of one turn
    python scripts/count_roundtrips.py --turns 200
    python scripts/count_roundtrips.py --webhook     # a platform webhook's turn: record(), then handle(message, recorded)

A round trip is a ReadyForQuery the server sends back (one per statement, BEGIN, COMMIT or ping).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--webhook", action="store_true",
                    help="record() then handle(message, recorded), replies through the outbox (Telegram, LINE...)")
    args = ap.parse_args()

    import psycopg
    from sqlalchemy import event

    from bot.conversation.service import ConversationService
    from bot.handoff.service import HandoffService
    from bot.handoff.sql_store import SqlHandoffStore
    from bot.messages import Address, InboundMessage
    from tests.fakes import FakeRetriever, make_settings

    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    name = f"pbxbot_rt_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    tmp = tempfile.mkdtemp()
    traced: list = []
    phase = {"file": os.path.join(tmp, "warm.log")}
    sa_events = collections.Counter()

    def start_trace(pgconn) -> None:
        fd = os.open(phase["file"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        pgconn.trace(fd)
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)

    try:
        store = SqlHandoffStore(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")

        @event.listens_for(store.engine, "connect")
        def _connect(dbapi_conn, _record):  # noqa: ANN001
            traced.append(dbapi_conn.pgconn)
            start_trace(dbapi_conn.pgconn)

        for kind in ("checkout",):
            event.listen(store.engine, kind, lambda *a, k=kind: sa_events.update([k]))
        for kind in ("begin", "commit", "rollback", "before_cursor_execute"):
            event.listen(store.engine, kind, lambda *a, k=kind, **kw: sa_events.update([k]))
        store.engine.dispose()  # every connection from here on is traced
        service = ConversationService(retriever=FakeRetriever(), store=store, handoff=HandoffService(store),
                                      settings=make_settings())

        def turn(i: int, prefix: str) -> None:
            message = InboundMessage(address=Address("web", f"web:{prefix}{i % 50}", "u"),
                                     text="Which logs should we keep?", message_id=f"{prefix}{i}", outbox=args.webhook)
            if args.webhook:
                service.handle(message, service.record(message))
            else:
                service.handle(message)

        for i in range(60):
            turn(i, "warm")

        def retrace(path: str) -> None:
            phase["file"] = path
            for pgconn in traced:
                if pgconn.status == psycopg.pq.ConnStatus.OK:
                    pgconn.untrace()
                    start_trace(pgconn)

        retrace(os.path.join(tmp, "one.log"))
        sa_events.clear()
        turn(10_000, "warm")  # a conversation seen before (state to read and write)
        sa_one = dict(sa_events)
        sa_events.clear()
        retrace(os.path.join(tmp, "many.log"))
        for i in range(args.turns):
            turn(i, "m")
        sa_many = dict(sa_events)
        retrace(os.path.join(tmp, "end.log"))
        store.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def rfq(path: str) -> int:
        return sum(1 for line in Path(path).read_text().splitlines() if "\tReadyForQuery\t" in line)

    print(f"one turn: {rfq(os.path.join(tmp, 'one.log'))} round trips; SQLAlchemy events {sa_one}")
    named: dict[str, str] = {}  # psycopg prepares a statement after a few executions: name -> SQL
    for log in ("warm.log", "one.log"):
        for m in re.finditer(r'^F\t\d+\tParse\t "([^"]+)" "((?:[^"\\]|\\.)*)"', Path(tmp, log).read_text(), re.M):
            named[m.group(1)] = m.group(2)
    for line in Path(tmp, "one.log").read_text().splitlines():
        query = re.match(r'F\t\d+\tQuery\t "(.*)"', line)
        parse = re.match(r'F\t\d+\tParse\t "" "((?:[^"\\]|\\.)*)"', line)
        bind = re.match(r'F\t\d+\tBind\t "" "([^"]+)"', line)
        sql = query.group(1) if query else parse.group(1) if parse else named.get(bind.group(1), "?") if bind else None
        if sql is not None:
            print("   ", " ".join(sql.split())[:150])
    n = rfq(os.path.join(tmp, "many.log"))
    print(f"{args.turns} turns: {n} round trips, {n / args.turns:.2f} a turn; SQLAlchemy events a turn "
          + str({k: round(v / args.turns, 2) for k, v in sa_many.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
