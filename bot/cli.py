"""`pbxbot` command line: parses arguments, loads Settings, hands over to bot.commands.<name>.

Second composition root after web.create_app (see ../shared/design.md). Errors the user
can fix (bad document, bad setting) print one clear line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bot.config import ConfigError, load_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pbxbot", description="IP-PBX toll-fraud incident-response knowledge bot")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="build or refresh the retrieval index from knowledge/")
    s.add_argument("--rebuild", action="store_true", help="re-embed every document")

    s = sub.add_parser("search", help="ranked passages for a query (for checking retrieval)")
    s.add_argument("text")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--json", action="store_true")
    s.add_argument("--language", choices=["ja", "en"])
    s.add_argument("--carrier")

    s = sub.add_parser("ask", help="one conversational turn (or a JSONL batch from stdin)")
    s.add_argument("text", nargs="?")
    s.add_argument("--conversation", help="conversation id to continue")
    s.add_argument("--json", action="store_true")
    s.add_argument("--jsonl", action="store_true", help="batch: JSON requests on stdin, JSON replies on stdout")

    sub.add_parser("chat", help="interactive chat in the terminal")

    s = sub.add_parser("tickets", help="operator commands without a browser")
    tsub = s.add_subparsers(dest="tickets_command", required=True)
    t = tsub.add_parser("list")
    t.add_argument("--all", action="store_true", help="include resolved tickets")
    t.add_argument("--json", action="store_true")
    t = tsub.add_parser("show")
    t.add_argument("ticket_id")
    t.add_argument("--json", action="store_true")
    for name in ("claim", "resolve", "reply"):
        t = tsub.add_parser(name)
        t.add_argument("ticket_id")
        if name == "reply":
            t.add_argument("text")
        t.add_argument("--operator", default="cli")

    s = sub.add_parser("serve", help="the whole bot as one HTTP server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=None,
                   help="server processes (default PBXBOT_WORKERS or 1; one per CPU core serves the most)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except Exception as exc:  # pydantic ValidationError: name the variable, never dump values
        print(f"pbxbot: invalid settings: {_describe_settings_error(exc)}", file=sys.stderr)
        return 2
    from bot.logging_setup import configure_logging

    configure_logging(settings)
    module = importlib.import_module(f"bot.commands.{args.command}")
    try:
        return int(module.run(args, settings) or 0)
    except ConfigError as exc:
        print(f"pbxbot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _describe_settings_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(f"PBXBOT_{'_'.join(str(x) for x in e['loc']).upper()}: {e['msg']}" for e in errors())
    return type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
