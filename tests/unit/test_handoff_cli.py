"""`pbxbot tickets ...` through bot.cli.main, on a SQLite store in tmp_path (PBXBOT_DATA_DIR)."""

from __future__ import annotations

import json
import shutil

import pytest

from bot.cli import main
from bot.config import load_settings
from bot.messages import Address
from bot.handoff.service import HandoffService


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    """A migrated database file, copied into each test's data dir (migrating every time is slow)."""
    from bot.handoff.sql_store import SqlHandoffStore

    path = tmp_path_factory.mktemp("template") / "pbxbot.sqlite3"
    SqlHandoffStore(f"sqlite:///{path}").close()
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PBXBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PBXBOT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env from the working tree
    return tmp_path / "data"


@pytest.fixture
def migrated_data_dir(data_dir, migrated):
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated, data_dir / "pbxbot.sqlite3")
    return data_dir


@pytest.fixture
def seeded(migrated_data_dir):
    """Two tickets as the server would have left them: an urgent incident and a billing dispute."""
    from bot.handoff.sql_store import SqlHandoffStore

    store = SqlHandoffStore.from_settings(load_settings())
    line = Address("line", "line:U1", "U1", {"to": "U1"})
    store.record_message(line, "user", "請求が50万円きた\n\x1b[31mred alert\x07")
    billing = HandoffService(store).open_ticket(line, reason="billing_dispute", priority="normal",
                                summary={"carrier": "ntt-east-west", "amounts": ["50万円"], "language": "ja"})
    tg = Address("telegram", "telegram:9", "9", {"chat_id": 9})
    store.record_message(tg, "user", "our PBX is calling abroad right now")
    urgent = HandoffService(store).open_ticket(tg, reason="incident", priority="urgent",
                               summary={"carrier": "kddi", "still_happening": True, "language": "en"})
    store.close()
    return {"billing": billing.id, "urgent": urgent.id}


def run(capsys, *argv):
    code = main(["tickets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_on_an_empty_database(data_dir, capsys):
    assert run(capsys, "list") == (0, "no open tickets\n", "")
    assert (data_dir / "pbxbot.sqlite3").exists()


def test_list_shows_urgent_first(seeded, capsys):
    code, out, err = run(capsys, "list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "PRIORITY", "STATUS"]
    assert lines[1].startswith(seeded["urgent"]) and "urgent" in lines[1] and "carrier=kddi" in lines[1]
    assert lines[2].startswith(seeded["billing"]) and "50万円" in lines[2]


def test_list_json(seeded, capsys):
    code, out, _ = run(capsys, "list", "--json")
    data = json.loads(out)
    assert code == 0 and [t["id"] for t in data["tickets"]] == [seeded["urgent"], seeded["billing"]]
    first = data["tickets"][0]
    assert {"id", "conversation_id", "channel", "status", "priority", "reason", "summary", "operator",
            "created_at", "updated_at", "reannounced_at", "age_seconds", "summary_line"} <= set(first)  # as the console API
    assert first["created_at"].endswith("Z") and first["summary"]["still_happening"] is True


def test_show_prints_summary_transcript_and_audit(seeded, capsys):
    code, out, err = run(capsys, "show", seeded["billing"])
    assert code == 0 and err == ""
    assert f"Ticket {seeded['billing']}" in out and "billing_dispute" in out
    assert "carrier: ntt-east-west" in out and "amounts: 50万円" in out
    assert "請求が50万円きた" in out and "opened" in out


def test_show_never_passes_terminal_control_characters(seeded, capsys):
    _, out, _ = run(capsys, "show", seeded["billing"])
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mred alert\\x07" in out


def test_show_json(seeded, capsys):
    code, out, _ = run(capsys, "show", seeded["urgent"], "--json")
    data = json.loads(out)
    assert code == 0 and data["ticket"]["id"] == seeded["urgent"]
    assert [m["text"] for m in data["transcript"]] == ["our PBX is calling abroad right now"]
    assert all("handled" in m for m in data["transcript"])
    assert [a["action"] for a in data["audit"]] == ["opened"]


def test_claim_reply_resolve_from_the_shell(seeded, capsys):
    tid = seeded["urgent"]
    code, out, _ = run(capsys, "claim", tid, "--operator", "sato")
    assert code == 0 and out == f"{tid} claimed by sato\n"
    code, out, _ = run(capsys, "reply", tid, "国際発信を止めました / we blocked international calls",
                       "--operator", "sato")
    assert code == 0 and "queued" in out and "telegram" in out
    code, out, _ = run(capsys, "resolve", tid, "--operator", "sato")
    assert code == 0 and "resolved" in out

    # the reply waits in the outbox of the same database, for the running server to deliver
    from bot.handoff.sql_store import SqlHandoffStore

    with SqlHandoffStore.from_settings(load_settings()) as store:
        [item] = store.pending_outbox()
        assert item.address.route == {"chat_id": 9} and item.reply["kind"] == "operator"
        assert item.reply["language"] == "en"
        actions = [(a.action, a.actor) for a in HandoffService(store).get_detail(tid).audit]
    assert actions == [("opened", "bot"), ("claimed", "operator:sato"), ("replied", "operator:sato"),
                       ("resolved", "operator:sato")]
    _, out, _ = run(capsys, "list")
    assert tid not in out
    _, out, _ = run(capsys, "list", "--all")
    assert tid in out and "resolved" in out


def test_ticket_ids_may_be_typed_in_lower_case(seeded, capsys):
    code, out, _ = run(capsys, "claim", seeded["billing"].lower())
    assert code == 0 and out.startswith(seeded["billing"])


@pytest.mark.parametrize("argv", [["show", "T-19990101-dead"], ["claim", "T-19990101-dead"],
                                  ["reply", "T-19990101-dead", "hi"], ["resolve", "T-19990101-dead"]])
def test_unknown_ticket_is_one_line_and_exit_1(seeded, capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "T-19990101-dead" in err and "Traceback" not in err


def test_wrong_state_is_one_line_and_exit_1(seeded, capsys):
    tid = seeded["billing"]
    assert run(capsys, "resolve", tid)[0] == 0
    for argv in (["resolve", tid], ["claim", tid], ["reply", tid, "late"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "" and err.startswith("pbxbot: ") and err.count("\n") == 1
        assert "resolved" in err


def test_claimed_by_someone_else(seeded, capsys):
    tid = seeded["urgent"]
    run(capsys, "claim", tid, "--operator", "sato")
    code, _, err = run(capsys, "claim", tid, "--operator", "ito")
    assert code == 1 and "already claimed by sato" in err


def test_empty_reply_is_refused(seeded, capsys):
    code, out, err = run(capsys, "reply", seeded["urgent"], "   ")
    assert code == 1 and "empty" in err and out == ""


def test_unreachable_database_is_one_line_exit_2(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("PBXBOT_DATABASE_URL", "postgresql+psycopg://postgres:s3cret-canary@127.0.0.1:1/none")
    code, out, err = run(capsys, "list")
    assert code == 2 and out == ""
    assert err.startswith("pbxbot: cannot open the ticket database") and err.count("\n") == 1
    assert "s3cret-canary" not in err
