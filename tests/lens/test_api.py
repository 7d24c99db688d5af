"""The HTTP API through FastAPI's TestClient (lifespan included), over real git repositories."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lens.engine import Lens
from lens.errors import LensError
from lens.serve.api import create_app
from support import SAMPLE_SOURCES

SAMPLE: dict[str, str | bytes] = {
    **SAMPLE_SOURCES,
    "README.md": "# Sample\n\nparse_config reads the configuration.\n",
    "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)),
}


def wait_job(client: TestClient, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()["job"]
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']} after {timeout}s: {job}"
        time.sleep(0.02)


def index_via_api(client: TestClient, path: Path, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"path": str(path)}
    if name:
        body["name"] = name
    r = client.post("/api/v1/repos", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    return job


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], dict)
    return err


@pytest.fixture
def lens(lens_factory: Callable[..., Lens]) -> Lens:
    return lens_factory()


@pytest.fixture
def client(lens: Lens) -> Iterator[TestClient]:
    with TestClient(create_app(lens)) as c:
        yield c


@pytest.fixture
def indexed(client: TestClient, make_repo: Callable[..., Path]) -> TestClient:
    repo = make_repo(SAMPLE, name="sample")
    index_via_api(client, repo)
    return client


# ---------------------------------------------------------------------------------------------- repos


def test_index_job_lifecycle(client: TestClient, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(SAMPLE, name="sample")
    r = client.post("/api/v1/repos", json={"path": str(repo)})
    assert r.status_code == 202
    job = r.json()["job"]
    assert job["repo"] == "sample"
    assert job["state"] in ("queued", "running", "succeeded")
    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded", done
    report = done["report"]
    assert report["files"] == 3
    assert report["skipped"] == {"binary": 1}
    assert report["commit"] and len(report["commit"]) == 40
    assert done["embedded"] > 0  # the job embedded chunks after indexing
    assert done["finished_at"] >= done["started_at"]

    listing = client.get("/api/v1/repos")
    assert listing.status_code == 200
    repos = listing.json()["repos"]
    assert [x["name"] for x in repos] == ["sample"]
    assert repos[0]["skipped"] == {"binary": 1}
    assert repos[0]["files"] == 3

    one = client.get("/api/v1/repos/sample")
    assert one.status_code == 200
    info = one.json()["repo"]
    assert info["commit"] == report["commit"]
    assert info["semantic"]["status"] == "ready"

    assert_error(client.get("/api/v1/jobs/nope"), 404, "not_found")
    gone = client.delete("/api/v1/repos/sample")
    assert gone.status_code == 200
    assert_error(client.get("/api/v1/repos/sample"), 404, "not_found")
    assert_error(client.delete("/api/v1/repos/sample"), 404, "not_found")
    assert client.get("/api/v1/repos").json()["repos"] == []


def test_failed_jobs_report_errors(client: TestClient, lens: Lens, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"a.py": "x = 1\n"}, name="jobs")

    def run(body: dict[str, Any]) -> dict[str, Any]:
        r = client.post("/api/v1/repos", json=body)
        assert r.status_code == 202, r.text
        return wait_job(client, r.json()["job"]["id"])

    bad_rev = run({"path": str(repo), "rev": "no-such-rev"})
    assert bad_rev["state"] == "failed"
    assert bad_rev["error"]["code"] == "bad_source"
    assert "no-such-rev" in bad_rev["error"]["message"]

    with lens.catalog.lock("jobs"):  # another writer holds the repository
        busy = run({"path": str(repo)})
    assert busy["state"] == "failed"
    assert busy["error"]["code"] == "conflict"

    # The worker survived both failures and still runs jobs.
    assert run({"path": str(repo)})["state"] == "succeeded"
    assert client.get("/ready").json()["checks"]["index_worker"]["state"] == "ok"
    assert_error(
        client.post("/api/v1/repos", json={"path": str(repo), "name": "bad/name"}), 400, "bad_request"
    )


def test_index_path_checks(
    client: TestClient,
    make_repo: Callable[..., Path],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "repo"
    outside.mkdir()
    (outside / "a.py").write_text("x = 1\n")
    assert not outside.resolve().is_relative_to(tmp_path.resolve())

    err = assert_error(client.post("/api/v1/repos", json={"path": str(outside)}), 403, "path_not_allowed")
    assert str(outside) in err["message"]

    link = tmp_path / "innocent-link"
    link.symlink_to(outside, target_is_directory=True)
    assert_error(client.post("/api/v1/repos", json={"path": str(link)}), 403, "path_not_allowed")
    # ".." that climbs out of the root is resolved before the check too.
    sneaky = tmp_path / "sub" / ".." / ".." / outside.parent.name / "repo"
    assert_error(client.post("/api/v1/repos", json={"path": str(sneaky)}), 403, "path_not_allowed")

    assert_error(
        client.post("/api/v1/repos", json={"path": str(tmp_path / "does-not-exist")}), 400, "bad_request"
    )
    assert_error(client.post("/api/v1/repos", json={}), 400, "bad_request")
    assert client.get("/api/v1/repos").json()["repos"] == []


# --------------------------------------------------------------------------------------------- search


def test_search_get_and_post(indexed: TestClient) -> None:
    r = indexed.get("/api/v1/search", params={"q": "parse_config", "context": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "parse_config"
    assert body["mode"] == "exact"
    assert body["total"] == len(body["results"]) == 3
    assert not body["truncated"] and body["next_cursor"] is None
    first = body["results"][0]
    for key in ("repo", "path", "commit", "language", "line_number", "line", "ranges", "score", "why"):
        assert key in first, key
    assert first["repo"] == "sample"
    assert len(first["commit"]) == 40
    # The definition ranks first and says why.
    assert (first["path"], first["line_number"]) == ("src/app.py", 3)
    assert first["line"] == "def parse_config(path):"
    assert first["language"] == "python"
    assert first["why"][0] == "symbol"
    s, e = first["ranges"][0]
    assert first["line"][s:e] == "parse_config"
    assert first["before"] == [""] and first["after"] == ['    """Read the configuration file."""']
    assert {(h["path"], h["line_number"]) for h in body["results"]} == {
        ("src/app.py", 3),
        ("src/app.py", 10),
        ("README.md", 3),
    }

    post = indexed.post("/api/v1/search", json={"q": "parse_config", "context": 1})
    assert post.status_code == 200
    assert post.json()["results"] == body["results"]

    only_md = indexed.get("/api/v1/search", params={"q": "parse_config lang:markdown"}).json()
    assert [(h["path"], h["language"]) for h in only_md["results"]] == [("README.md", "markdown")]


def test_pagination_with_cursor(client: TestClient, make_repo: Callable[..., Path]) -> None:
    lines = "".join(f"needle number {i}\n" for i in range(17))
    repo = make_repo({"a.txt": lines, "b.txt": lines[:60], "c.txt": "needle\nhay\nneedle\n"})
    index_via_api(client, repo, name="pages")
    full = client.get("/api/v1/search", params={"q": "needle", "limit": 1000}).json()
    everything = [(h["path"], h["line_number"]) for h in full["results"]]
    assert full["total"] == len(everything) > 20

    seen: list[tuple[str, int]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"q": "needle", "limit": 6}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/search", params=params).json()
        assert len(page["results"]) <= 6
        seen.extend((h["path"], h["line_number"]) for h in page["results"])
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
        assert page["truncated"]
        assert pages < 50
    assert len(seen) == len(set(seen)), "a hit appeared on two pages"
    assert seen == everything  # same order, nothing missing
    assert pages == -(-len(everything) // 6)

    first = client.get("/api/v1/search", params={"q": "needle", "limit": 6}).json()
    other = client.get("/api/v1/search", params={"q": "hay", "cursor": first["next_cursor"]})
    assert_error(other, 400, "bad_request")
    other_mode = client.get(
        "/api/v1/search", params={"q": "needle", "mode": "ranked", "cursor": first["next_cursor"]}
    )
    assert_error(other_mode, 400, "bad_request")
    assert_error(
        client.get("/api/v1/search", params={"q": "needle", "cursor": "garbage!"}), 400, "bad_request"
    )
    post = client.post("/api/v1/search", json={"q": "needle", "limit": 6, "cursor": first["next_cursor"]})
    assert [(h["path"], h["line_number"]) for h in post.json()["results"]] == everything[6:12]


@pytest.mark.parametrize(
    ("query", "position"),
    [
        ("foo (bar", 4),
        ("/a(/", 0),
        ("foo:bar", 0),
        ("", 0),
        ("   ", 0),
        ("x" * 4097, 4096),
    ],
    ids=["unbalanced", "bad-regex", "unknown-filter", "empty", "blank", "too-long"],
)
def test_bad_query_is_400_with_position(indexed: TestClient, query: str, position: int) -> None:
    for r in (
        indexed.get("/api/v1/search", params={"q": query}),
        indexed.post("/api/v1/search", json={"q": query}),
    ):
        err = assert_error(r, 400, "bad_query")
        assert err["details"]["position"] == position
        assert isinstance(err["details"]["position"], int)


def test_request_errors(indexed: TestClient) -> None:
    for limit in (0, 5000, -1):
        assert_error(indexed.get("/api/v1/search", params={"q": "x", "limit": limit}), 400, "bad_request")
        assert_error(indexed.post("/api/v1/search", json={"q": "x", "limit": limit}), 400, "bad_request")
    assert_error(indexed.get("/api/v1/search", params={"q": "x", "context": 99}), 400, "bad_request")
    assert_error(indexed.get("/api/v1/search", params={"q": "x", "mode": "fuzzy"}), 400, "bad_request")
    assert_error(indexed.get("/api/v1/search"), 400, "bad_request")  # q missing
    err = assert_error(indexed.post("/api/v1/search", json={"q": "x", "repos": ["nope"]}), 400, "bad_request")
    assert "nope" in err["message"]
    assert_error(indexed.get("/api/v1/search", params={"q": "x", "repo": "nope"}), 400, "bad_request")
    r = indexed.post("/api/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, "bad_request")
    assert_error(indexed.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(indexed.get("/no/such/route"), 404, "not_found")


def test_catastrophic_regex_is_linear(client: TestClient, make_repo: Callable[..., Path]) -> None:
    evil = "a" * 40 + "b\n"
    content = evil * 300 + "a" * 40 + "\n" + evil * 10 + "aaaa\n"
    repo = make_repo({"evil.txt": content})
    index_via_api(client, repo, name="evil")
    r = client.get("/api/v1/search", params={"q": "/(a+)+$/", "limit": 1000, "timeout_ms": 5000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["timed_out"]
    assert [h["line_number"] for h in body["results"]] == [301, 312]
    assert body["total"] == 2
    assert body["results"][0]["ranges"] == [[0, 40]]


# ----------------------------------------------------------------------------------------------- auth


def test_bearer_auth(lens_factory: Callable[..., Lens], make_repo: Callable[..., Path]) -> None:
    lens = lens_factory(api_tokens="s3cret, other-token")
    lens.index(make_repo({"a.py": "token_guarded = 1\n"}), name="a")
    with TestClient(create_app(lens)) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
        ):
            r = client.get("/api/v1/search", params={"q": "token_guarded"}, headers=headers)
            assert_error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert_error(client.get("/api/v1/repos", headers=headers), 401, "unauthorized")
        ok = client.get(
            "/api/v1/search", params={"q": "token_guarded"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert ok.json()["total"] == 1
        assert client.get("/api/v1/repos", headers={"Authorization": "bearer other-token"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_refuses_public_bind_without_tokens(lens_factory: Callable[..., Lens]) -> None:
    with pytest.raises(LensError, match="LENS_API_TOKENS"):
        create_app(lens_factory(host="0.0.0.0"))
    create_app(lens_factory(host="0.0.0.0", api_tokens="t"))  # with a token it is allowed
    create_app(lens_factory(host="::1"))  # loopback without tokens is fine


# ------------------------------------------------------------------------------------- files, symbols


def test_files_endpoint(indexed: TestClient) -> None:
    r = indexed.get("/api/v1/repos/sample/files/src/app.py", params={"start": 3, "end": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["lines"] == ["def parse_config(path):", '    """Read the configuration file."""']
    assert (body["start"], body["end"], body["total_lines"]) == (3, 4, 10)
    assert body["path"] == "src/app.py" and body["language"] == "python"
    assert len(body["sha256"]) == 64 and len(body["commit"]) == 40
    whole = indexed.get("/api/v1/repos/sample/files/src/util.py").json()
    assert whole["lines"] == ["def helper_function(x):", "    return x + 1"]

    assert_error(
        indexed.get("/api/v1/repos/sample/files/src/app.py", params={"start": 0}), 400, "bad_request"
    )
    bad = indexed.get("/api/v1/repos/sample/files/src/app.py", params={"start": 5, "end": 2})
    assert_error(bad, 400, "bad_request")
    assert_error(indexed.get("/api/v1/repos/sample/files/missing.py"), 404, "not_found")
    assert_error(indexed.get("/api/v1/repos/other/files/src/app.py"), 404, "not_found")
    assert_error(indexed.get("/api/v1/repos/sample/files/logo.png"), 404, "not_found")  # skipped binary


def test_symbols_endpoint(indexed: TestClient) -> None:
    r = indexed.get("/api/v1/repos/sample/symbols", params={"q": "parse"})
    assert r.status_code == 200, r.text
    syms = r.json()["symbols"]
    assert [(s["name"], s["kind"], s["path"], s["line"]) for s in syms] == [
        ("parse_config", "function", "src/app.py", 3)
    ]
    loader = indexed.get("/api/v1/repos/sample/symbols", params={"q": "ConfigLoader"}).json()["symbols"]
    assert loader[0]["name"] == "ConfigLoader" and loader[0]["kind"] == "class"
    assert indexed.get("/api/v1/repos/sample/symbols", params={"q": "zzz"}).json()["symbols"] == []
    assert_error(indexed.get("/api/v1/repos/sample/symbols", params={"q": ""}), 400, "bad_request")
    assert_error(indexed.get("/api/v1/repos/nope/symbols", params={"q": "x"}), 404, "not_found")


# ------------------------------------------------------------------------------------------------ ops


def _sample_value(text: str, metric: str, sample: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_ops_endpoints(indexed: TestClient) -> None:
    assert indexed.get("/health").json() == {"status": "ok"}
    ready = indexed.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["data_dir"]["state"] == "ok"
    assert body["checks"]["data_dir"]["repos"] == 1
    assert body["checks"]["index_worker"]["state"] == "ok"

    route = {"route": "/api/v1/search", "method": "GET", "status": "200"}
    before = indexed.get("/metrics").text
    n_req = _sample_value(before, "lens_http_requests", "lens_http_requests_total", route)
    n_search = _sample_value(
        before, "lens_search_duration_seconds", "lens_search_duration_seconds_count", {"mode": "exact"}
    )
    assert indexed.get("/api/v1/search", params={"q": "helper_function"}).status_code == 200
    metrics = indexed.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert "lens_http_requests_total" in text
    assert "lens_search_duration_seconds" in text
    assert _sample_value(text, "lens_http_requests", "lens_http_requests_total", route) == n_req + 1
    assert (
        _sample_value(
            text, "lens_search_duration_seconds", "lens_search_duration_seconds_count", {"mode": "exact"}
        )
        == n_search + 1
    )
    # Requests are labelled by route template, never by raw path (bounded label cardinality).
    indexed.get("/api/v1/repos/sample/files/src/util.py")
    text = indexed.get("/metrics").text
    assert 'route="/api/v1/repos/{name}/files/{path:path}"' in text
    assert 'route="/api/v1/repos/sample/files/src/util.py"' not in text

    spec = indexed.get("/openapi.json").json()
    for path in (
        "/api/v1/search",
        "/api/v1/repos",
        "/api/v1/repos/{name}",
        "/api/v1/jobs/{job_id}",
        "/api/v1/repos/{name}/files/{path}",
        "/api/v1/repos/{name}/symbols",
        "/health",
        "/ready",
    ):
        assert path in spec["paths"], path
    assert {"get", "post"} <= set(spec["paths"]["/api/v1/search"])


# ---------------------------------------------------------------------------------------------- modes


def test_search_modes(indexed: TestClient) -> None:
    ranked = indexed.get("/api/v1/search", params={"q": "configuration", "mode": "ranked"}).json()
    assert ranked["mode"] == "ranked"
    assert ranked["results"], ranked
    assert all(h["why"] == ["bm25"] for h in ranked["results"])
    assert all(h["start_line"] is not None and h["end_line"] >= h["start_line"] for h in ranked["results"])
    scores = [h["score"] for h in ranked["results"]]
    assert scores == sorted(scores, reverse=True)

    # The job embedded everything before it reported success, so semantic search is complete.
    semantic = indexed.get("/api/v1/search", params={"q": "helper function", "mode": "semantic"}).json()
    assert semantic["semantic"]["status"] == "ready", semantic
    assert semantic["semantic"]["embedded"] == semantic["semantic"]["total"] > 0
    assert semantic["warnings"] == []
    assert semantic["results"][0]["path"] == "src/util.py"
    assert "semantic" in semantic["results"][0]["why"]

    hybrid = indexed.post("/api/v1/search", json={"q": "parse_config", "mode": "hybrid"}).json()
    assert hybrid["semantic"]["status"] == "ready"
    top = hybrid["results"][0]
    assert (top["path"], top["line_number"]) == ("src/app.py", 3)
    assert {"bm25", "semantic", "symbol"} <= set(top["why"])
    assert set(top["signals"]) >= {"bm25", "semantic", "symbol"}

    exact = indexed.get("/api/v1/search", params={"q": "parse_config"}).json()
    assert exact["semantic"] is None


def test_semantic_not_configured(lens_factory: Callable[..., Lens], make_repo: Callable[..., Path]) -> None:
    lens = lens_factory(embed=False)
    with TestClient(create_app(lens)) as client:
        index_via_api(client, make_repo({"a.py": "def f():\n    return 1\n"}), name="a")
        assert client.get("/api/v1/repos/a").json()["repo"]["semantic"]["status"] == "disabled"
        for mode in ("semantic", "hybrid"):
            err = assert_error(
                client.get("/api/v1/search", params={"q": "f", "mode": mode}), 400, "bad_request"
            )
            assert "not configured" in err["message"]
        assert client.get("/api/v1/search", params={"q": "return", "mode": "ranked"}).json()["results"]
