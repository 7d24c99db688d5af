"""Batched reads: ``Lens.read_spans`` and ``POST /api/v1/repos/{name}/spans``.

Every item must be exactly what ``read_file`` answers for that range (or the error it raises, as a
per-item marker), all from one snapshot; malformed or oversized requests are one clear 400.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gitrepo import commit_all, write_files
from lens.engine import MAX_BATCH_LINES, MAX_BATCH_SPANS, MAX_SPAN_LINES, Lens
from lens.errors import BadRequest, LensError, NotFound
from lens.serve.api import create_app
from support import SAMPLE_SOURCES

SAMPLE: dict[str, str | bytes] = {
    **SAMPLE_SOURCES,
    "src/no_newline.py": "first = 1\nlast = 2",
    "empty.txt": "",
    "README.md": "# Sample\n\nparse_config reads the configuration.\n",
    "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)),
}
TOKEN = "spans-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _read_file_or_error(lens: Lens, path: str, start: int, end: int) -> dict[str, Any]:
    """What read_spans must answer for one item: read_file's answer, or its error as a marker."""
    try:
        one = lens.read_file("sample", path, start, end)
    except (NotFound, BadRequest) as exc:
        return {"path": path, "start": start, "end": end, "error": exc.to_dict()}
    return {k: v for k, v in one.items() if k not in ("repo", "commit")}


@pytest.fixture
def lens(lens_factory: Callable[..., Lens], make_repo: Callable[..., Path]) -> Lens:
    engine = lens_factory(api_tokens=TOKEN)
    engine.index(make_repo(SAMPLE, name="sample"), name="sample")
    return engine


@pytest.fixture
def client(lens: Lens) -> Iterator[TestClient]:
    with TestClient(create_app(lens), headers=AUTH) as c:
        yield c


SPANS: list[tuple[str, int, int]] = [
    ("src/app.py", 3, 4),
    ("src/app.py", 1, 1),  # the same file again
    ("src/app.py", 8, 400),  # end clamped to the file
    ("src/util.py", 1, 2),
    ("src/no_newline.py", 1, 5),
    ("empty.txt", 1, 3),
    ("src/app.py", 11, 12),  # starts right past the end: bad_request, as read_file says
    ("src/app.py", 99, 100),
    ("missing.py", 1, 2),  # not in the index: not_found
    ("logo.png", 1, 1),  # skipped binary: not_found
    ("../sample/src/app.py", 1, 1),  # paths are index keys, never resolved on disk
    ("/etc/passwd", 1, 1),
    ("src/../src/app.py", 1, 1),
]


def test_read_spans_matches_read_file_item_by_item(lens: Lens) -> None:
    out = lens.read_spans("sample", SPANS)
    assert out["repo"] == "sample" and out["commit"] == lens.repo("sample")["commit"]
    assert len(out["spans"]) == len(SPANS)
    for (path, start, end), item in zip(SPANS, out["spans"], strict=True):
        assert item == _read_file_or_error(lens, path, start, end), (path, start, end)
    by_path = {(i["path"], i.get("error", {}).get("code")) for i in out["spans"]}
    assert ("src/app.py", None) in by_path and ("missing.py", "not_found") in by_path
    assert out["spans"][0]["lines"] == ["def parse_config(path):", '    """Read the configuration file."""']
    assert (out["spans"][2]["start"], out["spans"][2]["end"]) == (8, 10)
    assert out["spans"][5]["lines"] == [""] and out["spans"][4]["lines"] == ["first = 1", "last = 2"]
    assert out["spans"][6]["error"]["code"] == "bad_request"
    for item in out["spans"][8:]:
        assert item["error"]["code"] == "not_found", item
    assert lens.read_spans("sample", []) == {"repo": "sample", "commit": out["commit"], "spans": []}


def test_read_spans_reads_one_snapshot(lens: Lens, make_repo: Callable[..., Path], tmp_path: Path) -> None:
    """Every item comes from the same generation: after a re-index all items move together."""
    repo = tmp_path / "sample"
    before = lens.read_spans("sample", [("src/util.py", 1, 1), ("src/app.py", 1, 1)])
    write_files(repo, {"src/util.py": "def helper_function(y):\n    return y + 2\n"})
    commit_all(repo, "second")
    lens.index(repo, name="sample")
    after = lens.read_spans("sample", [("src/util.py", 1, 1), ("src/app.py", 1, 1)])
    assert after["commit"] != before["commit"] and after["commit"] == lens.repo("sample")["commit"]
    assert [i["lines"] for i in after["spans"]] == [["def helper_function(y):"], ["import os"]]
    assert before["spans"][0]["lines"] == ["def helper_function(x):"]


@pytest.mark.parametrize(
    ("spans", "needle"),
    [
        ([("src/app.py", 1, 1)] * (MAX_BATCH_SPANS + 1), "too many spans"),
        ([("src/app.py", 1, MAX_SPAN_LINES)] * (MAX_BATCH_LINES // MAX_SPAN_LINES + 1), "too many lines"),
        ([("src/app.py", 1, MAX_SPAN_LINES + 1)], "line range too large"),
        ([("src/app.py", 0, 1)], "invalid line range"),
        ([("src/app.py", 5, 4)], "invalid line range"),
        ([("src/app.py", -3, 1)], "invalid line range"),
        ([("", 1, 1)], "path must be"),
        ([("a" * 5000, 1, 1)], "path must be"),
        ([("src/app.py\x00.txt", 1, 1)], "path must be"),
    ],
)
def test_read_spans_refuses_bad_or_oversized_requests(
    lens: Lens, client: TestClient, spans: list[tuple[str, int, int]], needle: str
) -> None:
    with pytest.raises(BadRequest, match=needle):
        lens.read_spans("sample", spans)
    body = {"spans": [{"path": p, "start": s, "end": e} for p, s, e in spans]}
    r = client.post("/api/v1/repos/sample/spans", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "bad_request" and needle in err["message"]


def test_read_spans_caps_are_inclusive(lens: Lens) -> None:
    most = [("src/app.py", 1, 1)] * MAX_BATCH_SPANS
    assert len(lens.read_spans("sample", most)["spans"]) == MAX_BATCH_SPANS
    n = MAX_BATCH_LINES // MAX_SPAN_LINES
    assert len(lens.read_spans("sample", [("src/app.py", 1, MAX_SPAN_LINES)] * n)["spans"]) == n


def test_read_spans_unknown_or_bad_repo(lens: Lens) -> None:
    with pytest.raises(NotFound):
        lens.read_spans("nope", [("src/app.py", 1, 1)])
    with pytest.raises(LensError) as bad:
        lens.read_spans("../sample", [("src/app.py", 1, 1)])
    assert bad.value.code == "bad_request"


def _metric(text: str, sample: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_spans_endpoint(lens: Lens, client: TestClient) -> None:
    body = {"spans": [{"path": p, "start": s, "end": e} for p, s, e in SPANS]}
    r = client.post("/api/v1/repos/sample/spans", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == lens.read_spans("sample", SPANS)

    # Errors use the usual envelope and statuses.
    missing_repo = client.post(
        "/api/v1/repos/other/spans", json={"spans": [{"path": "a", "start": 1, "end": 1}]}
    )
    assert missing_repo.status_code == 404 and missing_repo.json()["error"]["code"] == "not_found"
    for bad in (
        {},
        {"spans": "src/app.py"},
        {"spans": [{"path": "src/app.py", "start": 1}]},
        {"spans": [{"path": "src/app.py", "start": "one", "end": 2}]},
        {"spans": [{"path": None, "start": 1, "end": 2}]},
        {"spans": [["src/app.py", 1, 2]]},
    ):
        r = client.post("/api/v1/repos/sample/spans", json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "bad_request"
    not_json = client.post(
        "/api/v1/repos/sample/spans", content=b"not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert client.get("/api/v1/repos/sample/spans").status_code == 405

    # Authenticated like every other route.
    anonymous = client.post(
        "/api/v1/repos/sample/spans", json=body, headers={"Authorization": "Bearer wrong"}
    )
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"

    # Labelled by route template; documented in the OpenAPI spec next to the file route.
    text = client.get("/metrics").text
    route = {"route": "/api/v1/repos/{name}/spans", "method": "POST", "status": "200"}
    assert _metric(text, "lens_http_requests_total", route) >= 1
    assert 'route="/api/v1/repos/sample/spans"' not in text
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/repos/{name}/spans"]["post"]
    assert op["tags"] == ["repos"] and "requestBody" in op


def test_spans_body_size_is_limited(
    lens_factory: Callable[..., Lens], make_repo: Callable[..., Path]
) -> None:
    engine = lens_factory(max_request_bytes=4096)
    engine.index(make_repo({"a.py": "x = 1\n"}, name="small"), name="small")
    with TestClient(create_app(engine)) as c:
        body = {"spans": [{"path": "a.py", "start": 1, "end": 1}] * 200}
        r = c.post("/api/v1/repos/small/spans", json=body)
        assert r.status_code == 413, r.text
        ok = c.post("/api/v1/repos/small/spans", json={"spans": body["spans"][:3]})
        assert ok.status_code == 200 and [i["lines"] for i in ok.json()["spans"]] == [["x = 1"]] * 3
