"""Mimir settings, from the environment (``MIMIR_*``, plus ``LENS_URL``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from infra.settings import RuntimeSettings
from lens.config import parse_roots, split_tokens


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mimir-lens" / "mimir"


class MimirSettings(RuntimeSettings):
    model_config = SettingsConfigDict(env_prefix="MIMIR_", extra="ignore", populate_by_name=True)
    # Each may also come from a file: MIMIR_API_TOKENS_FILE=/run/secrets/tokens (docs/CONFIGURATION.md).
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = (
        "api_tokens",
        "lens_token",
        "llm_api_key",
        "database_url",
        "redis_url",
        "nats_url",
    )

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
    # HTTP request bodies over this are refused (413); longer search queries and questions get a 400.
    max_request_bytes: int = 1 << 20
    max_query_length: int = 4000
    # On SIGTERM: seconds in-flight requests may take to finish before they are cancelled.
    shutdown_grace_s: int = Field(default=20, ge=0)

    # -- production runtime (step 3); all optional: unset means the embedded default ------------
    environment: Literal["development", "staging", "production"] = Field(
        default="development", validation_alias=AliasChoices("MIMIR_ENV", "MIMIR_ENVIRONMENT")
    )
    # PostgreSQL for metadata when set (postgresql://...); otherwise SQLite under data_dir.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MIMIR_DATABASE_URL", "DATABASE_URL")
    )
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_timeout_s: float = 5.0
    db_migrate_on_start: bool = True
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("MIMIR_REDIS_URL", "REDIS_URL"))
    cache_ttl_s: int = 300
    cache_timeout_s: float = 0.25
    # Requests per minute per token (0 = no limit); shared across replicas when Redis is set.
    rate_limit_per_minute: int = 0
    # NATS JetStream work queue and shard shipping when set; otherwise in-process.
    nats_url: str | None = Field(default=None, validation_alias=AliasChoices("MIMIR_NATS_URL", "NATS_URL"))
    nats_namespace: str = Field(
        default="mimirlens", validation_alias=AliasChoices("MIMIR_NATS_NAMESPACE", "NATS_NAMESPACE")
    )
    queue_ack_wait_s: float = 30.0
    queue_max_deliver: int = 3
    worker_concurrency: int = 1
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_file: Path | None = None
    # Scopes (space-separated) every JWT must carry (403 insufficient_scope); static tokens are not scoped.
    jwt_required_scope: str | None = None
    # The externally visible base URL (https://mimir.example.com), the OAuth protected resource's
    # identifier; unset: taken from each request's Host header.
    public_url: str | None = None
    otel_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("MIMIR_OTEL_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    log_level: str = "INFO"
    log_format: Literal["", "console", "json"] = ""

    def tokens(self) -> list[str]:
        return split_tokens(self.api_tokens)

    def roots(self) -> list[Path]:
        return parse_roots(self.allowed_roots)
