"""Settings helpers both services share: ``*_FILE`` secrets, masking, and the pre-flight check.

Secrets can come from files (Docker/Kubernetes secrets) so they never sit in the process
environment: ``MIMIR_API_TOKENS_FILE=/run/secrets/tokens`` reads the value from that file.
Setting both a secret and its ``*_FILE`` is an error, never a silent choice. ``problems``
lists everything wrong with a configuration; in staging and production the services refuse
to start while the list is not empty, because a half-secured deployment is worse than none.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from infra.auth import load_jwks, parse_token_hashes, split_scopes, token_id

STRICT_ENVIRONMENTS = frozenset({"staging", "production"})
MIN_TOKEN_LENGTH = 16
_URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "database_url": ("postgresql", "postgres"),
    "redis_url": ("redis", "rediss", "unix"),
    "nats_url": ("nats", "tls", "ws", "wss"),
    "lens_url": ("http", "https"),
    "llm_url": ("http", "https"),
    "otel_endpoint": ("http", "https"),
    "public_url": ("http", "https"),
}
_PLACEHOLDER = re.compile(
    r"change[-_ ]?me|replace[-_ ]?me|<[^<>]*>|\$\{[^}]*\}|^(todo|tbd|xx+|secret|password|placeholder|dummy)$",
    re.IGNORECASE,
)
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key|auth", re.IGNORECASE)
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
MASK = "***"
S = TypeVar("S", bound=BaseSettings)


class SecretFileError(ValueError):
    """A ``*_FILE`` secret that conflicts with its plain variable or cannot be read."""


class ConfigurationError(Exception):
    """The configuration is unsafe to run with; ``problems`` names each reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# -- environment variable names -----------------------------------------------------------------
def env_names(settings_cls: type[BaseSettings], name: str) -> list[str]:
    """The environment variables a field is read from, most specific first."""
    alias = settings_cls.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"{settings_cls.model_config.get('env_prefix', '')}{name}".upper()]


def env_name(settings: BaseSettings | type[BaseSettings], name: str) -> str:
    """The variable to name in messages: the one set in the environment, else the primary one."""
    cls = settings if isinstance(settings, type) else type(settings)
    names = env_names(cls, name)
    present = {k.upper() for k in os.environ}
    return next((n for n in names if n in present or f"{n}_FILE" in present), names[0])


# -- *_FILE secrets ---------------------------------------------------------------------------
class SecretFileSource(PydanticBaseSettingsSource):
    """Values of the class's ``SECRET_FIELDS`` from the files their ``<VAR>_FILE`` variables name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items()}
        cls = self.settings_cls
        out: dict[str, Any] = {}
        for name in getattr(cls, "SECRET_FIELDS", ()):
            for var in env_names(cls, name):
                path = environ.get(f"{var}_FILE", "")
                if environ.get(var, ""):
                    if path:
                        raise SecretFileError(f"both {var} and {var}_FILE are set: set only one")
                    break  # a more specific variable's value wins over less specific ones
                if not path:
                    continue
                has_alias = cls.model_fields[name].validation_alias is not None
                out[var if has_alias else name] = _read_secret(f"{var}_FILE", Path(path), name)
                break
        return out


def _read_secret(var: str, path: Path, name: str) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecretFileError(f"{var}: cannot read {path}: {exc.strerror}") from exc
    if name == "api_tokens":  # one token per line (or comma-separated) both work
        return ",".join(t.strip() for t in text.replace("\n", ",").split(",") if t.strip())
    return text.strip()


class RuntimeSettings(BaseSettings):
    """Base of both services' settings: adds ``*_FILE`` secrets, which win over an empty variable."""

    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = SecretFileSource(settings_cls)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings


def load_settings(settings_cls: type[S]) -> tuple[S | None, list[str]]:
    """Settings from the environment, or None and the reasons they do not load (no values echoed)."""
    try:
        return settings_cls(), []
    except SecretFileError as exc:
        return None, [str(exc)]
    except ValidationError as exc:
        return None, [f"{_loc_name(settings_cls, e['loc'])}: {e['msg']}" for e in exc.errors()]


def _loc_name(settings_cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """A validation error's location as the variable to fix (never the rejected value)."""
    head = str(loc[0]) if loc else settings_cls.__name__
    if head in settings_cls.model_fields:
        head = env_name(settings_cls, head)
    return ".".join([head, *(str(p) for p in loc[1:])])


# -- masking -----------------------------------------------------------------------------------
def split_urls(value: str) -> list[str]:
    """A comma-separated server list (NATS) as its URLs; any other value as itself."""
    return [u.strip() for u in value.split(",")] if value.count("://") > 1 else [value]


def mask_url(value: str) -> str:
    """``value`` (one URL or a list) with passwords and secret-looking query values as ``***``."""
    return ",".join(_mask_one(url) for url in split_urls(value))


def _mask_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK  # unparsable: it may hide anything
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def display_value(settings: BaseSettings, name: str) -> Any:
    """A field's value as safe to print: secrets masked, URLs without passwords, paths as text."""
    value = getattr(settings, name)
    if value is None or value == "":
        return value
    if name == "api_tokens":
        return _display_tokens(str(value))
    if name in _URL_SCHEMES or (isinstance(value, str) and "://" in value):
        return mask_url(str(value))
    if name in getattr(settings, "SECRET_FIELDS", ()):
        return MASK
    if isinstance(value, Path):
        return str(value)
    return value


def _display_tokens(raw: str) -> str:
    entries = [t.strip() for t in raw.split(",") if t.strip()]
    try:
        ids = [token_id(d) for d in parse_token_hashes(entries)]
    except ValueError:
        return f"{MASK} ({len(entries)} tokens, malformed)"
    return f"{MASK} ({len(entries)} tokens: {', '.join(ids)})"


def effective_config(settings: BaseSettings) -> list[dict[str, Any]]:
    """Every setting with its variable, printable value, and whether it was set or defaulted."""
    cls = type(settings)
    present = {k.upper() for k in os.environ}
    rows = []
    for name in cls.model_fields:
        var = env_name(cls, name)
        source = "set" if name in settings.model_fields_set else "default"
        if source == "set" and f"{var}_FILE" in present and name in getattr(cls, "SECRET_FIELDS", ()):
            source = "file"
        rows.append({"setting": var, "value": display_value(settings, name), "source": source})
    return rows


# -- problems ----------------------------------------------------------------------------------
def is_placeholder(value: str) -> bool:
    """Template values such as ``changeme``, ``CHANGE_ME``, ``replace-me`` or ``<token>``."""
    return bool(_PLACEHOLDER.search(value.strip()))


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def problems(settings: BaseSettings) -> list[str]:
    """Everything wrong with ``settings``; stricter outside development (see module docstring)."""
    strict = getattr(settings, "environment", "development") in STRICT_ENVIRONMENTS
    found: list[str] = []
    found += _secret_problems(settings, strict)
    found += _auth_problems(settings, strict)
    found += _url_problems(settings)
    found += _backend_problems(settings, strict)
    found += _limit_problems(settings)
    found += _root_problems(settings, strict)
    return found


def _get(settings: BaseSettings, name: str) -> Any:
    return getattr(settings, name, None)


def _secret_problems(settings: BaseSettings, strict: bool) -> list[str]:
    found: list[str] = []
    for name in getattr(settings, "SECRET_FIELDS", ()):
        value = _get(settings, name)
        if not value:
            continue
        var = env_name(settings, name)
        if name == "api_tokens":
            found += _token_problems(var, str(value), strict)
        elif name in _URL_SCHEMES:
            if any(_url_has_placeholder(url) for url in split_urls(str(value))):
                found.append(f"{var}: holds a placeholder; set the real value")
        elif is_placeholder(str(value)):
            found.append(f"{var}: holds a placeholder; set the real value")
    return found


def _url_has_placeholder(url: str) -> bool:
    try:
        password = urlsplit(url).password or ""
    except ValueError:
        return False  # reported as an unparsable URL
    return is_placeholder(url) or (bool(password) and is_placeholder(password))


def _token_problems(var: str, raw: str, strict: bool) -> list[str]:
    found: list[str] = []
    entries = [t.strip() for t in raw.split(",") if t.strip()]
    try:
        parse_token_hashes(entries)
    except ValueError as exc:
        found.append(f"{var}: {exc}")
    for i, entry in enumerate(entries, 1):
        if entry.lower().startswith("sha256:"):
            continue
        if is_placeholder(entry):
            found.append(f"{var}: token #{i} is a placeholder; set a real token")
        elif strict and len(entry) < MIN_TOKEN_LENGTH:
            found.append(f"{var}: token #{i} is shorter than {MIN_TOKEN_LENGTH} characters")
    return found


def _jwt_fields(settings: BaseSettings) -> tuple[Any, Any, Any]:
    return _get(settings, "jwt_issuer"), _get(settings, "jwt_audience"), _get(settings, "jwt_jwks_file")


def _auth_problems(settings: BaseSettings, strict: bool) -> list[str]:
    found: list[str] = []
    issuer, audience, jwks = _jwt_fields(settings)
    jwt_names = ", ".join(env_name(settings, n) for n in ("jwt_issuer", "jwt_audience", "jwt_jwks_file"))
    if any((issuer, audience, jwks)) and not all((issuer, audience, jwks)):
        found.append(f"JWT validation needs all of {jwt_names}; only some are set")
    if jwks:
        try:
            load_jwks(Path(jwks))
        except ValueError as exc:
            found.append(f"{env_name(settings, 'jwt_jwks_file')}: {exc}")
    if split_scopes(_get(settings, "jwt_required_scope")) and not issuer:
        found.append(f"{env_name(settings, 'jwt_required_scope')}: set without JWT validation ({jwt_names})")
    tokens_var = env_name(settings, "api_tokens")
    has_auth = bool(str(_get(settings, "api_tokens") or "").strip()) or all((issuer, audience, jwks))
    host = str(_get(settings, "host") or "")
    if not has_auth and not is_loopback_host(host):
        found.append(f"{tokens_var}: unset while binding {host}; auth may be off only on loopback")
    elif not has_auth and strict:
        found.append(f"{tokens_var}: no API tokens and no JWT validation ({jwt_names}); set one")
    return found


def _url_problems(settings: BaseSettings) -> list[str]:
    found: list[str] = []
    for name, schemes in _URL_SCHEMES.items():
        value = _get(settings, name)
        if not value:
            continue
        for url in split_urls(str(value)):
            reason = _url_error(url, schemes)
            if reason:
                found.append(f"{env_name(settings, name)}: {reason}")
    return found


def _url_error(url: str, schemes: tuple[str, ...]) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    scheme = parts.scheme.split("+")[0].lower()
    if scheme not in schemes:
        return f"scheme must be one of {', '.join(schemes)} (got {parts.scheme or 'none'!r})"
    if scheme not in ("unix", "postgresql", "postgres") and not parts.hostname:  # libpq: socket
        return "URL has no host"
    return None


def _backend_problems(settings: BaseSettings, strict: bool) -> list[str]:
    found: list[str] = []
    role = _get(settings, "role")
    if role in ("searcher", "indexer") and not _get(settings, "nats_url"):
        found.append(f"{env_name(settings, 'nats_url')}: role {role!r} needs NATS to ship shards")
    if "database_url" in type(settings).model_fields and strict and not _get(settings, "database_url"):
        found.append(
            f"{env_name(settings, 'database_url')}: unset; {_get(settings, 'environment')} needs PostgreSQL "
            "(the embedded SQLite store serves one node only)"
        )
    lens_url = _get(settings, "lens_url")
    if strict and lens_url and not _get(settings, "lens_token"):
        host = _host_of(str(lens_url))
        if host is not None and not is_loopback_host(host):
            found.append(f"{env_name(settings, 'lens_token')}: unset while LENS_URL points at {host}")
    provider = _get(settings, "llm_provider")
    if provider:
        if provider not in ("openai", "gemini", "ollama"):
            found.append(f"{env_name(settings, 'llm_provider')}: must be openai, gemini or ollama")
        if not _get(settings, "llm_url") or not _get(settings, "llm_model"):
            found.append(
                f"{env_name(settings, 'llm_provider')}: needs {env_name(settings, 'llm_url')} "
                f"and {env_name(settings, 'llm_model')}"
            )
        host = _host_of(str(_get(settings, "llm_url") or ""))
        remote = host is not None and not is_loopback_host(host)
        if strict and provider != "ollama" and remote and not _get(settings, "llm_api_key"):
            found.append(f"{env_name(settings, 'llm_api_key')}: unset while the LLM at {host} needs a key")
    return found


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _limit_problems(settings: BaseSettings) -> list[str]:
    found: list[str] = []
    lo, hi = _get(settings, "db_pool_min"), _get(settings, "db_pool_max")
    if lo is not None and hi is not None:
        if hi < 1 or lo < 0:
            found.append(f"{env_name(settings, 'db_pool_max')}: pool sizes must be >= 0 (min) and >= 1 (max)")
        elif lo > hi:
            found.append(
                f"{env_name(settings, 'db_pool_min')}={lo} is above {env_name(settings, 'db_pool_max')}={hi}"
            )
    port = _get(settings, "port")
    if port is not None and not 1 <= port <= 65535:
        found.append(f"{env_name(settings, 'port')}: {port} is not a TCP port")
    for name in (
        "max_request_bytes",
        "max_query_length",
        "search_timeout_ms",
        "lens_timeout_s",
        "db_timeout_s",
    ):
        value = _get(settings, name)
        if value is not None and value <= 0:
            found.append(f"{env_name(settings, name)}: must be positive")
    rate = _get(settings, "rate_limit_per_minute")
    if rate is not None and rate < 0:
        found.append(f"{env_name(settings, 'rate_limit_per_minute')}: must be 0 (off) or positive")
    level = _get(settings, "log_level")
    if level is not None and str(level).upper() not in _LOG_LEVELS:
        found.append(
            f"{env_name(settings, 'log_level')}: {level!r} is not one of {', '.join(sorted(_LOG_LEVELS))}"
        )
    return found


def _root_problems(settings: BaseSettings, strict: bool) -> list[str]:
    if "allowed_roots" not in type(settings).model_fields:
        return []
    var = env_name(settings, "allowed_roots")
    raw = str(_get(settings, "allowed_roots") or "")
    if strict and not raw.strip():
        return [f"{var}: unset, so it defaults to the working directory; list the roots explicitly"]
    roots: list[Path] = settings.roots()  # type: ignore[attr-defined]
    return [f"{var}: {root} does not exist or is not a directory" for root in roots if not root.is_dir()]


# -- startup -------------------------------------------------------------------------------------
def enforce(settings: BaseSettings, log: logging.Logger) -> None:
    """Refuse to start (ConfigurationError) outside development when anything is wrong; else warn."""
    found = problems(settings)
    environment = getattr(settings, "environment", "development")
    if found and environment in STRICT_ENVIRONMENTS:
        raise ConfigurationError([f"refusing to start in {environment}: {len(found)} problem(s)", *found])
    for problem in found:
        log.warning("configuration problem: %s", problem)
