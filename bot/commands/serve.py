"""`pbxbot serve [--host H] [--port P]`: the whole bot as one HTTP server (uvicorn).

With no settings at all it serves the widget (/), the API and the console on the embedded
default store and index. Without PBXBOT_OPERATOR_TOKEN (and without operator accounts) it makes
a one-time token for this run and prints it on the terminal (stderr, never to the log), so the
console is usable; configured secrets are never printed or logged.
"""

from __future__ import annotations

import logging
import secrets
import sys

from pydantic import SecretStr

from bot.config import Settings

log = logging.getLogger("bot.serve")


def prepare_settings(settings: Settings) -> tuple[Settings, str | None]:
    """(settings to run with, the generated operator token or None)."""
    if settings.operator_token is not None or settings.operators is not None:
        return settings, None
    token = secrets.token_urlsafe(24)
    return settings.model_copy(update={"operator_token": SecretStr(token)}), token


def run(args, settings: Settings) -> int:
    import uvicorn

    from bot.logging_setup import install_secret_filter
    from bot.web.app import create_app

    settings.validate_enabled_channels()  # a clear error before anything slow
    settings, generated = prepare_settings(settings)
    if generated:
        install_secret_filter(settings)  # masks the generated token too, should anything log it
    host, port = args.host, args.port
    print(f"pbxbot: loading the knowledge index and the store (data dir {settings.data_dir})...", file=sys.stderr)
    app = create_app(settings)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(f"pbxbot: serving on http://{shown}:{port}/  (widget demo /, console /console, health /healthz)",
          file=sys.stderr)
    if generated:
        print("pbxbot: no PBXBOT_OPERATOR_TOKEN is set; the console token for this run is:\n\n"
              f"    {generated}\n\n(set PBXBOT_OPERATOR_TOKEN or PBXBOT_OPERATORS to choose your own)",
              file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
        proxy_headers=False, server_header=False, timeout_graceful_shutdown=3,
        log_config=None,  # keep the root handlers (and their secret-masking filter)
    )
    server = _Server(config)
    server.on_exit = app.state.web_channel.close_streams
    server.run()
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """Ends the widgets' open event streams as soon as shutdown starts, so that a graceful
        shutdown does not wait for them (uvicorn waits for open responses before the lifespan ends)."""

        on_exit = None

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if self.on_exit is not None:
                self.on_exit()

    return Server


def _Server(config):
    return _server_class()(config)
