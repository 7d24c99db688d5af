"""Lens settings, from the environment (``LENS_*``) with safe defaults for a laptop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from infra.settings import RuntimeSettings


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


class LensSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="LENS_", extra="ignore", populate_by_name=True)
    # Each may also come from a file: LENS_API_TOKENS_FILE=/run/secrets/lens_tokens (docs/CONFIGURATION.md).
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("api_tokens", "redis_url", "nats_url")

    data_dir: Path = Field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: int = 3000
    # Comma-separated bearer tokens (plain or sha256:<hex>); empty means no auth, allowed only on loopback.
    api_tokens: str = ""
    # Paths the HTTP API may index (os.pathsep- or comma-separated); default: the working directory.
    allowed_roots: str = ""
    max_file_bytes: int = 1 << 20
    embed: bool = True
    # Runtime for the embedding model (lens.index.embedder reads LENS_EMBED_BACKEND itself, in every
    # process that embeds; declared here so `lens config check` shows and validates it).
    embed_backend: Literal["auto", "openvino", "onnxruntime"] = "auto"
    search_timeout_ms: int = 5000
    # Searches run at once; more would only fight over the GIL (0 = one per CPU).
    search_concurrency: int = 0
    max_query_length: int = 4096
    max_request_bytes: int = 1 << 20
    # On SIGTERM: seconds in-flight requests may take to finish before they are cancelled.
    shutdown_grace_s: int = Field(default=20, ge=0)

    # -- production runtime (step 3); all optional: unset means the embedded default ------------
    environment: Literal["development", "staging", "production"] = Field(
        default="development", validation_alias=AliasChoices("LENS_ENV", "LENS_ENVIRONMENT")
    )
    # all: index and search (embedded default); searcher: serve shards shipped through NATS;
    # indexer: build shards and publish them.
    role: Literal["all", "searcher", "indexer"] = "all"
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("LENS_REDIS_URL", "REDIS_URL"))
    cache_ttl_s: int = 300
    cache_timeout_s: float = 0.25
    # Requests per minute per token (0 = no limit); shared across replicas when Redis is set.
    rate_limit_per_minute: int = 0
    nats_url: str | None = Field(default=None, validation_alias=AliasChoices("LENS_NATS_URL", "NATS_URL"))
    # Prefix of every stream, object store and key-value bucket: one namespace per deployment/test.
    nats_namespace: str = Field(
        default="mimirlens", validation_alias=AliasChoices("LENS_NATS_NAMESPACE", "NATS_NAMESPACE")
    )
    # Optional JWT validation (OAuth 2.1 resource server) beside the static bearer tokens.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_file: Path | None = None
    # Scopes (space-separated) every JWT must carry; static tokens are not scoped.
    jwt_required_scope: str | None = None
    otel_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("LENS_OTEL_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    log_level: str = "INFO"
    # console for people, json for log shippers; empty = json outside development.
    log_format: Literal["", "console", "json"] = ""

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    def tokens(self) -> list[str]:
        return split_tokens(self.api_tokens)

    def roots(self) -> list[Path]:
        return parse_roots(self.allowed_roots)
