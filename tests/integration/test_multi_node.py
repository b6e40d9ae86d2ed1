"""Two nodes behind nginx, sharing nothing but PostgreSQL and Redis.

Two `pbxbot serve` processes on their own ports (no shared memory, no shared socket), nginx from
Debian in front (least_conn, the configuration of docs/deploy.md), every request driven through
nginx. Each simulated client poses as its own address with X-Forwarded-For, which the nodes
believe only because nginx (127.0.0.1) is their trusted proxy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from scripts.nginx_lb import nginx_binary, start_nginx
from tests.web_fakes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/14"
PER_MINUTE = 5
OPERATOR_TOKEN = "multi-node-operator-token-not-secret"


def _redis_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return True
    except OSError:
        return False


class Cluster:
    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        self.ports = [free_port(), free_port()]
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PBXBOT_") or k == "PBXBOT_DATA_DIR"}
        self.env.update(PBXBOT_DATABASE_URL=database_url, PBXBOT_REDIS_URL=REDIS_URL,
                        PBXBOT_TRUSTED_PROXIES="127.0.0.1", PBXBOT_RATE_LIMIT_PER_MINUTE=str(PER_MINUTE),
                        PBXBOT_SESSION_SECRET="multi-node-session-secret", PBXBOT_OPERATOR_TOKEN=OPERATOR_TOKEN,
                        PBXBOT_LOG_LEVEL="INFO")
        self.nodes: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None

    def log(self, i: int) -> str:
        return (self.folder / f"node-{i}.log").read_text(errors="replace")

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            self.nodes.append(subprocess.Popen(
                [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.folder / f"node-{i}.log", "wb")))
        deadline = time.monotonic() + 600
        for i, port in enumerate(self.ports):
            while True:
                assert self.nodes[i].poll() is None, self.log(i)[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"node {i} never became healthy"
                time.sleep(0.3)
        self.nginx = start_nginx(self.port, self.ports, self.folder / "nginx")

    def stop(self) -> None:
        for proc in [*self.nodes, self.nginx]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.nodes, self.nginx]:
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def turns_logged(self, i: int, conversation_id: str | None = None) -> int:
        lines = [line for line in self.log(i).splitlines() if "turn conversation=" in line]
        return sum(1 for line in lines if conversation_id is None or f"conversation={conversation_id} " in line)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, new_pg_database):
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    if not _redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    c = Cluster(tmp_path_factory.mktemp("cluster"), new_pg_database())
    try:
        c.start()
        yield c
    finally:
        c.stop()


def post(base: str, payload: dict, address: str, timeout: float = 60) -> httpx.Response:
    """One message on a fresh connection (so that nginx picks a node for each), as client `address`."""
    return httpx.post(f"{base}/api/chat", json=payload, headers={"X-Forwarded-For": address}, timeout=timeout)


def start_conversation(base: str, address: str, text: str = "How do I stop international calls?") -> dict:
    r = post(base, {"text": text}, address)
    assert r.status_code == 200, r.text
    return r.json()


def transcript(base: str, conversation: dict) -> list[dict]:
    r = httpx.get(f"{base}/api/chat/history", params={"conversation_id": conversation["conversation_id"],
                                                      "token": conversation["conversation_token"]}, timeout=30)
    assert r.status_code == 200
    return r.json()["events"]


def test_conversations_spread_over_both_nodes_keep_their_turns_in_order(cluster):
    conversations = [start_conversation(cluster.base, f"10.1.0.{i}") for i in range(6)]
    questions = ["Which logs should we keep?", "How can we prevent SIP brute force attacks?"]

    def send(job):
        i, conv, text = job  # two messages of one conversation at once, each on its own connection
        payload = {"text": text, "conversation_id": conv["conversation_id"],
                   "conversation_token": conv["conversation_token"], "client_id": f"c{i}-{len(text)}"}
        return post(cluster.base, payload, f"10.1.0.{i}").status_code

    jobs = [(i, conv, q) for i, conv in enumerate(conversations) for q in questions]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        assert list(pool.map(send, jobs)) == [200] * len(jobs)
    for conv in conversations:
        events = transcript(cluster.base, conv)
        roles = [e["role"] for e in events]
        assert roles.count("user") == 3 and roles[-1] == "bot", roles
        # one turn at a time: every user message is answered before the next one is taken
        assert all(a != "user" or b == "bot" for a, b in zip(roles, roles[1:])), roles
    assert cluster.turns_logged(0) > 0 and cluster.turns_logged(1) > 0, "both nodes answered turns"


def test_a_users_limit_holds_across_nodes(cluster):
    conv = start_conversation(cluster.base, "10.2.0.1")
    payload = {"conversation_id": conv["conversation_id"], "conversation_token": conv["conversation_token"]}
    statuses = [post(cluster.base, {**payload, "text": f"Which logs should we keep? ({i})"}, "10.2.0.1").status_code
                for i in range(PER_MINUTE + 1)]
    assert statuses == [200] * (PER_MINUTE - 1) + [429, 429], statuses
    answered = [cluster.turns_logged(i, conv["conversation_id"]) for i in (0, 1)]
    assert sum(answered) == PER_MINUTE and min(answered) > 0, f"turns per node {answered}: not spread"


def read_events(url: str, params: dict, found: list, stop: threading.Event, headers: dict | None = None) -> None:
    try:
        with httpx.stream("GET", url, params=params, headers=headers, timeout=httpx.Timeout(30, read=30)) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    found.append(json.loads(line[6:]))
                if stop.is_set():
                    return
    except httpx.HTTPError:  # the cluster stopped under an idle stream
        pass


def test_an_operator_reply_reaches_a_widget_stream_held_by_the_other_node(cluster):
    conv = start_conversation(cluster.base, "10.3.0.1", "Which logs should we keep?")
    # the console's queue page on each node: a ticket opened through either node is pushed to both
    consoles = [(f"http://127.0.0.1:{port}/console/api/events", []) for port in cluster.ports]
    console_stop = threading.Event()
    for url, found in consoles:
        threading.Thread(target=read_events, args=(url, {}, found, console_stop),
                         kwargs={"headers": {"Authorization": f"Bearer {OPERATOR_TOKEN}"}}, daemon=True).start()
    # a console stream has no history to replay (the page polls for that): a ticket opened before the
    # stream is subscribed is not pushed to it. So wait for each stream's hello, not a fixed second,
    # which a loaded CI machine overran (1 run in 5 failed with the hello but no ticket event).
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline and not all(found for _u, found in consoles):
        time.sleep(0.05)
    assert all(found and found[0].get("live") is True for _u, found in consoles), consoles
    r = post(cluster.base, {"action": "request_human", "text": "", "conversation_id": conv["conversation_id"],
                            "conversation_token": conv["conversation_token"]}, "10.3.0.1")
    assert r.status_code == 200
    queue = httpx.get(f"{cluster.base}/console/api/tickets", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}).json()
    ticket = next(t["id"] for t in queue["tickets"] if t["conversation_id"] == conv["conversation_id"])
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline and not all(any(e.get("id") == ticket for e in found) for _u, found in consoles):
        time.sleep(0.05)
    console_stop.set()
    for url, found in consoles:
        assert any(e.get("id") == ticket and e.get("status") == "open" for e in found), (url, found)
    params = {"conversation_id": conv["conversation_id"], "token": conv["conversation_token"],
              "after": max(e["seq"] for e in transcript(cluster.base, conv))}
    # one event stream on each node: whichever node writes the reply, the other one must carry it
    streams = [(f"http://127.0.0.1:{port}/api/chat/events", []) for port in cluster.ports]
    streams.append((f"{cluster.base}/api/chat/events", []))  # and a widget's stream through nginx
    stop = threading.Event()
    threads = [threading.Thread(target=read_events, args=(url, params, found, stop), daemon=True)
               for url, found in streams]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the streams are open
    sent = time.monotonic()
    reply = httpx.post(f"{cluster.base}/console/api/tickets/{ticket}/reply", json={"text": "Calling you now."},
                       headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    deadline = sent + 4.0  # under the 5 s safety-net poll: the change notification carried it
    while time.monotonic() < deadline and not all(
            any(e.get("role") == "operator" for e in found) for _url, found in streams):
        time.sleep(0.05)
    stop.set()
    for url, found in streams:
        assert [e["answer"] for e in found if e.get("role") == "operator"] == ["Calling you now."], url


def test_every_node_reports_the_index_build_it_serves_and_hears_the_database(cluster):
    health = [httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() for port in cluster.ports]
    builds = {h["index"]["build_id"] for h in health}
    assert len(builds) == 1 and None not in builds  # a rolling update shows here, node by node
    assert all(h["widget_feed"]["notifications"] is True for h in health)  # LISTEN is up
    assert all(h["rate_limits"] == {"storage": "redis", "last_error": None} for h in health)


def test_killing_a_node_mid_run_loses_no_acknowledged_message(cluster):
    acknowledged: list[tuple[str, str]] = []  # (conversation id, client id) of every 200
    after_kill: list[int] = []
    killed = threading.Event()
    errors: list[str] = []
    failures: list[str] = []

    def client(n: int) -> None:
        address = f"10.4.0.{n}"
        conv: dict = {}
        for i in range(16):
            if i % 3 == 0:
                conv = {}  # a new conversation every 3 messages: under the per-user limit, retries included
            client_id = f"k{n}-{i}"
            payload = {"text": "Which logs should we keep after toll fraud?", "client_id": client_id, **conv}
            for _attempt in range(8):  # the widget retries a failed send with the same client id
                try:
                    r = post(cluster.base, payload, address, timeout=30)
                except httpx.TransportError as exc:
                    errors.append(type(exc).__name__)
                    time.sleep(0.2)
                    continue
                if r.status_code == 200:
                    data = r.json()
                    conv = {"conversation_id": data["conversation_id"],
                            "conversation_token": data["conversation_token"] or conv.get("conversation_token")}
                    payload.update(conv)
                    acknowledged.append((data["conversation_id"], client_id))
                    if killed.is_set():
                        after_kill.append(n)
                    break
                errors.append(f"HTTP {r.status_code}")
                time.sleep(0.2)
            else:  # pytest.fail in a thread would only end the thread: say it in the test's own assert
                failures.append(f"client {n}: message {i} never acknowledged ({errors[-3:]})")
                return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 6 * 16 // 3 and time.monotonic() < deadline:  # mid-run: a third acknowledged
        time.sleep(0.02)
    victim = cluster.nodes[1]
    victim.send_signal(signal.SIGKILL)  # mid-run, no graceful anything
    victim.wait(10)
    killed.set()
    for t in threads:
        t.join(300)
    assert not failures, (failures, errors)
    assert len(acknowledged) == 6 * 16, errors
    assert set(after_kill) == set(range(6)), ("every client went on through the surviving node", after_kill)
    # every acknowledged message is in its conversation's transcript, once
    from bot.handoff.sql_store import SqlHandoffStore

    with SqlHandoffStore(cluster.env["PBXBOT_DATABASE_URL"], migrate=False) as store:
        for cid in {c for c, _ in acknowledged}:
            ids = [m.meta.get("message_id") for m in store.transcript(cid) if m.role == "user"]
            mine = [k for c, k in acknowledged if c == cid]
            assert sorted(ids) == sorted(mine), (cid, ids, mine)
