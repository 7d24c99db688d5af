"""Who is calling: static bearer tokens and JWTs (an OAuth 2.1 resource server), one answer per request.

Static tokens are kept only as SHA-256 digests and compared in constant time; operators
may configure them as ``sha256:<hex>`` so the plaintext never sits in an environment file.
JWTs are checked against a JWKS file (RS256/ES256, issuer, audience, expiry) and, when a
scope is required, their ``scope``/``scp`` claim. Refusals follow RFC 6750 and the MCP
authorization spec: 401 with a ``WWW-Authenticate`` challenge naming the protected-resource
metadata (RFC 9728), ``error="invalid_token"`` when a token was given, and 403
``insufficient_scope`` when a valid JWT lacks a required scope.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt

log = logging.getLogger("infra.auth")

ALGORITHMS = ("RS256", "ES256")
WELL_KNOWN_PATH = "/.well-known/oauth-protected-resource"
_HASH_PREFIX = "sha256:"


# -- static tokens ----------------------------------------------------------------------------
def parse_token_hashes(entries: Iterable[str]) -> list[bytes]:
    """SHA-256 digests of plaintext tokens or ``sha256:<64 hex>`` entries (raises ValueError, no value)."""
    out: list[bytes] = []
    for i, entry in enumerate(entries, 1):
        if entry.lower().startswith(_HASH_PREFIX):
            hexpart = entry[len(_HASH_PREFIX) :]
            try:
                digest = bytes.fromhex(hexpart)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ValueError(f"token #{i} starts with 'sha256:' but is not followed by 64 hex digits")
            out.append(digest)
        else:
            out.append(hashlib.sha256(entry.encode()).digest())
    return out


def token_id(digest: bytes) -> str:
    """A short public name for a token (its digest prefix), for logs and rate-limit keys."""
    return digest.hex()[:12]


def match_token(token: str, hashes: Sequence[bytes]) -> bytes | None:
    """The digest ``token`` matches, compared against every digest (no early exit on a match)."""
    digest = hashlib.sha256(token.encode()).digest()
    found: bytes | None = None
    for h in hashes:
        if hmac.compare_digest(digest, h):
            found = h
    return found


# -- JWT ----------------------------------------------------------------------------------------
def load_jwks(path: Path) -> dict[str, jwt.PyJWK]:
    """Usable RS256/ES256 keys of a JWKS file by ``kid`` ("" for a key without one); ValueError if none."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read JWKS file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"JWKS file {path} is not JSON: {exc.msg}") from exc
    raw = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise ValueError(f"JWKS file {path} has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for item in raw:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(item)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[str(item.get("kid", ""))] = key
    if not keys:
        raise ValueError(f"JWKS file {path} holds no usable RS256/ES256 signing key")
    return keys


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(str(s) for s in raw)
    return frozenset()


_JWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience does not match"),
    (jwt.InvalidIssuerError, "token issuer does not match"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
)


class JwtVerifier:
    """Validates JWTs against a JWKS file, reloading it when the file changes (key rotation)."""

    def __init__(self, issuer: str, audience: str, jwks_file: Path, *, leeway_s: float = 30.0) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks_file = jwks_file
        self.leeway_s = leeway_s
        self._lock = threading.Lock()
        self._keys = load_jwks(jwks_file)  # ValueError: a broken file at startup is a configuration error
        self._mtime = os.stat(jwks_file).st_mtime_ns

    def _current_keys(self) -> dict[str, jwt.PyJWK]:
        try:
            mtime = os.stat(self.jwks_file).st_mtime_ns
        except OSError as exc:
            log.error("JWKS file unreadable, keeping the loaded keys: %s", exc.strerror)
            return self._keys
        if mtime != self._mtime:
            with self._lock:
                try:
                    self._keys = load_jwks(self.jwks_file)
                except ValueError as exc:
                    log.error("JWKS reload failed, keeping the loaded keys: %s", exc)
                self._mtime = mtime
        return self._keys

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; raises ValueError with a short, token-free reason."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ValueError("malformed token") from exc
        keys = self._current_keys()
        kid = header.get("kid")
        key = (
            keys.get(str(kid)) if kid is not None else (next(iter(keys.values())) if len(keys) == 1 else None)
        )
        if key is None:
            raise ValueError("token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise ValueError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            reason = next((msg for kind, msg in _JWT_ERRORS if isinstance(exc, kind)), "invalid token")
            raise ValueError(reason) from exc
        return claims


# -- the decision -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    """The caller: ``id`` is ``token:<digest prefix>`` or ``jwt:<sub>``, safe to log."""

    id: str
    kind: Literal["token", "jwt"]
    scopes: frozenset[str] = frozenset()


# The caller of the request being served, for code that sees no HTTP request (MCP tool
# handlers run inside the SDK's session); set by the auth gate, None when auth is off.
CURRENT_PRINCIPAL: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


@dataclass(frozen=True)
class Denial:
    """A refusal, ready to render: status, error-envelope code and message, and the challenge."""

    status: Literal[401, 403]
    code: str
    message: str
    error: str | None = None  # RFC 6750 error code: invalid_token, insufficient_scope
    scope: str | None = None

    def challenge(self, realm: str, resource_metadata: str | None) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 section 3, MCP authorization spec)."""
        parts = [f'realm="{realm}"']
        if self.error:
            parts.append(f'error="{self.error}"')
            parts.append(f'error_description="{self.message}"')
        if self.scope:
            parts.append(f'scope="{self.scope}"')
        if resource_metadata:
            parts.append(f'resource_metadata="{resource_metadata}"')
        return "Bearer " + ", ".join(parts)


class Authenticator:
    """Accepts any configured static token or valid JWT; ``enabled`` is False when neither is set."""

    def __init__(
        self,
        tokens: Sequence[str] = (),
        verifier: JwtVerifier | None = None,
        *,
        required_scopes: Iterable[str] = (),
    ) -> None:
        self._hashes = parse_token_hashes(tokens)
        self.verifier = verifier
        self.required_scopes = frozenset(required_scopes)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes) or self.verifier is not None

    def authenticate(self, authorization: str | None) -> Principal | Denial:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Denial(401, "unauthorized", "missing or invalid bearer token", scope=self._scope_hint())
        digest = match_token(token, self._hashes)
        if digest is not None:
            return Principal(f"token:{token_id(digest)}", "token")
        if self.verifier is None or token.count(".") != 2:
            return Denial(401, "unauthorized", "invalid bearer token", error="invalid_token")
        try:
            claims = self.verifier.verify(token)
        except ValueError as exc:
            return Denial(401, "unauthorized", f"invalid bearer token: {exc}", error="invalid_token")
        scopes = _scopes(claims)
        missing = self.required_scopes - scopes
        if missing:
            return Denial(
                403,
                "insufficient_scope",
                "token lacks required scope " + " ".join(sorted(missing)),
                error="insufficient_scope",
                scope=self._scope_hint(),
            )
        return Principal(f"jwt:{claims['sub']!s}", "jwt", scopes)

    def _scope_hint(self) -> str | None:
        return " ".join(sorted(self.required_scopes)) or None


def split_scopes(raw: str | None) -> list[str]:
    """Scopes given space- or comma-separated."""
    return (raw or "").replace(",", " ").split()


def authenticator_from_settings(settings: Any) -> Authenticator:
    """Build from the ``api_tokens``/``jwt_*`` fields both services share; ValueError if misconfigured."""
    verifier = None
    if settings.jwt_issuer or settings.jwt_audience or settings.jwt_jwks_file:
        if not (settings.jwt_issuer and settings.jwt_audience and settings.jwt_jwks_file):
            raise ValueError("JWT validation needs all of jwt_issuer, jwt_audience and jwt_jwks_file")
        verifier = JwtVerifier(settings.jwt_issuer, settings.jwt_audience, Path(settings.jwt_jwks_file))
    return Authenticator(
        settings.tokens(),
        verifier,
        required_scopes=split_scopes(getattr(settings, "jwt_required_scope", None)),
    )


def protected_resource_metadata(resource: str, issuer: str, scopes: Sequence[str]) -> dict[str, Any]:
    """RFC 9728 metadata: where clients get tokens for this resource, and how to send them."""
    doc: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
    }
    if scopes:
        doc["scopes_supported"] = list(scopes)
    return doc


def request_base_url(scheme: str, headers: Iterable[tuple[bytes, bytes]], public_url: str | None) -> str:
    """The externally visible base URL: the configured public URL, else scheme and Host header."""
    if public_url:
        return public_url.rstrip("/")
    host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "localhost")
    return f"{scheme}://{host}"
