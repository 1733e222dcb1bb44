"""Settings read once from the environment (and `.env`), validated, and frozen.

Nothing else in Zapa reads ``os.environ``: the app factory and the CLI call
:func:`load_settings` and pass the result down. Secrets are wrapped in
:class:`pydantic.SecretStr` so their ``repr`` and log output stay masked.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_SYSTEM_PROMPT = (
    "You are Zapa, a helpful assistant in a chat. Answer clearly and concisely, "
    "and say so when you do not know something."
)
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./zapa.db"

_RATE_ITEM = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def normalize_database_url(value: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` URLs to asyncpg, sqlite to aiosqlite."""
    value = value.strip()
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"unsupported database {backend!r}: use postgresql:// or sqlite://")
    if backend != "sqlite" and not url.host:
        raise ValueError("the URL names no host")
    return url.render_as_string(hide_password=False)


def parse_rate_limit(value: str) -> tuple[tuple[int, str], ...]:
    """Parse ``"20/minute;200/day"`` into ``((20, "minute"), (200, "day"))``.

    Raises:
        ValueError: when an item is not ``N/second|minute|hour|day`` with N > 0.
    """
    items: list[tuple[int, str]] = []
    for part in value.split(";"):
        if not part.strip():
            continue
        match = _RATE_ITEM.match(part)
        if match is None or int(match.group(1)) <= 0:
            raise ValueError(f"{part.strip()!r} is not N/second|minute|hour|day")
        items.append((int(match.group(1)), match.group(2).lower()))
    return tuple(items)


class Settings(BaseSettings):
    """Every environment variable of SPEC §3, typed and validated."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    host: str = "0.0.0.0"  # noqa: S104 - a server listens on all interfaces by default
    port: int = Field(default=8080, ge=1, le=65535)

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(default=10, ge=1, le=500)
    redis_url: SecretStr | None = None

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = Field(default=60.0, gt=0)
    llm_max_attempts: int = Field(default=4, ge=1, le=20)
    llm_breaker_threshold: int = Field(default=5, ge=1)
    llm_breaker_reset_seconds: float = Field(default=30.0, gt=0)

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    history_max_tokens: int = Field(default=4000, ge=100)
    rate_limit: Annotated[str, NoDecode] = "20/minute;200/day"

    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    telegram_streaming: bool = True

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_command: str = "/ask"
    slack_app_token: SecretStr | None = None

    webhook_secret: SecretStr | None = None
    webhook_token: SecretStr | None = None
    callback_allow_private: bool = False

    secret_key: SecretStr | None = None
    log_format: Literal["console", "json"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    worker_concurrency: int = Field(default=100, ge=1, le=10_000)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    queue_lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    job_max_attempts: int = Field(default=5, ge=1, le=100)
    job_retry_seconds: float = Field(default=1.0, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        parse_rate_limit(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "redis_url",
        "openai_api_key",
        "openai_base_url",
        "telegram_bot_token",
        "telegram_webhook_secret",
        "slack_bot_token",
        "slack_signing_secret",
        "slack_app_token",
        "webhook_secret",
        "webhook_token",
        "secret_key",
        "log_format",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must be a Standard Webhooks secret starting with 'whsec_'")
        return value

    @field_validator("slack_command")
    @classmethod
    def _slash_command(cls, value: str) -> str:
        if not re.fullmatch(r"/[a-z0-9_-]{1,31}", value):
            raise ValueError("must be a slash command like /ask (lowercase, at most 32 characters)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().split("://", 1)[0]
            if scheme not in ("redis", "rediss", "unix"):
                raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    @property
    def rate_limits(self) -> tuple[tuple[int, str], ...]:
        """The parsed ``RATE_LIMIT`` windows."""
        return parse_rate_limit(self.rate_limit)

    @property
    def llm_configured(self) -> bool:
        """Whether a real model endpoint is configured (else the offline echo model)."""
        return self.openai_api_key is not None or self.openai_base_url is not None

    @property
    def slack_enabled(self) -> bool:
        """Whether the Slack adapter serves ``/webhooks/slack`` (token and signing secret set)."""
        return self.slack_bot_token is not None and self.slack_signing_secret is not None

    @property
    def webhook_enabled(self) -> bool:
        """Whether the generic webhook channel has any way to authenticate callers."""
        return self.webhook_secret is not None or self.webhook_token is not None


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise :class:`ConfigError` naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid {name}: {message}") from None
