"""The Mimir REST API (FastAPI TestClient, in-process Mimir, real indexing runs)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mimir.config import MimirSettings
from mimir.lensclient import HttpLens
from mimir.serve.api import InsecureBind, create_app
from mimir.service import Mimir

pytestmark = pytest.mark.slow

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}

FILES = {
    "shop/cart.py": '''"""A shopping cart."""


class Item:
    def __init__(self, name: str, price: float) -> None:
        self.name = name
        self.price = price


class DiscountItem(Item):
    def __init__(self, name: str, price: float, discount: float) -> None:
        super().__init__(name, price * (1 - discount))


def total_price(items: list[Item]) -> float:
    """Sum of the prices of every item in the cart."""
    return round(sum(item.price for item in items), 2)


def checkout(items: list[Item]) -> str:
    total = total_price(items)
    return f"charged {total}"
''',
    "shop/tax.py": '''"""Tax rules."""

from shop.cart import total_price


def with_vat(items, rate: float = 0.2) -> float:
    return total_price(items) * (1 + rate)
''',
}


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo.parent)}
    subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        check=True,
        capture_output=True,
        env=env,
    )


def make_repo(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "initial")
    return root


def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    err: dict[str, Any] = body["error"]
    return err


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mimir-api").resolve()


@pytest.fixture(scope="module")
def settings(base: Path) -> MimirSettings:
    return MimirSettings(data_dir=base / "data", allowed_roots=str(base))


@pytest.fixture(scope="module")
def repo(base: Path) -> Path:
    return make_repo(base / "shop-repo", FILES)


@pytest.fixture(scope="module")
def mimir(settings: MimirSettings) -> Iterator[Mimir]:
    service = Mimir(settings)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def client(mimir: Mimir) -> Iterator[TestClient]:
    with TestClient(create_app(mimir)) as c:
        yield c


def wait_job(client: TestClient, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/api/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()["job"]
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.25)


@pytest.fixture(scope="module")
def index_id(client: TestClient, repo: Path) -> str:
    resp = client.post("/api/index/repository", json={"path": str(repo)})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["job"]["run_id"] and body["index_id"]
    job = wait_job(client, body["job"]["run_id"])
    assert job["state"] == "succeeded", job
    return str(body["index_id"])


# -- ops ----------------------------------------------------------------------------------
def test_health_ready_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["database"]["state"] == "ok" and checks["database"]["required"] is True
    assert checks["lens"] == {
        "state": "ok",
        "required": True,
        "seconds": checks["lens"]["seconds"],
        "mode": "in_process",
        "breaker": None,
        "latency_ms": checks["lens"]["latency_ms"],
    }
    assert checks["mcp"]["state"] == "ok"
    assert checks["queue"]["state"] == "disabled"  # embedded default: no NATS
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/api/index/repository",
        "/api/jobs/{job_id}",
        "/api/search",
        "/api/ask",
        "/api/indexes",
        "/api/indexes/{index_id}",
        "/api/indexes/{index_id}/cancel",
        "/api/lens/status",
        "/api/citations/verify",
    ):
        assert p in paths, p


def test_ready_is_503_when_lens_is_down(settings: MimirSettings) -> None:
    dead = HttpLens("http://127.0.0.1:9", connect_timeout=0.5, read_timeout=0.5, max_attempts=1)
    service = Mimir(settings, lens=dead)
    try:
        with TestClient(create_app(service)) as c:
            resp = c.get("/ready")
            assert resp.status_code == 503
            lens = resp.json()["checks"]["lens"]
            assert lens["state"] == "down" and lens["mode"] == "http" and lens["breaker"] == "closed"
            assert lens["error"]
            status = c.get("/api/lens/status").json()
            assert status["reachable"] is False
    finally:
        dead.close()


# -- indexing and research ------------------------------------------------------------------
def test_index_and_status(client: TestClient, index_id: str, repo: Path) -> None:
    listed = client.get("/api/indexes").json()["indexes"]
    assert index_id in [i["index_id"] for i in listed]
    status = client.get(f"/api/indexes/{index_id}").json()
    assert status["index"]["status"] == "ready" and status["run"]["state"] == "succeeded"
    again = client.post("/api/index/repository", json={"path": str(repo), "rev": "HEAD"})
    assert again.status_code == 202
    assert again.json()["index_id"] == index_id and again.json()["reused"] is True
    manifest = client.get(f"/api/indexes/{index_id}/manifest").json()
    assert manifest["counts"]["files"] == 2
    assert "succeeded" in client.get(f"/api/indexes/{index_id}/log").text
    bundle = client.get(f"/api/indexes/{index_id}/bundle")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zstd"
    assert len(bundle.content) == manifest["bundle"]["size"]


def test_search_ask_symbols_and_citations(client: TestClient, index_id: str) -> None:
    resp = client.post(
        "/api/search",
        json={
            "index_id": index_id,
            "query": "total price of the cart",
            "k": 5,
            "mode": "hybrid",
            "context_lines": 1,
        },
    )
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert results and results[0]["citation"].startswith("shop/")
    hit = next(r for r in results if r["symbol"] and r["symbol"]["name"] == "total_price")
    assert hit["signals"]

    ask = client.post(
        "/api/ask", json={"index_id": index_id, "question": "what calls total_price?", "max_hops": 2}
    )
    assert ask.status_code == 200, ask.text
    assert ask.json()["findings"]

    syms = client.get(f"/api/indexes/{index_id}/symbols", params={"name": "DiscountItem"}).json()
    assert syms["symbols"][0]["path"] == "shop/cart.py"
    refs = client.get(f"/api/indexes/{index_id}/references", params={"symbol": "total_price"}).json()
    assert {c["caller"]["name"] for c in refs["callers"]} >= {"checkout", "with_vat"}
    span = client.get(f"/api/indexes/{index_id}/span", params={"path": "shop/tax.py", "start": 6, "end": 7})
    assert span.json()["lines"][0].startswith("def with_vat")
    rmap = client.get(f"/api/indexes/{index_id}/repomap", params={"token_budget": 256}).json()
    assert "shop/cart.py" in rmap["text"]

    ok = client.post("/api/citations/verify", json={"citation": hit["citation"], "sha256": hit["sha256"]})
    assert ok.status_code == 200 and ok.json()["status"] == "valid", ok.text
    wrong = client.post("/api/citations/verify", json={"citation": hit["citation"], "sha256": "0" * 64})
    assert wrong.json()["status"] == "stale"


def test_error_shapes(client: TestClient, index_id: str, base: Path) -> None:
    error_of(client.post("/api/search", json={"index_id": "nope", "query": "x"}), 404, "unknown_index")
    error_of(client.get("/api/indexes/nope"), 404, "unknown_index")
    error_of(client.post("/api/indexes/nope/cancel"), 404, "unknown_index")
    error_of(client.get("/api/jobs/nope"), 404, "unknown_job")
    err = error_of(
        client.post("/api/index/repository", json={"path": str(base.parent)}), 403, "path_not_allowed"
    )
    assert err["details"]["path"] == str(base.parent)
    error_of(client.post("/api/index/repository", json={"path": str(base / "missing")}), 400, "bad_request")
    err = error_of(
        client.post("/api/search", json={"index_id": index_id, "query": "x", "k": 0}), 400, "bad_request"
    )
    assert "k" in err["message"]
    error_of(
        client.post("/api/search", json={"index_id": index_id, "query": "x", "mode": "fuzzy"}),
        400,
        "bad_request",
    )
    error_of(client.post("/api/ask", json={"index_id": index_id, "question": "   "}), 400, "bad_request")
    error_of(client.post("/api/citations/verify", json={"citation": "nonsense"}), 400, "bad_request")
    error_of(
        client.post("/api/citations/verify", json={"citation": "a.py:L1-L2@deadbeefdead"}), 404, "not_found"
    )
    error_of(
        client.get(f"/api/indexes/{index_id}/span", params={"path": "shop/x.py", "start": 1, "end": 2}),
        404,
        "not_found",
    )
    error_of(client.get("/api/nowhere"), 404, "not_found")
    error_of(client.delete("/api/search"), 405, "method_not_allowed")


def test_cancel(client: TestClient, base: Path) -> None:
    big = {
        f"pkg/mod{i}.py": "".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n" for j in range(200))
        for i in range(40)
    }
    repo = make_repo(base / "big-repo", big)
    resp = client.post("/api/index/repository", json={"path": str(repo)})
    assert resp.status_code == 202
    index_id = resp.json()["index_id"]
    cancelled = client.post(f"/api/indexes/{index_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["run"]["state"] == "cancelled"
    status = client.get(f"/api/indexes/{index_id}").json()
    assert status["index"]["status"] == "cancelled" and status["run"]["error"]["code"] == "cancelled"
    again = client.post(f"/api/indexes/{index_id}/cancel")  # idempotent
    assert again.json()["run"]["state"] == "cancelled"
    error_of(client.post("/api/search", json={"index_id": index_id, "query": "f1_1"}), 404, "unknown_index")


def test_metrics(client: TestClient, index_id: str) -> None:
    client.post("/api/search", json={"index_id": index_id, "query": "checkout"})
    text = client.get("/metrics").text
    assert 'mimir_http_requests_total{method="POST",route="/api/search",status="200"}' in text
    assert "mimir_http_request_duration_seconds_bucket" in text
    assert "mimir_mcp_tool_calls_total" in text or "# HELP mimir_mcp_tool_calls_total" in text
    assert "mimir_mcp_tool_duration_seconds" in text


# -- auth ---------------------------------------------------------------------------------
def test_bearer_tokens(mimir: Mimir, settings: MimirSettings) -> None:
    secured = settings.model_copy(update={"api_tokens": "tok-1, tok-2"})
    with TestClient(create_app(mimir, secured)) as c:
        err = error_of(c.get("/api/indexes"), 401, "unauthorized")
        assert "bearer" in err["message"]
        error_of(c.get("/api/indexes", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        error_of(c.get("/api/indexes", headers={"Authorization": "Basic tok-1"}), 401, "unauthorized")
        error_of(c.post("/mcp", json={}), 401, "unauthorized")
        assert c.get("/api/indexes", headers={"Authorization": "Bearer tok-2"}).status_code == 200
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_refuses_public_bind_without_tokens(mimir: Mimir, settings: MimirSettings) -> None:
    public = settings.model_copy(update={"host": "0.0.0.0"})
    with pytest.raises(InsecureBind, match="MIMIR_API_TOKENS"):
        create_app(mimir, public)
    create_app(mimir, public.model_copy(update={"api_tokens": "t"}))  # tokens make it acceptable
