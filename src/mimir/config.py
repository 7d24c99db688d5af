"""Mimir settings, from the environment (``MIMIR_*``, plus ``LENS_URL``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lens.config import parse_roots, split_tokens


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mimir-lens" / "mimir"


class MimirSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIMIR_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    api_tokens: str = ""
    # Paths Mimir may read (os.pathsep- or comma-separated); default: the working directory.
    allowed_roots: str = ""
    # Lens over HTTP when set; otherwise Lens runs in-process on data_dir/lens.
    lens_url: str | None = Field(default=None, validation_alias=AliasChoices("LENS_URL", "MIMIR_LENS_URL"))
    lens_token: str | None = Field(
        default=None, validation_alias=AliasChoices("LENS_TOKEN", "MIMIR_LENS_TOKEN")
    )
    lens_timeout_s: float = 10.0
    embed: bool = True
    # Optional LLM for ask_index prose: "openai" (any OpenAI-compatible URL), "gemini" or "ollama".
    llm_provider: str | None = None
    llm_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    llm_timeout_s: float = 60.0
    max_bundle_bytes: int = 8 << 30

    def tokens(self) -> list[str]:
        return split_tokens(self.api_tokens)

    def roots(self) -> list[Path]:
        return parse_roots(self.allowed_roots)
