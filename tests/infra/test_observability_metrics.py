"""Metrics both services export: route templates, request ids, the Lens client, index runs, N workers.

The multi-worker test is the real thing: ``lens serve --workers 2`` in prometheus_client
multiprocess mode, where every scrape (whichever worker answers it) must report exactly
the requests made.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.mmap_dict import MmapedDict
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from infra.observability.http import request_id_from, route_template
from infra.observability.metrics import UNMATCHED_ROUTE, HttpMetrics
from lens.config import LensSettings
from lens.serve import metrics as lens_metrics
from lens.serve.api import create_app
from mimir.breaker import CircuitBreaker
from mimir.lensclient import HttpLens, LensRequestError, LensUnavailable, fallback_ready
from mimir.serve import metrics as mimir_metrics
from mimir.store import RunRecord
from support import free_port

SRC = Path(__file__).resolve().parents[2] / "src"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- route templates and request ids -------------------------------------------------------
def _ok(_: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


ROUTES = [
    Route("/api/indexes/{index_id}", _ok, methods=["GET"]),
    Route("/api/repos/{name}/files/{path:path}", _ok),
    Mount("/mcp", app=Starlette()),
]


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", "/api/indexes/abc-123", "/api/indexes/{index_id}"),
        ("DELETE", "/api/indexes/abc-123", "/api/indexes/{index_id}"),  # 405, still the template
        ("GET", "/api/repos/r/files/a/b/c.py", "/api/repos/{name}/files/{path:path}"),
        ("POST", "/mcp/anything/below", "/mcp"),
        ("GET", "/wp-admin/../../etc/passwd", UNMATCHED_ROUTE),
    ],
)
def test_route_template_is_bounded(method: str, path: str, template: str) -> None:
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    assert route_template(ROUTES, scope) == template


def test_request_id_is_taken_only_when_sane() -> None:
    assert request_id_from([(b"x-request-id", b"abc-123.4:5_6")]) == "abc-123.4:5_6"
    fresh = request_id_from([(b"x-request-id", b"evil\nheader injection")])
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert request_id_from([]) != request_id_from([])


# -- the Lens app, in process ---------------------------------------------------------------------
@pytest.fixture
def lens_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = LensSettings(data_dir=tmp_path / "lens", allowed_roots=str(tmp_path), embed=False)
    with TestClient(create_app(settings=settings)) as client:
        yield client


def test_requests_are_counted_by_template_and_status(lens_client: TestClient) -> None:
    route = "/api/v1/repos/{name}"
    before = sample("lens_http_requests_total", route=route, method="GET", status="404")
    before_hist = sample("lens_http_request_duration_seconds_count", route=route, method="GET", status="404")
    for name in ("one", "two", "three"):
        resp = lens_client.get(f"/api/v1/repos/{name}", headers={"X-Request-ID": f"req-{name}"})
        assert resp.status_code == 404
        assert resp.headers["x-request-id"] == f"req-{name}"
    assert sample("lens_http_requests_total", route=route, method="GET", status="404") == before + 3
    after_hist = sample("lens_http_request_duration_seconds_count", route=route, method="GET", status="404")
    assert after_hist == before_hist + 3
    unmatched = sample("lens_http_requests_total", route=UNMATCHED_ROUTE, method="GET", status="404")
    assert lens_client.get("/no/such/path/42").status_code == 404
    assert (
        sample("lens_http_requests_total", route=UNMATCHED_ROUTE, method="GET", status="404") == unmatched + 1
    )
    text = lens_client.get("/metrics").text
    assert 'route="/api/v1/repos/one"' not in text and "/no/such/path" not in text
    assert sample("lens_http_requests_in_flight") == 0
    assert re.search(r'lens_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0', text)
    assert "lens_shards 0.0" in text


def test_refused_requests_are_counted_too(tmp_path: Path) -> None:
    settings = LensSettings(data_dir=tmp_path / "lens", api_tokens="s3cret", embed=False)
    labels = {"route": "/api/v1/repos", "method": "GET", "status": "401"}
    before = sample("lens_http_requests_total", **labels)
    with TestClient(create_app(settings=settings)) as client:
        resp = client.get("/api/v1/repos")
    assert resp.status_code == 401 and resp.headers["x-request-id"]
    assert sample("lens_http_requests_total", **labels) == before + 1


# -- Mimir: the Lens client ------------------------------------------------------------------------
def _lens(handler: httpx.MockTransport, breaker: CircuitBreaker | None = None) -> HttpLens:
    return HttpLens(
        "http://127.0.0.1:9", transport=handler, backoff_base=0.0, backoff_cap=0.0, breaker=breaker
    )


def test_lens_calls_are_counted_once_each() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/missing"):
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no", "details": {}}})
        if request.url.path.endswith("/down"):
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json={"repo": {"name": "r"}})

    lens = _lens(httpx.MockTransport(answer), CircuitBreaker(name="lens", failure_threshold=100))
    calls = {r: sample("mimir_lens_calls_total", result=r) for r in ("success", "failure", "fallback")}
    ok = sample("mimir_lens_requests_total", operation="repo", outcome="ok")
    refused = sample("mimir_lens_requests_total", operation="repo", outcome="error")
    down = sample("mimir_lens_requests_total", operation="repo", outcome="unavailable")
    retries = sample("mimir_lens_retries_total", operation="repo")
    timed = sample("mimir_lens_request_duration_seconds_count", operation="repo")

    assert lens.repo("r") == {"name": "r"}
    with pytest.raises(LensRequestError):
        lens.repo("missing")  # Lens answered: a success for the integration
    with pytest.raises(LensUnavailable):
        lens.repo("down")  # 3 attempts, 2 retries, the error reaches the caller
    with fallback_ready(), pytest.raises(LensUnavailable):
        lens.repo("down")  # the caller answers from stored snippets instead

    assert sample("mimir_lens_requests_total", operation="repo", outcome="ok") == ok + 1
    assert sample("mimir_lens_requests_total", operation="repo", outcome="error") == refused + 1
    assert sample("mimir_lens_requests_total", operation="repo", outcome="unavailable") == down + 2
    assert sample("mimir_lens_retries_total", operation="repo") == retries + 4
    assert sample("mimir_lens_request_duration_seconds_count", operation="repo") == timed + 4
    assert sample("mimir_lens_calls_total", result="success") == calls["success"] + 2
    assert sample("mimir_lens_calls_total", result="failure") == calls["failure"] + 1
    assert sample("mimir_lens_calls_total", result="fallback") == calls["fallback"] + 1


def test_circuit_state_and_transitions_are_exported() -> None:
    seen: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        name="lens", failure_threshold=1, reset_timeout=60.0, on_state_change=lambda o, n: seen.append((o, n))
    )
    lens = _lens(httpx.MockTransport(lambda _: httpx.Response(502, text="bad gateway")), breaker)
    assert sample("mimir_lens_circuit_state") == 0
    opened = sample("mimir_lens_circuit_transitions_total", from_state="closed", to_state="open")
    with pytest.raises(LensUnavailable):
        lens.repo("r")
    assert sample("mimir_lens_circuit_state") == 2
    assert sample("mimir_lens_circuit_transitions_total", from_state="closed", to_state="open") == opened + 1
    assert seen == [("closed", "open")]  # a listener the caller installed still hears it
    rejected = sample("mimir_lens_requests_total", operation="repo", outcome="rejected_open")
    with pytest.raises(LensUnavailable):
        lens.repo("r")
    assert sample("mimir_lens_requests_total", operation="repo", outcome="rejected_open") == rejected + 1
    breaker.reset()
    assert sample("mimir_lens_circuit_state") == 0


def test_finished_runs_are_recorded_with_their_stages() -> None:
    stages = [
        {"stage": "acquire", "seconds": 0.2, "status": "succeeded"},
        {"stage": "repomap", "seconds": 1.5, "status": "succeeded"},
        {"stage": "symbols", "seconds": None, "status": "running"},  # the stage it died in
    ]
    run = RunRecord("r1", "idx", "failed", "symbols", 20.0, "", None, None, 0.0, 0.0, 1.0, stages)
    failed = sample("mimir_index_runs_total", state="failed")
    acquire = sample("mimir_pipeline_stage_duration_seconds_count", stage="acquire")
    acquire_sum = sample("mimir_pipeline_stage_duration_seconds_sum", stage="acquire")
    symbols = sample("mimir_pipeline_stage_duration_seconds_count", stage="symbols")
    indexed = sample("mimir_repositories_indexed_total")
    mimir_metrics.record_run(run)
    assert sample("mimir_index_runs_total", state="failed") == failed + 1
    assert sample("mimir_pipeline_stage_duration_seconds_count", stage="acquire") == acquire + 1
    assert sample("mimir_pipeline_stage_duration_seconds_sum", stage="acquire") == pytest.approx(
        acquire_sum + 0.2
    )
    assert sample("mimir_pipeline_stage_duration_seconds_count", stage="symbols") == symbols
    assert sample("mimir_repositories_indexed_total") == indexed
    run.state = "succeeded"
    mimir_metrics.record_run(run)
    assert sample("mimir_repositories_indexed_total") == indexed + 1


# -- nothing defined that nothing updates ------------------------------------------------------------
def _metric_names(module: object) -> list[str]:
    kinds = (Counter, Gauge, Histogram, HttpMetrics)
    return [name for name, value in vars(module).items() if isinstance(value, kinds)]


@pytest.mark.parametrize("module", [lens_metrics, mimir_metrics], ids=["lens", "mimir"])
def test_every_metric_is_updated_somewhere(module: object) -> None:
    """A metric object referenced only where it is defined is a metric nothing emits."""
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    unused = []
    for name in _metric_names(module):
        uses = 0
        for text in sources.values():
            uses += len(re.findall(rf"(?<![\"'\w]){name}\b(?![\"'])", text))
        if uses < 2:  # the definition itself is one
            unused.append(name)
    assert _metric_names(module), "no metrics found: the scan is broken"
    assert unused == []


# -- N workers --------------------------------------------------------------------------------------
def _scrape_value(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _pids_with_requests(prom_dir: Path) -> set[str]:
    pids = set()
    for path in prom_dir.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if "lens_http_requests_total" in key and "/api/v1/repos" in key and value > 0:
                pids.add(path.stem.split("_")[-1])
    return pids


@pytest.mark.slow
def test_two_workers_report_every_request(tmp_path: Path) -> None:
    port, prom = free_port(), tmp_path / "prom"
    env = {
        **os.environ,
        "LENS_DATA_DIR": str(tmp_path / "data"),
        "LENS_EMBED": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "LENS_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "lens did not start"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        total = 60

        def one(_: int) -> int:
            return httpx.get(f"{base}/api/v1/repos", timeout=10).status_code  # a new connection each

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(total))) == {200}
        labels = 'method="GET",route="/api/v1/repos",status="200"'
        for _ in range(8):  # whichever worker answers the scrape, it reports all of them
            text = httpx.get(f"{base}/metrics", timeout=10).text
            assert _scrape_value(text, "lens_http_requests_total", labels) == total
            assert _scrape_value(text, "lens_http_request_duration_seconds_count", labels) == total
        assert len(_pids_with_requests(prom)) == 2, "one worker took every request: nothing was merged"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()
    # Each worker dropped its live gauges on the way out (mark_process_dead).
    assert not list(prom.glob("gauge_live*.db"))
