"""Mimir's Lens client: the breaker with a fake clock, HttpLens against a real Lens server
process (killed and restarted for real), retries through a flaky local proxy, and
InProcessLens on a temp data dir. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from lens.index.embedder import HashEmbedder
from mimir.breaker import CircuitBreaker
from mimir.breaker import CircuitOpen as BreakerOpen
from mimir.lensclient import (
    Cancelled,
    CircuitOpen,
    HttpLens,
    InProcessLens,
    LensRequestError,
    LensUnavailable,
    NotSupported,
    make_lens_backend,
)
from support import SAMPLE_SOURCES, free_port

TOKEN = "test-token-123"
FILES: dict[str, str | bytes] = {
    **SAMPLE_SOURCES,
    "docs/notes #1 ü?.md": "a path that needs URL encoding\n",
    "README.md": "# Sample\n\nparse_config reads the configuration.\n",
}


# -- breaker ----------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_breaker(clock: FakeClock, **kw: Any) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(clock=clock, on_state_change=lambda old, new: changes.append((old, new)), **kw)
    return b, changes


def state(b: CircuitBreaker) -> str:
    """Read through a function: mypy would otherwise narrow the property between reads."""
    return b.state


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.allow()
        b.record_failure()


def test_breaker_opens_after_consecutive_failures_and_rejects() -> None:
    clock = FakeClock()
    b, changes = make_breaker(clock, failure_threshold=3, reset_timeout=5.0)
    fail(b, 2)
    b.allow()
    b.record_success()  # a success resets the consecutive count
    fail(b, 2)
    assert state(b) == "closed"
    fail(b)
    assert state(b) == "open"
    assert changes == [("closed", "open")]
    clock.advance(2.0)
    with pytest.raises(BreakerOpen) as info:
        b.allow()
    assert info.value.retry_after == pytest.approx(3.0)
    counters = b.counters()
    assert counters["rejected"] == 1 and counters["failures"] == 5 and counters["opened"] == 1
    assert counters["state"] == "open"


def test_breaker_half_open_single_trial_success_closes() -> None:
    clock = FakeClock()
    b, changes = make_breaker(clock, failure_threshold=2, reset_timeout=5.0)
    fail(b, 2)
    clock.advance(4.99)
    assert state(b) == "open"
    clock.advance(0.01)
    assert state(b) == "half_open"
    b.allow()  # the one trial
    with pytest.raises(BreakerOpen, match="trial call is in flight"):
        b.allow()
    b.record_success()
    assert state(b) == "closed"
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    b.allow()
    b.allow()  # closed: everything flows again


def test_breaker_half_open_failure_reopens_for_a_full_timeout() -> None:
    clock = FakeClock()
    b, changes = make_breaker(clock, failure_threshold=2, reset_timeout=5.0)
    fail(b, 2)
    clock.advance(5.0)
    b.allow()
    b.record_failure()
    assert state(b) == "open"
    clock.advance(4.0)
    with pytest.raises(BreakerOpen):
        b.allow()
    clock.advance(1.0)
    b.allow()
    b.record_success()
    assert changes == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert b.counters()["opened"] == 2


def test_breaker_abandoned_trial_expires() -> None:
    clock = FakeClock()
    b, _ = make_breaker(clock, failure_threshold=1, reset_timeout=1.0, trial_timeout=10.0)
    fail(b)
    clock.advance(1.0)
    b.allow()  # trial taken and never reported
    clock.advance(9.0)
    with pytest.raises(BreakerOpen):
        b.allow()
    clock.advance(1.0)
    b.allow()  # a new trial is allowed
    b.record_success()
    assert state(b) == "closed"


def test_breaker_failure_rate_over_window() -> None:
    clock = FakeClock()
    b, _ = make_breaker(clock, failure_threshold=100, window=10.0, failure_rate=0.5, min_calls=10)
    for i in range(9):  # alternate: never 100 in a row, rate 4/9 < 0.5 -> stays closed
        b.allow()
        (b.record_failure if i % 2 else b.record_success)()
    assert state(b) == "closed"
    b.allow()
    b.record_failure()  # 5 failures / 10 calls = 0.5
    assert state(b) == "open"

    # Old outcomes fall out of the window.
    clock2 = FakeClock()
    b2, _ = make_breaker(clock2, failure_threshold=100, window=10.0, failure_rate=0.5, min_calls=4)
    fail(b2, 3)
    clock2.advance(11.0)
    for _ in range(3):
        b2.allow()
        b2.record_success()
    fail(b2)
    assert state(b2) == "closed"  # 1 failure in 4 calls inside the window


def test_breaker_call_helper_and_hook_errors_are_contained() -> None:
    clock = FakeClock()

    def bad_hook(old: str, new: str) -> None:
        raise RuntimeError("metrics broke")

    b = CircuitBreaker(clock=clock, failure_threshold=1, on_state_change=bad_hook)
    assert b.call(lambda: 42) == 42
    with pytest.raises(ValueError):
        b.call(lambda: int("x"), is_failure=lambda exc: not isinstance(exc, ValueError))
    assert state(b) == "closed"  # excluded exception: not a failure

    def boom() -> int:
        raise OSError("down")

    with pytest.raises(OSError):
        b.call(boom)
    assert state(b) == "open"  # the failing hook did not break the transition
    b.reset()
    assert state(b) == "closed"


def test_breaker_is_thread_safe() -> None:
    b = CircuitBreaker(failure_threshold=10_000_000, failure_rate=1.0)

    def work() -> None:
        for i in range(2000):
            b.allow()
            (b.record_failure if i % 2 else b.record_success)()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = b.counters()
    assert c["allowed"] == 16000 and c["successes"] == 8000 and c["failures"] == 8000


# -- a real Lens server -------------------------------------------------------------------


class LensServer:
    """``python -m lens.serve.cli serve`` as a subprocess on 127.0.0.1."""

    def __init__(self, data_dir: Path, roots: Path, port: int, log: Path, token: str | None = TOKEN) -> None:
        self.data_dir, self.roots, self.port, self.log_path, self.token = data_dir, roots, port, log, token
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "LENS_DATA_DIR": str(self.data_dir),
            "LENS_EMBED": "0",
            "LENS_ALLOWED_ROOTS": str(self.roots),
            "LENS_HOST": "127.0.0.1",
            "LENS_API_TOKENS": self.token or "",
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lens server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"lens server not healthy after {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def lens_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LensServer]:
    """One server for the module; repos made by ``make_repo`` live under the session's basetemp."""
    base = tmp_path_factory.mktemp("lens-server")
    server = LensServer(base / "data", tmp_path_factory.getbasetemp(), free_port(), base / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def client(lens_server: LensServer) -> Iterator[HttpLens]:
    c = HttpLens(lens_server.url, token=TOKEN, connect_timeout=0.5, read_timeout=10.0, backoff_base=0.01)
    try:
        yield c
    finally:
        c.close()


def index_over_http(
    client: HttpLens, repo: Path, name: str
) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    seen: list[tuple[str, int, int]] = []
    report = client.index(
        repo, name, rev=None, seed=None, progress=lambda *p: seen.append(p), should_stop=None
    )
    return report, seen


def test_http_end_to_end(client: HttpLens, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(FILES, name="proj")
    report, progress = index_over_http(client, repo, "proj")
    assert report["name"] == "proj" and report["files"] == len(FILES)
    assert report["embedded"] == 0  # LENS_EMBED=0
    assert progress and progress[-1][0] == "done"

    found = client.search("parse_config", mode="exact", limit=10, context=1, repos=["proj"])
    assert {(h["path"], h["line_number"]) for h in found["results"]} == {
        ("src/app.py", 3),
        ("src/app.py", 10),
        ("README.md", 3),
    }
    assert found["mode"] == "exact" and found["results"][0]["before"]
    ranked = client.search(
        "configuration file", mode="ranked", limit=5, context=0, repos=None, timeout_ms=2000
    )
    assert ranked["results"]

    page = client.read_file("proj", "src/app.py", 3, 4)
    assert page["lines"] == ["def parse_config(path):", '    """Read the configuration file."""']
    assert page["start"] == 3 and page["end"] == 4 and page["total_lines"] == 10
    whole = client.read_file("proj", "src/util.py", None, None)
    assert whole["lines"] == ["def helper_function(x):", "    return x + 1"]
    assert client.read_file("proj", "docs/notes #1 ü?.md", 1, 1)["lines"] == [
        "a path that needs URL encoding"
    ]
    with pytest.raises(LensRequestError) as dotted:  # sent as-is, not normalised into another route
        client.read_file("proj", "../proj/src/app.py", None, None)
    assert dotted.value.code == "not_found" and dotted.value.details["path"] == "../proj/src/app.py"

    syms = client.symbols("proj", "parse")
    assert [(s["name"], s["kind"], s["path"]) for s in syms][:1] == [
        ("parse_config", "function", "src/app.py")
    ]
    assert client.symbols("proj", "Config", kind="class")[0]["name"] == "ConfigLoader"

    info = client.repo("proj")
    assert info["name"] == "proj" and info["files"] == len(FILES) and info["commit"] == report["commit"]

    assert client.shard_path("proj") is None
    with pytest.raises(NotSupported):
        client.import_shard("proj", repo / "x.sqlite")
    status = client.status()
    assert status["reachable"] is True and status["mode"] == "http" and status["breaker"] == "closed"
    assert status["url"] == client.base_url

    ops = client.stats()["operations"]
    assert ops["index_submit"]["ok"] == 1 and ops["search"]["ok"] == 2 and ops["read_file"]["calls"] == 4
    assert all(s["retries"] == 0 for s in ops.values())


def test_http_client_errors_are_not_breaker_failures(client: HttpLens, lens_server: LensServer) -> None:
    calls: list[tuple[str, str, int]] = []
    client.on_call = lambda op, outcome, seconds, retries: calls.append((op, outcome, retries))
    for _ in range(client.breaker.failure_threshold + 2):
        with pytest.raises(LensRequestError) as info:
            client.search('"unterminated', mode="exact", limit=5, context=0, repos=None)
        assert info.value.code == "bad_query" and info.value.status == 400
        assert "position" in info.value.details
    with pytest.raises(LensRequestError) as missing:
        client.repo("no-such-repo")
    assert missing.value.code == "not_found" and missing.value.status == 404
    with pytest.raises(LensRequestError) as bad_name:
        client.read_file("../etc", "passwd", None, None)  # refused before any request
    assert bad_name.value.code == "bad_request"
    with pytest.raises(LensRequestError) as outside:
        client.index(Path("/"), "root", rev=None, seed=None, progress=None, should_stop=None)
    assert outside.value.code == "path_not_allowed" and outside.value.status == 403

    assert client.breaker.state == "closed"
    assert client.breaker.counters()["failures"] == 0
    assert {o for _, o, _ in calls} == {"error"}
    assert all(r == 0 for *_, r in calls)  # 4xx is never retried

    anonymous = HttpLens(lens_server.url, token=None)
    try:
        with pytest.raises(LensRequestError) as unauthorized:
            anonymous.repo("proj")
        assert unauthorized.value.code == "unauthorized" and unauthorized.value.status == 401
    finally:
        anonymous.close()


def test_http_index_failure_and_cancel(
    client: HttpLens, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    with pytest.raises(LensRequestError) as bad_rev:
        client.index(plain, "plain", rev="nope", seed=None, progress=None, should_stop=None)
    assert bad_rev.value.code == "bad_source" and bad_rev.value.status == 400
    assert "failed" in bad_rev.value.message

    repo = make_repo(FILES, name="cancelme")
    with pytest.raises(Cancelled, match="continues in Lens"):
        client.index(repo, "cancelme", rev=None, seed=None, progress=None, should_stop=lambda: True)


def test_http_read_spans(client: HttpLens, make_repo: Callable[..., Path]) -> None:
    index_over_http(client, make_repo(FILES, name="batch"), "batch")
    spans = [
        ("src/app.py", 3, 4),
        ("src/util.py", 1, 50),
        ("docs/notes #1 ü?.md", 1, 1),
        ("src/app.py", 40, 41),
        ("nope.py", 1, 1),
        ("../batch/src/app.py", 1, 1),
    ]
    calls: list[tuple[str, str, int]] = []
    client.on_call = lambda op, outcome, seconds, retries: calls.append((op, outcome, retries))
    out = client.read_spans("batch", spans)
    assert out["repo"] == "batch" and out["commit"] == client.repo("batch")["commit"]
    items = out["spans"]
    for (path, start, end), item in zip(spans[:3], items, strict=False):
        one = client.read_file("batch", path, start, end)
        assert item == {k: v for k, v in one.items() if k not in ("repo", "commit")}
    assert items[1]["lines"] == ["def helper_function(x):", "    return x + 1"] and items[1]["end"] == 2
    assert items[3]["error"]["code"] == "bad_request"
    assert [i["error"]["code"] for i in items[4:]] == ["not_found", "not_found"]
    assert items[5]["path"] == "../batch/src/app.py"  # a key of the index, never a file on the server
    assert calls[0] == ("read_spans", "ok", 0)

    # Refusals are Lens's 400/404, never retried, and prove Lens alive (no breaker failure).
    with pytest.raises(LensRequestError) as too_many:
        client.read_spans("batch", [("src/app.py", 1, 1)] * 257)
    assert too_many.value.code == "bad_request" and too_many.value.status == 400
    assert "too many spans" in too_many.value.message
    with pytest.raises(LensRequestError) as bad_range:
        client.read_spans("batch", [("src/app.py", 4, 3)])
    assert bad_range.value.status == 400
    with pytest.raises(LensRequestError) as missing:
        client.read_spans("no-such-repo", [("a.py", 1, 1)])
    assert missing.value.code == "not_found" and missing.value.status == 404
    with pytest.raises(LensRequestError) as bad_name:
        client.read_spans("../etc", [("passwd", 1, 1)])  # refused before any request
    assert bad_name.value.code == "bad_request"
    assert client.breaker.counters()["failures"] == 0
    ops = client.stats()["operations"]["read_spans"]
    assert (ops["ok"], ops["error"], ops["retries"]) == (1, 3, 0)


def test_http_read_spans_replicas_and_outage(lens_server: LensServer, make_repo: Callable[..., Path]) -> None:
    """Like read_file: the least busy replica first, fail-over to the next, the breaker on outages."""
    setup = HttpLens(lens_server.url, token=TOKEN)
    try:
        index_over_http(setup, make_repo(FILES, name="replicas"), "replicas")
    finally:
        setup.close()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    both = HttpLens(f"{dead},{lens_server.url}", token=TOKEN, connect_timeout=0.3, backoff_base=0.01)
    try:
        for _ in range(4):  # whichever replica the rotation picks first, the live one answers
            got = both.read_spans("replicas", [("src/util.py", 1, 1)])
            assert got["spans"][0]["lines"] == ["def helper_function(x):"]
        ops = both.stats()["operations"]["read_spans"]
        assert ops["ok"] == 4 and 1 <= ops["retries"] <= 4 and both.breaker.counters()["failures"] == 0
    finally:
        both.close()

    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30.0)
    gone = HttpLens(f"{dead},{dead}", token=TOKEN, connect_timeout=0.2, backoff_base=0.01, breaker=breaker)
    try:
        for _ in range(2):
            with pytest.raises(LensUnavailable, match="read_spans"):
                gone.read_spans("replicas", [("src/util.py", 1, 1)])
        with pytest.raises(CircuitOpen):
            gone.read_spans("replicas", [("src/util.py", 1, 1)])
        ops = gone.stats()["operations"]["read_spans"]
        assert (ops["unavailable"], ops["rejected_open"]) == (2, 1)
    finally:
        gone.close()


# -- outages: kill the server, watch the breaker, restart it -------------------------------
def test_breaker_opens_when_lens_dies_and_closes_after_restart(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    server = LensServer(tmp_path / "data", tmp_path, free_port(), tmp_path / "server.log")
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        failure_threshold=3, reset_timeout=1.0, on_state_change=lambda a, b: changes.append((a, b))
    )
    client = HttpLens(server.url, token=TOKEN, connect_timeout=0.3, backoff_base=0.01, breaker=breaker)
    try:
        server.start()
        index_over_http(client, make_repo(FILES, name="svc"), "svc")
        assert client.repo("svc")["files"] == len(FILES)

        server.kill()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(LensUnavailable) as down:
                client.repo("svc")
            assert time.monotonic() - started < 1.0
            assert not isinstance(down.value, CircuitOpen)
            assert "after 3 attempts" in down.value.message
        assert state(breaker) == "open"

        started = time.monotonic()
        with pytest.raises(CircuitOpen) as rejected:
            client.search("x", mode="exact", limit=1, context=0, repos=None)
        assert time.monotonic() - started < 0.05
        assert isinstance(rejected.value, LensUnavailable) and rejected.value.code == "lens_unavailable"
        assert 0 < rejected.value.retry_after <= 1.0
        assert client.status()["reachable"] is False

        server.start()  # same port, same data dir
        deadline = time.monotonic() + 5
        while state(breaker) != "half_open":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.repo("svc")["files"] == len(FILES)  # the trial call
        assert state(breaker) == "closed"
        assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]

        stats = client.stats()
        assert stats["operations"]["repo"]["unavailable"] == 3
        assert stats["operations"]["repo"]["retries"] == 6
        assert stats["operations"]["search"]["rejected_open"] == 1
        assert stats["breaker"]["opened"] == 1
    finally:
        client.close()
        server.kill()


# -- retries through a flaky proxy -------------------------------------------------------
class FlakyProxy(ThreadingHTTPServer):
    """Forwards to Lens, except that queued faults ("reset" or an HTTP status) are served first."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.faults: list[str | int] = []
        self.seen: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FlakyProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            fault = self.server.faults.pop(0) if self.server.faults else None
            self.server.seen.append((self.command, self.path.split("?")[0], str(fault or "proxied")))
        if fault == "reset":
            self.close_connection = True  # hang up without a response
            return
        if isinstance(fault, int):
            payload = json.dumps(
                {"error": {"code": "overloaded", "message": "try later", "details": {}}}
            ).encode()
            self.send_response(fault)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        r = httpx.request(self.command, self.server.upstream + self.path, content=body, headers=headers)
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)


@pytest.fixture
def proxy(lens_server: LensServer) -> Iterator[FlakyProxy]:
    p = FlakyProxy(lens_server.url)
    thread = threading.Thread(target=p.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield p
    finally:
        p.shutdown()
        p.server_close()


def test_idempotent_calls_retry_transient_failures(
    proxy: FlakyProxy, client: HttpLens, make_repo: Callable[..., Path]
) -> None:
    index_over_http(client, make_repo(FILES, name="retry"), "retry")
    flaky = HttpLens(proxy.url, token=TOKEN, backoff_base=0.01)
    try:
        proxy.faults = [503]
        assert flaky.repo("retry")["name"] == "retry"
        proxy.faults = ["reset", 502]
        assert (
            flaky.search("helper_function", mode="exact", limit=5, context=0, repos=["retry"])["total"] == 1
        )
        proxy.faults = [504]
        assert flaky.read_file("retry", "src/util.py", 1, 1)["lines"] == ["def helper_function(x):"]
        proxy.faults = ["reset", 503]  # a read-only POST: retried like search
        got = flaky.read_spans("retry", [("src/util.py", 2, 2)])
        assert got["spans"][0]["lines"] == ["    return x + 1"]
        ops = flaky.stats()["operations"]
        assert (ops["repo"]["retries"], ops["search"]["retries"], ops["read_file"]["retries"]) == (1, 2, 1)
        assert ops["read_spans"]["retries"] == 2
        assert all(s["ok"] == 1 for s in ops.values())
        assert [what for *_, what in proxy.seen] == [
            "503",
            "proxied",
            "reset",
            "502",
            "proxied",
            "504",
            "proxied",
            "reset",
            "503",
            "proxied",
        ]
        assert proxy.seen[-1][:2] == ("POST", "/api/v1/repos/retry/spans")
        assert flaky.breaker.counters()["failures"] == 0  # a call that recovers is one success

        # Out of attempts: three 503s are one unavailable call (one breaker failure).
        proxy.faults = [503, 503, 503, 503]
        with pytest.raises(LensUnavailable, match="HTTP 503: try later"):
            flaky.repo("retry")
        assert flaky.breaker.counters()["failures"] == 1
        assert proxy.faults == [503]
    finally:
        flaky.close()


def test_index_submit_is_never_retried(proxy: FlakyProxy, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(FILES, name="once")
    flaky = HttpLens(proxy.url, token=TOKEN, backoff_base=0.01)
    try:
        for fault in (503, "reset"):
            proxy.seen.clear()
            proxy.faults = [fault]
            with pytest.raises(LensUnavailable):
                flaky.index(repo, "once", rev=None, seed=None, progress=None, should_stop=None)
            assert proxy.seen == [("POST", "/api/v1/repos", str(fault))]
        assert flaky.stats()["operations"]["index_submit"]["retries"] == 0
        # 500 is not transient: reported as unavailable without a retry.
        proxy.seen.clear()
        proxy.faults = [500]
        with pytest.raises(LensUnavailable, match="HTTP 500"):
            flaky.repo("once")
        assert len(proxy.seen) == 1
    finally:
        flaky.close()


def test_unreachable_url_fails_fast() -> None:
    port = free_port()  # nothing listens here
    c = HttpLens(f"http://127.0.0.1:{port}", connect_timeout=0.2, backoff_base=0.01)
    try:
        started = time.monotonic()
        with pytest.raises(LensUnavailable, match="connection failed"):
            c.symbols("x", "y")
        assert time.monotonic() - started < 1.0
        ops = c.stats()["operations"]["symbols"]
        assert (ops["calls"], ops["unavailable"], ops["retries"]) == (1, 1, 2)
    finally:
        c.close()


# -- in-process --------------------------------------------------------------------------
@pytest.fixture
def local(tmp_path: Path) -> InProcessLens:
    return InProcessLens.from_data_dir(tmp_path / "lens-local", embedder_factory=HashEmbedder)


def test_in_process_operations(local: InProcessLens, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(FILES, name="proj")
    seen: list[tuple[str, int, int]] = []
    report = local.index(
        repo, "proj", rev=None, seed=None, progress=lambda *p: seen.append(p), should_stop=None
    )
    assert report["name"] == "proj" and report["files"] == len(FILES) and report["embedded"] > 0
    assert {s for s, *_ in seen} >= {"discover", "index", "embed", "done"}

    found = local.search("parse_config", mode="exact", limit=10, context=0, repos=None)
    assert found["total"] == 3
    semantic = local.search(
        "parse config", mode="semantic", limit=3, context=0, repos=["proj"], timeout_ms=5000
    )
    assert semantic["results"]
    assert local.read_file("proj", "src/app.py", 3, 3)["lines"] == ["def parse_config(path):"]
    batch = local.read_spans("proj", [("src/app.py", 3, 3), ("nope.py", 1, 1)])
    assert batch["spans"][0]["lines"] == ["def parse_config(path):"]
    assert batch["spans"][1]["error"]["code"] == "not_found" and batch["commit"] == report["commit"]
    with pytest.raises(LensRequestError) as too_big:
        local.read_spans("proj", [("src/app.py", 1, 5001)])
    assert too_big.value.code == "bad_request" and too_big.value.status == 400
    assert local.symbols("proj", "helper")[0]["name"] == "helper_function"
    info = local.repo("proj")
    assert info["semantic"]["status"] == "ready"

    with pytest.raises(LensRequestError) as bad:
        local.search('"unterminated', mode="exact", limit=5, context=0, repos=None)
    assert bad.value.code == "bad_query" and bad.value.status == 400
    with pytest.raises(LensRequestError) as missing:
        local.read_file("proj", "nope.py", None, None)
    assert missing.value.code == "not_found"

    shard = local.shard_path("proj")
    assert shard is not None and shard.is_file()
    assert local.shard_path("ghost") is None
    status = local.status()
    assert status["reachable"] is True and status["mode"] == "in_process" and status["repos"] == 1


def test_in_process_import_shard(
    local: InProcessLens, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    local.index(make_repo(FILES, name="orig"), "orig", rev=None, seed=None, progress=None, should_stop=None)
    shard = local.shard_path("orig")
    assert shard is not None

    other = InProcessLens.from_data_dir(tmp_path / "other-data", embedder_factory=HashEmbedder)
    other.import_shard("copy", shard)
    assert other.search("helper_function", mode="exact", limit=5, context=0, repos=None)["total"] == 1
    assert other.repo("copy")["files"] == len(FILES)
    first = other.shard_path("copy")
    other.import_shard("copy", shard)  # re-import publishes the next generation
    second = other.shard_path("copy")
    assert first is not None and second is not None and first.parent != second.parent
    assert [p.name for p in second.parent.parent.iterdir() if p.name.startswith("tmp-")] == []

    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LensRequestError) as bad:
        other.import_shard("junk", junk)
    assert bad.value.code == "bad_request"
    assert other.shard_path("junk") is None
    with pytest.raises(LensRequestError):
        other.import_shard("../evil", shard)


def test_in_process_cancel(local: InProcessLens, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(FILES, name="stop")
    with pytest.raises(Cancelled, match="during discover"):
        local.index(repo, "stop", rev=None, seed=None, progress=None, should_stop=lambda: True)
    assert local.shard_path("stop") is None  # nothing published

    stages: list[str] = []
    with pytest.raises(Cancelled, match="during embed"):
        local.index(
            repo,
            "stop",
            rev=None,
            seed=None,
            progress=lambda stage, done, total: stages.append(stage),
            should_stop=lambda: bool(stages) and stages[-1] == "index",
        )
    assert local.repo("stop")["files"] == len(FILES)  # the lexical index is live; embeddings are pending
    # The lock was released: indexing again works.
    assert local.index(repo, "stop", rev=None, seed=None, progress=None, should_stop=None)["files"] == len(
        FILES
    )


def test_factory(tmp_path: Path) -> None:
    http = make_lens_backend("http://127.0.0.1:9/", data_dir=tmp_path, token="t")
    assert isinstance(http, HttpLens) and http.base_url == "http://127.0.0.1:9"
    http.close()
    local = make_lens_backend(None, data_dir=tmp_path / "lens", token=None)
    assert isinstance(local, InProcessLens)
    assert local.status()["data_dir"] == str(tmp_path / "lens")
