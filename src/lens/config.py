"""Lens settings, from the environment (``LENS_*``) with safe defaults for a laptop."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mimir-lens" / "lens"


def split_tokens(raw: str) -> list[str]:
    """Comma-separated secrets, blanks dropped."""
    return [t.strip() for t in raw.split(",") if t.strip()]


def parse_roots(raw: str) -> list[Path]:
    """os.pathsep- or comma-separated directories, resolved; empty means the working directory."""
    parts = [p for p in raw.replace(",", os.pathsep).split(os.pathsep) if p.strip()]
    if not parts:
        return [Path.cwd().resolve()]
    return [Path(p).expanduser().resolve() for p in parts]


class LensSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LENS_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: int = 3000
    # Comma-separated bearer tokens; empty means no auth, allowed only on loopback.
    api_tokens: str = ""
    # Paths the HTTP API may index (os.pathsep- or comma-separated); default: the working directory.
    allowed_roots: str = ""
    max_file_bytes: int = 1 << 20
    embed: bool = True
    search_timeout_ms: int = 5000
    # Searches run at once; more would only fight over the GIL (0 = one per CPU).
    search_concurrency: int = 0
    max_query_length: int = 4096
    max_request_bytes: int = 1 << 20

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    def tokens(self) -> list[str]:
        return split_tokens(self.api_tokens)

    def roots(self) -> list[Path]:
        return parse_roots(self.allowed_roots)
