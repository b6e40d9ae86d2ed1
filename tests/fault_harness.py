"""The fault harness for "nothing lost on any channel" (issue 13, part 4): one implementation for
scripts/fault_webhooks.py (full size, prints numbers) and tests/integration/test_fault_webhooks.py
(CI size, asserts).

It behaves like the platforms in front of a real `pbxbot serve` subprocess:

* the fake platform APIs (tests/fakes_platforms.FakePlatforms, here with an outage switch and the
  HTTP status of every answer recorded) run in this process, and the server's Telegram (webhook
  mode) and LINE settings point at them;
* webhooks are signed as the platforms sign them and sent by a few concurrent senders; one that
  gets no 2xx (connection refused or reset, 5xx, timeout, anything else) is sent again later with
  the SAME update_id / webhookEventId (LINE marks it `isRedelivery`) until it gets a 2xx;
* faults: kill -9 of the server's whole process group at random moments, restarted each time
  (`kills`); the platform APIs answering 503 or refusing connections for a while (`api_outage`);
  PostgreSQL cut off behind a TCP proxy in this process for a while (`db_outage`);
* at the end (after the last restart, once the replies have drained or a timeout) it reads the
  store (user messages in the `messages` table) and the calls the fake APIs answered 2xx.

Each message is the only one of its conversation (its own Telegram group chat or LINE group; the
senders are a few users who write in all of them), so every reply that reaches a fake API belongs
to exactly one message: Telegram sendMessage by chat_id, LINE reply by reply token and push by `to`.

Never reaches beyond 127.0.0.1. Bounded in time (`max_seconds`, `drain_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from tests.fakes_platforms import (  # noqa: E402
    FakePlatforms,
    Recorded,
    line_body,
    line_postback_event,
    line_signature,
    line_text_event,
    telegram_message_update,
)

TG_TOKEN, TG_SECRET = "424242:FAULT-suite-token", "fault-suite-webhook-secret"
LINE_SECRET, LINE_TOKEN = "fault-suite-line-channel-secret-0123", "fault-suite-line-access-token"
OPERATOR_TOKEN = "fault-suite-operator-token-not-secret"
SESSION_SECRET = "fault-suite-session-secret-not-secret"
LINE_REPLY_TOKEN_TTL = 60.0  # seconds a LINE reply token is accepted after its event (and only once)
PG_ADMIN_DSN = os.environ.get(
    "PBXBOT_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3")

QUESTIONS = [
    "PBXが乗っ取られたかもしれません。まず何をすればいいですか",
    "国際電話の不正発信を防ぐ設定を教えてください",
    "海外への発信を止めるにはどうすればいいですか",
    "IP電話の不正利用の被害を防ぐ方法は？",
    "SIPのパスワードはどのくらいの長さにすべきですか",
    "通話ログはどれくらい保存すればいいですか",
    "警察に相談するときに何を用意すればいいですか",
    "国際電話の利用休止はどこに申し込めますか",
    "ルーターのポート開放は危険ですか",
    "保守業者に確認すべきことは何ですか",
    "How do I stop international calls from our PBX?",
    "What should we do first if our IP-PBX was hacked?",
    "How can we prevent SIP brute force attacks?",
    "Which logs should we keep after toll fraud?",
    "How do I block outgoing calls to foreign countries?",
    "What is the risk of leaving the PBX admin page open to the internet?",
    "Should we report toll fraud to the police?",
    "How long should SIP passwords be?",
]


def log_stderr(line: str) -> None:
    print(f"[fault {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- configuration


@dataclass
class FaultConfig:
    store: str = "sqlite"  # sqlite | postgres
    messages: int = 1000
    kills: int = 10
    workers: int = 1
    kill_target: str = "group"  # group: the server and its workers (then restarted) | worker: one uvicorn worker
    seed: int = 1
    senders: int = 4  # concurrent webhook senders
    users: int = 8  # senders of the messages (each message is its own group chat)
    rate: float = 15.0  # new messages a second on average (retries come on top); 0: as fast as the senders go
    burst: int = 40  # new messages come in bursts of this many, as fast as the senders go (1: evenly)
    line_share: float = 0.5  # the rest is Telegram
    api_outage: float = 0.0  # seconds the fake platform APIs are down (0: none)
    api_outage_mode: str = "503"  # 503 | refuse
    api_down_at_start: bool = False  # the APIs are already down when the server starts (and `api_outage` s after)
    operator_replies: int = 3  # api outage: operator replies sent during it (tickets opened before it)
    db_outage: float = 0.0  # seconds PostgreSQL is cut off (postgres only; 0: none)
    db_outage_mode: str = "refuse"  # refuse (connections reset, new ones refused) | blackhole (they hang)
    lead_in: float = 5.0  # outage modes: seconds of traffic before the outage
    request_timeout: float = 10.0  # a webhook not answered within this is resent
    drain_timeout: float = 120.0  # after the last fault: wait this long at most for the replies
    max_seconds: float = 1200.0  # the whole run
    outbox_max_backoff: float = 1.0  # PBXBOT_OUTBOX_MAX_BACKOFF (seconds)
    core_threads: int = 0  # PBXBOT_CORE_THREADS (0: the server's default)
    data_dir: Path | None = None  # a built data dir (index, models) used as is; None: a copy of source_data_dir
    source_data_dir: Path | None = None  # copied once per run when data_dir is None (default $PBXBOT_DATA_DIR)
    work_dir: Path | None = None  # logs, the SQLite database; None: a new temporary folder
    keep_database: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = log_stderr


# ---------------------------------------------------------------------------------- the fake platforms


class FaultyPlatforms(FakePlatforms):
    """FakePlatforms with an outage switch ("503": every API call answers 503; "refuse": the port is
    closed and open connections are dropped), the status of every answer (`Recorded.status`), and
    LINE reply tokens that work once and expire (as LINE's do)."""

    def __init__(self) -> None:
        super().__init__()
        self.outage: str | None = None
        self._site: web.TCPSite | None = None
        self._recorded: dict[int, Recorded] = {}  # request being answered -> its record
        self.reply_tokens: dict[str, float] = {}  # LINE reply token -> when its event was sent (monotonic)
        self.used_reply_tokens: set[str] = set()

    async def start(self) -> "FaultyPlatforms":
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("POST", "/bot{token}/{method}", self._telegram)
        app.router.add_route("GET", "/bot{token}/{method}", self._telegram)
        app.router.add_route("POST", "/v2/bot/message/{kind}", self._line)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def go_down(self, mode: str = "503") -> None:
        self.outage = mode
        if mode == "refuse" and self._site is not None:
            await self._site.stop()
            self._site = None
            server = self._runner.server if self._runner is not None else None
            for handler in list(getattr(server, "connections", []) if server is not None else []):
                handler.force_close()

    async def come_back(self) -> None:
        if self.outage == "refuse" and self._runner is not None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()
        self.outage = None

    async def _record(self, request: web.Request, platform: str, method: str) -> Recorded:
        rec = await super()._record(request, platform, method)
        rec.status = 0  # type: ignore[attr-defined]
        self._recorded[id(request)] = rec
        return rec

    async def _answer(self, request: web.Request, platform: str, handler: Any) -> web.StreamResponse:
        if self.outage:
            tail = request.match_info.get("method") or request.match_info.get("kind") or "?"
            rec = await self._record(request, platform, tail)
            rec.status = 503  # type: ignore[attr-defined]
            if platform == "telegram":
                return web.json_response({"ok": False, "error_code": 503, "description": "Service Unavailable"},
                                         status=503)
            return web.json_response({"message": "Service Unavailable"}, status=503)
        try:
            response = await handler(request)
        finally:
            rec = self._recorded.pop(id(request), None)
        if rec is not None:
            rec.status = response.status
        return response

    async def _telegram(self, request: web.Request) -> web.StreamResponse:  # type: ignore[override]
        return await self._answer(request, "telegram", super()._telegram)

    async def _line(self, request: web.Request) -> web.StreamResponse:  # type: ignore[override]
        """As LINE: a reply token is used once, within LINE_REPLY_TOKEN_TTL of its event."""
        token = None
        if not self.outage and request.match_info.get("kind") == "reply":
            try:
                token = str(json.loads(await request.read() or b"{}").get("replyToken"))
            except (ValueError, AttributeError):
                token = None
            issued = self.reply_tokens.get(token or "")
            if token in self.used_reply_tokens or (issued is not None
                                                   and time.monotonic() - issued > LINE_REPLY_TOKEN_TTL):
                rec = await self._record(request, "line", "reply")
                self._recorded.pop(id(request), None)
                rec.status = 400  # type: ignore[attr-defined]
                return web.json_response({"message": "Invalid reply token"}, status=400)
            if token:
                self.used_reply_tokens.add(token)  # taken now; given back when the reply fails
        response = await self._answer(request, "line", super()._line)
        if token and not 200 <= response.status < 300:
            self.used_reply_tokens.discard(token)
        return response

    def delivered(self) -> list[Recorded]:
        """Calls that delivered a text: sendMessage and LINE reply/push answered 2xx."""
        return [r for r in self.requests
                if 200 <= getattr(r, "status", 0) < 300
                and ((r.platform == "telegram" and r.method == "sendMessage")
                     or (r.platform == "line" and r.method in ("reply", "push")))]


# ---------------------------------------------------------------------------------- PostgreSQL behind a proxy


class TcpProxy:
    """127.0.0.1:<port> -> target, in this event loop; cut() drops every connection and refuses
    (or, "blackhole", swallows) new ones until restore()."""

    def __init__(self, target_port: int = 5432, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode: str | None = None  # None: up
        self._server: asyncio.AbstractServer | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._held: list[asyncio.StreamWriter] = []
        self.connections = 0

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "blackhole":
            self._held.append(writer)  # accepted, never answered
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    if self.mode == "blackhole":
                        await asyncio.sleep(3600)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        except asyncio.CancelledError:  # the run is over (the loop cancels what is left)
            pass
        finally:
            self._links.discard(link)

    async def cut(self, mode: str = "refuse") -> None:
        self.mode = mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            for client, upstream in list(self._links):
                client.transport.abort()
                if upstream is not None:
                    upstream.transport.abort()

    async def restore(self) -> None:
        mode, self.mode = self.mode, None
        for w in self._held:
            w.transport.abort()
        self._held.clear()
        if mode == "blackhole":  # what hung during the partition is reset when it ends
            for client, upstream in list(self._links):
                client.transport.abort()
                if upstream is not None:
                    upstream.transport.abort()
        if self._server is None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client, upstream in list(self._links):
            client.transport.abort()
            if upstream is not None:
                upstream.transport.abort()
        for w in self._held:
            w.transport.abort()


def pg_available() -> str | None:
    """None when PostgreSQL answers on 127.0.0.1:5432 as postgres; otherwise why not."""
    try:
        import psycopg

        psycopg.connect(PG_ADMIN_DSN, autocommit=True).close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}".strip()


def create_pg_database() -> tuple[str, str]:
    """A new empty database: (name, its URL on 127.0.0.1:5432)."""
    import psycopg

    name = f"pbxbot_fault_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        user, host, port = conn.info.user, conn.info.host, conn.info.port
    return name, f"postgresql+psycopg://{user}@{host}:{port}/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------- the server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data_dir(source: Path | None, dest: Path, log: Callable[[str], None] = log_stderr) -> Path:
    """A private copy of a built data dir (index, embedding cache, intent model) for the servers of
    one run (they are killed -9 at random moments: never in a data dir someone else uses). Without
    a built source, `pbxbot index` builds one in `dest`."""
    source = Path(source or os.environ.get("PBXBOT_DATA_DIR") or ROOT / ".pbxbot")
    if (source / "index" / "CURRENT").exists():
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("pbxbot.sqlite3*", "*.lock"),
                        dirs_exist_ok=True)
        return dest
    log(f"no built index in {source}: building one in {dest} (pbxbot index)")
    env = server_env_base()
    env["PBXBOT_DATA_DIR"] = str(dest)
    subprocess.run([sys.executable, "-m", "bot", "index"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=1800)
    return dest


def server_env_base() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_")}
    env.update(PYTHONPATH=str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False",
               NO_PROXY="127.0.0.1,localhost")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    return env


class Server:
    """`pbxbot serve` in its own process group: kill9() kills the group (uvicorn's workers too)."""

    def __init__(self, env: dict[str, str], workers: int, logs: Path, log: Callable[[str], None]) -> None:
        self.env, self.workers, self.logs, self.log = env, workers, logs, log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.unexpected_exits = 0
        self.start_seconds: list[float] = []

    def spawn(self) -> None:
        self.runs += 1
        cmd = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with open(self.logs / f"server-{self.runs:02d}.log", "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)

    async def wait_healthy(self, session: Any, timeout: float = 180.0) -> float:
        import aiohttp

        began = time.monotonic()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.logs / f"server-{self.runs:02d}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited with {self.proc.returncode} while starting:\n{tail}")
            try:
                async with session.get(f"{self.base}/healthz", timeout=aiohttp.ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        took = time.monotonic() - began
                        self.start_seconds.append(took)
                        return took
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"server not healthy after {timeout:.0f} s (log {self.logs})")
            await asyncio.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this Popen created: the server and its workers
        self.proc.wait(10)

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes (children of the server running multiprocessing's spawn_main)."""
        if self.proc is None:
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        out = []
        for pid in map(int, children):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                out.append(pid)
        return out

    def ready_workers(self) -> list[int]:
        """Worker processes that are serving (uvicorn logged "Started server process [pid]")."""
        try:
            text = (self.logs / f"server-{self.runs:02d}.log").read_text(errors="replace")
        except OSError:
            return []
        return [pid for pid in self.worker_pids() if f"Started server process [{pid}]" in text]

    async def kill9_busiest_worker(self) -> int | None:
        """kill -9 of the serving worker that used the most CPU in the last 0.3 s (the one answering;
        uvicorn starts a new one, the others keep serving)."""
        def cpu(pid: int) -> int:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                return -1

        pids = self.ready_workers()
        if not pids:
            return None
        before = {pid: cpu(pid) for pid in pids}
        await asyncio.sleep(0.3)
        pid = max(pids, key=lambda p: cpu(p) - before[p])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # a child of the server this Popen started
        return pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


# ---------------------------------------------------------------------------------- messages


@dataclass
class Msg:
    n: int
    platform: str  # telegram | line
    text: str
    user: int
    update_id: int = 0  # telegram
    chat_id: int = 0  # telegram group chat
    event_id: str = ""  # line
    group_id: str = ""  # line
    reply_token: str = ""  # line
    action: str = ""  # "" | request_human (operator-reply chats)
    timestamp_ms: int = 0
    attempts: int = 0
    acked_at: float | None = None
    ack_status: int = 0
    ack_phase: str = ""  # during which fault the 2xx came ("db_outage", "api_outage", "")
    first_sent: float | None = None
    errors: Counter = field(default_factory=Counter)

    @property
    def conversation_id(self) -> str:
        return f"telegram:{self.chat_id}" if self.platform == "telegram" else f"line:{self.group_id}"

    @property
    def message_id(self) -> str:
        return f"telegram:{self.update_id}" if self.platform == "telegram" else f"line:{self.event_id}"

    def request(self) -> tuple[str, bytes, dict[str, str]]:
        if self.platform == "telegram":
            update = telegram_message_update(self.update_id, self.text, chat_id=self.chat_id,
                                             user_id=5_000_000 + self.user,
                                             language_code="en" if self.text.isascii() else "ja")
            update["message"]["chat"] = {"id": self.chat_id, "type": "group", "title": f"fault {self.n}"}
            update["message"]["date"] = self.timestamp_ms // 1000
            body = json.dumps(update, ensure_ascii=False).encode()
            return "/webhooks/telegram", body, {"Content-Type": "application/json",
                                                "X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
        user_id = f"U{self.user:032x}"
        if self.action == "request_human":
            event = line_postback_event("action=request_human", event_id=self.event_id, user_id=user_id,
                                        reply_token=self.reply_token)
            event["timestamp"] = self.timestamp_ms
        else:
            event = line_text_event(self.text, event_id=self.event_id, user_id=user_id, reply_token=self.reply_token,
                                    timestamp_ms=self.timestamp_ms, redelivery=self.attempts > 0)
        event["source"] = {"type": "group", "groupId": self.group_id, "userId": user_id}
        event["deliveryContext"] = {"isRedelivery": self.attempts > 0}
        body = line_body(event)
        return "/webhooks/line", body, {"Content-Type": "application/json",
                                        "X-Line-Signature": line_signature(LINE_SECRET, body)}


def make_messages(cfg: FaultConfig, count: int, start: int = 0, *, action: str = "",
                  rng: random.Random | None = None) -> list[Msg]:
    rng = rng or random.Random(cfg.seed)
    run = cfg.seed * 1_000_000
    out = []
    for n in range(start, start + count):
        platform = "line" if rng.random() < cfg.line_share else "telegram"
        question = QUESTIONS[rng.randrange(len(QUESTIONS))]
        text = "/human" if action and platform == "telegram" else f"{question} (#{n})"
        out.append(Msg(n=n, platform=platform, text=text, user=rng.randrange(cfg.users), action=action,
                       update_id=run + n, chat_id=-(1_000_000_000_000 + run + n),
                       event_id=f"01FAULT{cfg.seed:05d}{n:014d}", group_id=f"C{cfg.seed:08x}{n:024x}",
                       reply_token=f"rt-fault-{cfg.seed}-{n}", timestamp_ms=int(time.time() * 1000)))
    return out


# ---------------------------------------------------------------------------------- the store


def read_user_messages(url: str) -> dict[str, list[dict[str, Any]]]:
    """User messages in the `messages` table by conversation: [{message_id, text, handled}]."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT conversation_id, text, meta, handled FROM messages WHERE role = 'user'"))
            out: dict[str, list[dict[str, Any]]] = {}
            for cid, body, meta, handled in rows:
                if isinstance(meta, str):
                    try:
                        meta = json.loads(meta)
                    except ValueError:
                        meta = {}
                out.setdefault(cid, []).append({"message_id": (meta or {}).get("message_id"), "text": body,
                                                "handled": bool(handled)})
            return out
    finally:
        engine.dispose()


def read_replies(url: str) -> dict[str, list[tuple[str, str]]]:
    """Bot and operator messages in the `messages` table by conversation: [(role, text)]."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out: dict[str, list[tuple[str, str]]] = {}
            for cid, role, body in conn.execute(
                    text("SELECT conversation_id, role, text FROM messages WHERE role IN ('bot', 'operator')")):
                out.setdefault(cid, []).append((role, body))
            return out
    finally:
        engine.dispose()


def store_backlog(url: str) -> tuple[int, int, int]:
    """(unhandled user messages, pending outbox items, outbox items given up: 'failed' before
    migration 0005, dead letters 'dead' after it)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            unhandled = conn.execute(text("SELECT count(*) FROM messages WHERE role = 'user' AND NOT handled")).scalar()
            statuses = dict(conn.execute(text("SELECT status, count(*) FROM outbox GROUP BY status")).all())
            given_up = int(statuses.get("failed", 0)) + int(statuses.get("dead", 0))
            return int(unhandled or 0), int(statuses.get("pending", 0)), given_up
    finally:
        engine.dispose()


def normalized(text: str) -> str:
    """A delivered or stored text without markup, entities and runs of white space."""
    import html
    import re

    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split())


def duplicate_way(ways: list[str]) -> str:
    """How one text reached a chat more than once: "telegram" (sendMessage has no idempotency key),
    "line reply+push", "line push, N retry keys" (one key is accepted once: several keys were used)."""
    if all(w == "telegram" for w in ways):
        return "telegram"
    replies = sum(1 for w in ways if w == "line reply")
    keys = {w for w in ways if w.startswith("line push")}
    if replies and keys:
        return "line reply+push"
    if replies:
        return "line reply twice"
    return f"line push, {len(keys)} retry keys"


# ---------------------------------------------------------------------------------- the result


@dataclass
class FaultResult:
    mode: str
    store: str
    workers: int
    sent: int = 0
    by_platform: Counter = field(default_factory=Counter)
    requests: int = 0  # webhook requests, resends included
    acknowledged: int = 0
    never_acknowledged: int = 0
    lost: list[str] = field(default_factory=list)  # message ids: 2xx, never recorded
    duplicates: list[str] = field(default_factory=list)  # recorded more than once
    unanswered: list[str] = field(default_factory=list)  # acknowledged, no reply reached the API
    multi_delivered: list[str] = field(default_factory=list)  # some reply text delivered more than once
    extra_deliveries: int = 0
    duplicate_ways: Counter = field(default_factory=Counter)  # how the extra deliveries went out
    kills: int = 0
    restarts: int = 0
    unexpected_exits: int = 0
    resend_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    start_seconds: list[float] = field(default_factory=list)
    # api outage
    api_outage: float = 0.0
    pending_at_recovery: int = 0
    delivered_after_recovery: int = 0
    last_delivery_after_recovery: float = 0.0
    operator_pending: int = 0
    operator_delivered: int = 0
    api_calls_failed_in_outage: int = 0
    # db outage
    db_outage: float = 0.0
    acked_in_db_outage: int = 0
    acked_in_db_outage_lost: list[str] = field(default_factory=list)
    answered_5xx_in_db_outage: int = 0
    replies_recorded: int = 0  # bot and operator messages in the store, for the messages sent
    replies_undelivered: list[str] = field(default_factory=list)  # recorded, never reached the API
    backlog_at_end: tuple[int, int, int] = (0, 0, 0)
    logs: str = ""
    lost_platforms: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        plat = ", ".join(f"{k} {v}" for k, v in sorted(self.by_platform.items()))
        lost_by = ", ".join(f"{k} {v}" for k, v in sorted(self.lost_platforms.items())) or "-"
        out = [
            f"run: mode={self.mode} store={self.store} workers={self.workers} kills={self.kills} "
            f"restarts={self.restarts} unexpected_exits={self.unexpected_exits} seconds={self.seconds:.0f}",
            f"sent: {self.sent} messages ({plat}); webhook requests {self.requests} "
            f"(resends {self.requests - self.sent}: {dict(self.resend_reasons) or '-'})",
            f"acknowledged (2xx): {self.acknowledged}; never acknowledged: {self.never_acknowledged}",
            f"LOST (acknowledged, never recorded): {len(self.lost)} ({lost_by})",
            f"DUPLICATE (recorded more than once): {len(self.duplicates)}",
            f"UNANSWERED (acknowledged, no reply reached the platform API): {len(self.unanswered)}",
            f"replies delivered more than once: {len(self.multi_delivered)} messages "
            f"({self.extra_deliveries} extra deliveries: {dict(self.duplicate_ways) or '-'})",
            f"replies recorded in the store but never delivered: {len(self.replies_undelivered)} "
            f"of {self.replies_recorded}",
        ]
        if self.mode == "api-outage":
            out.append(f"API outage {self.api_outage:.0f} s: replies pending when it ended {self.pending_at_recovery}, "
                       f"delivered after recovery {self.delivered_after_recovery} of {self.pending_at_recovery} "
                       f"(last {self.last_delivery_after_recovery:.1f} s after); operator replies delivered "
                       f"{self.operator_delivered} of {self.operator_pending}; API calls answered 503 during it "
                       f"{self.api_calls_failed_in_outage}")
        if self.mode == "db-outage":
            out.append(f"DB outage {self.db_outage:.0f} s: webhooks answered 2xx during it {self.acked_in_db_outage}, "
                       f"of which never recorded {len(self.acked_in_db_outage_lost)}; answered 5xx during it "
                       f"{self.answered_5xx_in_db_outage}")
        starts = self.start_seconds or [0.0]
        out.append(f"store at the end: unhandled user messages {self.backlog_at_end[0]}, outbox pending "
                   f"{self.backlog_at_end[1]}, given up (failed/dead) {self.backlog_at_end[2]}; "
                   f"server start {min(starts):.1f}-{max(starts):.1f} s; logs {self.logs}")
        return out

    def examples(self, n: int = 5) -> str:
        return (f"lost {self.lost[:n]} duplicates {self.duplicates[:n]} unanswered {self.unanswered[:n]} "
                f"multi-delivered {self.multi_delivered[:n]} undelivered replies {self.replies_undelivered[:n]}")


# ---------------------------------------------------------------------------------- the run


class FaultRun:
    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self.log = cfg.log
        self.rng = random.Random(cfg.seed * 7919 + 1)
        self.mode = "db-outage" if cfg.db_outage else ("api-outage" if cfg.api_outage else "kill")
        self.phase = ""  # "api_outage" | "db_outage" while one is on
        self.requests = 0
        self.resend_reasons: Counter = Counter()
        self.answered_5xx_in_db_outage = 0
        self.server_up = asyncio.Event()
        self.kills_done = 0
        self.sending_done = False
        self.tokens: dict[str, str] = {}
        self.operator: list[tuple[Msg, str]] = []

    # ------------------------------------------------------------ set-up

    async def run(self) -> FaultResult:
        cfg = self.cfg
        if cfg.db_outage and cfg.store != "postgres":
            raise ValueError("a database outage needs --store postgres (a proxy between the server and PostgreSQL)")
        if cfg.workers > 1 and cfg.store != "postgres":
            raise ValueError("--workers > 1 needs --store postgres")
        if cfg.kill_target == "worker" and cfg.workers < 2:
            raise ValueError("killing one worker needs --workers 2 or more")
        began = time.monotonic()
        work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="pbxbot-fault-"))
        work.mkdir(parents=True, exist_ok=True)
        own_data = cfg.data_dir is None
        data = cfg.data_dir or prepare_data_dir(cfg.source_data_dir, work / "data", self.log)
        db_name = None
        proxy: TcpProxy | None = None
        if cfg.store == "postgres":
            db_name, direct_url = create_pg_database()
            server_url = direct_url
            if cfg.db_outage:
                proxy = await TcpProxy().start()
                server_url = direct_url.replace(":5432/", f":{proxy.port}/")
        else:
            direct_url = server_url = f"sqlite:///{work / 'fault.sqlite3'}"
        fake = await FaultyPlatforms().start()
        env = server_env_base()
        env.update(
            PBXBOT_DATA_DIR=str(data), PBXBOT_DATABASE_URL=server_url,
            PBXBOT_TELEGRAM_TOKEN=TG_TOKEN, PBXBOT_TELEGRAM_WEBHOOK_SECRET=TG_SECRET,
            PBXBOT_TELEGRAM_API_URL=fake.telegram_base, PBXBOT_TELEGRAM_MODE="webhook",
            PBXBOT_LINE_CHANNEL_SECRET=LINE_SECRET, PBXBOT_LINE_CHANNEL_ACCESS_TOKEN=LINE_TOKEN,
            PBXBOT_LINE_API_URL=fake.url, PBXBOT_OPERATOR_TOKEN=OPERATOR_TOKEN, PBXBOT_SESSION_SECRET=SESSION_SECRET,
            PBXBOT_RATE_LIMIT_PER_MINUTE="1000000", PBXBOT_LOGIN_ATTEMPTS_PER_MINUTE="1000",
            PBXBOT_OUTBOX_MAX_BACKOFF=str(cfg.outbox_max_backoff), PBXBOT_LOG_LEVEL="INFO",
            PBXBOT_DATABASE_START_ATTEMPTS="30")
        if cfg.core_threads:
            env["PBXBOT_CORE_THREADS"] = str(cfg.core_threads)
        env.update(cfg.extra_env)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        server = Server(env, cfg.workers, logs, self.log)
        self.server, self.fake, self.proxy = server, fake, proxy
        result = FaultResult(mode=self.mode, store=cfg.store, workers=cfg.workers, logs=str(logs),
                             api_outage=cfg.api_outage, db_outage=cfg.db_outage)
        self.pending_at_recovery_ids: list[str] = []
        self.recovered_at = self.outage_began = 0.0
        if cfg.api_outage and cfg.api_down_at_start:
            await fake.go_down(cfg.api_outage_mode)
            self.phase, self.outage_began = "api_outage", time.monotonic()
            self.log("platform APIs down before the server starts")
        import aiohttp

        connector = aiohttp.TCPConnector(limit=cfg.senders * 2 + 4)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                self.session = session
                server.spawn()
                took = await server.wait_healthy(session)
                self.server_up.set()
                self.healthy_at = time.monotonic()
                self.log(f"{cfg.store} server ({cfg.workers} process(es)) healthy in {took:.1f} s on {server.base}")
                deadline = began + cfg.max_seconds
                if self.mode == "kill":
                    msgs = self.register(make_messages(cfg, cfg.messages))
                    await self.kill_run(msgs, deadline)
                    operator: list[tuple[Msg, str]] = []
                elif self.mode == "api-outage":
                    msgs, operator = await self.api_outage_run(result, deadline)
                else:
                    msgs = self.register(make_messages(cfg, cfg.messages))
                    await self.db_outage_run(msgs, deadline)
                    operator = []
                await self.drain(msgs, direct_url, min(deadline, time.monotonic() + cfg.drain_timeout))
                self.check(msgs, operator, direct_url, result)
        finally:
            server.stop()
            await fake.stop()
            if proxy is not None:
                await proxy.stop()
            if db_name and not cfg.keep_database:
                with contextlib.suppress(Exception):
                    drop_pg_database(db_name)
            if own_data and cfg.data_dir is None:
                shutil.rmtree(work / "data", ignore_errors=True)
        result.kills, result.restarts = self.kills_done, server.runs - 1
        result.unexpected_exits = server.unexpected_exits
        result.start_seconds = server.start_seconds
        result.seconds = time.monotonic() - began
        return result

    # ------------------------------------------------------------ sending like a platform

    async def post(self, msg: Msg) -> tuple[int, str]:
        """One delivery attempt: (status, reason); status 0 when no HTTP answer came."""
        import aiohttp

        path, body, headers = msg.request()
        self.requests += 1
        try:
            async with self.session.post(self.server.base + path, data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=self.cfg.request_timeout)) as r:
                await r.read()
                return r.status, f"HTTP {r.status}"
        except asyncio.TimeoutError:
            return 0, "timeout"
        except aiohttp.ClientConnectorError:
            return 0, "refused"
        except (aiohttp.ClientError, OSError) as exc:
            return 0, type(exc).__name__

    async def send_all(self, msgs: list[Msg], deadline: float, rate: float | None = None,
                       burst: int | None = None) -> None:
        """Every message until it got a 2xx (or the deadline): new ones in bursts of `burst` at
        `rate` a second on average, those that got no 2xx again after a back-off, with the same ids."""
        rate = self.cfg.rate if rate is None else rate
        burst = max(1, self.cfg.burst if burst is None else burst)
        fresh = list(reversed(msgs))
        retry: list[tuple[float, int, Msg]] = []
        seq = itertools.count()
        t0 = time.monotonic()
        offered = 0
        open_count = len(msgs)

        def pick() -> tuple[Msg | None, float]:
            nonlocal offered
            now = time.monotonic()
            if retry and retry[0][0] <= now:
                return heapq.heappop(retry)[2], 0.0
            next_new = t0 + (offered // burst) * burst / rate if rate > 0 else now
            if fresh and next_new <= now:
                offered += 1
                return fresh.pop(), 0.0
            waits = [w for w in ((retry[0][0] - now) if retry else None, (next_new - now) if fresh else None)
                     if w is not None]
            return None, min(waits) if waits else 0.05

        async def sender() -> None:
            nonlocal open_count
            while open_count > 0 and time.monotonic() < deadline:
                msg, wait = pick()
                if msg is None:
                    await asyncio.sleep(min(max(wait, 0.005), 0.1))
                    continue
                if msg.first_sent is None:  # the event happens now (LINE's reply token is fresh from here)
                    msg.first_sent = time.monotonic()
                    msg.timestamp_ms = int(time.time() * 1000)
                    if msg.platform == "line":
                        self.fake.reply_tokens[msg.reply_token] = msg.first_sent
                phase = self.phase
                status, reason = await self.post(msg)
                phase = phase or self.phase
                msg.attempts += 1
                if 200 <= status < 300:
                    msg.acked_at, msg.ack_status, msg.ack_phase = time.monotonic(), status, phase
                    open_count -= 1
                    continue
                if phase == "db_outage" and status >= 500:
                    self.answered_5xx_in_db_outage += 1
                msg.errors[reason] += 1
                self.resend_reasons[reason] += 1
                backoff = min(5.0, 0.3 * 2 ** min(msg.attempts - 1, 4)) * (0.5 + self.rng.random())
                heapq.heappush(retry, (time.monotonic() + backoff, next(seq), msg))

        await asyncio.gather(*(sender() for _ in range(self.cfg.senders)))
        self.sending_done = True

    async def restart(self, why: str) -> None:
        self.server_up.clear()
        self.server.spawn()
        took = await self.server.wait_healthy(self.session)
        self.server_up.set()
        self.log(f"{why}: server healthy again in {took:.1f} s")

    async def watchdog(self, stop: asyncio.Event) -> None:
        """A server that exits by itself is restarted (as systemd's Restart=always would)."""
        while not stop.is_set():
            await asyncio.sleep(0.5)
            if self.server_up.is_set() and not self.server.alive():
                self.server.unexpected_exits += 1
                self.log(f"server exited by itself ({self.server.proc.returncode}); restarting")
                await self.restart("after an unexpected exit")

    # ------------------------------------------------------------ kill -9

    async def kill_run(self, msgs: list[Msg], deadline: float) -> None:
        cfg = self.cfg
        n = len(msgs)
        span = range(max(1, n // 20), max(2, n * 19 // 20))  # kill when this many were sent (+ a moment)
        points = sorted(self.rng.choices(span, k=cfg.kills)) if cfg.kills else []
        stop = asyncio.Event()

        async def killer() -> None:
            for i, point in enumerate(points):
                while sum(1 for m in msgs if m.first_sent is not None) < point and not self.sending_done:
                    if time.monotonic() > deadline:
                        return
                    await asyncio.sleep(0.05)
                if cfg.kill_target == "worker":  # every worker serving (uvicorn's new one has started)
                    until = time.monotonic() + 60
                    while len(self.server.ready_workers()) < cfg.workers and time.monotonic() < until:
                        await asyncio.sleep(0.2)
                # mid-burst: once a few acknowledged messages are still unanswered (or after 3 s), at a random moment
                until = time.monotonic() + 3.0
                while time.monotonic() < until and self.in_flight(msgs) < 3:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(self.rng.uniform(0.0, 0.3))
                acked = sum(1 for m in msgs if m.acked_at is not None)
                in_flight = self.in_flight(msgs)
                sent = sum(1 for m in msgs if m.first_sent)
                if cfg.kill_target == "worker":
                    pid = await self.server.kill9_busiest_worker()
                    self.kills_done += pid is not None
                    self.log(f"kill -9 of worker {pid} {i + 1}/{len(points)} (sent {sent}, acked {acked}, "
                             f"acknowledged and unanswered {in_flight})")
                    continue
                self.server_up.clear()  # not an unexpected exit (the watchdog)
                self.server.kill9()
                self.kills_done += 1
                self.log(f"kill -9 {i + 1}/{len(points)} (sent {sent}, acked {acked}, "
                         f"acknowledged and unanswered {in_flight})")
                await self.restart(f"kill {i + 1}")
                await asyncio.sleep(self.rng.uniform(0.3, 1.5))  # up for a while (resends arriving) before the next

        watch = asyncio.create_task(self.watchdog(stop))
        try:
            await asyncio.gather(self.send_all(msgs, deadline), killer())
        finally:
            stop.set()
            await watch

    # ------------------------------------------------------------ platform API outage

    async def api_outage_run(self, result: FaultResult, deadline: float) -> tuple[list[Msg], list[tuple[Msg, str]]]:
        """Operator tickets first ("talk to a person" in a few chats, claimed by the operator), then
        messages arriving evenly before, during and after the outage; during it the operator
        answers each ticket. With `api_down_at_start` the APIs are already down when the server
        starts (the outage counts from then)."""
        cfg = self.cfg
        rng = random.Random(cfg.seed + 17)
        humans = self.register(make_messages(cfg, cfg.operator_replies, start=900_000, action="request_human", rng=rng))
        await self.send_all(humans, deadline, rate=0, burst=1)
        tickets = await self.operator_tickets(humans, time.monotonic() + 60)
        msgs = self.register(make_messages(cfg, cfg.messages, rng=rng))
        at_start = cfg.api_down_at_start
        if at_start:  # down since before the start; back `api_outage` s after the server came up
            self.outage_began = self.healthy_at
        remaining = self.outage_began + cfg.api_outage - time.monotonic() if at_start else cfg.api_outage
        window = (0.0 if at_start else cfg.lead_in) + max(remaining, 1.0) + cfg.lead_in
        rate = cfg.messages / window if cfg.messages else 1.0
        self.log(f"API outage run: {cfg.messages} messages at {rate:.1f}/s, outage of {cfg.api_outage:.0f} s "
                 f"({cfg.api_outage_mode}) " + ("from the server's start" if at_start else f"after {cfg.lead_in:.0f} s")
                 + f"; {len(tickets)} operator replies during it")
        operator: list[tuple[Msg, str]] = []
        self.operator = operator

        async def outage() -> None:
            if not at_start:
                await asyncio.sleep(cfg.lead_in)
                await self.fake.go_down(cfg.api_outage_mode)
                self.phase = "api_outage"
                self.outage_began = time.monotonic()
                self.log("platform APIs down")
            await asyncio.sleep(min(1.0, cfg.api_outage / 4))
            for i, (msg, ticket) in enumerate(tickets):  # an operator answers during the outage
                text = f"Operator reply {i} for {msg.conversation_id}: we are calling your carrier now."
                if await self.operator_reply(ticket, text):
                    operator.append((msg, text))
            await asyncio.sleep(max(0.0, self.outage_began + cfg.api_outage - time.monotonic()))
            delivered_before = set(self.deliveries())
            self.pending_at_recovery_ids = [m.message_id for m in humans + msgs
                                            if m.acked_at is not None and m.conversation_id not in delivered_before]
            self.recovered_at = time.monotonic()
            self.phase = ""
            await self.fake.come_back()
            self.log(f"platform APIs back; replies pending: {len(self.pending_at_recovery_ids)}, "
                     f"operator replies pending: {len(operator)}")

        await asyncio.gather(self.send_all(msgs, deadline, rate=rate, burst=1), outage())
        result.api_calls_failed_in_outage = sum(1 for r in self.fake.requests if getattr(r, "status", 0) == 503)
        return humans + msgs, operator

    async def operator_tickets(self, humans: list[Msg], until: float) -> list[tuple[Msg, str]]:
        """The tickets the "talk to a person" messages opened (waiting for their turns), claimed."""
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        wanted = {m.conversation_id for m in humans}
        by_conversation: dict[str, str] = {}
        while time.monotonic() < until:
            async with self.session.get(f"{self.server.base}/console/api/tickets", headers=headers) as r:
                queue = (await r.json()).get("tickets", []) if r.status == 200 else []
            by_conversation = {t.get("conversation_id"): t.get("id") for t in queue}
            if wanted <= set(by_conversation):
                break
            await asyncio.sleep(0.3)
        out = []
        for msg in humans:
            tid = by_conversation.get(msg.conversation_id)
            if tid is None:
                self.log(f"no ticket for {msg.conversation_id} (request_human); its operator reply is skipped")
                continue
            async with self.session.post(f"{self.server.base}/console/api/tickets/{tid}/claim", headers=headers,
                                         json={}) as r:
                if r.status != 200:
                    self.log(f"claiming {tid}: HTTP {r.status}")
            out.append((msg, tid))
        return out

    async def operator_reply(self, ticket: str, text: str) -> bool:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with self.session.post(f"{self.server.base}/console/api/tickets/{ticket}/reply", headers=headers,
                                     json={"text": text}) as r:
            if r.status != 200:
                self.log(f"operator reply to {ticket}: HTTP {r.status} {await r.text()}")
            return r.status == 200

    # ------------------------------------------------------------ database outage

    async def db_outage_run(self, msgs: list[Msg], deadline: float) -> None:
        cfg = self.cfg
        assert self.proxy is not None
        window = cfg.lead_in + cfg.db_outage + cfg.lead_in
        rate = len(msgs) / window
        self.log(f"DB outage run: {len(msgs)} messages at {rate:.1f}/s, PostgreSQL cut ({cfg.db_outage_mode}) "
                 f"for {cfg.db_outage:.0f} s after {cfg.lead_in:.0f} s")
        stop = asyncio.Event()

        async def outage() -> None:
            await asyncio.sleep(cfg.lead_in)
            self.phase = "db_outage"
            await self.proxy.cut(cfg.db_outage_mode)
            self.log("PostgreSQL cut off")
            await asyncio.sleep(cfg.db_outage)
            await self.proxy.restore()
            self.phase = ""
            self.log("PostgreSQL back")

        watch = asyncio.create_task(self.watchdog(stop))
        try:
            await asyncio.gather(self.send_all(msgs, deadline, rate=rate, burst=1), outage())
        finally:
            stop.set()
            await watch

    # ------------------------------------------------------------ the end

    def register(self, msgs: list[Msg]) -> list[Msg]:
        """Remember the LINE reply tokens of `msgs` (a reply call names its event only by them)."""
        self.tokens.update({m.reply_token: m.conversation_id for m in msgs if m.platform == "line"})
        return msgs

    def deliveries(self) -> dict[str, list[tuple[float, str, str]]]:
        """conversation id -> [(when, text, way)] of every text a fake API answered 2xx for: Telegram
        sendMessage by chat_id, LINE reply by reply token, LINE push by `to` (way: "telegram",
        "line reply", "line push <X-Line-Retry-Key>")."""
        out: dict[str, list[tuple[float, str, str]]] = {}
        for rec in self.fake.delivered():
            if rec.platform == "telegram":
                cid, way = f"telegram:{rec.data.get('chat_id')}", "telegram"
                texts = [str(rec.data.get("text", ""))]
            else:
                if rec.method == "reply":
                    cid, way = self.tokens.get(str(rec.data.get("replyToken")), "?"), "line reply"
                else:
                    key = {k.lower(): v for k, v in rec.headers.items()}.get("x-line-retry-key", "-")
                    cid, way = f"line:{rec.data.get('to')}", f"line push {key}"
                texts = [str(m.get("text", "")) for m in rec.data.get("messages", []) if isinstance(m, dict)]
            for t in texts:
                out.setdefault(cid, []).append((rec.at, t, way))
        return out

    def in_flight(self, msgs: list[Msg]) -> int:
        """Acknowledged messages with no reply at the fake APIs yet (work the server is doing)."""
        got = self.deliveries()
        return sum(1 for m in msgs if m.acked_at is not None and m.conversation_id not in got)

    def all_answered(self, msgs: list[Msg], operator: list[tuple[Msg, str]] = ()) -> bool:  # type: ignore[assignment]
        got = self.deliveries()
        return all(m.conversation_id in got for m in msgs if m.acked_at is not None) and all(
            any(text in t for _, t, _w in got.get(m.conversation_id, [])) for m, text in operator)

    async def drain(self, msgs: list[Msg], url: str, until: float) -> None:
        """After the last fault: until the store has nothing left to do (no unhandled message, no
        pending outbox item) and every acknowledged message has a reply at the fake APIs (and the
        operator replies theirs), or the store and the APIs have been quiet for 5 s, or `until`."""
        quiet_since: float | None = None
        calls = -1
        while time.monotonic() < until:
            try:
                backlog = await asyncio.to_thread(store_backlog, url)
            except Exception:  # noqa: BLE001  (the database may be coming back)
                backlog = (-1, -1, -1)
            busy = len(self.fake.requests) != calls  # the server is still calling the platform APIs
            calls = len(self.fake.requests)
            if backlog[:2] == (0, 0) and not self.phase and not busy:
                if self.all_answered(msgs, self.operator):
                    await asyncio.sleep(1.0)  # a turn's last reply may still be on its way
                    return
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 5.0:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.5)

    def check(self, msgs: list[Msg], operator: list[tuple[Msg, str]], url: str, result: FaultResult) -> None:
        stored = read_user_messages(url)
        delivered = self.deliveries()
        result.sent = len(msgs)
        result.by_platform = Counter(m.platform for m in msgs)
        result.requests = sum(m.attempts for m in msgs)
        result.resend_reasons = Counter()
        for m in msgs:
            result.resend_reasons.update(m.errors)
        result.acknowledged = sum(1 for m in msgs if m.acked_at is not None)
        result.never_acknowledged = result.sent - result.acknowledged
        for m in msgs:
            rows = stored.get(m.conversation_id, [])
            mine = [r for r in rows if r["message_id"] == m.message_id or r["text"] == m.text]
            if m.acked_at is not None and not mine:
                result.lost.append(m.message_id)
                result.lost_platforms[m.platform] += 1
                if m.ack_phase == "db_outage":
                    result.acked_in_db_outage_lost.append(m.message_id)
            if len(mine) > 1:
                result.duplicates.append(m.message_id)
            if m.ack_phase == "db_outage":
                result.acked_in_db_outage += 1
            got = delivered.get(m.conversation_id, [])
            if m.acked_at is not None and not got:
                result.unanswered.append(m.message_id)
            counts = Counter(t for _, t, _w in got)
            extra = sum(c - 1 for c in counts.values() if c > 1)
            if extra:
                result.multi_delivered.append(m.message_id)
                result.extra_deliveries += extra
                for text, c in counts.items():
                    if c > 1:
                        result.duplicate_ways[duplicate_way([w for _, t, w in got if t == text])] += c - 1
        replies = read_replies(url)
        for m in msgs:
            seen = " | ".join(normalized(t) for _, t, _w in delivered.get(m.conversation_id, []))
            for role, body in replies.get(m.conversation_id, []):
                result.replies_recorded += 1
                if normalized(body)[:40] not in seen:
                    result.replies_undelivered.append(f"{m.message_id} ({role})")
        result.answered_5xx_in_db_outage = self.answered_5xx_in_db_outage
        if self.mode == "api-outage":
            pending = set(self.pending_at_recovery_ids)
            by_id = {m.message_id: m for m in msgs}
            result.pending_at_recovery = len(pending)
            lasts = []
            for mid in pending:
                after = [at for at, _t, _w in delivered.get(by_id[mid].conversation_id, [])
                         if at >= self.recovered_at]
                if after:
                    result.delivered_after_recovery += 1
                    lasts.append(min(after) - self.recovered_at)
            result.operator_pending = len(operator)
            for msg, text in operator:
                after = [at for at, t, _w in delivered.get(msg.conversation_id, [])
                         if text in t and at >= self.recovered_at]
                if after:
                    result.operator_delivered += 1
                    lasts.append(min(after) - self.recovered_at)
            result.last_delivery_after_recovery = max(lasts) if lasts else 0.0
        try:
            result.backlog_at_end = store_backlog(url)
        except Exception:  # noqa: BLE001
            pass


async def run_fault(cfg: FaultConfig) -> FaultResult:
    return await FaultRun(cfg).run()


def run_fault_sync(cfg: FaultConfig) -> FaultResult:
    return asyncio.run(run_fault(cfg))
