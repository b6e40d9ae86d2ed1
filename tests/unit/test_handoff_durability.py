"""Nothing is lost when the process dies, and two processes (CLI + server) share one SQLite file.

The child processes are real: killed with SIGKILL, no clean-up runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.handoff.service import HandoffService
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, time
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address
from bot.handoff.service import HandoffService
store = SqlHandoffStore(sys.argv[1])
a = Address("telegram", "telegram:1", "1", {"chat_id": 1})
mode = sys.argv[2]
if mode == "crash":
    store.record_message(a, "user", "calls to +882 all night", handled=False, dedupe_key="u1")
    t = HandoffService(store).open_ticket(a, reason="incident", priority="urgent", summary={"carrier": "kddi"})
    m = store.record_message(a, "user", "still going", handled=False, dedupe_key="u2")
    print(t.id, m.id, flush=True)
    time.sleep(60)  # killed here, between the user's message and any reply
else:  # "writer": a busy server
    print("ready", flush=True)
    for i in range(int(sys.argv[3])):
        store.record_message(a, "user", f"m{i}", dedupe_key=f"k{i}")
    print("done", flush=True)
"""


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_process_loses_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'pbxbot.sqlite3'}"
    child = _spawn(url, "crash")
    line = child.stdout.readline().split()
    assert len(line) == 2, child.stderr.read()
    ticket_id, last_id = line[0], int(line[1])
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    store = SqlHandoffStore(url)  # the restart
    try:
        ticket = HandoffService(store).active_ticket("telegram:1")
        assert ticket is not None and ticket.id == ticket_id and ticket.priority == "urgent"
        detail = HandoffService(store).get_detail(ticket_id)
        assert [m.text for m in detail.transcript] == ["calls to +882 all night", "still going"]
        assert [a.action for a in detail.audit] == ["opened", "user_message"]
        # crash recovery finds both unanswered user messages, the last one included
        assert [m.text for m in store.unhandled_messages()] == ["calls to +882 all night", "still going"]
        assert store.unhandled_messages()[-1].id == last_id
        # the platform retries the webhook after the crash: not recorded twice
        assert store.record_message(Address("telegram", "telegram:1"), "user", "still going", dedupe_key="u2") is None
    finally:
        store.close()


def test_cli_and_server_write_the_same_sqlite_file_at_once(tmp_path, monkeypatch, capsys):
    from bot.cli import main

    data = tmp_path / "data"
    monkeypatch.setenv("PBXBOT_DATA_DIR", str(data))
    monkeypatch.delenv("PBXBOT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{data / 'pbxbot.sqlite3'}"
    store = SqlHandoffStore(url)
    tickets = [HandoffService(store).open_ticket(Address("web", f"web:{i}"), reason="user_request", priority="normal",
                                 summary={}).id for i in range(5)]

    server = _spawn(url, "writer", "80")
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    codes = []
    for tid in tickets:  # the operator works from a shell meanwhile
        codes.append(main(["tickets", "claim", tid, "--operator", "sato"]))
        codes.append(main(["tickets", "reply", tid, "on it", "--operator", "sato"]))
        codes.append(main(["tickets", "resolve", tid, "--operator", "sato"]))
    out, err = server.communicate(timeout=120)
    capsys.readouterr()
    assert server.returncode == 0 and out.strip() == "done", err
    assert codes == [0] * 15
    assert len(store.transcript("telegram:1")) == 80
    assert len(store.pending_outbox(limit=100)) == 5
    assert HandoffService(store).list_queue() == []
    store.close()


def test_threads_of_one_server_share_a_store(tmp_path):
    store = SqlHandoffStore(f"sqlite:///{tmp_path / 'pbxbot.sqlite3'}")
    errors: list[Exception] = []

    def worker(n: int) -> None:
        a = Address("web", f"web:{n}")
        try:
            for i in range(10):
                store.record_message(a, "user", f"{i}", handled=False)
                if i == 5:
                    HandoffService(store).open_ticket(a, reason="incident", priority="urgent", summary={})
            for m in store.unhandled_messages():
                if m.conversation_id == a.conversation_id:
                    store.mark_handled(m.id)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.unhandled_messages() == []
    assert len(HandoffService(store).list_queue()) == 4
    assert all(len(HandoffService(store).get_detail(t.id).transcript) == 10 for t in HandoffService(store).list_queue())
    store.close()


def test_clean_json_cleans_nested_nul_and_lone_surrogates_and_keeps_clean_values():
    from bot.handoff.storable import clean_json

    dirty = {"a\x00": ["ok", {"deep": "x\x00y"}], "s": "bad \ud800 surrogate", "n": 3, "t": ("tu", None)}
    cleaned = clean_json(dirty)
    assert cleaned == {"a\ufffd": ["ok", {"deep": "x\ufffdy"}], "s": "bad ? surrogate", "n": 3, "t": ["tu", None]}
    clean = {"answer": "国際電話を止めてください [1]", "citations": [{"n": 1, "url": "https://example.jp"}]}
    assert clean_json(clean) == clean
    assert clean_json("literal \\u0000 typed by a user") == "literal \\u0000 typed by a user"
