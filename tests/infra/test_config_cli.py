"""``lens config check`` and ``mimir config check`` as real subprocesses: masking and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
_GENERIC = ("DATABASE_URL", "REDIS_URL", "NATS_URL", "NATS_NAMESPACE", "OTEL_EXPORTER_OTLP_ENDPOINT")
SECRETS = {
    "MIMIR_API_TOKENS": "mimir-token-Q7x9-never-print",
    "MIMIR_LLM_API_KEY": "sk-llm-K3y-never-print",
    "MIMIR_LENS_TOKEN": "lens-token-Z8w2-never-print",
}
DB_PASSWORD = "db-Pa55-never-print"


def base_env(tmp_path: Path) -> dict[str, str]:
    """The outer environment minus every LENS_*/MIMIR_* (and shared) setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("LENS_", "MIMIR_")) and k.upper().removesuffix("_FILE") not in _GENERIC
    }
    env["COLUMNS"] = "300"  # rich wraps tables to the terminal width; keep values on one line
    env["HOME"] = str(tmp_path)
    return env


def check(service: str, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{service}.serve.cli", "config", "check", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env(tmp_path: Path) -> dict[str, str]:
    return (
        base_env(tmp_path)
        | SECRETS
        | {
            "MIMIR_ENV": "production",
            "MIMIR_HOST": "0.0.0.0",
            "MIMIR_ALLOWED_ROOTS": str(tmp_path),
            "MIMIR_DATA_DIR": str(tmp_path / "data"),
            "MIMIR_LENS_URL": "http://lens.internal:3000",
            "MIMIR_LLM_PROVIDER": "openai",
            "MIMIR_LLM_URL": "https://llm.example.com/v1",
            "MIMIR_LLM_MODEL": "m",
            "DATABASE_URL": f"postgresql://mimir:{DB_PASSWORD}@db.internal:5432/mimir",
        }
    )


def test_development_defaults_pass(tmp_path: Path) -> None:
    for service in ("lens", "mimir"):
        result = check(service, base_env(tmp_path), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no problems found" in result.stdout
        assert f"{service.upper()}_PORT" in result.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_clean_production_passes_with_secrets_masked(tmp_path: Path, as_json: bool) -> None:
    result = check("mimir", production_env(tmp_path), tmp_path, *(["--json"] if as_json else []))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for secret in [*SECRETS.values(), DB_PASSWORD]:
        assert secret not in output
    assert "postgresql://mimir:***@db.internal:5432/mimir" in output
    if as_json:
        report: dict[str, Any] = json.loads(result.stdout)
        assert report["ok"] is True and report["problems"] == [] and report["environment"] == "production"
        shown = {row["setting"]: row["value"] for row in report["settings"]}
        assert shown["MIMIR_LLM_API_KEY"] == "***" and shown["MIMIR_LENS_TOKEN"] == "***"


@pytest.mark.parametrize("as_json", [False, True])
def test_problems_exit_1_and_are_listed(tmp_path: Path, as_json: bool) -> None:
    env = production_env(tmp_path) | {"MIMIR_DB_POOL_MIN": "50", "MIMIR_ALLOWED_ROOTS": "/no/such/root"}
    del env["MIMIR_LENS_TOKEN"]
    result = check("mimir", env, tmp_path, *(["--json"] if as_json else []))
    assert result.returncode == 1, result.stdout + result.stderr
    expected = [
        "MIMIR_DB_POOL_MIN=50 is above MIMIR_DB_POOL_MAX=10",
        "MIMIR_ALLOWED_ROOTS: /no/such/root does not exist",
        "LENS_TOKEN: unset while LENS_URL points at lens.internal",
    ]
    if as_json:
        found = json.loads(result.stdout)["problems"]
        for text in expected:
            assert any(p.startswith(text) for p in found), found
    else:
        for text in expected:
            assert f"problem: {text}" in result.stdout
    for secret in [SECRETS["MIMIR_API_TOKENS"], SECRETS["MIMIR_LLM_API_KEY"], DB_PASSWORD]:
        assert secret not in result.stdout + result.stderr


def test_secret_files_and_conflicts(tmp_path: Path) -> None:
    tokens = tmp_path / "lens_tokens"
    tokens.write_text("lens-file-token-aaaa-never-print\nlens-file-token-bbbb-never-print\n")
    env = base_env(tmp_path) | {"LENS_API_TOKENS_FILE": str(tokens), "LENS_HOST": "0.0.0.0"}
    result = check("lens", env, tmp_path, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "never-print" not in result.stdout + result.stderr
    rows = {row["setting"]: row for row in json.loads(result.stdout)["settings"]}
    assert rows["LENS_API_TOKENS"]["source"] == "file"
    assert rows["LENS_API_TOKENS"]["value"].startswith("*** (2 tokens: ")

    both = check("lens", env | {"LENS_API_TOKENS": "inline-token-never-print"}, tmp_path)
    assert both.returncode == 1
    assert "both LENS_API_TOKENS and LENS_API_TOKENS_FILE are set" in both.stdout
    assert "never-print" not in both.stdout + both.stderr


@pytest.mark.parametrize("name", ["staging", "production"])
def test_strict_templates_fail_on_their_placeholders(tmp_path: Path, name: str) -> None:
    template = {k: v or "" for k, v in dotenv_values(REPO / f".env.{name}").items()}
    for service, vars_ in (
        ("lens", ["LENS_API_TOKENS", "LENS_REDIS_URL"]),
        ("mimir", ["MIMIR_API_TOKENS", "MIMIR_LENS_TOKEN", "MIMIR_DATABASE_URL", "MIMIR_REDIS_URL"]),
    ):
        result = check(service, base_env(tmp_path) | template, tmp_path, "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        found = json.loads(result.stdout)["problems"]
        for var in vars_:
            assert any(p.startswith(f"{var}:") and "placeholder" in p for p in found), (var, found)


def test_development_template_passes(tmp_path: Path) -> None:
    template = {k: v or "" for k, v in dotenv_values(REPO / ".env.development").items()}
    for service in ("lens", "mimir"):
        result = check(service, base_env(tmp_path) | template, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
