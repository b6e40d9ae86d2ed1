"""Operator authentication for the console and its API.

* The operator token (PBXBOT_OPERATOR_TOKEN): `Authorization: Bearer <token>` on the API, or
  typed into the login form. Every token, nonce and CSRF value is compared as bytes in constant
  time (bot/tokens.py): a non-ASCII value is "wrong", never an error.
* Operator accounts (PBXBOT_OPERATORS="alice:<bcrypt hash>,bob:<bcrypt hash>"): name and
  password in the login form, checked with bcrypt (in a worker thread). An unknown name is
  checked against a dummy hash of the same cost as the configured ones, so timing does not tell
  which names exist. Make a hash with
  ``python -c 'import bcrypt,getpass; print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'``.
* Guesses are limited per client address and per account (bot/web/guesses.py); a browser that
  logged in as an account keeps a signed known-device cookie, so an attack on the account does
  not lock that operator out.
* A console session is a cookie signed with itsdangerous (PBXBOT_SESSION_SECRET, random per
  process if unset): {"op": name, "csrf": random, "sid": random}; HttpOnly, SameSite=Strict,
  Secure behind https (directly, through a trusted proxy, or PBXBOT_SECURE_COOKIES); 12 hours.
  Logging out revokes the session id in the store, so a copy of the cookie is dead everywhere
  (every worker, every machine on one database). Every console POST carries the csrf value
  (form field `csrf` or header `X-CSRF-Token`).
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Protocol

import bcrypt
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from bot.config import ConfigError, Settings
from bot.proxy import client_address
from bot.tokens import tokens_equal
from bot.web.guesses import TOKEN_ACCOUNT, GuessLimiter, attempt_store

log = logging.getLogger("bot.web.auth")

SESSION_COOKIE = "pbxbot_console"
LOGIN_COOKIE = "pbxbot_login"
DEVICE_COOKIE = "pbxbot_device"
SESSION_MAX_AGE = 12 * 3600
DEVICE_MAX_AGE = 90 * 24 * 3600
_NAME = re.compile(r"^[A-Za-z0-9._@\-]{1,64}$")
_COST = re.compile(r"^\$2[abxy]?\$(\d\d)\$")
DEFAULT_COST = 12  # bcrypt.gensalt()'s


@dataclass(frozen=True)
class Operator:
    name: str
    csrf: str | None  # None for bearer-token API calls (no cookie, so no CSRF exposure)
    via: str  # "session" | "bearer"
    sid: str | None = None  # the session's id (revoked at logout)


class SessionRevocations(Protocol):
    """Where revoked session ids live (the store: SqlHandoffStore)."""

    def revoke_session(self, sid: str, expires_at: datetime) -> None: ...

    def session_revoked(self, sid: str) -> bool: ...


class InProcessRevocations:
    """Fallback when the store keeps none (one process only)."""

    def __init__(self) -> None:
        self._revoked: dict[str, datetime] = {}

    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        now = datetime.now(timezone.utc)
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        self._revoked[sid] = expires_at

    def session_revoked(self, sid: str) -> bool:
        return sid in self._revoked


def parse_operator_accounts(spec: str | None) -> dict[str, bytes]:
    """"alice:$2b$12$...,bob:$2b$..." → {"alice": b"$2b$12$..."}; raises ConfigError on a bad entry."""
    accounts: dict[str, bytes] = {}
    for entry in (spec or "").replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, hashed = entry.partition(":")
        name, hashed = name.strip(), hashed.strip()
        if not sep or not _NAME.match(name) or not _COST.match(hashed):
            raise ConfigError(f"PBXBOT_OPERATORS: entry for {name or '?'!r} is not 'name:bcrypt-hash'")
        accounts[name] = hashed.encode()
    return accounts


def dummy_hash_for(accounts: dict[str, bytes]) -> bytes:
    """A hash of the highest cost among the accounts (bcrypt's default without accounts): checking
    an unknown name then costs what checking the slowest real one does."""
    costs = [int(m.group(1)) for h in accounts.values() if (m := _COST.match(h.decode("ascii", "replace")))]
    cost = max(costs) if costs else DEFAULT_COST
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=min(max(cost, 4), 31)))


class OperatorAuth:
    def __init__(self, settings: Settings, *, secret_key: bytes,
                 revocations: SessionRevocations | None = None,
                 run_sync: Callable[..., Awaitable[Any]] | None = None,
                 guesses: GuessLimiter | None = None) -> None:
        self.settings = settings
        token = settings.operator_token.get_secret_value().strip() if settings.operator_token else ""
        self._token = token.encode() if token else None
        self.accounts = parse_operator_accounts(settings.operators.get_secret_value() if settings.operators else None)
        self._dummy_hash: bytes | None = dummy_hash_for(self.accounts) if self.accounts else None
        self._serializer = URLSafeTimedSerializer(secret_key, salt="pbxbot-console-session")
        self._login_serializer = URLSafeTimedSerializer(secret_key, salt="pbxbot-console-login")
        self._device_serializer = URLSafeTimedSerializer(secret_key, salt="pbxbot-console-device")
        self.revocations = revocations if revocations is not None else InProcessRevocations()
        self.run_sync = run_sync
        self.guesses = guesses or GuessLimiter(attempt_store(settings.redis_url),
                                               per_minute=settings.login_attempts_per_minute)

    @property
    def configured(self) -> bool:
        return self._token is not None or bool(self.accounts)

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        if self.run_sync is None:
            return func(*args)
        return await self.run_sync(func, *args)

    # ------------------------------------------------------------ credentials

    def token_ok(self, token: str | None) -> bool:
        if self._token is None or not token:
            return False
        return tokens_equal(self._token, token.strip())

    def password_ok(self, name: str, password: str) -> bool:
        """Slow (bcrypt): call in a worker thread. The same cost for unknown names."""
        hashed = self.accounts.get(name)
        if hashed is None and self._dummy_hash is None:
            self._dummy_hash = dummy_hash_for(self.accounts)
        pw = password.encode("utf-8", "surrogatepass")[:72]
        try:
            ok = bcrypt.checkpw(pw, hashed or self._dummy_hash)  # type: ignore[arg-type]
        except ValueError:
            log.error("operator %s has an unusable password hash", name)
            return False
        return ok and hashed is not None

    def login(self, name: str, secret: str) -> str | None:
        """Operator name when `secret` is the operator token or `name`'s password; else None. Slow."""
        name = (name or "").strip()
        if self.token_ok(secret):
            return name if name and _NAME.match(name) else "operator"
        if name:
            # an invalid name costs a check too: timing tells nothing about names
            ok = self.password_ok(name if _NAME.match(name) else "", secret or "")
            return name if ok else None
        return None

    @staticmethod
    def account_of(name: str) -> str:
        """The account a login-form guess is aimed at (the guess limits count per account)."""
        name = (name or "").strip()
        return name if name and _NAME.match(name) else TOKEN_ACCOUNT

    # ------------------------------------------------------------ sessions

    def new_session(self, name: str) -> tuple[str, str]:
        """(cookie value, csrf token)."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"op": name, "csrf": csrf, "sid": secrets.token_urlsafe(18)}), csrf

    def session(self, request: Request) -> Operator | None:
        """The session the cookie claims (signature and age only; see current_session)."""
        data = _unsigned(self._serializer, request.cookies.get(SESSION_COOKIE), SESSION_MAX_AGE)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("op", "csrf", "sid")):
            return None
        return Operator(name=data["op"], csrf=data["csrf"], via="session", sid=data["sid"])

    async def current_session(self, request: Request) -> Operator | None:
        """The cookie's session unless it was revoked (logged out)."""
        op = self.session(request)
        if op is None or op.sid is None:
            return None
        if await self._call(self.revocations.session_revoked, op.sid):
            return None
        return op

    async def revoke(self, op: Operator) -> None:
        if op.sid:
            until = datetime.now(timezone.utc) + timedelta(seconds=SESSION_MAX_AGE + 60)
            await self._call(self.revocations.revoke_session, op.sid, until)

    async def authenticate(self, request: Request) -> tuple[Operator | None, float]:
        """(operator, 0) from `Authorization: Bearer <operator token>` or the session cookie;
        (None, 0) when neither; (None, seconds) when bearer guesses from this client are refused."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            address = client_address(request, self.settings)
            with self.guesses.attempt(address, TOKEN_ACCOUNT) as attempt:
                if attempt.wait:
                    log.warning("operator API: bearer guesses from %s refused for %.0f s", address, attempt.wait)
                    return None, attempt.wait
                if scheme.lower() == "bearer" and self.token_ok(value):
                    self.guesses.succeeded(address, TOKEN_ACCOUNT)
                    name = request.headers.get("x-operator-name", "").strip()
                    return Operator(name=name if _NAME.match(name) else "api", csrf=None, via="bearer"), 0.0
                attempt.failed()
            return None, 0.0  # a wrong token is not rescued by a cookie
        return await self.current_session(request), 0.0

    @staticmethod
    def csrf_ok(operator: Operator, presented: str | None) -> bool:
        if operator.via == "bearer":
            return True
        return tokens_equal(operator.csrf, presented)

    # ------------------------------------------------------------ known devices

    def new_device(self, account: str) -> str:
        """The known-device cookie for a browser that just logged in as `account`."""
        return self._device_serializer.dumps({"acct": account, "dev": secrets.token_urlsafe(12)})

    def device_id(self, request: Request, account: str) -> str | None:
        """This browser's device id when it holds a valid known-device cookie for `account`."""
        data = _unsigned(self._device_serializer, request.cookies.get(DEVICE_COOKIE), DEVICE_MAX_AGE)
        if not isinstance(data, dict) or data.get("acct") != account or not isinstance(data.get("dev"), str):
            return None
        return data["dev"]

    # ------------------------------------------------------------ the login form's own CSRF (double submit)

    def new_login_nonce(self) -> tuple[str, str]:
        """(cookie value, form value): the form value is the nonce signed."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._login_serializer.dumps(nonce)

    def login_nonce_ok(self, request: Request, form_value: str | None) -> bool:
        nonce = _unsigned(self._login_serializer, form_value, 3600)
        return isinstance(nonce, str) and tokens_equal(nonce, request.cookies.get(LOGIN_COOKIE))


def _unsigned(serializer: URLSafeTimedSerializer, raw: str | None, max_age: int) -> Any:
    """The value `raw` (a cookie, a form field) holds when `serializer` signed it within `max_age`
    seconds, or None (absent, forged, expired, not text)."""
    if not raw:
        return None
    try:
        return serializer.loads(raw, max_age=max_age)
    except (BadSignature, UnicodeError, ValueError):
        return None
