"""POST /api/chat throughput and latency on loopback. Prints numbers; bounded in time.

    python scripts/bench_web.py                      # starts `pbxbot serve` on a free loopback port
    python scripts/bench_web.py --url http://127.0.0.1:8000 --duration 20 --concurrency 16
    python scripts/bench_web.py --nodes 2 --database-url postgresql://postgres@127.0.0.1/pbxbot_bench \
        --redis-url redis://127.0.0.1:6379/0     # nginx (least_conn) in front of two `pbxbot serve`

Targets (issue 5): >= 150 requests/s on the 2-core machine, p95 <= 150 ms, no errors.
The server runs as a subprocess with its own SQLite file in a temporary folder, the index of
PBXBOT_DATA_DIR (built first if there is none), and the rate limit raised out of the way (each
simulated user still has its own conversation). The load generator is a small keep-alive HTTP/1.1
client on raw asyncio streams, so that the client's own CPU use (the machine has 2 cores) stays
small next to the server's. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = [
    "IP-PBXが乗っ取られたかもしれません。どうすればいいですか？",
    "深夜に海外への発信が大量にありました",
    "国際電話の利用休止はどこに申し込めますか",
    "PBXのパスワードはどう設定すればよいですか",
    "保守業者に何を伝えればいいですか",
    "通話料の請求が高額です。支払わないといけませんか",
    "NTT東日本の国際電話を止めたい",
    "KDDIの回線で不正利用の疑いがあります",
    "What should we do if our PBX was hacked?",
    "How do I stop international calls on an NTT line?",
    "Which logs should we keep after toll fraud?",
    "How can we prevent SIP brute force attacks?",
]


def load_questions() -> list[str]:
    """The 12 above plus every question of the retrieval evaluation set (varied wording, ja and en)."""
    out = list(QUESTIONS)
    path = ROOT / "knowledge" / "eval" / "retrieval.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line)["question"])
    return out


def process_table() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, user + system CPU seconds)} of every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read().decode("latin-1")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def tree_pids(root_pid: int, table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    """A process and all its descendants."""
    table = process_table() if table is None else table
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(child for child, (ppid, _) in table.items() if ppid == pid)
    return out


def tree_cpu_seconds(root_pids: int | list[int]) -> float:
    """User + system CPU seconds of processes and all their descendants."""
    table = process_table()
    roots = [root_pids] if isinstance(root_pids, int) else root_pids
    pids = {pid for root in roots for pid in tree_pids(root, table)}
    return sum(table[pid][1] for pid in pids if pid in table)


PG_SHARED = (b"walwriter", b"checkpointer", b"background writer")


def service_pids(database: str | None = None) -> dict[str, list[int]]:
    """The local services' processes whose CPU is part of a set-up's cost: Redis, and PostgreSQL's
    backends of `database` plus its WAL writer, checkpointer and background writer (not the
    backends of other databases on the same server)."""
    out: dict[str, list[int]] = {"postgres": [], "redis": []}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() if comm == "postgres" else b""
        except OSError:
            continue
        if comm == "redis-server":
            out["redis"].append(int(entry))
        elif comm == "postgres" and ((database and database.encode() in cmdline) or any(k in cmdline for k in PG_SHARED)):
            out["postgres"].append(int(entry))
    return out


def cpu_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each named group of processes (each with its descendants), now. A process
    that starts later (a new PostgreSQL backend) is seen by the next call only: compare calls
    made around a run whose connections are already open."""
    table = process_table()
    return {name: sum(table[pid][1] for root in pids for pid in tree_pids(root, table) if pid in table)
            for name, pids in groups.items()}


def wait_idle(root_pids: list[int], timeout: float, *, quiet: float = 0.05, period: float = 0.5) -> None:
    """Until the processes have started up: two periods in a row in which they used almost no CPU
    (every worker of `serve --workers N` has loaded its index)."""
    deadline = time.monotonic() + timeout
    calm, last = 0, tree_cpu_seconds(root_pids)
    while calm < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the server did not settle after start-up")
        time.sleep(period)
        now = tree_cpu_seconds(root_pids)
        calm, last = (calm + 1 if now - last < quiet else 0), now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POOL = load_questions()


def check_loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit(f"refusing to load {host!r}: loopback addresses only")
    return host, parts.port or 80


def wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"server at {url} not healthy after {timeout:.0f}s")


class Conn:
    """One keep-alive HTTP/1.1 connection; post() returns (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload, ensure_ascii=False).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.readexactly(length)
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def user_loop(host: str, port: int, deadline: float, latencies: list[float], errors: list[str],
                    rng: random.Random, turns: int) -> None:
    conn = Conn(host, port)
    try:
        while time.monotonic() < deadline:
            conversation: dict = {}
            for _ in range(turns):  # one simulated user: a few turns in one conversation, then a new one
                if time.monotonic() >= deadline:
                    break
                payload = {"text": rng.choice(POOL), **conversation}
                t0 = time.perf_counter()
                try:
                    status, body = await conn.post("/api/chat", payload)
                except Exception as exc:  # connection dropped: count it, reconnect
                    errors.append(type(exc).__name__)
                    conn.close()
                    conn = Conn(host, port)
                    continue
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"HTTP {status}")
                    continue
                data = json.loads(body)
                if not data.get("answer") and not data.get("replies") == []:
                    errors.append("empty answer")
                conversation = {"conversation_id": data["conversation_id"],
                                "conversation_token": data.get("conversation_token")}
    finally:
        conn.close()


async def drive(url: str, concurrency: int, duration: float, turns: int, seed: int,
                server_pids: list[int] | None = None, groups: dict[str, list[int]] | None = None) -> dict:
    host, port = check_loopback(url)
    rng = random.Random(seed)
    # warm-up (first queries load lazy parts of the retriever)
    warm: list[float] = []
    warm_errors: list[str] = []
    await asyncio.gather(*(user_loop(host, port, time.monotonic() + 2.0, warm, warm_errors,
                                     random.Random(rng.random()), turns) for _ in range(4)))
    latencies: list[float] = []
    errors: list[str] = []
    cpu0 = tree_cpu_seconds(server_pids) if server_pids else None
    by_process0 = cpu_by_group(groups) if groups else None
    started = time.monotonic()
    deadline = started + duration
    split: list[int] = []

    async def sample_split() -> None:  # once every user has connected
        await asyncio.sleep(min(1.0, duration / 2))
        split.extend(connections_per_process(groups["server"][0] if groups else server_pids[0], port))

    one_server = server_pids and (not groups or "server" in groups)  # not through a load balancer
    sampler = asyncio.create_task(sample_split()) if one_server else None
    await asyncio.gather(*(user_loop(host, port, deadline, latencies, errors, random.Random(rng.random()), turns)
                           for _ in range(concurrency)))
    if sampler is not None:
        await sampler
    elapsed = time.monotonic() - started
    cpu = tree_cpu_seconds(server_pids) - cpu0 if server_pids and cpu0 is not None else None
    by_process = ({k: round((v - by_process0[k]) * 1000 / max(1, len(latencies)), 2)
                   for k, v in cpu_by_group(groups).items()} if groups else None)
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
            "seconds": round(elapsed, 2), "rps": round(len(lat) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(pct(50), 1), "p95_ms": round(pct(95), 1), "p99_ms": round(pct(99), 1),
            "max_ms": round(lat[-1] * 1000, 1) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "concurrency": concurrency,
            "connections_per_process": split or None,
            # CPU the server spent per request: independent of whatever else the machine is doing
            "server_cpu_ms_per_request": round(cpu * 1000 / len(lat), 2) if cpu is not None and lat else None,
            "cpu_ms_per_request_by_process": by_process}


FAKE_CORE_SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from bot.config import Settings
from bot.web.app import create_app
from tests.web_fakes import FakeCore
app = create_app(Settings(), core=FakeCore())
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""


def start_server(port: int, tmp: Path, core: str = "real", workers: int = 1,
                 database_url: str | None = None, extra_env: dict[str, str] | None = None,
                 log_name: str = "server.log") -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "PBXBOT_DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.sqlite3'}",
        "PBXBOT_RATE_LIMIT_PER_MINUTE": "1000000",
        "PBXBOT_OPERATOR_TOKEN": "bench-operator-token-not-secret",
        "PBXBOT_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    })
    cmd = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if core == "fake":  # the web layer alone: tests/web_fakes.FakeCore instead of retrieval + SQL
        cmd = [sys.executable, "-c", FAKE_CORE_SERVER.format(root=str(ROOT), port=port)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / log_name, "wb"),
                            start_new_session=True)


def start_nodes(port: int, tmp: Path, nodes: int, database_url: str | None, redis_url: str | None,
                node_workers: int = 1) -> list[subprocess.Popen]:
    """`nodes` separate `pbxbot serve` processes (own ports, sharing only the database and Redis)
    behind nginx on `port`; the nginx process comes last."""
    try:
        from scripts.nginx_lb import start_nginx
    except ImportError:  # run as `python scripts/bench_web.py`
        from nginx_lb import start_nginx

    if not database_url or database_url.startswith("sqlite"):
        raise SystemExit("--nodes needs --database-url postgresql://... (SQLite serves one process)")
    env = {"PBXBOT_TRUSTED_PROXIES": "127.0.0.1", "PBXBOT_SESSION_SECRET": "bench-session-secret-not-secret"}
    if redis_url:
        env["PBXBOT_REDIS_URL"] = redis_url
    ports = [free_port() for _ in range(nodes)]
    procs = []
    for i, node_port in enumerate(ports):  # one after another: the first migrates the schema
        procs.append(start_server(node_port, tmp, workers=node_workers, database_url=database_url, extra_env=env,
                                  log_name=f"server-{i}.log"))
        wait_healthy(f"http://127.0.0.1:{node_port}", 900)
    procs.append(start_nginx(port, ports, tmp / "nginx"))
    return procs


def stop_servers(servers: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM to each server (its own session, so a Ctrl-C of the caller does not reach it), then
    a wait; SIGKILL to any that has not exited after `timeout` s."""
    for server in servers:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def report_log_errors(tmp: Path) -> dict[str, list[str]]:
    """The ERROR and Traceback lines of each server*.log in `tmp` (printed to stderr, first one shown)."""
    found: dict[str, list[str]] = {}
    for log_path in sorted(tmp.glob("server*.log")):
        errors = [line for line in log_path.read_text(errors="replace").splitlines()
                  if " ERROR " in line or "Traceback" in line]
        if errors:
            found[log_path.name] = errors
            print(f"{log_path.name}: {len(errors)} error line(s), first: {errors[0][:200]}", file=sys.stderr)
    return found


def connections_per_process(root_pid: int, port: int) -> list[int]:
    """How the server's processes share the established connections on `port` (what `ss -tnp`
    shows): the number each process holds, largest first, processes holding none left out."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    counts = []
    for pid in tree_pids(root_pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        links = []
        for fd in fds:
            try:  # a descriptor closed while we look is skipped, not the whole process
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        held = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server (loopback); default: start one")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of measured load (max 120)")
    ap.add_argument("--concurrency", type=int, default=16, help="simultaneous simulated users")
    ap.add_argument("--turns", type=int, default=3, help="messages per simulated conversation")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--core", choices=["real", "fake"], default="real",
                    help="fake: measure the web layer alone (in-memory fake core, no retrieval, no SQL)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (pbxbot serve --workers)")
    ap.add_argument("--database-url", help="the server's store (default: a new SQLite file); e.g. "
                    "postgresql://postgres@127.0.0.1/bench for the scale-out setup (its tables get bench rows)")
    ap.add_argument("--nodes", type=int, default=0, help="this many one-process `pbxbot serve` nodes behind "
                    "nginx (least_conn); needs --database-url postgresql://...")
    ap.add_argument("--node-workers", type=int, default=1, help="--workers of each node (uvicorn's processes)")
    ap.add_argument("--redis-url", help="the nodes' PBXBOT_REDIS_URL (shared rate limits)")
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args()
    if args.nodes and (args.url or args.core == "fake" or args.workers > 1):
        ap.error("--nodes starts its own one-process nodes on the real core")
    if args.core == "fake" and args.workers > 1:
        ap.error("--core fake runs one plain uvicorn process; it cannot be combined with --workers")
    duration = min(max(args.duration, 1.0), 120.0)

    servers: list[subprocess.Popen] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="pbxbot-bench-")
    url = args.url
    try:
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            print(f"starting pbxbot serve on {url} ...", file=sys.stderr)
            if args.nodes:
                servers = start_nodes(port, Path(tmpdir.name), args.nodes, args.database_url, args.redis_url,
                                      args.node_workers)
            else:
                servers = [start_server(port, Path(tmpdir.name), args.core, args.workers, args.database_url,
                                        {"PBXBOT_REDIS_URL": args.redis_url} if args.redis_url else None)]
        check_loopback(url)
        wait_healthy(url, args.startup_timeout)
        if servers:
            wait_idle([p.pid for p in servers], args.startup_timeout)
        groups = {"server": [p.pid for p in servers]} if servers else {}
        if args.nodes:
            groups = {"nodes": [p.pid for p in servers[:-1]], "nginx": [servers[-1].pid]}
        if groups and args.database_url and not args.database_url.startswith("sqlite"):
            groups.update(service_pids(urlsplit(args.database_url).path.lstrip("/")))  # their CPU counts too
        if not args.redis_url:
            groups.pop("redis", None)
        measured = sorted({pid for pids in groups.values() for pid in pids})
        result = asyncio.run(drive(url, args.concurrency, duration, args.turns, args.seed, measured or None,
                                   groups or None))
    finally:
        stop_servers(servers)
        report_log_errors(Path(tmpdir.name))
        tmpdir.cleanup()

    ok = result["rps"] >= 150 and result["p95_ms"] <= 150 and result["errors"] == 0
    if args.json:
        print(json.dumps({**result, "targets_met": ok}))
    else:
        setup = (f"nginx + {args.nodes} nodes x {args.node_workers} process(es)" if args.nodes else f"{args.workers} process(es)") if not args.url else "external"
        print(f"POST /api/chat  {result['requests']} requests in {result['seconds']} s, "
              f"concurrency {result['concurrency']}, core {args.core}, {setup}")
        print(f"  throughput  {result['rps']} req/s   (target >= 150)")
        print(f"  latency     p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  p99 {result['p99_ms']} ms  "
              f"max {result['max_ms']} ms   (target p95 <= 150)")
        print(f"  errors      {result['errors']} {result['error_kinds'] or ''}  (target 0)")
        if result["server_cpu_ms_per_request"] is not None:
            print(f"  server CPU  {result['server_cpu_ms_per_request']} ms per request "
                  f"(2 cores: at most ~{2000 / result['server_cpu_ms_per_request']:.0f} req/s if the server had both)")
        if result["cpu_ms_per_request_by_process"] and len(result["cpu_ms_per_request_by_process"]) > 1:
            print("  CPU split   " + ", ".join(f"{k} {v} ms" for k, v in result["cpu_ms_per_request_by_process"].items())
                  + " per request")
        if result["connections_per_process"]:
            print(f"  connections {'/'.join(map(str, result['connections_per_process']))} "
                  "(keep-alive connections held by each server process)")
        print("  targets     " + ("MET" if ok else "NOT MET"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
