"""Authentication through the real apps: static tokens (plain and sha256:), JWTs from a JWKS file,
the OAuth resource-server challenges on Lens, Mimir's REST routes and /mcp, and per-caller rate limits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Request
from fastapi.testclient import TestClient
from redis_server import delete_prefix, fresh_prefix, shared_redis_url

from infra.auth import Authenticator, Denial, JwtVerifier, Principal, parse_token_hashes, token_id
from lens.engine import Lens
from lens.serve import metrics as lens_metrics
from lens.serve.api import create_app as create_lens_app
from lens.serve.http_common import UnsafeConfiguration
from mimir.config import MimirSettings
from mimir.serve.api import create_app as create_mimir_app
from mimir.service import Mimir

ISSUER = "https://auth.test.invalid/"
AUDIENCE = "https://mimir.test.invalid"
STATIC = "static-token-0123456789abcdef"
BASE = "http://127.0.0.1:8000"  # Mimir's DNS-rebinding guard accepts loopback Host headers only
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


class Keys:
    """An RSA and an EC signing key published in a JWKS file, plus an unpublished impostor key."""

    def __init__(self, directory: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk |= {"kid": "rsa-1", "use": "sig", "alg": "RS256"}
        ec_jwk |= {"kid": "ec-1", "use": "sig", "alg": "ES256"}
        self.jwks_file = directory / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))

    def token(self, *, key: str = "rsa", **claims: Any) -> str:
        """A signed JWT; a claim given as None is left out."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "scope": "mimir:read lens:search",
        }
        body = {k: v for k, v in (body | claims).items() if v is not None}
        if key == "ec":
            return jwt.encode(body, self.ec, algorithm="ES256", headers={"kid": "ec-1"})
        signer = self.impostor if key == "impostor" else self.rsa
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwks"))


def auth_settings(keys: Keys, **extra: Any) -> dict[str, Any]:
    sha = "sha256:" + hashlib.sha256(STATIC.encode()).hexdigest()
    return {
        "api_tokens": f"{sha}, second-token-abcdefghijkl",
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_jwks_file": keys.jwks_file,
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert body["code"] == code, body
    return body


# -- the authenticator alone ---------------------------------------------------------------
def test_tokens_are_kept_hashed_and_sha256_entries_match_their_plaintext() -> None:
    sha = "sha256:" + hashlib.sha256(b"plain-token-value").hexdigest()
    assert parse_token_hashes([sha]) == parse_token_hashes(["plain-token-value"])
    auth = Authenticator([sha])
    ok = auth.authenticate("Bearer plain-token-value")
    assert isinstance(ok, Principal) and ok.kind == "token"
    assert ok.id == "token:" + token_id(hashlib.sha256(b"plain-token-value").digest())
    assert "plain-token-value" not in repr(vars(auth))
    assert isinstance(auth.authenticate("Bearer " + sha), Denial)  # the digest is not a password
    with pytest.raises(ValueError, match="token #2") as caught:
        parse_token_hashes(["fine", "sha256:nothex-secretish"])
    assert "secretish" not in str(caught.value)


# -- Lens -----------------------------------------------------------------------------------
@pytest.fixture
def lens_client(lens_factory: Callable[..., Lens], keys: Keys) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**extra: Any) -> TestClient:
        app = create_lens_app(lens_factory(**auth_settings(keys, **extra)))

        @app.get("/whoami")
        def whoami(request: Request) -> dict[str, Any]:
            principal = request.state.principal
            return {"id": principal.id, "scopes": sorted(principal.scopes)}

        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for c in clients:
            c.__exit__(None, None, None)


def test_lens_accepts_static_tokens_and_jwts(lens_client: Callable[..., TestClient], keys: Keys) -> None:
    client = lens_client(jwt_required_scope="lens:search")
    who = client.get("/whoami", headers=bearer(STATIC))
    assert who.status_code == 200 and who.json()["id"].startswith("token:")
    assert client.get("/api/v1/repos", headers=bearer("second-token-abcdefghijkl")).status_code == 200
    assert client.get("/whoami", headers=bearer(keys.token())).json() == {
        "id": "jwt:alice",
        "scopes": ["lens:search", "mimir:read"],
    }
    ec_token = keys.token(key="ec", scope=None, scp=["lens:search"], sub="bob")
    assert client.get("/whoami", headers=bearer(ec_token)).json()["id"] == "jwt:bob"
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "https://other.invalid"}, "audience"),
        ({"iss": "https://evil.invalid/"}, "issuer"),
        ({"key": "impostor"}, "signature"),
        ({"sub": None}, "'sub'"),
    ],
)
def test_lens_rejects_bad_jwts(
    lens_client: Callable[..., TestClient], keys: Keys, claims: dict[str, Any], reason: str
) -> None:
    client = lens_client()
    token = keys.token(**claims)
    resp = client.get("/api/v1/repos", headers=bearer(token))
    err = error(resp, 401, "unauthorized")
    assert reason in err["message"]
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="lens"') and 'error="invalid_token"' in challenge
    assert token not in resp.text


def test_lens_challenges(lens_client: Callable[..., TestClient], keys: Keys) -> None:
    client = lens_client(jwt_required_scope="lens:admin")
    missing = client.get("/api/v1/repos")
    error(missing, 401, "unauthorized")
    assert "error=" not in missing.headers["WWW-Authenticate"]  # RFC 6750: no error without a token
    assert 'scope="lens:admin"' in missing.headers["WWW-Authenticate"]
    error(client.get("/api/v1/repos", headers=bearer("not-a-known-token")), 401, "unauthorized")
    denied = client.get("/api/v1/repos", headers=bearer(keys.token()))
    err = error(denied, 403, "insufficient_scope")
    assert "lens:admin" in err["message"]
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    # Static tokens are operator credentials: not scoped.
    assert client.get("/api/v1/repos", headers=bearer(STATIC)).status_code == 200


def test_lens_rate_limit_per_token(lens_client: Callable[..., TestClient], keys: Keys) -> None:
    client = lens_client(rate_limit_per_minute=2)
    for _ in range(2):
        assert client.get("/api/v1/repos", headers=bearer(STATIC)).status_code == 200
    refused_before = lens_metrics.RATE_LIMITED._value.get()
    limited = client.get("/api/v1/repos", headers=bearer(STATIC))
    err = error(limited, 429, "rate_limited")
    assert lens_metrics.RATE_LIMITED._value.get() == refused_before + 1
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 and err["details"]["limit"] == 2
    # Another caller has its own budget; public paths are never limited.
    assert client.get("/api/v1/repos", headers=bearer(keys.token())).status_code == 200
    assert client.get("/health").status_code == 200


def test_rate_limit_by_address_when_auth_is_off(lens_factory: Callable[..., Lens]) -> None:
    with TestClient(create_lens_app(lens_factory(rate_limit_per_minute=1))) as client:
        assert client.get("/api/v1/repos").status_code == 200
        error(client.get("/api/v1/repos"), 429, "rate_limited")


def test_rate_limit_is_shared_through_redis(lens_factory: Callable[..., Lens]) -> None:
    url, prefix = shared_redis_url(), fresh_prefix()
    settings = {"redis_url": url, "nats_namespace": prefix, "rate_limit_per_minute": 3, "api_tokens": STATIC}
    try:
        with (
            TestClient(create_lens_app(lens_factory(**settings))) as one,
            TestClient(create_lens_app(lens_factory(**settings))) as two,
        ):
            codes = [c.get("/api/v1/repos", headers=bearer(STATIC)).status_code for c in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]
    finally:
        delete_prefix(url, prefix)


# -- Mimir ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mimir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mimir]:
    base = tmp_path_factory.mktemp("mimir-auth")
    service = Mimir(MimirSettings(data_dir=base / "data", allowed_roots=str(base)))
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def mimir_client(mimir: Mimir, keys: Keys) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**extra: Any) -> TestClient:
        settings = mimir.settings.model_copy(update=auth_settings(keys, **extra))
        app = create_mimir_app(mimir, settings)

        @app.get("/whoami")
        def whoami(request: Request) -> dict[str, str]:
            return {"id": request.state.principal.id}

        client = TestClient(app, base_url=BASE)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for c in clients:
            c.__exit__(None, None, None)


def test_mimir_rest_and_mcp_accept_tokens_and_jwts(
    mimir_client: Callable[..., TestClient], keys: Keys
) -> None:
    client = mimir_client(jwt_required_scope="mimir:read")
    for headers in (bearer(STATIC), bearer(keys.token()), bearer(keys.token(key="ec"))):
        assert client.get("/api/indexes", headers=headers).status_code == 200
        listed = client.post("/mcp", json=TOOLS_LIST, headers={**MCP_HEADERS, **headers})
        assert listed.status_code == 200 and "search_repo" in listed.text
    assert client.get("/whoami", headers=bearer(keys.token(sub="carol"))).json() == {"id": "jwt:carol"}


def test_mimir_is_an_oauth_resource_server(mimir_client: Callable[..., TestClient], keys: Keys) -> None:
    client = mimir_client(jwt_required_scope="mimir:read")
    metadata_url = f"{BASE}/.well-known/oauth-protected-resource"
    meta = client.get("/.well-known/oauth-protected-resource")
    assert meta.status_code == 200
    assert meta.json() == {
        "resource": BASE,
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mimir:read"],
    }
    for path, call in (
        ("/api/indexes", lambda h: client.get("/api/indexes", headers=h)),
        ("/mcp", lambda h: client.post("/mcp", json=TOOLS_LIST, headers={**MCP_HEADERS, **h})),
    ):
        none = call({})
        error(none, 401, "unauthorized")
        assert none.headers["WWW-Authenticate"] == (
            f'Bearer realm="mimir", scope="mimir:read", resource_metadata="{metadata_url}"'
        ), path
        for bad in (
            keys.token(exp=int(time.time()) - 3600),
            keys.token(aud="https://lens.test.invalid"),
            keys.token(iss="https://evil.invalid/"),
            keys.token(key="impostor"),
        ):
            resp = call(bearer(bad))
            error(resp, 401, "unauthorized")
            challenge = resp.headers["WWW-Authenticate"]
            assert 'error="invalid_token"' in challenge and f'resource_metadata="{metadata_url}"' in challenge
        scoped = call(bearer(keys.token(scope="other:scope")))
        error(scoped, 403, "insufficient_scope")
        challenge = scoped.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="mimir:read"' in challenge
        assert f'resource_metadata="{metadata_url}"' in challenge


def test_mimir_public_url_names_the_resource(mimir_client: Callable[..., TestClient]) -> None:
    client = mimir_client(public_url="https://mimir.example.com/")
    assert client.get("/.well-known/oauth-protected-resource").json()["resource"] == (
        "https://mimir.example.com"
    )
    challenge = client.get("/api/indexes").headers["WWW-Authenticate"]
    assert 'resource_metadata="https://mimir.example.com/.well-known/oauth-protected-resource"' in challenge


def test_mimir_without_jwt_serves_no_resource_metadata(mimir: Mimir) -> None:
    settings = mimir.settings.model_copy(update={"api_tokens": STATIC})
    with TestClient(create_mimir_app(mimir, settings), base_url=BASE) as client:
        assert client.get("/.well-known/oauth-protected-resource").status_code == 404
        challenge = client.get("/api/indexes").headers["WWW-Authenticate"]
        assert challenge == 'Bearer realm="mimir"'


def test_mimir_rate_limit(mimir_client: Callable[..., TestClient], keys: Keys) -> None:
    client = mimir_client(rate_limit_per_minute=1)
    assert client.get("/api/indexes", headers=bearer(STATIC)).status_code == 200
    limited = client.post("/mcp", json=TOOLS_LIST, headers={**MCP_HEADERS, **bearer(STATIC)})
    error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert client.get("/api/indexes", headers=bearer(keys.token())).status_code == 200


def test_a_missing_jwks_file_stops_startup_in_development_too(
    lens_factory: Callable[..., Lens], tmp_path: Path
) -> None:
    settings = {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwt_jwks_file": tmp_path / "missing.json"}
    with pytest.raises(UnsafeConfiguration, match="cannot read JWKS file"):
        create_lens_app(lens_factory(**settings))


def test_jwks_rotation_is_picked_up(keys: Keys, tmp_path: Path) -> None:
    jwks = tmp_path / "rotating.json"
    jwks.write_text(keys.jwks_file.read_text())
    auth = Authenticator(verifier=JwtVerifier(ISSUER, AUDIENCE, jwks))
    assert isinstance(auth.authenticate("Bearer " + keys.token()), Principal)
    published = json.loads(jwks.read_text())
    published["keys"] = [k for k in published["keys"] if k["kid"] != "rsa-1"]
    jwks.write_text(json.dumps(published))
    os.utime(jwks, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    denied = auth.authenticate("Bearer " + keys.token())
    assert isinstance(denied, Denial) and "unknown key" in denied.message
    assert isinstance(auth.authenticate("Bearer " + keys.token(key="ec")), Principal)
