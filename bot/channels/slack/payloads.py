"""Slack requests: the v0 signature, and slash commands and button presses parsed into the
pipeline's events. Everything here is total over hostile input (never raises): a forged, replayed
or malformed request gets 4xx and nothing reaches slack_sdk's SignatureVerifier, which raises on a
non-numeric timestamp or a non-ASCII signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Any

REPLAY_WINDOW_SECONDS = 300


def verify_signature(secret: bytes, body: bytes, timestamp: str | None, signature: str | None,
                     *, now: float | None = None) -> bool:
    """Slack's v0 request signature, total over hostile headers (never raises)."""
    if not timestamp or not signature:
        return False
    if len(timestamp) > 16 or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if len(signature) > 128 or not signature.isascii() or not signature.startswith("v0="):
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


def parse_form(body: bytes) -> dict[str, list[str]] | None:
    try:
        return urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=64, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None


def command_fields(form: dict[str, list[str]]) -> dict[str, str] | None:
    """A slash command's fields (None: not a command)."""
    if "payload" in form or not form.get("command"):
        return None
    return {key: values[0] for key, values in form.items() if values}


def interaction_payload(form: dict[str, list[str]]) -> dict[str, Any] | None:
    """An interaction's JSON payload (None: not a JSON object)."""
    try:
        payload = json.loads(form["payload"][0])
    except (KeyError, IndexError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def pressed(payload: dict[str, Any], action_id: str) -> bool:
    actions = payload.get("actions")
    return isinstance(actions, list) and any(isinstance(a, dict) and a.get("action_id") == action_id for a in actions)


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def response_url_allowed(url: Any, api_url: str | None = None) -> bool:
    """Whether the bot may POST to a `response_url` from a (signed) request: only Slack's own
    https://hooks.slack.com, or the host of a configured PBXBOT_SLACK_API_URL other than Slack's
    (the tests' fake API). Anything else (loopback, the metadata service, another site) is never
    contacted; the reply goes through chat.postMessage instead."""
    if not isinstance(url, str) or len(url) > 2048 or not url.isascii() or any(c in url for c in " \r\n\t\\"):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    if parts.username or parts.password:
        return False
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname == "hooks.slack.com" and port in (None, 443):
        return True
    if api_url:
        api = urllib.parse.urlsplit(api_url)
        if api.hostname and api.hostname != "slack.com" and (parts.scheme, parts.hostname, port) == (
                api.scheme, api.hostname, api.port):
            return True
    return False
