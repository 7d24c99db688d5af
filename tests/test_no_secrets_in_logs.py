"""No secret ever reaches a log: both services as real processes, a full workflow, then grep everything.

Lens and Mimir run through their ``serve`` commands on loopback with API tokens, Mimir's
token for Lens, an LLM key (sent to a fake LLM that fails) and a PostgreSQL password (in a
database URL for a database made for this test), all at DEBUG. The workflow indexes a
git repository, searches, asks, lists MCP tools, and makes failed-auth and bad-query
requests (some carrying the real tokens). Afterwards no stdout/stderr line, run log, or
HTTP response may contain any of the secrets.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from support import free_port

pytestmark = pytest.mark.slow

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FILES = {
    "billing/invoice.py": (
        "from billing.tax import add_vat\n\n\n"
        "def invoice_total(lines):\n"
        "    return add_vat(sum(amount for _, amount in lines))\n"
    ),
    "billing/tax.py": "def add_vat(amount):\n    return round(amount * 1.2, 2)\n",
}
_GENERIC = ("DATABASE_URL", "REDIS_URL", "NATS_URL", "NATS_NAMESPACE", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Secrets:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.lens_token = f"lens-tok-{tag}-Lq8"
        self.mimir_token = f"mimir-tok-{tag}-Mz3"
        self.llm_key = f"sk-llm-{tag}-Kx5"
        self.db_password = f"pg-pw-{tag}-Dv7"

    def all(self) -> list[str]:
        return [self.lens_token, self.mimir_token, self.llm_key, self.db_password]


class FakeLLM(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible endpoint that always fails, remembering the Authorization it got."""

    def __init__(self, port: int) -> None:
        self.authorizations: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.authorizations.append(self.headers.get("Authorization", ""))
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = b'{"error": {"message": "model overloaded"}}'
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


@pytest.fixture
def fake_llm() -> Iterator[tuple[FakeLLM, int]]:
    port = free_port()
    server = FakeLLM(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the loopback PostgreSQL (trust auth: any password is accepted)."""
    name = f"h1_nosecrets_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc}); start it with scripts/services.sh"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("LENS_", "MIMIR_")) and k.upper().removesuffix("_FILE") not in _GENERIC
    }
    return env | {"HOME": str(tmp_path)}


def start(service: str, port: int, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    out = (logs / f"{service}.stdout").open("wb")
    err = (logs / f"{service}.stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", f"{service}.serve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    out.close()
    err.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service} exited: {(logs / f'{service}.stderr').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{service} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_no_secret_in_any_log(
    tmp_path: Path,
    make_repo: Callable[..., Path],
    fake_llm: tuple[FakeLLM, int],
    database: str,
) -> None:
    secrets = Secrets()
    llm, llm_port = fake_llm
    repo = make_repo(FILES, name="billing-repo")
    logs = tmp_path / "logs"
    logs.mkdir()
    lens_port, mimir_port = free_port(), free_port()
    base_env = clean_env(tmp_path)
    lens_env = base_env | {
        "LENS_API_TOKENS": f"other-lens-token-xyz,{secrets.lens_token}",
        "LENS_DATA_DIR": str(tmp_path / "lens-data"),
        "LENS_ALLOWED_ROOTS": str(tmp_path),
        "LENS_EMBED": "0",
        "LENS_LOG_LEVEL": "DEBUG",
    }
    mimir_env = base_env | {
        "MIMIR_API_TOKENS": secrets.mimir_token,
        "MIMIR_DATA_DIR": str(tmp_path / "mimir-data"),
        "MIMIR_ALLOWED_ROOTS": str(tmp_path),
        "MIMIR_EMBED": "0",
        "MIMIR_LOG_LEVEL": "DEBUG",
        "MIMIR_LENS_URL": f"http://127.0.0.1:{lens_port}",
        "MIMIR_LENS_TOKEN": secrets.lens_token,
        "MIMIR_LLM_PROVIDER": "openai",
        "MIMIR_LLM_URL": f"http://127.0.0.1:{llm_port}/v1",
        "MIMIR_LLM_MODEL": "fake-model",
        "MIMIR_LLM_API_KEY": secrets.llm_key,
        "DATABASE_URL": f"postgresql://postgres:{secrets.db_password}@127.0.0.1:5432/{database}",
    }
    responses: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start("lens", lens_port, lens_env, logs))
        procs.append(start("mimir", mimir_port, mimir_env, logs))
        lens = httpx.Client(base_url=f"http://127.0.0.1:{lens_port}", timeout=60)
        mimir = httpx.Client(base_url=f"http://127.0.0.1:{mimir_port}", timeout=120)
        ok = {"Authorization": f"Bearer {secrets.mimir_token}"}

        def call(client: httpx.Client, method: str, url: str, status: int, **kw: Any) -> dict[str, Any]:
            resp = client.request(method, url, **kw)
            responses.append(resp.text + json.dumps(dict(resp.headers)))
            assert resp.status_code == status, (url, resp.text)
            return resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}

        started = call(mimir, "POST", "/api/index/repository", 202, json={"path": str(repo)}, headers=ok)
        job_id = started["job"]["run_id"]
        deadline = time.monotonic() + 300
        while True:
            job = call(mimir, "GET", f"/api/jobs/{job_id}", 200, headers=ok)["job"]
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.25)
        assert job["state"] == "succeeded", job
        index_id = started["index_id"]

        found = call(
            mimir, "POST", "/api/search", 200, json={"index_id": index_id, "query": "add_vat"}, headers=ok
        )
        assert found["results"] and "lens" not in found.get("missing", [])
        asked = call(
            mimir,
            "POST",
            "/api/ask",
            200,
            json={"index_id": index_id, "question": "how is VAT added?"},
            headers=ok,
        )
        assert asked["findings"] and "llm" in asked["missing"], asked  # the fake LLM failed, said so
        assert f"Bearer {secrets.llm_key}" in llm.authorizations  # the key was really used
        mcp_headers = {**ok, "Accept": "application/json, text/event-stream"}
        tools = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        call(mimir, "POST", "/mcp", 200, json=tools, headers=mcp_headers)

        # Failures: wrong and missing tokens, tokens sent to the wrong service, bad queries.
        call(mimir, "GET", "/api/indexes", 401)
        call(mimir, "GET", "/api/indexes", 401, headers={"Authorization": f"Bearer {secrets.lens_token}"})
        call(mimir, "GET", "/api/indexes", 401, headers={"Authorization": f"Basic {secrets.mimir_token}"})
        call(lens, "GET", "/api/v1/repos", 401, headers={"Authorization": f"Bearer {secrets.mimir_token}"})
        call(lens, "GET", "/api/v1/repos", 401)
        lens_ok = {"Authorization": f"Bearer {secrets.lens_token}"}
        call(lens, "GET", "/api/v1/search", 200, params={"q": "add_vat"}, headers=lens_ok)
        call(lens, "GET", "/api/v1/search", 400, params={"q": "/(unclosed/"}, headers=lens_ok)
        call(lens, "POST", "/api/v1/search", 400, content=b"{not json", headers=lens_ok)
        call(mimir, "POST", "/api/search", 400, json={"index_id": index_id, "query": ""}, headers=ok)
        call(mimir, "POST", "/api/search", 400, json={"index_id": index_id, "query": "q" * 5000}, headers=ok)
        call(mimir, "POST", "/api/ask", 400, content=b'{"index_id": 1', headers=ok)
    finally:
        for proc in reversed(procs):
            stop(proc)

    texts = {p.name: p.read_bytes().decode(errors="replace") for p in logs.iterdir()}
    for run_log in (tmp_path / "mimir-data").rglob("*.log"):
        texts[str(run_log)] = run_log.read_bytes().decode(errors="replace")
    texts["http responses"] = "\n".join(responses)
    assert texts["mimir.stderr"] or texts["lens.stderr"], "the services logged nothing to check"
    for where, text in texts.items():
        for secret in secrets.all():
            assert secret not in text, f"a secret leaked into {where}"
