"""The store's share of a conversation turn: ConversationService.handle with a fake retriever, on SQLite
and on PostgreSQL, one thread, this process's CPU and (PostgreSQL) the server backend's CPU per turn.

    python scripts/bench_store.py                 # SQLite in a temporary folder, and a throwaway PostgreSQL database
    python scripts/bench_store.py --turns 1000

PostgreSQL: 127.0.0.1:5432 as postgres (skipped, with a line, when unreachable). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH: another checkout can be measured with the same script

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def backend_cpu(database: str) -> float:
    """CPU seconds of the PostgreSQL backends serving `database`."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if database.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def measure(url: str, turns: int, database: str | None = None) -> str:
    from bot.conversation.service import ConversationService
    from bot.handoff.service import HandoffService
    from bot.handoff.sql_store import SqlHandoffStore
    from bot.messages import Address, InboundMessage
    from tests.fakes import FakeRetriever, make_settings

    store = SqlHandoffStore(url)
    service = ConversationService(retriever=FakeRetriever(), store=store, handoff=HandoffService(store), settings=make_settings())

    def turn(i: int, prefix: str) -> None:
        service.handle(InboundMessage(address=Address("web", f"web:{prefix}{i % 50}", "u"),
                                      text="Which logs should we keep?", message_id=f"{prefix}{i}"))

    for i in range(30):
        turn(i, "warm")
    cpu, db, wall = time.process_time(), backend_cpu(database) if database else 0.0, time.perf_counter()
    for i in range(turns):
        turn(i, "t")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    db = backend_cpu(database) - db if database else 0.0
    store.close()
    return (f"client CPU {cpu / turns * 1000:.2f} ms/turn   database server CPU {db / turns * 1000:.2f} ms/turn   "
            f"wall {wall / turns * 1000:.2f} ms/turn")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"SQLite      {measure(f'sqlite:///{tmp}/bench.sqlite3', args.turns)}")
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        print(f"PostgreSQL  skipped ({type(exc).__name__}: {exc})")
        return 0
    name = f"pbxbot_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        print(f"PostgreSQL  {measure(f'postgresql+psycopg://postgres@127.0.0.1:5432/{name}', args.turns, name)}")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
