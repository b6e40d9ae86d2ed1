"""The scale-out set-up against today's, in one run (issue 15): `bench_web.py` three (or four) ways,
back to back on the same machine, then one table.

    python scripts/bench_scaleout.py --baseline ../pbxbot-before   # a `git worktree` of the commit before

1. the baseline tree's own `bench_web.py --workers 2` (its serve --workers 2, SQLite), run with
   PYTHONPATH pointing at that tree;  (with --baseline-pg also on PostgreSQL)
2. this tree, one process on SQLite (the embedded default);
3. this tree, nginx (least_conn) in front of two one-process nodes sharing a new PostgreSQL
   database and Redis.
The machine's speed drifts through the day, so only runs made together are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def bench(tree: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, str(tree / "scripts" / "bench_web.py"), "--json", *args], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=1800)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"bench_web failed in {tree} {args}:\n{r.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, type=Path, help="a checkout of the commit before the change")
    ap.add_argument("--baseline-pg", action="store_true", help="also the baseline's --workers 2 on PostgreSQL")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--duration", default="20")
    ap.add_argument("--concurrency", default="16")
    args = ap.parse_args()
    import psycopg

    common = ["--duration", args.duration, "--concurrency", args.concurrency]
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    made: list[str] = []

    def database() -> str:
        name = f"pbxbot_bench_{secrets.token_hex(4)}"
        admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    rows = []
    try:
        rows.append(("before: serve --workers 2, SQLite", bench(args.baseline.resolve(), ["--workers", "2", *common])))
        if args.baseline_pg:
            rows.append(("before: serve --workers 2, PostgreSQL",
                         bench(args.baseline.resolve(), ["--workers", "2", "--database-url", database(), *common])))
        rows.append(("after: 1 process, SQLite", bench(ROOT, common)))
        rows.append(("after: nginx + 2 nodes, PostgreSQL + Redis",
                     bench(ROOT, ["--nodes", "2", "--database-url", database(), "--redis-url", args.redis_url, *common])))
    finally:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    print(f"{'set-up':46} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'errors':>6} {'CPU ms/req':>10}")
    for name, r in rows:
        print(f"{name:46} {r['rps']:7.1f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['errors']:6d} "
              f"{r['server_cpu_ms_per_request'] or float('nan'):10.2f}")
    for name, r in rows:
        if r.get("cpu_ms_per_request_by_process") and len(r["cpu_ms_per_request_by_process"]) > 1:
            print(f"CPU split of '{name}': " + ", ".join(
                f"{k} {v} ms" for k, v in r["cpu_ms_per_request_by_process"].items()) + " per request")
    before, after = rows[0][1], rows[-1][1]
    ratio = after["rps"] / before["rps"] if before["rps"] else float("nan")
    ok = after["rps"] >= 150 and after["p95_ms"] <= 150 and after["errors"] == 0
    print(f"nginx + 2 nodes / before's 2 workers: {ratio:.2f}x (target >= 0.8)   "
          f"absolute targets (>= 150 req/s, p95 <= 150 ms, 0 errors): {'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
