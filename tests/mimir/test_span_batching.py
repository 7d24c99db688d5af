"""One Mimir search = a constant number of Lens calls: the search(es) plus ONE batched read of the
cited spans (``read_spans``), never one ``read_file`` per result.

Checked against a real ``lens serve`` process (counted by Lens's own request metrics, through
Mimir's REST API) and in-process; answers must be byte-identical to the one-read-per-span path,
which is what Mimir still does when Lens has no batched read. When Lens dies between the search
and the read, the answer is degraded once and falls back to stored snippets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gitrepo import commit_all, git, write_files
from mimir.config import MimirSettings
from mimir.errors import BadRequest
from mimir.lensclient import HttpLens, LensBackend, LensRequestError
from mimir.research.ask import ask_index
from mimir.research.evidence import Degradation, IndexEvidence
from mimir.research.search import search_repo
from mimir.serve.api import create_app
from mimir.service import Mimir
from support import free_port, start_lens

N_CALLERS = 45


def _files() -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        "pkg/__init__.py": "",
        "pkg/core.py": (
            '"""The shared helper everything calls."""\n\n\n'
            "def shared_helper(value):\n"
            '    """Double the value, then add one."""\n'
            "    doubled = value * 2\n"
            "    return doubled + 1\n\n\n"
            "class BaseRunner:\n"
            "    def run(self, value):\n"
            "        return shared_helper(value)\n\n\n"
            "class FastRunner(BaseRunner):\n"
            "    def run(self, value):\n"
            "        return shared_helper(value) + 1\n"
        ),
    }
    for i in range(N_CALLERS):
        files[f"pkg/mod{i:02d}.py"] = (
            "from pkg.core import shared_helper\n\n\n"
            f"def caller_{i}(x):\n"
            f'    """Caller number {i} of the shared helper."""\n'
            f"    return shared_helper(x) + {i}\n"
        )
    # A function longer than Mimir's span limit: its hit is cited as the lines around it.
    body = "".join(f"    step_{j} = {j}\n" for j in range(100))
    files["pkg/long.py"] = (
        "from pkg.core import shared_helper\n\n\ndef long_function(x):\n"
        + body
        + "    return shared_helper(x)\n"
    )
    return files


def _make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write_files(path, _files())
    commit_all(path, "initial")
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class HttpSetup:
    def __init__(self, base: Path, port: int, proc: subprocess.Popen[bytes], mimir: Mimir, index_id: str):
        self.base, self.port, self.proc, self.mimir, self.index_id = base, port, proc, mimir, index_id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lens_requests(self) -> Counter[str]:
        """Lens's own count of answered requests, by route template."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "lens_http_requests_total" and s.labels.get("route", "").startswith("/api/"):
                    out[f"{s.labels['method']} {s.labels['route']}"] += int(s.value)
        return out


@pytest.fixture(scope="module")
def http_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpSetup]:
    base = tmp_path_factory.mktemp("spans-http").resolve()
    repo = _make_repo(base / "calls-repo")
    port = free_port()
    proc = start_lens(base / "lens-data", base, port)
    settings = MimirSettings(
        data_dir=base / "mimir-data",
        allowed_roots=str(base),
        lens_url=f"http://127.0.0.1:{port}",
        cache_ttl_s=0,  # every REST search computes: nothing answered from a result cache
    )
    mimir = Mimir(settings)
    try:
        out = mimir.ensure_repo_index(str(repo))
        run = mimir.manager.wait(out["run"]["run_id"], timeout=300)
        assert run.state == "succeeded", run.error
        yield HttpSetup(base, port, proc, mimir, out["index_id"])
    finally:
        mimir.close()
        _stop(proc)


@pytest.fixture(scope="module")
def local_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mimir, str]]:
    base = tmp_path_factory.mktemp("spans-local").resolve()
    repo = _make_repo(base / "calls-repo")
    mimir = Mimir(MimirSettings(data_dir=base / "mimir-data", allowed_roots=str(base), embed=False))
    try:
        out = mimir.ensure_repo_index(str(repo))
        run = mimir.manager.wait(out["run"]["run_id"], timeout=300)
        assert run.state == "succeeded", run.error
        yield mimir, out["index_id"]
    finally:
        mimir.close()


# -- a Lens backend wrapper: counts calls, can refuse batching, can hide files ---------------
class Wrapped:
    """Delegates to ``inner``; ``batch=False`` answers read_spans like a Lens without the route."""

    def __init__(self, inner: LensBackend, *, batch: bool = True, hide: Sequence[str] = ()) -> None:
        self.inner, self.batch, self.hide = inner, batch, set(hide)
        self.calls: Counter[str] = Counter()
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def search(self, query: str, **kwargs: Any) -> dict[str, Any]:
        self.calls["search"] += 1
        return self.inner.search(query, **kwargs)

    def read_file(self, repo: str, path: str, start: int | None, end: int | None) -> dict[str, Any]:
        self.calls["read_file"] += 1
        if path in self.hide:
            raise LensRequestError("not_found", f"file {path!r} is not in repository {repo!r}", 404)
        return self.inner.read_file(repo, path, start, end)

    def read_spans(self, repo: str, spans: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
        self.calls["read_spans"] += 1
        if not self.batch:
            raise LensRequestError("not_found", "Not Found", 404)
        self.batches.append(len(spans))
        out = self.inner.read_spans(repo, spans)
        out["spans"] = [
            {
                "path": p,
                "start": s,
                "end": e,
                "error": {"code": "not_found", "message": "gone", "details": {}},
            }
            if p in self.hide
            else item
            for (p, s, e), item in zip(spans, out["spans"], strict=True)
        ]
        return out


def _evidence(mimir: Mimir, index_id: str, lens: Any) -> IndexEvidence:
    ev = mimir.evidence(index_id)
    return IndexEvidence(ev.record, ev.dir, lens)


def _dump(out: dict[str, Any]) -> str:
    return json.dumps(out, sort_keys=True)


CASES = [
    ("shared_helper", "exact", 1, 5),
    ("shared_helper", "exact", 20, 5),
    ("shared_helper", "exact", 60, 0),
    ("shared_helper", "exact", 200, 50),
    ("shared_helper step_50", "exact", 30, 3),
    ("shared helper doubles the value", "hybrid", 10, 5),
    ("shared_helper", "ranked", 15, 2),
    ("zzqx nothing matches", "exact", 5, 5),
]


def _compare(mimir: Mimir, index_id: str) -> None:
    for query, mode, k, context in CASES:
        batched, plain = Wrapped(mimir.lens), Wrapped(mimir.lens, batch=False)
        got = search_repo(_evidence(mimir, index_id, batched), query, k=k, mode=mode, context_lines=context)
        want = search_repo(_evidence(mimir, index_id, plain), query, k=k, mode=mode, context_lines=context)
        assert _dump(got) == _dump(want), (query, mode, k, context)
        n = len(got["results"])
        assert batched.calls["read_file"] == 0 and batched.calls["read_spans"] == (1 if n else 0)
        assert plain.calls["read_file"] == n  # the path compared with really read one span per call
        assert all(r["source"] == "lens" for r in got["results"])
        if query == "shared_helper" and mode == "exact":
            assert n == min(k, N_CALLERS * 2 + 5)  # the page is full whatever k is (95 hits)
            assert {r["sha256"] for r in got["results"]} == {r["sha256"] for r in want["results"]}
    for question in ("how is shared_helper used by the runners?", "what calls shared_helper"):
        batched, plain = Wrapped(mimir.lens), Wrapped(mimir.lens, batch=False)
        got = ask_index(_evidence(mimir, index_id, batched), question, max_hops=3)
        want = ask_index(_evidence(mimir, index_id, plain), question, max_hops=3)
        assert _dump(got) == _dump(want), question
        assert len(got["findings"]) > 5 and got["hops"] >= 1
        assert batched.calls["read_file"] == 0
        assert batched.calls["read_spans"] <= 1 + got["hops"] + 1  # seeds, then one per hop
        assert plain.calls["read_file"] >= len(got["findings"])


def test_batched_answers_equal_unbatched_in_process(local_setup: tuple[Mimir, str]) -> None:
    _compare(*local_setup)


def test_batched_answers_equal_unbatched_over_http(http_setup: HttpSetup) -> None:
    _compare(http_setup.mimir, http_setup.index_id)


def test_missing_files_are_skipped_with_one_more_batch(local_setup: tuple[Mimir, str]) -> None:
    mimir, index_id = local_setup
    hidden = ["pkg/mod00.py", "pkg/mod01.py", "pkg/mod02.py", "pkg/core.py"]
    batched, plain = Wrapped(mimir.lens, hide=hidden), Wrapped(mimir.lens, batch=False, hide=hidden)
    got = search_repo(_evidence(mimir, index_id, batched), "shared_helper", k=10, mode="exact")
    want = search_repo(_evidence(mimir, index_id, plain), "shared_helper", k=10, mode="exact")
    assert _dump(got) == _dump(want)
    assert len(got["results"]) == 10 and not {r["path"] for r in got["results"]} & set(hidden)
    # The first batch held the 10 candidates that could make the page; the hidden ones among them were
    # replaced by the next candidates, read in a second batch, never one by one.
    assert batched.calls["read_file"] == 0 and batched.calls["read_spans"] == 2
    assert 1 <= batched.batches[0] <= 10 and 1 <= batched.batches[1] <= 10  # ranges asked twice are read once


def test_span_past_the_end_is_a_bad_request_either_way(local_setup: tuple[Mimir, str]) -> None:
    mimir, index_id = local_setup
    for lens in (Wrapped(mimir.lens), Wrapped(mimir.lens, batch=False)):
        ev = _evidence(mimir, index_id, lens)
        deg = Degradation()
        ev.prefetch([("pkg/core.py", 500, 501), ("pkg/core.py", 1, 2)], 0, deg)
        with pytest.raises(BadRequest, match="invalid line range"):
            ev.span("pkg/core.py", 500, 501, 0, deg)
        span = ev.span("pkg/core.py", 1, 2, 0, deg)
        assert span is not None and span["snippet"]["lines"] == [
            '"""The shared helper everything calls."""',
            "",
        ]
        assert ev.span("pkg/nope.py", 1, 2, 0, deg) is None
        assert lens.calls["read_spans"] == 1 and lens.calls["read_file"] == (1 if lens.batch else 3)


def test_lens_calls_per_rest_search_do_not_grow_with_k(http_setup: HttpSetup) -> None:
    """Counted by Lens itself: each Mimir REST search is one Lens search and one batched read."""
    spans_route = "POST /api/v1/repos/{name}/spans"
    files_route = "GET /api/v1/repos/{name}/files/{path:path}"
    search_route = "POST /api/v1/search"
    with TestClient(create_app(http_setup.mimir)) as client:
        per_search: list[Counter[str]] = []
        for k in (1, 5, 20, 50, 90):
            before = http_setup.lens_requests()
            r = client.post(
                "/api/search",
                json={"index_id": http_setup.index_id, "query": "shared_helper", "mode": "exact", "k": k},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["results"]) == k and body["degraded"] is False
            delta = http_setup.lens_requests() - before
            per_search.append(delta)
            assert delta == Counter({search_route: 1, spans_route: 1}), (k, delta)
            assert delta[files_route] == 0

        # Hybrid asks Lens for more signals, but still reads every span in one call.
        for k in (3, 30):
            before = http_setup.lens_requests()
            r = client.post(
                "/api/search",
                json={
                    "index_id": http_setup.index_id,
                    "query": "shared helper value",
                    "mode": "hybrid",
                    "k": k,
                },
            )
            assert r.status_code == 200, r.text
            assert len(r.json()["results"]) == k
            delta = http_setup.lens_requests() - before
            assert delta[spans_route] == 1 and delta[files_route] == 0 and sum(delta.values()) <= 4, delta

        before = http_setup.lens_requests()
        r = client.post(
            "/api/ask",
            json={"index_id": http_setup.index_id, "question": "what calls shared_helper", "max_hops": 3},
        )
        assert r.status_code == 200, r.text
        delta = http_setup.lens_requests() - before
        assert delta[files_route] == 0 and 1 <= delta[spans_route] <= 1 + r.json()["hops"] + 1, delta


def test_lens_dies_between_search_and_read(http_setup: HttpSetup) -> None:
    """The search answers, then Lens is gone: one failed batched read, then stored snippets."""
    port = free_port()
    proc = start_lens(http_setup.base / "lens-data", http_setup.base, port)  # a second server, same shards
    lens = HttpLens(f"http://127.0.0.1:{port}", connect_timeout=0.3, backoff_base=0.01)
    mimir = http_setup.mimir
    try:
        real_search = lens.search

        def search_then_die(query: str, **kwargs: Any) -> dict[str, Any]:
            out = real_search(query, **kwargs)
            _stop(proc)
            return out

        lens.search = search_then_die  # type: ignore[method-assign]
        got = search_repo(_evidence(mimir, http_setup.index_id, lens), "shared_helper", k=8, mode="exact")
        assert got["degraded"] is True and got["missing"] == ["lens"]
        assert len(got["errors"]) == 1 and got["errors"][0].startswith("read_spans: ")
        assert got["results"] and all(r["source"] == "snippet" for r in got["results"])
        ops = lens.stats()["operations"]
        assert ops["search"]["ok"] == 1
        assert ops["read_spans"]["calls"] == 1 and ops["read_spans"]["unavailable"] == 1
        assert "read_file" not in ops  # no further Lens call per span once the batch found Lens gone

        # Each result is what the one-read-per-span path gives with Lens down: the stored snippet.
        down = HttpLens(f"http://127.0.0.1:{port}", connect_timeout=0.3, backoff_base=0.01, max_attempts=1)
        try:
            plain = Wrapped(down, batch=False)
            ev = _evidence(mimir, http_setup.index_id, plain)
            deg = Degradation()
            for r in got["results"]:
                want = ev.span(r["path"], r["start_line"], r["end_line"], 5, deg)
                assert want is not None and {k: r[k] for k in want} == want
            assert deg.degraded and plain.calls["read_file"] >= len(got["results"])
        finally:
            down.close()
    finally:
        lens.close()
        _stop(proc)
