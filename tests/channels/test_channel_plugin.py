"""Adding a channel is one module and one registry line: the test folder's echo channel is enabled by
its secret, gets its webhook route, and goes through the one inbound pipeline (dedupe, rate limit,
the core, delivery)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from bot.channels import registry as channel_registry
from bot.config import ConfigError
from bot.web.app import create_app
from tests.fakes import make_settings
from tests.web_fakes import FakeCore

SECRET = "echo-secret-for-tests"


@pytest.fixture
def echo_registered(monkeypatch):
    monkeypatch.setitem(channel_registry.PLATFORMS, "echo", "tests.echo_channel")  # the one registry line


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def post(client: TestClient, event: dict, secret: str = SECRET):
    return client.post("/webhooks/echo", json=event, headers={"X-Echo-Secret": secret})


def test_a_channel_from_the_tests_folder_plugs_in_with_one_registry_line(echo_registered):
    core = FakeCore()
    app = create_app(make_settings(echo_secret=SECRET, rate_limit_per_minute=2), core=core)
    echo = app.state.registry["echo"]
    with TestClient(app) as client:
        assert post(client, {"id": "e1", "user": "u1", "text": "How do I stop international calls?"}).json() == {"ok": True}
        wait_for(lambda: len(echo.sent) == 1)
        address, reply = echo.sent[0]
        assert address.conversation_id == "echo:u1" and "carrier" in reply.answer
        assert post(client, {"id": "e1", "user": "u1", "text": "again"}).status_code == 200  # a retry: dropped
        assert post(client, {"id": "e2", "user": "u1", "text": "and?"}).status_code == 200
        assert post(client, {"id": "e3", "user": "u1", "text": "and then?"}).status_code == 200  # over the limit
        wait_for(lambda: len(echo.sent) == 3)
        [refusal] = [r for _a, r in echo.sent if r.kind == "notice"]
        assert "wait" in refusal.answer
        assert [m.message_id for m in core.handled] == ["echo:e1", "echo:e2"]
        assert post(client, {"id": "e4", "user": "u1", "text": "x"}, secret="wrong").status_code == 401
        assert post(client, {"id": "e5"}).status_code == 400
        assert "echo" in client.get("/healthz").json()["channels"]


def test_the_channel_is_enabled_only_by_its_secret_and_a_placeholder_stops_start_up(echo_registered):
    assert "echo" not in create_app(make_settings(), core=FakeCore()).state.registry
    with pytest.raises(ConfigError, match="PBXBOT_ECHO_SECRET"):
        create_app(make_settings(echo_secret="changeme"), core=FakeCore())


def test_its_section_comes_from_the_environment_too(echo_registered, monkeypatch):
    monkeypatch.setenv("PBXBOT_ECHO_SECRET", SECRET)
    settings = make_settings()
    assert settings.channels["echo"] == {"secret": SECRET} and SECRET in settings.secret_values()
    assert "echo" in create_app(settings, core=FakeCore()).state.registry
