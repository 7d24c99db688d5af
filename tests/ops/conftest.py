"""A real Lens and a real Mimir (``lens serve``, ``mimir serve`` with LENS_URL at that Lens) as
subprocesses on loopback, after a real workload; shared by the metric-name check and the live
Prometheus test.

The workload goes through Mimir's public surfaces: index a git repository made here (REST),
search in several modes and ask (REST), call an MCP tool (Streamable HTTP, plain JSON-RPC),
send bad requests to both services, and search Lens directly. Then /metrics of each service
is scraped once and kept, so a later test may stop a service without losing the scrape.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ops_support import EXPORTERS, LiveStack, Service, require_binary

from gitrepo import commit_all, git, write_files
from support import free_port

REPO_FILES = {
    "shop/cart.py": (
        "from shop.pricing import apply_discount\n\n\n"
        "class Cart:\n"
        "    def __init__(self) -> None:\n"
        "        self.items: list[tuple[str, float]] = []\n\n"
        "    def add(self, name: str, price: float) -> None:\n"
        "        self.items.append((name, price))\n\n\n"
        "def checkout_total(cart: Cart) -> float:\n"
        "    subtotal = sum(price for _, price in cart.items)\n"
        "    return apply_discount(subtotal)\n"
    ),
    "shop/pricing.py": (
        "def apply_discount(amount: float) -> float:\n"
        "    if amount > 100:\n"
        "        return amount * 0.9\n"
        "    return amount\n"
    ),
    "README.md": "# shop\n\nA tiny shop used by the operations tests.\n",
}
# Variables that would point the services at external backends or another configuration.
_CLEARED_PREFIXES = ("LENS_", "MIMIR_", "OTEL_")
_CLEARED = {"DATABASE_URL", "REDIS_URL", "NATS_URL", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES) and k not in _CLEARED}
    env.update(extra)
    return env


def _start(name: str, module: str, port: int, env: dict[str, str], log: Path) -> Service:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, port, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{service.base}/health", timeout=1).status_code == 200:
                return service
        except httpx.HTTPError:
            time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")


def _make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    write_files(root, REPO_FILES)
    commit_all(root, "initial")
    return root


def _ok(resp: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in (statuses or (200,)), (
        f"{resp.request.url}: {resp.status_code} {resp.text[:500]}"
    )
    body: dict[str, Any] = resp.json()
    return body


def _workload(stack: LiveStack, repo: Path) -> None:
    with httpx.Client(base_url=stack.mimir.base, timeout=60) as mimir:
        job = _ok(mimir.post("/api/index/repository", json={"path": str(repo)}), 202)
        stack.index_id = str(job["index_id"])
        job_id = job["job"]["run_id"]
        deadline = time.monotonic() + 180
        while True:
            state = _ok(mimir.get(f"/api/jobs/{job_id}"))["job"]
            if state["state"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.25)
        assert state["state"] == "succeeded", state
        for mode in ("hybrid", "exact", "ranked"):
            found = _ok(
                mimir.post(
                    "/api/search", json={"index_id": stack.index_id, "query": "apply_discount", "mode": mode}
                )
            )
            assert found["results"], found
        _ok(
            mimir.post(
                "/api/ask", json={"index_id": stack.index_id, "question": "how is the total discounted?"}
            )
        )
        _ok(mimir.get("/api/indexes"))
        _ok(mimir.get("/api/lens/status"))
        _ok(mimir.get("/ready"))
        # An MCP tool call over Streamable HTTP (plain JSON-RPC; the server runs stateless).
        mcp = mimir.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "search_repo", "arguments": {"index_id": stack.index_id, "query": "Cart"}},
            },
            headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"},
        )
        assert mcp.status_code == 200 and "Cart" in mcp.text, mcp.text[:500]
        # Bad requests: a body that fails validation, an unknown index.
        _ok(mimir.post("/api/search", json={"query": ""}), 400)
        _ok(mimir.get("/api/indexes/no-such-index"), 404)
    with httpx.Client(base_url=stack.lens.base, timeout=60) as lens:
        _ok(lens.get("/api/v1/search", params={"q": "apply_discount"}))
        _ok(lens.get("/api/v1/search", params={"q": "sym:Cart", "mode": "exact"}))
        _ok(lens.get("/api/v1/search", params={"q": "/unclosed(/"}), 400)
        _ok(lens.get("/api/v1/repos"))
        _ok(lens.get("/ready"))


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    base = tmp_path_factory.mktemp("ops-live").resolve()
    repo = _make_repo(base / "shop-repo")
    lens_port, mimir_port = free_port(), free_port()
    lens = _start(
        "lens",
        "lens.serve.cli",
        lens_port,
        _env(
            LENS_DATA_DIR=str(base / "lens-data"),
            LENS_ALLOWED_ROOTS=str(base),
            LENS_EMBED="false",
            LENS_LOG_FORMAT="json",
        ),
        base / "lens.log",
    )
    try:
        mimir = _start(
            "mimir",
            "mimir.serve.cli",
            mimir_port,
            _env(
                MIMIR_DATA_DIR=str(base / "mimir-data"),
                MIMIR_ALLOWED_ROOTS=str(base),
                MIMIR_EMBED="false",
                MIMIR_LOG_FORMAT="json",
                LENS_URL=lens.base,
            ),
            base / "mimir.log",
        )
    except BaseException:
        lens.stop()
        raise
    stack = LiveStack(lens, mimir)
    try:
        _workload(stack, repo)
        for service in (lens, mimir):
            resp = httpx.get(f"{service.base}/metrics", timeout=30)
            assert resp.status_code == 200, resp.text[:300]
            stack.scrapes[service.name] = resp.text
            spec = httpx.get(f"{service.base}/openapi.json", timeout=30).json()
            stack.routes[service.name] = set(spec["paths"])
        yield stack
    finally:
        mimir.stop()
        lens.stop()


@pytest.fixture(scope="session")
def exporters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, str]]]:
    """Real node, PostgreSQL and Redis exporters (Debian packages) on loopback, against the local
    PostgreSQL and Redis (scripts/services.sh): job name -> (port, /metrics text)."""
    base = tmp_path_factory.mktemp("exporters")
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, tuple[int, str]] = {}
    try:
        for job, (binary, args, env, ready) in EXPORTERS.items():
            port = free_port()
            with (base / f"{job}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [require_binary(binary), *[a.format(port=port) for a in args]],
                        env={**os.environ, **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            deadline = time.monotonic() + 30
            text = ""
            while ready not in text:
                assert time.monotonic() < deadline, f"{binary} not ready ({ready!r}):\n{text[-2000:]}"
                assert procs[-1].poll() is None, (base / f"{job}.log").read_text()
                try:
                    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                if ready not in text:
                    time.sleep(0.2)
            out[job] = (port, text)
        yield out
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
