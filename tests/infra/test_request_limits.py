"""Request limits on both services: 413 for oversized bodies (announced or streamed), 400 for long queries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lens.engine import Lens
from lens.serve.api import create_app as create_lens_app
from mimir.config import MimirSettings
from mimir.serve.api import create_app as create_mimir_app
from mimir.service import Mimir

BASE = "http://127.0.0.1:8000"
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert body["code"] == code, body
    return body


def chunks(payload: bytes, size: int = 64) -> Iterator[bytes]:
    """A body sent chunked, with no Content-Length to trust."""
    for i in range(0, len(payload), size):
        yield payload[i : i + size]


@pytest.fixture
def lens_client(lens_factory: Callable[..., Lens]) -> Iterator[TestClient]:
    with TestClient(create_lens_app(lens_factory(max_request_bytes=300, max_query_length=50))) as c:
        yield c


def test_lens_refuses_large_bodies(lens_client: TestClient) -> None:
    big = json.dumps({"q": "x", "repos": ["r" * 400]}).encode()
    headers = {"Content-Type": "application/json"}
    error(lens_client.post("/api/v1/search", content=big, headers=headers), 413, "too_large")
    error(lens_client.post("/api/v1/search", content=chunks(big), headers=headers), 413, "too_large")
    error(lens_client.post("/api/v1/repos", json={"path": "/" + "p" * 400}), 413, "too_large")
    small = lens_client.post("/api/v1/search", content=chunks(b'{"q": "fits"}'), headers=headers)
    assert small.status_code == 200, small.text


def test_lens_refuses_long_queries(lens_client: TestClient) -> None:
    long = "a" * 51
    err = error(lens_client.get("/api/v1/search", params={"q": long}), 400, "bad_query")
    assert "too long" in err["message"]
    error(lens_client.post("/api/v1/search", json={"q": long}), 400, "bad_query")
    assert lens_client.get("/api/v1/search", params={"q": "a" * 50}).status_code == 200


def test_lens_authenticates_before_reading_the_body(lens_factory: Callable[..., Lens]) -> None:
    app = create_lens_app(lens_factory(max_request_bytes=100, api_tokens="a-token-of-some-length"))
    with TestClient(app) as client:
        big = {"q": "x" * 500}
        error(client.post("/api/v1/search", json=big), 401, "unauthorized")
        auth = {"Authorization": "Bearer a-token-of-some-length"}
        error(client.post("/api/v1/search", json=big, headers=auth), 413, "too_large")


@pytest.fixture(scope="module")
def mimir_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    base = tmp_path_factory.mktemp("mimir-limits")
    settings = MimirSettings(
        data_dir=base / "data", allowed_roots=str(base), max_request_bytes=400, max_query_length=20
    )
    service = Mimir(settings)
    try:
        with TestClient(create_mimir_app(service), base_url=BASE) as client:
            yield client
    finally:
        service.close()


def test_mimir_refuses_large_bodies(mimir_client: TestClient) -> None:
    big = json.dumps({"index_id": "i", "query": "q", "pad": "x" * 500}).encode()
    headers = {"Content-Type": "application/json"}
    error(mimir_client.post("/api/search", content=big, headers=headers), 413, "too_large")
    error(mimir_client.post("/api/search", content=chunks(big), headers=headers), 413, "too_large")
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "search_repo", "arguments": {"index_id": "i", "query": "q" * 500}},
    }
    payload = json.dumps(call).encode()
    error(mimir_client.post("/mcp", content=payload, headers=MCP_HEADERS), 413, "too_large")
    error(mimir_client.post("/mcp", content=chunks(payload), headers=MCP_HEADERS), 413, "too_large")
    small = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}).encode()
    listed = mimir_client.post("/mcp", content=chunks(small), headers=MCP_HEADERS)
    assert listed.status_code == 200 and "search_repo" in listed.text


def test_mimir_refuses_long_queries_and_questions(mimir_client: TestClient) -> None:
    err = error(
        mimir_client.post("/api/search", json={"index_id": "i", "query": "q" * 21}), 400, "bad_request"
    )
    assert "query is too long (21 characters, at most 20)" in err["message"]
    err = error(
        mimir_client.post("/api/ask", json={"index_id": "i", "question": "w" * 21}), 400, "bad_request"
    )
    assert "question is too long" in err["message"]
    # Within the limit the request goes through to the service (which knows no such index).
    error(
        mimir_client.post("/api/search", json={"index_id": "nope", "query": "q" * 20}), 404, "unknown_index"
    )
