"""Fuzz POST /api/chat, the widget's history and events, and the operator console (pages, forms
and JSON API) from their OpenAPI schema (Schemathesis, in-process ASGI), plus hostile tokens
(non-ASCII, binary, oversized) in every place a token, nonce or CSRF value is read. Counts
responses by status; a 5xx is a failure.

    python scripts/fuzz_api.py [--requests 10000] [--seed 1] [--real-core]

Passes: schema-driven positive and negative cases, anonymous (credential guesses meet the
guess limits: 401, 429) and with the operator token (the ticket actions with a real ticket id);
then hostile tokens. Prints the total, the statuses and every 5xx. Exit 1 when there was a 5xx.
The pytest suite runs a smaller number (tests/integration/test_fuzz_api.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "fuzz-operator-token-0123456789"
SECRET = "s" * 32
# Operations that only serve static files: fuzzed a little, they cannot hold much.
STATIC = {"/", "/widget.js", "/console/static/{name}", "/console/"}


@dataclass
class Report:
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def record(self, status: int, what: str) -> None:
        self.statuses[status] += 1
        if status >= 500 and len(self.server_errors) < 50:
            self.server_errors.append(f"{status} {what}")

    def summary(self) -> str:
        five = sum(n for s, n in self.statuses.items() if s >= 500)
        codes = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return f"{self.total} requests in {self.seconds:.0f} s, {five} with 5xx ({codes})"


def build_app(*, real_core: bool = False, data_dir: str | None = None):
    """The app as `pbxbot serve` builds it (a fake core unless real_core), with a ticket to act on."""
    from bot.config import Settings
    from bot.messages import Address
    from bot.web.app import create_app

    tmp = tempfile.mkdtemp(prefix="pbxbot-fuzz-")
    overrides: dict[str, Any] = dict(operator_token=TOKEN, session_secret=SECRET, rate_limit_per_minute=0,
                                     database_url=f"sqlite:///{tmp}/fuzz.sqlite3")
    if data_dir:
        overrides["data_dir"] = data_dir
    if real_core:
        from bot.config import load_settings
        from bot.wiring import build_conversation_service

        settings = load_settings(**overrides)
        core = build_conversation_service(settings)
    else:
        from tests.web_fakes import FakeCore

        settings = Settings(_env_file=None, data_dir=tmp, **{k: v for k, v in overrides.items() if k != "data_dir"})
        core = FakeCore()
    ticket = core.handoff.open_ticket(Address("web", "web:fuzz-ticket", "web:fuzz-ticket"), reason="user_request",
                                      priority="normal", summary={"language": "ja"})
    app = create_app(settings, core=core)
    app.state.web_channel.closing = True  # event streams end after their first line: fuzzing never waits
    app.state.web.queue.closing = True  # so does the console's queue stream
    return app, ticket.id


def _hostile_tokens():
    from hypothesis import strategies as st

    latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")
    return st.one_of(
        st.text(max_size=200),  # any unicode (the query string and JSON bodies carry it as UTF-8)
        st.text(alphabet=latin1, min_size=1, max_size=300),  # what a header can carry
        st.text(alphabet=latin1, min_size=1_000, max_size=4_000).map(lambda t: t * 4),  # oversized: 4-16 kB
        st.binary(min_size=1, max_size=200).map(lambda b: b.decode("latin-1")),
        st.sampled_from(["トークン", "é" * 40, "\u00ff" * 300, "\x00", "Bearer", "😀" * 40, "%00", "a" * 129,
                         TOKEN + "é", TOKEN[:-1], " " + TOKEN + "\u3000"]),
    )


def _header_value(token: str) -> bytes:
    """Bytes a raw client could send (CR, LF and NUL cannot be in a header)."""
    return token.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")


def run_fuzz(requests: int, *, seed: int = 1, real_core: bool = False, data_dir: str | None = None,
             progress: Callable[[str], None] = lambda s: None) -> Report:
    """About `requests` requests in all (at least that many); returns the statuses seen."""
    bot_log = logging.getLogger("bot")
    level = bot_log.level
    bot_log.setLevel(logging.CRITICAL)  # thousands of expected 4xx lines
    try:
        return _run_fuzz(requests, seed=seed, real_core=real_core, data_dir=data_dir, progress=progress)
    finally:
        bot_log.setLevel(level)


def _run_fuzz(requests: int, *, seed: int, real_core: bool, data_dir: str | None,
              progress: Callable[[str], None]) -> Report:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings as hsettings, strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.python import asgi
    from starlette.testclient import TestClient

    report = Report()
    started = time.monotonic()
    quick = hsettings(max_examples=1, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck), print_blob=False)
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))

    def schema_pass(app, label: str, share: int, *, headers=None, path_parameters=None) -> None:
        raw = app.openapi()
        schema = schemathesis.openapi.from_dict(raw)
        schema.app = app
        operations = [r.ok() for r in schema.get_all_operations()]
        weights = {op.path: (1 if op.path in STATIC else 8) for op in operations}
        unit = share / sum(weights.values())
        # negative cases (values outside the schema) cost Schemathesis 3-10 times more to make
        modes = ((GenerationMode.POSITIVE, 0.7), (GenerationMode.NEGATIVE, 0.3))
        with asgi.get_client(app) as client:
            for op in operations:
                for mode, part in modes:
                    n = max(1, int(unit * weights[op.path] * part))
                    kw = {}
                    if headers and op.path.startswith("/console"):
                        kw["headers"] = headers
                    if path_parameters and "{ticket_id}" in op.path:
                        kw["path_parameters"] = path_parameters
                    try:
                        strategy = op.as_strategy(generation_mode=mode, **kw)
                    except Exception as exc:  # noqa: BLE001 - e.g. nothing negative to generate
                        progress(f"  ({op.method.upper()} {op.path} {mode}: {type(exc).__name__})")
                        continue

                    @hseed(next(seeds))
                    @given(case=strategy)
                    @hsettings(quick, max_examples=n)
                    def one(case) -> None:
                        try:
                            response = case.call(session=client)
                            status = response.status_code
                        except Exception as exc:  # noqa: BLE001 - a request the client could not send
                            if "Invalid" in type(exc).__name__ or isinstance(exc, (ValueError, UnicodeError)):
                                return
                            raise
                        report.record(status, f"{case.method} {case.formatted_path} ({label}, {mode})")

                    try:
                        one()
                    except Unsatisfiable:  # e.g. no negative case for an operation without inputs
                        pass
        report.seconds = time.monotonic() - started
        progress(f"{label}: {report.summary()}")

    # 1. schema-driven, anonymous (credentials are guesses), then with the operator token
    app, ticket_id = build_app(real_core=real_core, data_dir=data_dir)
    schema_pass(app, "anonymous", requests * 35 // 100)
    app, ticket_id = build_app(real_core=real_core, data_dir=data_dir)
    schema_pass(app, "operator token", requests * 20 // 100, headers={"Authorization": f"Bearer {TOKEN}"})
    schema_pass(app, "operator token, real ticket", requests * 10 // 100,
                headers={"Authorization": f"Bearer {TOKEN}"}, path_parameters={"ticket_id": ticket_id})

    # 2. hostile tokens wherever a token, nonce or CSRF value is read
    app, ticket_id = build_app(real_core=real_core, data_dir=data_dir)
    with TestClient(app) as c:
        first = c.post("/api/chat", json={"text": "hello"}).json()
        cid, ctoken = first["conversation_id"], first["conversation_token"]
        page = c.get("/console/login")
        signed = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        c.cookies.clear()

        def hit(place: str, token: str) -> int:
            hv = _header_value(token)
            if place == "bearer":
                return c.get("/console/api/tickets", headers={"Authorization": b"Bearer " + hv}).status_code
            if place == "session":
                return c.get("/console/api/tickets", headers={"Cookie": b"pbxbot_console=" + hv}).status_code
            if place == "csrf-api":
                return c.post(f"/console/api/tickets/{ticket_id}/claim",
                              headers={"Authorization": f"Bearer {TOKEN}", "X-CSRF-Token": hv}).status_code
            if place == "csrf-form":
                return c.post(f"/console/tickets/{ticket_id}/claim", data={"csrf": token},
                              headers={"Cookie": b"pbxbot_console=" + hv}, follow_redirects=False).status_code
            if place == "login-nonce":
                return c.post("/console/login", data={"csrf": token, "secret": token, "name": token[:80]},
                              headers={"Cookie": b"pbxbot_login=" + hv}, follow_redirects=False).status_code
            if place == "login-secret":
                return c.post("/console/login", data={"csrf": signed, "secret": token, "name": token[:70]},
                              headers={"Cookie": b"pbxbot_login=x; pbxbot_device=" + hv},
                              follow_redirects=False).status_code
            if place == "history":
                return c.get("/api/chat/history", params={"conversation_id": cid, "token": token}).status_code
            if place == "events":
                return c.get("/api/chat/events", params={"conversation_id": cid, "token": ctoken},
                             headers={"Last-Event-ID": hv}).status_code
            return c.post("/api/chat", json={"text": "hi", "conversation_id": cid, "conversation_token": token}).status_code

        places = ["bearer", "session", "csrf-api", "csrf-form", "login-nonce", "login-secret", "history", "events",
                  "chat"]

        def hostile(place: str, token: str) -> None:
            try:
                status = hit(place, token)
            except Exception as exc:  # noqa: BLE001 - what the test client itself refuses to send
                if type(exc).__module__.split(".")[0].startswith(("httpx", "h11")) or isinstance(exc, UnicodeError):
                    return
                raise
            report.record(status, f"hostile token in {place}: {token[:40]!r}")

        while report.total < requests:  # (a few cases the test client cannot send do not count)
            def attempt(place: str, token: str) -> None:
                hostile(place, token)

            given(place=st.sampled_from(places), token=_hostile_tokens())(
                hsettings(quick, max_examples=max(len(places), requests - report.total))(
                    hseed(next(seeds))(attempt)))()
    report.seconds = time.monotonic() - started
    progress(f"hostile tokens: {report.summary()}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--real-core", action="store_true", help="the real conversation core and index (slower)")
    args = ap.parse_args(argv)
    report = run_fuzz(args.requests, seed=args.seed, real_core=args.real_core, progress=print)
    print(report.summary())
    for line in report.server_errors:
        print("  5xx:", line)
    return 1 if report.server_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
