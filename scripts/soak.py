"""Soak test: 16 simulated widget users against one `pbxbot serve` for 30 minutes; server RSS and errors.

    python scripts/soak.py                                   # 30 min, 16 users, 5 min warm-up
    python scripts/soak.py --duration 120 --warmup 30 --csv /tmp/rss.csv
    nice -n 10 python scripts/soak.py --csv soak-rss.csv     # on a shared 2-core machine

Target (issue 13): "A 30-minute soak at 16 users: RSS growth under 5% after warm-up, 0 errors."

The server is started as bench_web.py starts it (scripts/bench_web.py: one process, its own SQLite
file in a temporary folder, the index of PBXBOT_DATA_DIR, the rate limit raised out of the way) and
driven through POST /api/chat by `--users` keep-alive clients without think time (a stress soak,
not a model of real pacing; --think adds a pause between messages). Each user holds a conversation
of a few turns, then starts a new one, so the store and the conversation state grow as in real use:
plain questions with follow-ups ("詳しく", "more", thanks, "that did not help" twice), requests for a
person (「担当者と話したい」, "I want to talk to a person", the widget's request_human button) and
incidents in progress that open tickets, followed by messages that join the open ticket. An
operator (bearer API, --operator-interval) claims, answers and resolves the oldest tickets, so
operator replies flow back into the conversations and the queue stays bounded.

Every --sample seconds the RSS of the server process and its descendants (VmRSS of
/proc/<pid>/status, summed; RssAnon and RssFile too) is sampled. At the end: duration, requests,
errors (non-2xx, timeouts, connection errors, an empty answer), req/s, p50/p95 latency, RSS at the
end of warm-up (the first sample at or after --warmup), at the end, the maximum, the growth after
warm-up, and PASS/FAIL against the target (growth < 5 % and 0 errors, ERROR lines in the server's
log included). --csv writes the samples. Ctrl-C (or SIGTERM) stops the users, prints what was
measured so far (FAIL: incomplete) and stops the server; a second Ctrl-C stops at once.

The server inherits this process's environment, so allocator settings apply to it too, e.g.
`MALLOC_ARENA_MAX=2 python scripts/soak.py` (glibc's per-thread malloc arenas hold on to freed
memory: about 70 MiB more RSS with the default on this machine, and part of the growth after warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

try:
    from scripts.bench_web import (POOL, Conn, check_loopback, free_port, report_log_errors, start_server,
                                   stop_servers, tree_pids, wait_healthy, wait_idle)
except ImportError:  # run as `python scripts/soak.py`
    from bench_web import (POOL, Conn, check_loopback, free_port, report_log_errors, start_server,  # type: ignore
                           stop_servers, tree_pids, wait_healthy, wait_idle)

TARGET_GROWTH_PCT = 5.0
OPERATOR_TOKEN = "bench-operator-token-not-secret"  # what bench_web.start_server gives the server

MORE = {"ja": ["詳しく", "もっと詳しく教えてください"], "en": ["more", "tell me more"]}
THANKS = {"ja": ["ありがとうございます", "わかりました、ありがとう"], "en": ["thanks", "thank you, that helps"]}
NOT_HELPFUL = {"ja": ["それでは解決しませんでした", "役に立ちませんでした"],
               "en": ["that did not help", "this doesn't answer my question"]}
PERSON = {"ja": ["担当者と話したい", "人と話したいです", "オペレーターにつないでください"],
          "en": ["I want to talk to a person", "can I speak to a human?", "connect me to an operator please"]}
INCIDENT = {"ja": ["今まさに海外への発信が止まりません", "PBXから国際電話が勝手にかかり続けています",
                   "海外にかけまくってる、どうすれば"],
            "en": ["Calls to other countries are going out right now", "our PBX is making international calls as we speak"]}
BILL = {"ja": ["先月の請求が300万円でした。払わないといけませんか", "身に覚えのない国際通話料を返金してほしい"],
        "en": ["We got a bill of 2 million yen for calls we never made, do we have to pay it?"]}
FACTS = {"ja": ["回線はNTT東日本です", "KDDIの光ダイレクトを使っています", "昨日の夜から発信が続いています",
                "今朝気づきました。まだ続いています", "PBXはパナソニック製です"],
         "en": ["Our carrier is NTT East", "we use KDDI", "it started last night", "noticed this morning, still going on"]}


def language_of(text: str) -> str:
    return "en" if text.isascii() else "ja"


def conversation_script(rng: random.Random) -> list[dict]:
    """One simulated conversation: the payloads (without the conversation's id and token) in order."""
    first = rng.choice(POOL)
    lang = language_of(first)
    pick = lambda table: {"text": rng.choice(table[lang])}  # noqa: E731
    kind = rng.random()
    if kind < 0.78:  # a question and a few follow-ups
        turns = [{"text": first}]
        for _ in range(rng.randint(1, 3)):
            turns.append(rng.choice([{"text": rng.choice(POOL)}, pick(MORE), pick(THANKS)]))
    elif kind < 0.84:  # "that did not help" twice: escalates
        turns = [{"text": first}, pick(NOT_HELPFUL), {"text": rng.choice(POOL)}, pick(NOT_HELPFUL), pick(FACTS)]
    elif kind < 0.92:  # asks for a person (words or the widget's button), then adds facts that join the ticket
        ask = {"text": "", "action": "request_human"} if rng.random() < 0.3 else pick(PERSON)
        turns = [{"text": first}, ask] + [pick(FACTS) for _ in range(rng.randint(1, 2))]
    elif kind < 0.97:  # an incident in progress (urgent ticket), then the missing facts
        turns = [pick(INCIDENT)] + [pick(FACTS) for _ in range(rng.randint(1, 3))]
    else:  # a bill dispute
        turns = [pick(BILL), pick(FACTS), pick(MORE)]
    return turns


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    conversations: int = 0
    escalations: int = 0  # replies that carried an escalation (a ticket opened or joined)
    operator_actions: int = 0
    operator_errors: list[str] = field(default_factory=list)
    queue_max: int = 0  # open and claimed tickets in the queue, the most the operator saw
    queue_last: int = 0

    def all_errors(self) -> list[str]:
        return self.errors + [f"operator: {e}" for e in self.operator_errors]


async def user(host: str, port: int, stop: asyncio.Event, deadline: float, stats: Stats, rng: random.Random,
               timeout: float, think: float) -> None:
    conn = Conn(host, port)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            stats.conversations += 1
            conversation: dict = {}
            for turn in conversation_script(rng):
                if stop.is_set() or time.monotonic() >= deadline:
                    break
                t0 = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(conn.post("/api/chat", {**turn, **conversation}), timeout)
                except Exception as exc:  # timeout or dropped connection: count it, reconnect, next conversation
                    stats.errors.append("timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__)
                    conn.close()
                    conn = Conn(host, port)
                    break
                stats.latencies.append(time.perf_counter() - t0)
                if not 200 <= status < 300:
                    stats.errors.append(f"HTTP {status}")
                    break
                try:
                    data = json.loads(body)
                    conversation = {"conversation_id": data["conversation_id"],
                                    "conversation_token": data["conversation_token"]}
                except (ValueError, KeyError, TypeError):
                    stats.errors.append("bad JSON")
                    break
                if not data.get("answer") and data.get("replies") != []:  # [] = joined an open ticket silently
                    stats.errors.append("empty answer")
                if any(r.get("escalation") for r in data.get("replies") or []) or data.get("escalation"):
                    stats.escalations += 1
                if think:
                    await asyncio.sleep(rng.uniform(0, 2 * think))
    finally:
        conn.close()


def _operator_call(base: str, method: str, path: str, payload: dict | None, timeout: float) -> dict:
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(payload).encode() if payload is not None else None,
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}", "X-Operator-Name": "soak",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


async def operator(base: str, stop: asyncio.Event, deadline: float, stats: Stats, interval: float,
                   per_round: int, timeout: float, parallel: int = 8) -> None:
    """Rounds through the queue: its oldest `per_round` tickets are claimed, answered and resolved
    (`parallel` at a time); the next round follows at once while there is a backlog, else after `interval` s."""
    async def call(method: str, path: str, payload: dict | None = None) -> dict | None:
        try:
            out = await asyncio.to_thread(_operator_call, base, method, path, payload, timeout)
            stats.operator_actions += 1
            return out
        except urllib.error.HTTPError as exc:
            if exc.code == 409:  # the ticket changed in between (e.g. resolved already): not an error
                return None
            stats.operator_errors.append(f"HTTP {exc.code} {method} {path.rsplit('/', 1)[-1]}")
        except Exception as exc:
            stats.operator_errors.append(type(exc).__name__)
        return None

    async def handle(ticket: dict, gate: asyncio.Semaphore) -> None:
        async with gate:
            tid = ticket["id"]
            if ticket.get("status") == "open":
                await call("POST", f"/console/api/tickets/{tid}/claim")
            await call("POST", f"/console/api/tickets/{tid}/reply",
                       {"text": "担当の者です。状況を確認しました。/ An operator here, we are looking into it."})
            await call("POST", f"/console/api/tickets/{tid}/resolve")

    backlog = False
    while not stop.is_set() and time.monotonic() < deadline:
        if not backlog:
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
        if stop.is_set() or time.monotonic() >= deadline:
            break
        queue = await call("GET", "/console/api/tickets")
        tickets = sorted((queue or {}).get("tickets", []), key=lambda t: t.get("created_at") or "")
        stats.queue_last, stats.queue_max = len(tickets), max(stats.queue_max, len(tickets))
        backlog = len(tickets) > per_round
        gate = asyncio.Semaphore(parallel)
        await asyncio.gather(*(handle(t, gate) for t in tickets[:per_round]))


def read_rss(root_pid: int) -> dict[str, int] | None:
    """kB summed over the process and its descendants: VmRSS, RssAnon, RssFile, RssShmem, VmHWM;
    None when the process is gone."""
    total = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0, "VmHWM": 0, "procs": 0}
    for pid in tree_pids(root_pid):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total["procs"] += 1
        for line in lines:
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value.split()[0])
    return total if total["procs"] else None


async def sampler(server, stop: asyncio.Event, started: float, period: float, stats: Stats, samples: list[dict],
                  db_path: Path | None) -> None:
    while True:
        rss = read_rss(server.pid) if server.poll() is None else None
        if rss is None:
            stats.errors.append("server exited")
            stop.set()
            return
        db_bytes = 0
        if db_path is not None:
            for suffix in ("", "-wal", "-shm"):
                p = db_path.with_name(db_path.name + suffix)
                db_bytes += p.stat().st_size if p.exists() else 0
        samples.append({"t_s": round(time.monotonic() - started, 1), "rss_kb": rss["VmRSS"],
                        "rss_anon_kb": rss["RssAnon"], "rss_file_kb": rss["RssFile"], "rss_shmem_kb": rss["RssShmem"],
                        "hwm_kb": rss["VmHWM"], "procs": rss["procs"], "requests": len(stats.latencies),
                        "errors": len(stats.all_errors()), "conversations": stats.conversations,
                        "escalations": stats.escalations, "operator_actions": stats.operator_actions,
                        "queue": stats.queue_last,
                        "db_bytes": db_bytes})
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), period)
        except asyncio.TimeoutError:
            pass


async def soak(args: argparse.Namespace, url: str, server, db_path: Path | None) -> tuple[Stats, list[dict], float, bool]:
    host, port = check_loopback(url)
    stop = asyncio.Event()
    interrupted = []
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if interrupted:  # second Ctrl-C: stop at once
            main_task.cancel()
            return
        interrupted.append(True)
        print("\ninterrupted: stopping the users (Ctrl-C again to stop at once) ...", file=sys.stderr)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        stats, samples = Stats(), []
        rng = random.Random(args.seed)
        started = time.monotonic()
        deadline = started + args.duration
        sampling = asyncio.create_task(sampler(server, stop, started, args.sample, stats, samples, db_path))
        tasks = [user(host, port, stop, deadline, stats, random.Random(rng.random()), args.timeout, args.think)
                 for _ in range(args.users)]
        if args.operator_interval > 0:
            tasks.append(operator(url, stop, deadline, stats, args.operator_interval, args.operator_batch,
                                  args.timeout))
        progress = asyncio.create_task(report_progress(stop, started, args.duration, stats, samples))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        stop.set()
        await sampling  # one last sample, at the end
        progress.cancel()
        return stats, samples, elapsed, bool(interrupted)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def report_progress(stop: asyncio.Event, started: float, duration: float, stats: Stats,
                          samples: list[dict]) -> None:
    """A line on stderr every minute (so a 30-minute run shows it is alive)."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 60)
            return
        except asyncio.TimeoutError:
            pass
        last = samples[-1] if samples else {}
        print(f"  [{time.monotonic() - started:6.0f}/{duration:.0f} s] {len(stats.latencies)} requests, "
              f"{stats.conversations} conversations, {len(stats.all_errors())} errors, "
              f"RSS {last.get('rss_kb', 0) / 1024:.1f} MiB", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def slope_mib_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, kB) points, in MiB per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if not var:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600 / 1024


def report(args: argparse.Namespace, stats: Stats, samples: list[dict], elapsed: float, interrupted: bool,
           log_errors: dict[str, list[str]]) -> bool:
    lat = sorted(stats.latencies)
    errors = stats.all_errors()
    kinds: dict[str, int] = {}
    for e in errors:
        kinds[e] = kinds.get(e, 0) + 1
    mib = lambda kb: f"{kb / 1024:.1f} MiB"  # noqa: E731
    warm = next((s for s in samples if s["t_s"] >= args.warmup), None)
    end = samples[-1] if samples else None
    print(f"soak: POST /api/chat, {args.users} users, one `pbxbot serve` process, SQLite, "
          f"warm-up {args.warmup:.0f} s, RSS sampled every {args.sample:.0f} s")
    print(f"  duration     {elapsed:.1f} s" + ("  (INTERRUPTED)" if interrupted else ""))
    print(f"  requests     {len(lat)}   conversations {stats.conversations}   replies with an escalation "
          f"{stats.escalations}   operator API calls {stats.operator_actions} (queue max {stats.queue_max}, "
          f"last {stats.queue_last})")
    print(f"  errors       {len(errors)}" + (f"  {dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:6])}" if kinds else "")
          + "   (non-2xx, timeouts, connection errors, empty answers; operator API included)")
    print(f"  server log   {sum(map(len, log_errors.values()))} ERROR/Traceback line(s)")
    print(f"  throughput   {len(lat) / elapsed if elapsed else 0:.1f} req/s")
    print(f"  latency      p50 {percentile(lat, 50) * 1000:.1f} ms  p95 {percentile(lat, 95) * 1000:.1f} ms  "
          f"p99 {percentile(lat, 99) * 1000:.1f} ms  max {(lat[-1] * 1000 if lat else float('nan')):.1f} ms")
    growth = None
    if samples:
        first, top = samples[0], max(s["rss_kb"] for s in samples)
        print(f"  RSS start    {mib(first['rss_kb'])} (after start-up, before load)")
        if warm is not None:
            growth = (end["rss_kb"] - warm["rss_kb"]) * 100 / warm["rss_kb"]
            after = [s for s in samples if s["t_s"] >= warm["t_s"]]
            top_after = max(s["rss_kb"] for s in after)
            slope = slope_mib_per_hour([(s["t_s"], s["rss_kb"]) for s in after])
            print(f"  RSS warm-up  {mib(warm['rss_kb'])} at {warm['t_s']:.0f} s "
                  f"(anon {mib(warm['rss_anon_kb'])}, file {mib(warm['rss_file_kb'])})")
            print(f"  RSS end      {mib(end['rss_kb'])} at {end['t_s']:.0f} s "
                  f"(anon {mib(end['rss_anon_kb'])}, file {mib(end['rss_file_kb'])}); SQLite files "
                  f"{end['db_bytes'] / 1048576:.1f} MiB")
            print(f"  RSS max      {mib(top)} (after warm-up {mib(top_after)}, "
                  f"{(top_after - warm['rss_kb']) * 100 / warm['rss_kb']:+.2f} %)")
            print(f"  growth       {growth:+.2f} % after warm-up (end vs end of warm-up)"
                  + (f"; trend {slope:+.1f} MiB/hour" if slope is not None else ""))
        else:
            print(f"  RSS end      {mib(end['rss_kb'])}; RSS max {mib(top)}")
            print(f"  growth       n/a: the run ended before the warm-up ({args.warmup:.0f} s)")
    ok = (growth is not None and growth < TARGET_GROWTH_PCT and not errors and not log_errors
          and not interrupted)
    why = []
    if growth is None:
        why.append("no RSS after warm-up")
    elif growth >= TARGET_GROWTH_PCT:
        why.append(f"growth {growth:.2f} % >= {TARGET_GROWTH_PCT:.0f} %")
    if errors:
        why.append(f"{len(errors)} errors")
    if log_errors:
        why.append("ERROR lines in the server log")
    if interrupted:
        why.append("interrupted")
    print(f"{'PASS' if ok else 'FAIL'}  target: RSS growth < {TARGET_GROWTH_PCT:.0f} % after warm-up and 0 errors"
          + (f"  ({'; '.join(why)})" if why else ""))
    return ok


def write_csv(path: Path, samples: list[dict]) -> None:
    if not samples:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of load, warm-up included (default 1800)")
    ap.add_argument("--warmup", type=float, default=300.0, help="seconds after which the RSS baseline is taken")
    ap.add_argument("--users", type=int, default=16, help="simultaneous simulated users")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--csv", type=Path, help="write the RSS samples here")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as timed out")
    ap.add_argument("--think", type=float, default=0.0, help="mean pause between a user's messages (s; default none)")
    ap.add_argument("--operator-interval", type=float, default=5.0,
                    help="seconds between the operator's rounds through the queue (0: no operator)")
    ap.add_argument("--operator-batch", type=int, default=40, help="tickets handled per operator round")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    args = ap.parse_args()
    if args.users < 1 or args.duration <= 0 or args.sample <= 0:
        ap.error("--users, --duration and --sample must be positive")

    tmpdir = tempfile.TemporaryDirectory(prefix="pbxbot-soak-")
    tmp = Path(tmpdir.name)
    servers = []
    log_errors: dict[str, list[str]] = {}
    result = None
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        print(f"starting pbxbot serve on {url} (data in {tmp}) ...", file=sys.stderr)
        servers = [start_server(port, tmp)]
        wait_healthy(url, args.startup_timeout)
        wait_idle([servers[0].pid], args.startup_timeout)
        print(f"server up (pid {servers[0].pid}); {args.users} users for {args.duration:.0f} s ...",
              file=sys.stderr, flush=True)
        result = asyncio.run(soak(args, url, servers[0], tmp / "bench.sqlite3"))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("stopped", file=sys.stderr)
    finally:
        stop_servers(servers)
        if servers:
            log_errors = report_log_errors(tmp)
        tmpdir.cleanup()
    if result is None:
        return 130
    stats, samples, elapsed, interrupted = result
    if args.csv:
        write_csv(args.csv, samples)
    ok = report(args, stats, samples, elapsed, interrupted, log_errors)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
