"""Settings: every variable validated once, secrets masked, clear errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Settings, load_settings
from config.settings import parse_rate_limit


def test_defaults_are_the_embedded_ones() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "sqlite+aiosqlite:///./zapa.db"
    assert settings.is_sqlite
    assert settings.redis_url is None
    assert not settings.llm_configured
    assert not settings.webhook_enabled
    assert settings.rate_limits == ((20, "minute"), (200, "day"))
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example:5432/zapa", "postgresql+asyncpg://u:p@db.example:5432/zapa"),
        ("postgresql://u@db/zapa", "postgresql+asyncpg://u@db/zapa"),
        ("postgresql+asyncpg://u@db/zapa", "postgresql+asyncpg://u@db/zapa"),
        ("sqlite:///data/zapa.db", "sqlite+aiosqlite:///data/zapa.db"),
    ],
)
def test_database_urls_are_mapped_to_async_drivers(given: str, expected: str) -> None:
    assert load_settings(database_url=given).database_url == expected


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("database_url", "nonsense", "DATABASE_URL"),
        ("database_url", "mysql://u@h/db", "DATABASE_URL"),
        ("database_url", "postgresql:///nohost", "DATABASE_URL"),
        ("rate_limit", "10/fortnight", "RATE_LIMIT"),
        ("rate_limit", "0/minute", "RATE_LIMIT"),
        ("port", "70000", "PORT"),
        ("redis_url", "http://cache:6379", "REDIS_URL"),
        ("webhook_secret", "not-a-whsec", "WEBHOOK_SECRET"),
        ("log_level", "chatty", "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(field: str, value: str, variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"invalid {variable}:")
    assert "\n" not in message


def test_secrets_are_masked_in_repr() -> None:
    settings = load_settings(
        openai_api_key="sk-very-secret", webhook_token="tok-secret", redis_url="redis://:pw@h/0"
    )
    shown = repr(settings) + str(settings)
    for secret in ("sk-very-secret", "tok-secret", "pw@h"):
        assert secret not in shown
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-very-secret"


def test_environment_and_dotenv_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        "RATE_LIMIT=5/second\nOPENAI_MODEL=from-dotenv\nLOG_LEVEL=debug\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_MODEL", "from-environment")
    monkeypatch.setenv("WEBHOOK_TOKEN", "")
    settings = load_settings()
    assert settings.rate_limits == ((5, "second"),)
    assert settings.openai_model == "from-environment"  # the environment wins over .env
    assert settings.log_level == "DEBUG"
    assert settings.webhook_token is None  # empty means unset


def test_rate_limit_parsing_accepts_plurals_and_spaces() -> None:
    assert parse_rate_limit(" 3 / seconds ; 10/Hour;") == ((3, "second"), (10, "hour"))
