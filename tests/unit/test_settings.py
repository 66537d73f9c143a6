"""Settings from the environment and .env: an empty value is unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings


def test_an_empty_value_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lines of .env.example, uncommented without a value, keep their defaults.
    env_file = tmp_path / ".env"
    env_file.write_text("AGENTSVC_REDIS_URL=\nAGENTSVC_LOG_LEVEL=\n")
    monkeypatch.setenv("AGENTSVC_RATE_LIMIT_PER_MINUTE", "")
    settings = Settings(_env_file=env_file)
    assert settings.redis_url is None
    assert settings.log_level == "info"
    assert settings.rate_limit_per_minute is None


def test_a_value_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("AGENTSVC_REDIS_URL=redis://127.0.0.1:6379/0\n")
    monkeypatch.setenv("AGENTSVC_RATE_LIMIT_PER_MINUTE", "60")
    settings = Settings(_env_file=env_file)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.rate_limit_per_minute == 60
