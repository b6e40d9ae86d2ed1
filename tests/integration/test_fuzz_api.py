"""No 5xx from POST /api/chat, the widget's history and events and the operator console under
schema-driven fuzzing (Schemathesis over app.openapi(), positive and negative cases, anonymous
and with the operator token) and hostile tokens (non-ASCII, binary, oversized) wherever a token,
nonce or CSRF value is read. scripts/fuzz_api.py runs the same with 10,000 requests."""

from __future__ import annotations

import pytest

from scripts.fuzz_api import run_fuzz

pytestmark = pytest.mark.integration


def test_fuzzed_requests_and_hostile_tokens_never_get_a_5xx():
    report = run_fuzz(400, seed=7)
    assert report.total >= 380, report.summary()
    assert report.server_errors == [], report.summary()
    assert {401, 403, 422} <= set(report.statuses)  # the hostile inputs were refused, not ignored
