"""The SQLite store's lean turn path stores exactly what the SQLAlchemy path stores, fails the
same way, and its writers' gate lets another process write the moment the holder is done."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address
from bot.ports import ConversationState

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def store(tmp_path):
    s = SqlHandoffStore(f"sqlite:///{tmp_path / 'pbxbot.sqlite3'}")
    assert s._lean is not None, "a SQLite file should get the lean turn path"
    yield s
    s.close()


def _turn(store: SqlHandoffStore, conversation: str) -> None:
    address = Address("web", conversation, "visitor", {"session": "s"})
    msg, state = store.begin_turn(address, "国際電話が勝手に発信されています", dedupe_key="k1",
                                  meta={"message_id": "c-1", "language": "ja"})
    state = state or ConversationState(conversation_id=conversation, address=address)
    state.language = "ja"
    store.complete_turn(address, msg.id, state, [("まず国際電話を止めてください", {"citations": [{"url": "https://x"}]}),
                                                 ("担当者におつなぎします", {"kind": "handoff"})])


def _rows(path: Path, conversation: str) -> dict[str, list[tuple]]:
    """Every stored column of one conversation, as SQLite holds it, ids and names aside."""
    db = sqlite3.connect(path)
    try:
        return {
            "conversation": db.execute("SELECT channel, address, state, typeof(updated_at), length(updated_at) "
                                       "FROM conversations WHERE id = ?", (conversation,)).fetchall(),
            "messages": db.execute("SELECT role, text, typeof(created_at), length(created_at), ticket_id, handled, "
                                   "dedupe_key, meta FROM messages WHERE conversation_id = ? ORDER BY id",
                                   (conversation,)).fetchall(),
        }
    finally:
        db.close()


def test_the_lean_path_stores_the_same_values_as_sqlalchemy(store, tmp_path):
    lean = store._lean
    _turn(store, "web:lean")
    store._lean = None  # the same turn through SQLAlchemy's execution layer
    _turn(store, "web:engine")
    store._lean = lean
    lean_rows, engine_rows = _rows(tmp_path / "pbxbot.sqlite3", "web:lean"), _rows(tmp_path / "pbxbot.sqlite3", "web:engine")
    assert lean_rows["messages"] and len(lean_rows["messages"]) == 3
    # the stored state JSON holds the conversation id: compare it with the id swapped
    lean_rows["conversation"] = [tuple(str(v).replace("web:lean", "web:engine") for v in r)
                                 for r in lean_rows["conversation"]]
    engine_rows["conversation"] = [tuple(str(v) for v in r) for r in engine_rows["conversation"]]
    assert lean_rows == engine_rows
    # and read back through SQLAlchemy, a lean-written message is an ordinary message
    first = store.transcript("web:lean")[0]
    assert first.created_at.tzinfo is not None and first.meta == {"message_id": "c-1", "language": "ja"}
    assert first.handled is True  # complete_turn marked it
    state = store.get_state("web:lean")
    assert state is not None and state.language == "ja"


def test_a_duplicate_webhook_is_recognised_on_the_lean_path(store):
    address = Address("line", "line:U1", "U1", {})
    first, _ = store.begin_turn(address, "hello", dedupe_key="event-1")
    again, _ = store.begin_turn(address, "hello", dedupe_key="event-1")
    assert first is not None and again is None
    assert [m.text for m in store.transcript("line:U1")] == ["hello"]


def test_a_failed_lean_transaction_leaves_nothing_and_the_next_one_works(store):
    address = Address("web", "web:x", "x", {})
    with pytest.raises(IntegrityError):  # the driver's error arrives as SQLAlchemy's, as callers expect
        with store._lean.write() as conn:
            store._ensure_conversation(conn, address, store._now(), refresh=True)
            store._insert_message(conn, "web:x", "user", "lost with the rollback", handled=False, meta=None,
                                  ticket_id=None)
            store._insert_message(conn, "web:no-such-conversation", "user", "breaks a foreign key", handled=False,
                                  meta=None, ticket_id=None)
    assert store.transcript("web:x") == []
    msg, _ = store.begin_turn(address, "kept")
    assert msg is not None and [m.text for m in store.transcript("web:x")] == ["kept"]


HOLDER = r"""
import sys, time
from bot.handoff.sql_store import SqlHandoffStore
store = SqlHandoffStore(sys.argv[1], migrate=False)
with store._write_lock:
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    releasing_at = time.time()  # taken before the release: nobody can have written before this
print("released", releasing_at, flush=True)
"""


def test_another_process_writes_as_soon_as_the_gate_is_released(store, tmp_path):
    hold = 0.6
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.url), str(hold)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding", child.stderr.read()
        t0 = time.monotonic()
        msg, _ = store.begin_turn(Address("web", "web:gate", "g", {}), "waits for the other writer")
        waited, done_at = time.monotonic() - t0, time.time()
        released_at = float(child.stdout.readline().split()[1])
        assert msg is not None
        assert waited >= hold * 0.8  # it waited for the other process
        assert done_at >= released_at  # and wrote only once that process had let go
    finally:
        child.wait(timeout=30)
