"""Logs: one format for every line, request and trace ids on each, secrets redacted.

The end-to-end test reads a real ``lens serve`` process's stderr: every line must be a
JSON object, and the request's line must carry the id we sent and the trace we started.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from infra.observability import tracing
from infra.observability.logging import (
    REDACTED,
    bind_request,
    redact_secrets,
    redact_text,
    resolve_format,
    setup_logging,
    unbind,
)
from support import free_port


def test_format_defaults_to_json_outside_development() -> None:
    assert resolve_format("", "development") == "console"
    assert resolve_format("", "staging") == "json"
    assert resolve_format("", "production") == "json"
    assert resolve_format("json", "development") == "json"
    assert resolve_format("console", "production") == "console"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("calling Lens with Authorization: Bearer abc.def-123", "abc.def-123"),
        ("db at postgresql://mimir:hunter2@db:5432/mimir is down", "hunter2"),
        ("GET /cb?code=1&access_token=tok123&x=2", "tok123"),
        ("redis://:sEcReT@cache:6379/0", "sEcReT"),
        ("retrying https://api.example/v1?api_key=k-999", "k-999"),
        ("basic auth Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ],
)
def test_secrets_in_text_are_redacted(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and REDACTED in out


def test_secrets_in_fields_are_redacted_and_numbers_kept() -> None:
    event = {
        "event": "request to postgresql://u:pw@h/db",
        "authorization": "Bearer xyz",
        "headers": {"Authorization": "Bearer xyz", "accept": "application/json"},
        "api_key": "k1",
        "token_budget": 2048,
        "urls": ["redis://:pw2@r:6379"],
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["authorization"] == REDACTED and out["api_key"] == REDACTED
    assert out["headers"] == {"Authorization": REDACTED, "accept": "application/json"}
    assert out["token_budget"] == 2048
    assert "pw" not in out["event"] and "pw2" not in out["urls"][0]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("uvicorn.access").propagate
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("uvicorn.access").propagate = access
        structlog.reset_defaults()


def test_stdlib_and_structlog_lines_share_one_json_format(restore_logging: None) -> None:
    stream = io.StringIO()
    assert setup_logging("lens", environment="production", stream=stream) == "json"
    tracing.setup_tracing("lens")
    tokens = bind_request("req-42")
    try:
        with tracing.span("work") as span:
            logging.getLogger("lens.test").warning("stdlib says %s with password=%s", "hi", "pw1")
            structlog.get_logger("lens.test").info("structlog says", authorization="Bearer t0k")
    finally:
        unbind(tokens)
    logging.getLogger("lens.test").info("outside the request")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    trace_id = format(span.get_span_context().trace_id, "032x")
    first, second, third = lines
    assert first["event"] == f"stdlib says hi with password={REDACTED}"
    assert first["level"] == "warning" and first["logger"] == "lens.test" and first["service"] == "lens"
    assert second["event"] == "structlog says" and second["authorization"] == REDACTED
    for line in (first, second):
        assert line["request_id"] == "req-42" and line["trace_id"] == trace_id and line["timestamp"]
    assert "request_id" not in third and "trace_id" not in third


def test_console_format_for_development(restore_logging: None) -> None:
    stream = io.StringIO()
    assert setup_logging("mimir", environment="development", stream=stream) == "console"
    logging.getLogger("mimir.test").warning("readable line")
    line = stream.getvalue().strip()
    assert "readable line" in line and "warning" in line and not line.startswith("{")


@pytest.mark.slow
def test_served_request_lines_carry_request_and_trace_ids(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LENS_DATA_DIR": str(tmp_path / "data"),
        "LENS_EMBED": "0",
        "LENS_LOG_FORMAT": "json",
        "LENS_API_TOKENS": "tok-secret-1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        "X-Request-ID": "req-from-client-7",
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "Authorization": "Bearer tok-secret-1",
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "lens exited"
            assert time.monotonic() < deadline, "lens did not start"
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        resp = httpx.get(f"http://127.0.0.1:{port}/api/v1/repos", headers=headers, timeout=10)
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "req-from-client-7"
        generated = httpx.get(f"http://127.0.0.1:{port}/api/v1/repos", timeout=10).headers["x-request-id"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines)  # uvicorn's too
    ours = [line for line in lines if line.get("request_id") == "req-from-client-7"]
    assert ours, stderr
    assert ours[0]["trace_id"] == trace_id and len(ours[0]["span_id"]) == 16
    assert ours[0]["http_route"] == "/api/v1/repos" and ours[0]["http_status"] == 200
    other = next(line for line in lines if line.get("request_id") == generated)
    assert len(other["trace_id"]) == 32 and other["trace_id"] != trace_id
    assert "tok-secret-1" not in stderr
