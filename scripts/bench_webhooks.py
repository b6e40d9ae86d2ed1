"""Webhook acknowledgement latency on loopback: Telegram, LINE and Slack (target p95 <= 50 ms).

    .venv/bin/python scripts/bench_webhooks.py [--n 300] [--concurrency 1 | --rate 20] [--core fake|fixture|real]

Starts the real server (bot.web.app.create_app under uvicorn on a free 127.0.0.1 port, in a
thread) with the three platforms enabled and their API base URLs pointing at local fake platform
APIs (another thread), then posts correctly signed webhook requests (a new user, update id, event
id or trigger id each time) and times each request until its HTTP answer (the ack). The answering
work runs after the ack in the same server, so it competes with the acks as in production.

Closed loop (default): each client sends the next request as soon as the previous one is acked, so
the server is saturated and the acks share the CPU with the answering work of earlier requests;
this is the worst case. Open loop (--rate R): requests arrive R per second per route, as webhooks do.

--core fake     a fast deterministic core (tests/web_fakes.FakeCore): the channel path alone
--core fixture  the real ConversationService over the small fixture corpus (hash embedder)
--core real     the real ConversationService over the index of the current settings (PBXBOT_*)

Bounded: at most --n requests per route and --max-seconds in all; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes_platforms import (  # noqa: E402
    FakePlatforms,
    line_body,
    line_signature,
    line_text_event,
    slack_command_body,
    slack_headers,
    telegram_message_update,
)

TG_TOKEN, TG_SECRET = "123456:BENCH-token", "bench-webhook-secret"
LINE_SECRET, LINE_TOKEN = "bench-line-channel-secret-0123456", "bench-line-token"
SLACK_SECRET, SLACK_TOKEN = "bench-slack-signing-secret-01234", "xoxb-bench"
TARGET_P95_MS = 50.0


class LoopThread:
    """An asyncio loop in a daemon thread (for the fake platform APIs)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake-platforms")
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Server:
    """The app under uvicorn in a child process (so the client's CPU does not count as the server's)."""

    def __init__(self, args: argparse.Namespace, fake_url: str, tmp: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.cmd = [sys.executable, __file__, "--serve", str(self.port), "--fake-url", fake_url,
                    "--tmp", str(tmp), "--core", args.core]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "Server":
        import httpx

        self.proc = subprocess.Popen(self.cmd, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not become healthy")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def make_settings(fake_url: str, tmp: Path, core: str) -> Any:
    from bot.config import Settings
    from tests.fakes_platforms import FIXTURE_CORPUS

    overrides: dict[str, Any] = dict(
        _env_file=None, database_url=f"sqlite:///{tmp / 'bench.sqlite3'}",
        telegram_token=TG_TOKEN, telegram_webhook_secret=TG_SECRET, telegram_api_url=f"{fake_url}/bot",
        line_channel_secret=LINE_SECRET, line_channel_access_token=LINE_TOKEN, line_api_url=fake_url,
        slack_signing_secret=SLACK_SECRET, slack_bot_token=SLACK_TOKEN, slack_api_url=f"{fake_url}/api/",
        slack_operator_channel="C0OPS", log_level="WARNING")
    if core == "fixture":
        overrides.update(data_dir=tmp, knowledge_dir=FIXTURE_CORPUS, embedder="hash")
    if core == "real":
        overrides.pop("_env_file")
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    """Child process: the real app on 127.0.0.1:<port>."""
    import logging

    import uvicorn

    from bot.web.app import create_app

    logging.basicConfig(level=logging.WARNING)
    settings = make_settings(args.fake_url, Path(args.tmp), args.core)
    app = create_app(settings, core=build_core(args.core, settings))
    uvicorn.run(app, host="127.0.0.1", port=args.serve, log_level="warning", access_log=False, lifespan="on")
    return 0


def build_core(kind: str, settings: Any) -> Any:
    if kind == "fake":
        from tests.web_fakes import FakeCore

        return FakeCore()
    if kind == "fixture":
        from tests.fakes_platforms import real_core

        return real_core(settings)
    from bot.wiring import build_conversation_service

    return build_conversation_service(settings)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run_route(client: Any, name: str, make: Callable[[int], tuple[str, bytes, dict[str, str]]],
                    n: int, concurrency: int, warmup: int, deadline: float, offset: int,
                    rate: float = 0.0, answered: Callable[[], int] | None = None) -> dict[str, Any]:
    before = answered() if answered else 0
    for i in range(warmup):
        path, body, headers = make(offset + i)
        await client.post(path, content=body, headers=headers)
    # Untimed: let the warm-up answers finish (first queries load lazily built parts of the core).
    settle_until = time.monotonic() + 30
    while answered and answered() - before < warmup and time.monotonic() < settle_until:
        await asyncio.sleep(0.05)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(n))
    began = time.perf_counter()

    async def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            path, body, headers = make(offset + warmup + i)
            started = time.perf_counter()
            resp = await client.post(path, content=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

    async def one(i: int) -> None:
        path, body, headers = make(offset + warmup + i)
        started = time.perf_counter()
        resp = await client.post(path, content=body, headers=headers)
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

    if rate > 0:  # open loop: requests arrive on a fixed schedule, whatever the answers take
        tasks = []
        for i in range(n):
            if time.monotonic() > deadline:
                break
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    else:  # closed loop: `concurrency` clients, each sending the next request once answered
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    ok = statuses.get(200, 0)
    return {"route": name, "requests": len(latencies), "ok": ok, "errors": len(latencies) - ok,
            "req_per_s": len(latencies) / elapsed if elapsed > 0 else float("nan"),
            "p50_ms": statistics.median(latencies) if latencies else float("nan"),
            "p95_ms": percentile(latencies, 95) if latencies else float("nan"),
            "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
            "max_ms": max(latencies) if latencies else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="timed requests per route (default 300)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=1,
                    help="closed loop: clients sending back to back per route (default 1)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="open loop instead: requests per second per route on a fixed schedule")
    ap.add_argument("--core", choices=("fake", "fixture", "real"), default="fake")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--drain-seconds", type=float, default=10.0,
                    help="after the timed requests, wait at most this long for the answers to reach the fake APIs")
    ap.add_argument("--routes", default="telegram,line,slack", help="which routes, in this order")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fake-url", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)

    import httpx

    fakes = LoopThread()
    fake = FakePlatforms()
    fakes.run(_start(fake))
    tmp = Path(tempfile.mkdtemp(prefix="pbxbot-bench-webhooks-"))
    started = time.monotonic()
    server = Server(args, fake.url, tmp).start()
    print(f"server on 127.0.0.1:{server.port} ready in {time.monotonic() - started:.1f} s (core: {args.core}); "
          f"n={args.n} per route, " + (f"open loop at {args.rate:g} req/s" if args.rate
                                       else f"closed loop, concurrency={args.concurrency}"), file=sys.stderr)

    question = "国際電話を止めるには？"

    def telegram(i: int):
        body = json.dumps(telegram_message_update(100_000 + i, question, chat_id=10_000_000 + i)).encode()
        return "/webhooks/telegram", body, {"Content-Type": "application/json",
                                            "X-Telegram-Bot-Api-Secret-Token": TG_SECRET}

    def line(i: int):
        body = line_body(line_text_event(question, event_id=f"01BENCH{i:08d}", user_id=f"U{i:032x}",
                                         reply_token=f"rt-{i}"))
        return "/webhooks/line", body, {"Content-Type": "application/json",
                                        "X-Line-Signature": line_signature(LINE_SECRET, body)}

    def slack(i: int):
        body = slack_command_body(question, response_url=fake.response_url(f"b{i}"), trigger_id=f"trg-bench-{i}",
                                  user_id=f"U{i:08d}")
        return "/webhooks/slack/commands", body, slack_headers(SLACK_SECRET, body)

    async def bench() -> list[dict[str, Any]]:
        deadline = time.monotonic() + args.max_seconds
        conns = max(args.concurrency * 2, 32 if args.rate else 0)
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=30) as client:
            results = []
            makers = {"telegram": telegram, "line": line, "slack": slack}
            chosen = [r.strip() for r in args.routes.split(",") if r.strip() in makers]
            counters = {"telegram": lambda: len(fake.calls("telegram", "sendMessage")),
                        "line": lambda: len(fake.calls("line")), "slack": lambda: len(fake.calls("slack_response"))}
            for k, (name, make) in enumerate((r, makers[r]) for r in chosen):
                results.append(await run_route(client, name, make, args.n, args.concurrency, args.warmup,
                                               deadline, offset=k * 1_000_000, rate=args.rate,
                                               answered=counters[name]))
                await asyncio.sleep(0.5)  # let the answers of this route drain
            return results

    try:
        results = asyncio.run(bench())
        expected = {p: 0 for p in ("telegram", "line", "slack_response")}  # answers awaited per platform API
        for r in results:
            expected[{"telegram": "telegram", "line": "line", "slack": "slack_response"}[r["route"]]] += (
                r["requests"] + args.warmup)
        drain_deadline = time.monotonic() + args.drain_seconds
        while time.monotonic() < drain_deadline and any(
                len(fake.calls(p, "sendMessage" if p == "telegram" else None)) < n for p, n in expected.items()):
            time.sleep(0.1)
        answered = {"telegram": len(fake.calls("telegram", "sendMessage")), "line": len(fake.calls("line")),
                    "slack": len(fake.calls("slack_response"))}
    finally:
        server.stop()
        fakes.run(fake.stop())
        fakes.close()

    if args.json:
        print(json.dumps({"core": args.core, "concurrency": args.concurrency, "results": results,
                          "platform_calls": answered}, indent=2))
    else:
        print(f"{'route':<10}{'requests':>9}{'errors':>8}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for r in results:
            print(f"{r['route']:<10}{r['requests']:>9}{r['errors']:>8}{r['req_per_s']:>8.0f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
                  f"{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}")
        print(f"answers observed at the fake platform APIs (of {args.n + args.warmup} per route): {answered}")
    worst = max(r["p95_ms"] for r in results)
    errors = sum(r["errors"] for r in results)
    verdict = "PASS" if worst <= TARGET_P95_MS and errors == 0 else "FAIL"
    print(f"target webhook ack p95 <= {TARGET_P95_MS:.0f} ms: worst p95 {worst:.1f} ms, errors {errors}: {verdict}")
    return 0 if verdict == "PASS" else 1


async def _start(fake: FakePlatforms) -> None:
    await fake.start()


if __name__ == "__main__":
    sys.exit(main())
