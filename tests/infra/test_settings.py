"""Settings: *_FILE secrets, masking, the problems check, refusal to start, and the committed templates."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from infra.settings import (
    ConfigurationError,
    SecretFileError,
    effective_config,
    enforce,
    env_names,
    is_placeholder,
    load_settings,
    mask_url,
    problems,
)
from lens.config import LensSettings
from lens.serve.api import create_app as create_lens_app
from lens.serve.http_common import UnsafeConfiguration
from mimir.config import MimirSettings
from mimir.serve.api import create_app as create_mimir_app

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = {name: REPO / f".env.{name}" for name in ("development", "staging", "production")}
SETTINGS = (LensSettings, MimirSettings)
_GENERIC = ("DATABASE_URL", "REDIS_URL", "NATS_URL", "NATS_NAMESPACE", "OTEL_EXPORTER_OTLP_ENDPOINT")


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LENS_*/MIMIR_* (or shared) variable from the outer environment leaks into a test."""
    for key in list(os.environ):
        upper = key.upper()
        if upper.startswith(("LENS_", "MIMIR_")) or upper.removesuffix("_FILE") in _GENERIC:
            monkeypatch.delenv(key)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    clear_settings_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def production(tmp_path: Path, **overrides: object) -> MimirSettings:
    """A production Mimir configuration with no problems, to break one thing at a time."""
    values: dict[str, object] = {
        "environment": "production",
        "data_dir": tmp_path / "data",
        "allowed_roots": str(tmp_path),
        "api_tokens": "a-long-enough-production-token",
        "database_url": "postgresql://mimir:s3cr3t-pw@db.internal:5432/mimir",
    }
    return MimirSettings(**(values | overrides))


# -- defaults ------------------------------------------------------------------------------
def test_development_defaults_load_without_problems(env: pytest.MonkeyPatch) -> None:
    for cls in SETTINGS:
        settings = cls()
        assert settings.environment == "development"
        assert problems(settings) == []
        enforce(settings, logging.getLogger("test"))  # does not raise


# -- *_FILE secrets --------------------------------------------------------------------------
def test_secrets_come_from_files(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {
        "MIMIR_API_TOKENS_FILE": "tok-one-aaaaaaaaaaaa\ntok-two-bbbbbbbbbbbb\n",
        "DATABASE_URL_FILE": "postgresql://mimir:pw-from-file@db:5432/mimir\n",
        "MIMIR_LLM_API_KEY_FILE": "sk-from-file\n",
        "LENS_TOKEN_FILE": "lens-token-from-file",
        "MIMIR_REDIS_URL_FILE": "redis://:redispw@cache:6379/0",
        "LENS_API_TOKENS_FILE": "lens-a, lens-b",
        "LENS_NATS_URL_FILE": "nats://u:natspw@nats:4222",
    }
    for var, content in files.items():
        path = tmp_path / var.lower()
        path.write_text(content)
        env.setenv(var, str(path))
    mimir = MimirSettings()
    assert mimir.tokens() == ["tok-one-aaaaaaaaaaaa", "tok-two-bbbbbbbbbbbb"]
    assert mimir.database_url == "postgresql://mimir:pw-from-file@db:5432/mimir"
    assert mimir.llm_api_key == "sk-from-file"
    assert mimir.lens_token == "lens-token-from-file"
    assert mimir.redis_url == "redis://:redispw@cache:6379/0"
    lens = LensSettings()
    assert lens.tokens() == ["lens-a", "lens-b"]
    assert lens.nats_url == "nats://u:natspw@nats:4222"
    sources = {row["setting"]: row["source"] for row in effective_config(mimir)}
    assert sources["MIMIR_API_TOKENS"] == "file" and sources["DATABASE_URL"] == "file"


def test_file_wins_over_an_empty_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-from-file")
    env.setenv("MIMIR_LLM_API_KEY", "")
    env.setenv("MIMIR_LLM_API_KEY_FILE", str(tmp_path / "key"))
    assert MimirSettings().llm_api_key == "sk-from-file"


def test_value_and_file_together_is_an_error(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("from-file")
    env.setenv("MIMIR_API_TOKENS", "from-env-secret")
    env.setenv("MIMIR_API_TOKENS_FILE", str(tmp_path / "tokens"))
    with pytest.raises(SecretFileError, match="MIMIR_API_TOKENS and MIMIR_API_TOKENS_FILE") as caught:
        MimirSettings()
    assert "from-env-secret" not in str(caught.value) and "from-file" not in str(caught.value)


def test_a_specific_variable_wins_over_a_generic_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("MIMIR_REDIS_URL", "redis://cache:6379/1")
    env.setenv("REDIS_URL_FILE", str(tmp_path / "not-read"))
    assert MimirSettings().redis_url == "redis://cache:6379/1"


def test_invalid_values_are_named_not_echoed(env: pytest.MonkeyPatch) -> None:
    env.setenv("MIMIR_DB_POOL_MIN", "not-a-number-xyz")
    settings, found = load_settings(MimirSettings)
    assert settings is None and len(found) == 1
    assert found[0].startswith("MIMIR_DB_POOL_MIN: ") and "not-a-number-xyz" not in found[0]


def test_unreadable_secret_file_names_the_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LENS_API_TOKENS_FILE", str(tmp_path / "missing"))
    with pytest.raises(SecretFileError, match="LENS_API_TOKENS_FILE: cannot read"):
        LensSettings()


# -- masking -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://mimir:pw@db:5432/mimir", "postgresql://mimir:***@db:5432/mimir"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("http://host/x?api_key=pw&mode=1", "http://host/x?api_key=***&mode=1"),
        ("nats://a:pw@n1:4222,nats://a:pw@n2:4222", "nats://a:***@n1:4222,nats://a:***@n2:4222"),
        ("http://no-secret.example:80/path", "http://no-secret.example:80/path"),
        ("http://[bad", "***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_effective_config_masks_every_secret(tmp_path: Path) -> None:
    secrets = ["tok-AAAA-1111-secret", "sk-llm-BBBB-2222", "db-pw-CCCC-3333", "lens-DDDD-4444", "redis-EEEE"]
    settings = MimirSettings(
        data_dir=tmp_path,
        api_tokens=secrets[0],
        llm_api_key=secrets[1],
        database_url=f"postgresql://u:{secrets[2]}@db/x",
        lens_token=secrets[3],
        redis_url=f"rediss://:{secrets[4]}@r:6380/0",
    )
    rows = effective_config(settings)
    text = json.dumps(rows, default=str)
    for secret in secrets:
        assert secret not in text
    shown = {row["setting"]: row["value"] for row in rows}
    assert shown["MIMIR_DATABASE_URL"] == "postgresql://u:***@db/x"
    assert shown["MIMIR_API_TOKENS"].startswith("*** (1 tokens: ")
    assert shown["MIMIR_LLM_API_KEY"] == "***"
    assert {row["setting"] for row in rows} >= {"MIMIR_PORT", "LENS_URL", "MIMIR_JWT_ISSUER"}


# -- problems ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["changeme", "CHANGE_ME", "replace-me", "<your token>", "${TOKEN}", "xxx"])
def test_placeholders(value: str) -> None:
    assert is_placeholder(value)


@pytest.mark.parametrize("value", ["s3cr3t-pw", "a-long-enough-production-token", "sk-proj-Xy12", "exchange"])
def test_real_values_are_not_placeholders(value: str) -> None:
    assert not is_placeholder(value)


def test_a_clean_production_configuration_has_no_problems(tmp_path: Path) -> None:
    assert problems(production(tmp_path)) == []


def test_production_needs_secrets_and_auth(tmp_path: Path) -> None:
    found = problems(production(tmp_path, api_tokens="", database_url=None, allowed_roots=""))
    assert any(p.startswith("MIMIR_API_TOKENS: no API tokens and no JWT") for p in found), found
    assert any(p.startswith("MIMIR_DATABASE_URL: unset; production needs PostgreSQL") for p in found), found
    assert any(p.startswith("MIMIR_ALLOWED_ROOTS: unset") for p in found), found


def test_placeholder_secrets_are_named(tmp_path: Path) -> None:
    settings = production(
        tmp_path,
        api_tokens="CHANGE_ME",
        database_url="postgresql://mimir:changeme@db/mimir",
        llm_api_key="<llm key>",
        lens_url="http://lens.internal:3000",
        lens_token="replace-me",
        redis_url="redis://:CHANGE_ME@redis:6379/0",
    )
    found = problems(settings)
    for var in (
        "MIMIR_API_TOKENS",
        "MIMIR_DATABASE_URL",
        "MIMIR_LLM_API_KEY",
        "LENS_TOKEN",
        "MIMIR_REDIS_URL",
    ):
        assert any(p.startswith(f"{var}:") and "placeholder" in p for p in found), (var, found)
    assert not any("changeme" in p.lower().replace("change_me", "") for p in found if "://" in p)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"db_pool_min": 20, "db_pool_max": 5}, "MIMIR_DB_POOL_MIN=20 is above MIMIR_DB_POOL_MAX=5"),
        ({"database_url": "mysql://db/x"}, "MIMIR_DATABASE_URL: scheme must be one of postgresql"),
        ({"redis_url": "redis://host:notaport/0"}, "MIMIR_REDIS_URL: not a valid URL"),
        ({"lens_url": "lens:3000"}, "LENS_URL: scheme must be one of http, https"),
        (
            {"allowed_roots": "/definitely/not/here"},
            "MIMIR_ALLOWED_ROOTS: /definitely/not/here does not exist",
        ),
        ({"api_tokens": "short"}, "MIMIR_API_TOKENS: token #1 is shorter than 16"),
        ({"api_tokens": "sha256:abc"}, "MIMIR_API_TOKENS: token #1 starts with 'sha256:'"),
        ({"jwt_issuer": "https://auth/"}, "JWT validation needs all of MIMIR_JWT_ISSUER"),
        ({"jwt_required_scope": "read"}, "MIMIR_JWT_REQUIRED_SCOPE: set without JWT validation"),
        ({"llm_provider": "openai"}, "MIMIR_LLM_PROVIDER: needs MIMIR_LLM_URL and MIMIR_LLM_MODEL"),
        (
            {"llm_provider": "openai", "llm_url": "https://api.example.com/v1", "llm_model": "m"},
            "MIMIR_LLM_API_KEY: unset while the LLM at api.example.com needs a key",
        ),
        (
            {"lens_url": "http://lens.internal:3000"},
            "LENS_TOKEN: unset while LENS_URL points at lens.internal",
        ),
        ({"rate_limit_per_minute": -1}, "MIMIR_RATE_LIMIT_PER_MINUTE: must be 0 (off) or positive"),
        ({"log_level": "LOUD"}, "MIMIR_LOG_LEVEL: 'LOUD' is not one of"),
    ],
)
def test_each_problem_is_named(tmp_path: Path, overrides: dict[str, object], expected: str) -> None:
    found = problems(production(tmp_path, **overrides))
    assert any(p.startswith(expected) for p in found), found


def test_public_bind_without_auth_is_a_problem_in_any_environment(tmp_path: Path) -> None:
    found = problems(LensSettings(data_dir=tmp_path, allowed_roots=str(tmp_path), host="0.0.0.0"))
    assert found == ["LENS_API_TOKENS: unset while binding 0.0.0.0; auth may be off only on loopback"]


def test_jwks_file_is_checked(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    jwt = {"jwt_issuer": "https://auth/", "jwt_audience": "aud", "jwt_jwks_file": jwks}
    found = problems(production(tmp_path, **jwt))
    assert any(p.startswith("MIMIR_JWT_JWKS_FILE: JWKS file") and "no usable" in p for p in found), found


def test_lens_roles_need_nats(tmp_path: Path) -> None:
    settings = LensSettings(data_dir=tmp_path, allowed_roots=str(tmp_path), role="searcher")
    assert problems(settings) == ["LENS_NATS_URL: role 'searcher' needs NATS to ship shards"]


# -- refusal to start ----------------------------------------------------------------------
def test_enforce_refuses_production_and_warns_in_development(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = production(tmp_path, api_tokens="changeme,short", db_pool_min=9, db_pool_max=2)
    with pytest.raises(ConfigurationError) as caught:
        enforce(broken, logging.getLogger("test"))
    assert caught.value.problems[0] == "refusing to start in production: 3 problem(s)"
    assert len(caught.value.problems) == 4
    with caplog.at_level(logging.WARNING):
        enforce(broken.model_copy(update={"environment": "development"}), logging.getLogger("test"))
    assert sum("configuration problem" in r.message for r in caplog.records) == 2  # short token: strict only


def test_both_apps_refuse_to_start_in_production(tmp_path: Path) -> None:
    with pytest.raises(UnsafeConfiguration) as caught:
        create_mimir_app(settings=production(tmp_path, database_url=None))
    assert (
        "MIMIR_DATABASE_URL" in caught.value.message
        and "refusing to start in production" in caught.value.message
    )
    lens = LensSettings(data_dir=tmp_path / "lens", environment="production", allowed_roots=str(tmp_path))
    with pytest.raises(UnsafeConfiguration, match="LENS_API_TOKENS: no API tokens"):
        create_lens_app(settings=lens)
    assert not (tmp_path / "lens").exists()  # refused before touching the data directory


# -- templates -----------------------------------------------------------------------------
def load_template(env: pytest.MonkeyPatch, name: str) -> None:
    for key, value in dotenv_values(TEMPLATES[name]).items():
        env.setenv(key, value or "")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_cover_every_setting(name: str) -> None:
    text = TEMPLATES[name].read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    for cls in SETTINGS:
        for field in cls.model_fields:
            assert named & set(env_names(cls, field)), f"{TEMPLATES[name].name} lacks {env_names(cls, field)}"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_hold_no_real_secrets(name: str) -> None:
    values = dotenv_values(TEMPLATES[name])
    for cls in SETTINGS:
        for field in cls.SECRET_FIELDS:
            for var in env_names(cls, field):
                value = values.get(var) or ""
                if value and not is_placeholder(value):
                    assert "://" in value and "@" not in value, f"{var} in {name} holds a value"


def test_development_template_has_no_problems(env: pytest.MonkeyPatch) -> None:
    load_template(env, "development")
    for cls in SETTINGS:
        settings = cls()
        assert settings.environment == "development"
        assert problems(settings) == [], cls.__name__


@pytest.mark.parametrize("name", ["staging", "production"])
def test_strict_templates_list_their_placeholders(env: pytest.MonkeyPatch, name: str) -> None:
    load_template(env, name)
    lens, mimir = LensSettings(), MimirSettings()
    assert lens.environment == mimir.environment == name
    found = problems(lens) + problems(mimir)
    for var in (
        "LENS_API_TOKENS",
        "LENS_REDIS_URL",
        "MIMIR_API_TOKENS",
        "MIMIR_LENS_TOKEN",
        "MIMIR_DATABASE_URL",
        "MIMIR_REDIS_URL",
    ):
        assert any(p.startswith(f"{var}:") and "placeholder" in p for p in found), (var, found)
