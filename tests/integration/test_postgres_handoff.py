"""SqlHandoffStore on the PostgreSQL server at 127.0.0.1:5432: several workers at once.

Each test module run creates throwaway databases pbxbot_test_<random> and drops them. Skipped,
with the reason, when the server is unreachable. (The behavioural contract itself runs against
PostgreSQL in tests/contract/test_handoff_store.py.)
"""

from __future__ import annotations

import secrets
import threading

import pytest

from bot.handoff import migrate
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address
from bot.ports import TicketStateError
from bot.handoff.service import HandoffService

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def pg_url(new_pg_database):
    return new_pg_database()


def _together(n: int, fn) -> tuple[list, list]:
    results, errors = [], []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(fn(i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results, errors


def test_workers_migrating_a_fresh_database_at_once(new_pg_database):
    url = new_pg_database()
    stores: list[SqlHandoffStore] = []

    def open_store(_i: int) -> str:
        store = SqlHandoffStore(url)
        stores.append(store)
        return store.revision

    results, errors = _together(4, open_store)
    try:
        assert errors == [] and results == [migrate.HEAD_REVISION] * 4
        assert stores[0].health() == {"ok": True, "backend": "postgresql", "revision": migrate.HEAD_REVISION}
    finally:
        for s in stores:
            s.close()


def test_migrations_and_models_agree_on_postgres(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bot.handoff.models import Base

    store = SqlHandoffStore(pg_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        types = dict(conn.exec_driver_sql(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'messages'").all())
    store.close()
    assert diff == []
    assert types["created_at"] == "timestamp with time zone" and types["meta"] == "jsonb"


def test_two_workers_escalating_one_conversation_open_one_ticket(pg_url):
    workers = [SqlHandoffStore(pg_url) for _ in range(4)]
    a = Address("slack", f"slack:{secrets.token_hex(3)}")
    workers[0].record_message(a, "user", "PBX hijacked")
    try:
        results, errors = _together(4, lambda i: HandoffService(workers[i]).open_ticket(
            a, reason="incident", priority="urgent", summary={"worker": i}).id)
        assert errors == [] and len(set(results)) == 1
        assert [t.id for t in HandoffService(workers[0]).list_queue() if t.conversation_id == a.conversation_id] == results[:1]
    finally:
        for w in workers:
            w.close()


def test_two_operators_claiming_at_once_one_wins(pg_url):
    workers = [SqlHandoffStore(pg_url) for _ in range(3)]
    t = HandoffService(workers[0]).open_ticket(Address("web", f"web:{secrets.token_hex(3)}"), reason="user_request",
                               priority="normal", summary={})
    try:
        results, errors = _together(3, lambda i: HandoffService(workers[i]).claim(t.id, f"op{i}").operator)
        assert len(results) == 1 and len(errors) == 2
        assert all(isinstance(e, TicketStateError) for e in errors)
        audit = [e.action for e in HandoffService(workers[0]).get_detail(t.id).audit]
        assert audit == ["opened", "claimed"]
    finally:
        for w in workers:
            w.close()


def test_concurrent_retries_of_one_webhook_record_it_once(pg_url):
    workers = [SqlHandoffStore(pg_url) for _ in range(4)]
    a = Address("line", f"line:{secrets.token_hex(3)}")
    try:
        results, errors = _together(4, lambda i: workers[i].record_message(a, "user", "hi", dedupe_key="evt-1"))
        assert errors == []
        assert sum(r is not None for r in results) == 1
        assert len(workers[0].transcript(a.conversation_id)) == 1
    finally:
        for w in workers:
            w.close()


def test_workers_leasing_the_outbox_at_once_never_share_an_item(pg_url):
    workers = [SqlHandoffStore(pg_url) for _ in range(4)]
    a = Address("web", f"web:{secrets.token_hex(3)}")
    from bot.messages import Reply

    ids = {workers[0].enqueue(a, Reply(a.conversation_id, "en", f"r{i}")) for i in range(40)}
    try:
        results, errors = _together(4, lambda i: [x.id for x in workers[i].lease_outbox(limit=15)])
        assert errors == []
        leased = [x for r in results for x in r]
        assert len(leased) == len(set(leased))  # nobody got an item twice
        assert ids <= set(leased) | {x.id for x in workers[0].lease_outbox(limit=100)}
    finally:
        for w in workers:
            w.close()


def test_tickets_cli_on_postgres(pg_url, tmp_path, monkeypatch, capsys):
    from bot.cli import main

    monkeypatch.setenv("PBXBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PBXBOT_DATABASE_URL", pg_url.replace("postgresql+psycopg://", "postgresql://"))
    monkeypatch.chdir(tmp_path)
    with SqlHandoffStore(pg_url) as store:
        t = HandoffService(store).open_ticket(Address("telegram", f"telegram:{secrets.token_hex(3)}"), reason="incident",
                              priority="urgent", summary={"carrier": "softbank"})
    assert main(["tickets", "reply", t.id, "on it", "--operator", "sato"]) == 0
    assert main(["tickets", "resolve", t.id]) == 0
    assert main(["tickets", "claim", t.id]) == 1
    out, err = capsys.readouterr()
    assert "queued" in out and "is resolved" in err
    assert not (tmp_path / "data" / "pbxbot.sqlite3").exists()  # PostgreSQL was used, not SQLite


def test_pooled_connections_the_server_closed_are_replaced_without_an_error(pg_url):
    """A PostgreSQL restart (or pg_terminate_backend, idle_session_timeout) closes every pooled
    connection: the next turn and the next webhook's record still succeed (the checkout check of
    sql_engine.create_store_engine replaces them, where a pre-ping used to)."""
    import psycopg
    from sqlalchemy.engine import make_url

    store = SqlHandoffStore(pg_url)
    try:
        a = Address("web", "web:restart", user_id="u")
        holders = [store.engine.connect() for _ in range(3)]  # three pooled connections
        for conn in holders:
            conn.close()
        for round_ in range(2):
            dbname = make_url(pg_url).database
            with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as admin:
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()[0]
            assert killed >= 1
            import time
            time.sleep(0.2)  # the server has closed them
            recorded, _ = store.begin_turn(a, f"webhook {round_}", dedupe_key=f"w{round_}")  # record(): no 503
            assert recorded is not None
            with store.conversation_turn(a.conversation_id):  # handle(message, recorded)
                assert store.resume_turn(recorded.id, a.conversation_id)[0] is False
                store.complete_turn(a, recorded.id, None, [("answer", {})])
            assert store.resume_turn(recorded.id, a.conversation_id)[0]
    finally:
        store.close()


def test_a_completing_commit_that_fails_changes_nothing_and_releases_the_turn_lock(new_pg_database):
    """complete_turn's COMMIT and the unlock go in one simple query; when that COMMIT fails (here a
    deferred trigger refuses it), nothing of the turn's end is kept and the lock is still released."""
    from sqlalchemy import text

    from bot.ports import ConversationState

    store = SqlHandoffStore(new_pg_database())
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                                 "'BEGIN RAISE EXCEPTION ''refused at commit''; END'")
            conn.exec_driver_sql("CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON messages DEFERRABLE INITIALLY "
                                 "DEFERRED FOR EACH ROW WHEN (NEW.text = 'refuse me') EXECUTE FUNCTION refuse()")
        a = Address("web", "web:refused", user_id="u")
        state = ConversationState(conversation_id=a.conversation_id, address=a, language="ja")
        with store.conversation_turn(a.conversation_id):
            msg, _ = store.begin_turn(a, "hello", dedupe_key="x1")
            with pytest.raises(Exception, match="refused at commit"):
                store.complete_turn(a, msg.id, state, [("refuse me", {})])
        with store.engine.connect() as conn:
            held = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar()
        assert held == 0
        assert store.resume_turn(msg.id, a.conversation_id) == (False, None)
        assert [m.text for m in store.transcript(a.conversation_id)] == ["hello"]
        with store.conversation_turn(a.conversation_id):  # the next turn runs normally
            store.complete_turn(a, msg.id, state, [("answer", {})])
        handled, state = store.resume_turn(msg.id, a.conversation_id)
        assert handled and state.language == "ja"
    finally:
        store.close()
