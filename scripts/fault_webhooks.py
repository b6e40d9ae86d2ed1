"""Fault run for "nothing lost on any channel": webhooks under kill -9, a platform API outage, a
database outage, against a real `pbxbot serve` subprocess and fake platform APIs on 127.0.0.1.

    .venv/bin/python scripts/fault_webhooks.py [--store sqlite|postgres] [--messages 1000] [--kills 10]
                                               [--workers N] [--seed S]
    .venv/bin/python scripts/fault_webhooks.py --store postgres --workers 2 [--kill-target group|worker]
    .venv/bin/python scripts/fault_webhooks.py --api-outage 40 [--api-outage-mode 503|refuse] [--api-down-at-start]
    .venv/bin/python scripts/fault_webhooks.py --store postgres --db-outage [SECONDS] [--db-outage-mode refuse|blackhole]

Telegram (webhook mode) and LINE are enabled and pointed at fake APIs in this process. N signed
webhook messages (mixed Telegram and LINE, a few concurrent senders, distinct ids and texts, several
users, each message its own group chat, in bursts of --burst at --rate a second on average) are
sent as the platforms send them: a webhook that got no 2xx (refused, reset, 5xx, timeout) is sent
again later with the same update_id / webhookEventId until it gets one. Faults: K kill -9 of the
server's process group at random moments mid-burst (once acknowledged messages are unanswered),
each followed by a restart (or, --kill-target worker, of one uvicorn worker); or the fake APIs down
for SECONDS (messages arriving meanwhile; operator replies sent during it); or PostgreSQL cut off
behind a TCP proxy for SECONDS (default 15).

At the end (after the last restart, once the replies have drained or --drain-timeout) it prints:
messages sent, acknowledged (2xx), LOST (acknowledged, never recorded in the `messages` table),
DUPLICATE (recorded more than once), UNANSWERED (acknowledged, no reply reached the fake API),
replies delivered more than once; for an API outage how many of the replies pending when it ended
were delivered after recovery; for a database outage how many webhooks answered 2xx during it were
never recorded (must be 0: the server should answer 503 so the platform retries).

Needs a built data dir (PBXBOT_DATA_DIR, default ./.pbxbot; copied per run) and, for postgres,
PostgreSQL on 127.0.0.1:5432 as postgres (a fresh database per run, dropped after). Exit status 0
when nothing was lost, duplicated or left unanswered (and the outage targets hold), else 1.
Bounded by --max-seconds. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fault_harness import FaultConfig, FaultResult, pg_available, run_fault_sync  # noqa: E402


def passed(result: FaultResult) -> bool:
    ok = (not result.lost and not result.duplicates and not result.unanswered and result.never_acknowledged == 0
          and not result.replies_undelivered)
    if result.mode == "api-outage":
        ok = ok and result.delivered_after_recovery == result.pending_at_recovery \
            and result.operator_delivered == result.operator_pending
    if result.mode == "db-outage":
        ok = ok and not result.acked_in_db_outage_lost
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--messages", type=int, default=None,
                    help="webhook messages (default 1000 with kills, 200 with an API outage, 300 with a DB outage)")
    ap.add_argument("--kills", type=int, default=None, help="kill -9 of the server (default 10; 0 with an outage)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (more than 1 needs --store postgres)")
    ap.add_argument("--kill-target", choices=("group", "worker"), default="group",
                    help="group: the server with its workers, then restarted (default); worker: one uvicorn "
                         "worker of --workers N (uvicorn starts another, the others keep serving)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--senders", type=int, default=4, help="concurrent webhook senders (default 4)")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--rate", type=float, default=15.0,
                    help="new messages a second with kills (default 15; 0: as fast as the senders go)")
    ap.add_argument("--burst", type=int, default=40,
                    help="with kills: new messages come in bursts of this many (default 40; 1: evenly)")
    ap.add_argument("--api-outage", type=float, default=0.0, metavar="SECONDS",
                    help="the fake platform APIs are down this long while messages arrive")
    ap.add_argument("--api-outage-mode", choices=("503", "refuse"), default="503")
    ap.add_argument("--api-down-at-start", action="store_true",
                    help="the APIs are already down when the server starts (back SECONDS after it is up)")
    ap.add_argument("--operator-replies", type=int, default=3, help="API outage: operator replies sent during it")
    ap.add_argument("--db-outage", type=float, nargs="?", const=15.0, default=0.0, metavar="SECONDS",
                    help="PostgreSQL cut off behind a proxy this long (default 15 s; --store postgres)")
    ap.add_argument("--db-outage-mode", choices=("refuse", "blackhole"), default="refuse")
    ap.add_argument("--outbox-max-backoff", type=float, default=1.0, help="PBXBOT_OUTBOX_MAX_BACKOFF for the server")
    ap.add_argument("--drain-timeout", type=float, default=None,
                    help="seconds to wait for the replies after the last fault (default 120; 180 with --kill-target "
                         "worker: a dead worker's messages are recovered after 60 s, by a job that runs every 60 s)")
    ap.add_argument("--max-seconds", type=float, default=1200.0)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="a built data dir to copy (default $PBXBOT_DATA_DIR or ./.pbxbot)")
    ap.add_argument("--work-dir", type=Path, default=None, help="logs and the SQLite database (default: a temp dir)")
    ap.add_argument("--keep-database", action="store_true", help="postgres: do not drop the run's database")
    ap.add_argument("--examples", action="store_true", help="also print a few ids of each failure")
    args = ap.parse_args()

    if args.db_outage and args.store != "postgres":
        ap.error("--db-outage needs --store postgres")
    if args.workers > 1 and args.store != "postgres":
        ap.error("--workers > 1 needs --store postgres")
    if args.store == "postgres":
        why = pg_available()
        if why:
            print(f"PostgreSQL is not reachable on 127.0.0.1:5432 as postgres: {why}", file=sys.stderr)
            return 2
    if args.kill_target == "worker" and args.workers < 2:
        ap.error("--kill-target worker needs --workers 2 or more")
    outage = bool(args.api_outage or args.db_outage)
    drain = args.drain_timeout if args.drain_timeout is not None else (180.0 if args.kill_target == "worker" else 120.0)
    messages = args.messages if args.messages is not None else (
        200 if args.api_outage else 300 if args.db_outage else 1000)
    kills = args.kills if args.kills is not None else (0 if outage else 10)
    cfg = FaultConfig(store=args.store, messages=messages, kills=kills, workers=args.workers, seed=args.seed,
                      kill_target=args.kill_target,
                      senders=args.senders, users=args.users, rate=args.rate, burst=args.burst,
                      api_outage=args.api_outage, api_outage_mode=args.api_outage_mode,
                      api_down_at_start=args.api_down_at_start, operator_replies=args.operator_replies,
                      db_outage=args.db_outage, db_outage_mode=args.db_outage_mode,
                      outbox_max_backoff=args.outbox_max_backoff, drain_timeout=drain,
                      max_seconds=args.max_seconds, source_data_dir=args.data_dir, work_dir=args.work_dir,
                      keep_database=args.keep_database)
    result = run_fault_sync(cfg)
    for line in result.lines():
        print(line)
    if args.examples:
        print(result.examples())
    verdict = passed(result)
    print("verdict:", "PASS" if verdict else "FAIL")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
