"""The fault suite at CI size: nothing lost on any channel (issue 13, part 4).

A real `pbxbot serve` subprocess with Telegram (webhook mode) and LINE pointed at fake platform
APIs, webhooks sent and resent as the platforms do (the same update_id / webhookEventId until a
2xx), and faults: kill -9 of the server mid-burst (SQLite, PostgreSQL with one process and two),
the platform APIs down for a while (also from the server's start), PostgreSQL cut off behind a
proxy. The harness is tests/fault_harness.py, shared with scripts/fault_webhooks.py (full size:
1000 messages, 10 kills).

Asserted: every acknowledged message recorded exactly once, every acknowledged message answered
at least once and every reply recorded for it delivered (after recovery), every operator reply
delivered after an outage, and no webhook answered 2xx while the database could not record it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault_harness import FaultConfig, FaultResult, pg_available, prepare_data_dir, run_fault_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One private copy of the built data dir ($PBXBOT_DATA_DIR, as .ci/run builds it) per module."""
    return prepare_data_dir(None, tmp_path_factory.mktemp("fault") / "data")


@pytest.fixture
def postgres() -> None:
    why = pg_available()
    if why:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 as postgres ({why})")


def run(tmp_path: Path, data_dir: Path, **settings) -> tuple[FaultResult, str]:
    cfg = FaultConfig(data_dir=data_dir, work_dir=tmp_path, log=print, **settings)
    result = run_fault_sync(cfg)
    report = "\n".join(result.lines()) + "\n" + result.examples(10)
    print(report)
    return result, report


def assert_nothing_lost(r: FaultResult, report: str) -> None:
    assert r.never_acknowledged == 0, report
    assert r.lost == [], f"acknowledged but never recorded\n{report}"
    assert r.duplicates == [], f"recorded more than once\n{report}"
    assert r.unanswered == [], f"acknowledged, no reply reached the platform\n{report}"
    assert r.replies_undelivered == [], f"replies recorded but never delivered\n{report}"
    assert r.backlog_at_end[2] == 0, f"outbox items given up\n{report}"


KILLS = dict(messages=150, kills=3, rate=15.0, burst=30, drain_timeout=45.0, max_seconds=240.0)


def test_kill9_mid_burst_sqlite_loses_nothing(tmp_path, data_dir):
    r, report = run(tmp_path, data_dir, store="sqlite", seed=11, **KILLS)
    assert r.kills == 3 and r.unexpected_exits == 0, report
    assert_nothing_lost(r, report)


def test_kill9_mid_burst_postgres_loses_nothing(tmp_path, data_dir, postgres):
    r, report = run(tmp_path, data_dir, store="postgres", seed=12, **KILLS)
    assert r.kills == 3 and r.unexpected_exits == 0, report
    assert_nothing_lost(r, report)


def test_kill9_postgres_two_worker_processes_loses_nothing(tmp_path, data_dir, postgres):
    r, report = run(tmp_path, data_dir, store="postgres", workers=2, seed=13,
                    **{**KILLS, "messages": 100, "kills": 1, "burst": 50})
    assert r.kills == 1 and r.unexpected_exits == 0, report
    assert_nothing_lost(r, report)


def test_platform_api_outage_every_queued_reply_and_operator_reply_delivered_after_recovery(tmp_path, data_dir):
    # 20 s: longer than the five attempts an outbox item had at the old back-off (1+2+4+8 s), and
    # every reply is due again within PBXBOT_OUTBOX_MAX_BACKOFF (1 s here) once the API is back.
    r, report = run(tmp_path, data_dir, store="sqlite", seed=21, api_outage=20.0, messages=30,
                    operator_replies=3, drain_timeout=30.0, max_seconds=180.0)
    assert r.pending_at_recovery > 0 and r.api_calls_failed_in_outage > 0, report
    assert r.delivered_after_recovery == r.pending_at_recovery, report
    assert r.operator_pending == 3 and r.operator_delivered == 3, report
    assert r.last_delivery_after_recovery < 10.0, report
    assert_nothing_lost(r, report)


def test_platform_api_down_from_the_servers_start(tmp_path, data_dir):
    # Telegram's getMe fails at start: updates must still be recorded, and answered once the APIs
    # are back (20 s after the server came up).
    r, report = run(tmp_path, data_dir, store="sqlite", seed=22, api_outage=20.0, api_down_at_start=True,
                    messages=20, operator_replies=2, drain_timeout=30.0, max_seconds=180.0)
    assert r.pending_at_recovery > 0, report
    assert r.delivered_after_recovery == r.pending_at_recovery, report
    assert r.operator_pending == 2 and r.operator_delivered == 2, report
    assert_nothing_lost(r, report)


def test_database_outage_no_2xx_for_an_unrecorded_message(tmp_path, data_dir, postgres):
    r, report = run(tmp_path, data_dir, store="postgres", seed=31, db_outage=10.0, messages=60,
                    drain_timeout=45.0, max_seconds=180.0)
    assert r.acked_in_db_outage + r.answered_5xx_in_db_outage > 0, f"no webhook arrived during the outage\n{report}"
    assert r.acked_in_db_outage_lost == [], f"answered 2xx during the outage, never recorded\n{report}"
    assert_nothing_lost(r, report)
