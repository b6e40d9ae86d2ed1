"""Operator authentication for the console and its API.

* The operator token (PBXBOT_OPERATOR_TOKEN): `Authorization: Bearer <token>` on the API, or
  typed into the login form. Compared with hmac.compare_digest.
* Operator accounts (PBXBOT_OPERATORS="alice:<bcrypt hash>,bob:<bcrypt hash>"): name and
  password in the login form, checked with bcrypt (in a worker thread; an unknown name costs
  the same as a wrong password). Make a hash with
  ``python -c 'import bcrypt,getpass; print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'``.
* A console session is a cookie signed with itsdangerous (PBXBOT_SESSION_SECRET, random per
  process if unset): {"op": name, "csrf": random}; HttpOnly, SameSite=Strict, Secure when the
  request came over https; 12 hours. Every console POST carries the csrf value (form field
  `csrf` or header `X-CSRF-Token`), compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from dataclasses import dataclass

import bcrypt
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from bot.config import ConfigError, Settings

log = logging.getLogger("bot.web.auth")

SESSION_COOKIE = "pbxbot_console"
LOGIN_COOKIE = "pbxbot_login"
SESSION_MAX_AGE = 12 * 3600
_NAME = re.compile(r"^[A-Za-z0-9._@\-]{1,64}$")
# Checked against when the name is unknown, so that timing does not tell which names exist.
_DUMMY_HASH = bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class Operator:
    name: str
    csrf: str | None  # None for bearer-token API calls (no cookie, so no CSRF exposure)
    via: str  # "session" | "bearer"


def parse_operator_accounts(spec: str | None) -> dict[str, bytes]:
    """"alice:$2b$12$...,bob:$2b$..." → {"alice": b"$2b$12$..."}; raises ConfigError on a bad entry."""
    accounts: dict[str, bytes] = {}
    for entry in (spec or "").replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, hashed = entry.partition(":")
        name, hashed = name.strip(), hashed.strip()
        if not sep or not _NAME.match(name) or not hashed.startswith("$2"):
            raise ConfigError(f"PBXBOT_OPERATORS: entry for {name or '?'!r} is not 'name:bcrypt-hash'")
        accounts[name] = hashed.encode()
    return accounts


class OperatorAuth:
    def __init__(self, settings: Settings, *, secret_key: bytes) -> None:
        token = settings.operator_token.get_secret_value().strip() if settings.operator_token else ""
        self._token = token.encode() if token else None
        operators = getattr(settings, "operators", None)
        spec = operators.get_secret_value() if hasattr(operators, "get_secret_value") else operators
        self.accounts = parse_operator_accounts(spec)
        self._serializer = URLSafeTimedSerializer(secret_key, salt="pbxbot-console-session")
        self._login_serializer = URLSafeTimedSerializer(secret_key, salt="pbxbot-console-login")

    @property
    def configured(self) -> bool:
        return self._token is not None or bool(self.accounts)

    # ------------------------------------------------------------ credentials

    def token_ok(self, token: str | None) -> bool:
        if self._token is None or not token:
            return False
        return hmac.compare_digest(self._token, token.strip().encode())

    def password_ok(self, name: str, password: str) -> bool:
        """Slow (bcrypt): call in a worker thread."""
        hashed = self.accounts.get(name)
        try:
            ok = bcrypt.checkpw(password.encode()[:72], hashed or _DUMMY_HASH)
        except ValueError:
            log.error("operator %s has an unusable password hash", name)
            return False
        return ok and hashed is not None

    def login(self, name: str, secret: str) -> str | None:
        """Operator name when `secret` is the operator token or `name`'s password; else None. Slow."""
        name = (name or "").strip()
        if name and not _NAME.match(name):
            return None
        if self.token_ok(secret):
            return name or "operator"
        if name and self.password_ok(name, secret or ""):
            return name
        return None

    # ------------------------------------------------------------ sessions

    def new_session(self, name: str) -> tuple[str, str]:
        """(cookie value, csrf token)."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"op": name, "csrf": csrf}), csrf

    def session(self, request: Request) -> Operator | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=SESSION_MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("op"), str) or not isinstance(data.get("csrf"), str):
            return None
        return Operator(name=data["op"], csrf=data["csrf"], via="session")

    def operator(self, request: Request) -> Operator | None:
        """From `Authorization: Bearer <operator token>` or the session cookie."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and self.token_ok(value):
                name = request.headers.get("x-operator-name", "").strip()
                return Operator(name=name if _NAME.match(name) else "api", csrf=None, via="bearer")
            return None  # a wrong token is not rescued by a cookie
        return self.session(request)

    @staticmethod
    def csrf_ok(operator: Operator, presented: str | None) -> bool:
        if operator.via == "bearer":
            return True
        return bool(presented) and operator.csrf is not None and hmac.compare_digest(operator.csrf, presented or "")

    # ------------------------------------------------------------ the login form's own CSRF (double submit)

    def new_login_nonce(self) -> tuple[str, str]:
        """(cookie value, form value): the form value is the nonce signed."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._login_serializer.dumps(nonce)

    def login_nonce_ok(self, request: Request, form_value: str | None) -> bool:
        cookie = request.cookies.get(LOGIN_COOKIE)
        if not cookie or not form_value:
            return False
        try:
            nonce = self._login_serializer.loads(form_value, max_age=3600)
        except BadSignature:
            return False
        return isinstance(nonce, str) and hmac.compare_digest(nonce, cookie)


def cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https"
