"""Traces: W3C trace context from Mimir to its index worker and to a real Lens process, through NATS
headers, and in the spans we make.

The Lens side is a ``lens serve`` subprocess exporting OTLP/HTTP to a receiver this test runs
on loopback (it decodes ``ExportTraceServiceRequest`` protobufs), and so does Mimir's index
worker process; the Mimir server runs in this process and records into an in-memory exporter.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import nats
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from infra.observability import tracing
from mimir.config import MimirSettings
from mimir.serve.api import create_app
from mimir.serve.mcp import metered
from mimir.service import Mimir
from support import free_port

FILES = {
    "shop/pricing.py": (
        "def apply_discount(amount):\n    if amount > 100:\n        return amount * 0.9\n    return amount\n"
    ),
    "shop/cart.py": "from shop.pricing import apply_discount\n\n\ndef total(x):\n    return apply_discount(x)\n",  # noqa: E501
}


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    tracing.setup_tracing("mimir", processor=SimpleSpanProcessor(memory))
    return memory


def _hex(ctx_id: int, width: int) -> str:
    return format(ctx_id, f"0{width}x")


def finished(memory: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in memory.get_finished_spans() if s.context and _hex(s.context.trace_id, 32) == trace_id]


# -- an OTLP/HTTP receiver ----------------------------------------------------------------------
@dataclass
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int


class OtlpReceiver:
    """Accepts ``POST /v1/traces`` (protobuf, optionally gzip) and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.paths: list[str] = []
        spans, paths = self.spans, self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                paths.append(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            spans.append(
                                ExportedSpan(
                                    attrs.get("service.name", ""),
                                    s.name,
                                    s.trace_id.hex(),
                                    s.span_id.hex(),
                                    s.parent_span_id.hex(),
                                    s.kind,
                                )
                            )
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, found: Callable[[list[ExportedSpan]], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not found(list(self.spans)):
            assert time.monotonic() < deadline, f"spans never arrived: {self.spans}"
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


def _start_lens(tmp_path: Path, otel: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "LENS_DATA_DIR": str(tmp_path / "lens-data"),
        "LENS_ALLOWED_ROOTS": str(tmp_path),
        "LENS_EMBED": "0",
        "LENS_OTEL_ENDPOINT": otel,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("lens did not start")


# -- Mimir -> Lens over HTTP -------------------------------------------------------------------
@pytest.mark.slow
def test_index_and_search_are_traced_across_mimir_its_worker_and_lens(
    tmp_path: Path,
    make_repo: Callable[..., Path],
    exporter: InMemorySpanExporter,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(FILES, name="shop")
    lens_proc, lens_url = _start_lens(tmp_path, receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # for the index worker process
    settings = MimirSettings(
        data_dir=tmp_path / "mimir-data",
        allowed_roots=str(tmp_path),
        lens_url=lens_url,
        otel_endpoint=receiver.url,  # the index worker exports its spans
    )
    mimir = Mimir(settings)
    try:
        with tracing.span("test starts an index run") as starter:
            out = mimir.ensure_repo_index(str(repo))
        assert mimir.manager.wait(out["run"]["run_id"], timeout=120).state == "succeeded"
        index_trace = _hex(starter.get_span_context().trace_id, 32)

        def index_spans(spans: list[ExportedSpan]) -> bool:
            names = {(s.service, s.name) for s in spans if s.trace_id == index_trace}
            return {("mimir", "pipeline search_index"), ("lens", "POST /api/v1/repos")} <= names

        # The worker process continues the starter's trace, and so does Lens when the worker calls it.
        receiver.wait_for(index_spans)
        run_span = next(s for s in receiver.spans if s.trace_id == index_trace and s.name == "index run")
        assert run_span.parent_span_id == _hex(starter.get_span_context().span_id, 16)
        stages = {s.name for s in receiver.spans if s.parent_span_id == run_span.span_id}
        assert {"pipeline acquire", "pipeline symbols", "pipeline bundle"} <= stages
        with TestClient(create_app(mimir, settings)) as client:
            resp = client.post(
                "/api/search", json={"index_id": out["index_id"], "query": "apply_discount", "mode": "exact"}
            )
        assert resp.status_code == 200 and resp.json()["results"]
        servers = [
            s
            for s in exporter.get_finished_spans()
            if s.name == "POST /api/search" and s.kind is SpanKind.SERVER
        ]
        assert len(servers) == 1  # ours only: FastAPI's own server spans are off
        server = servers[0]
        assert server.context is not None
        trace_id = _hex(server.context.trace_id, 32)
        ours = finished(exporter, trace_id)
        client_spans = {
            _hex(s.context.span_id, 16): s
            for s in ours
            if s.kind is SpanKind.CLIENT and s.context is not None
        }
        assert any(s.name == "lens search" for s in client_spans.values()), [s.name for s in ours]

        def lens_search_span(spans: list[ExportedSpan]) -> bool:
            return any(s.trace_id == trace_id and s.name == "POST /api/v1/search" for s in spans)

        receiver.wait_for(lens_search_span)
        theirs = [s for s in receiver.spans if s.trace_id == trace_id]
        lens_server = next(s for s in theirs if s.name == "POST /api/v1/search")
        assert lens_server.service == "lens"
        assert lens_server.kind == 2  # SPAN_KIND_SERVER
        # Its parent is the Mimir client span that made the call.
        assert client_spans[lens_server.parent_span_id].name == "lens search"
        assert "/v1/traces" in receiver.paths
    finally:
        mimir.close()
        os.killpg(lens_proc.pid, signal.SIGKILL)
        lens_proc.wait()


# -- NATS headers ----------------------------------------------------------------------------------
def test_trace_context_survives_a_nats_round_trip(exporter: InMemorySpanExporter) -> None:
    async def round_trip() -> tuple[str, str, str, str]:
        nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2, max_reconnect_attempts=0)
        try:
            subject = f"h6.trace.{uuid.uuid4().hex}"
            sub = await nc.subscribe(subject)
            with tracing.span("job publish", kind=SpanKind.PRODUCER) as producer:
                await nc.publish(subject, b"job", headers=tracing.inject_headers())
            msg = await sub.next_msg(timeout=5)
            with tracing.attached(tracing.extract_context(msg.headers)), tracing.span("job consume") as child:
                pass
            p, c = producer.get_span_context(), child.get_span_context()
            assert child.parent is not None  # type: ignore[attr-defined]
            parent_of_child = child.parent.span_id  # type: ignore[attr-defined]
            return _hex(p.trace_id, 32), _hex(c.trace_id, 32), _hex(p.span_id, 16), _hex(parent_of_child, 16)
        finally:
            await nc.close()

    producer_trace, consumer_trace, producer_span, consumer_parent = asyncio.run(round_trip())
    assert consumer_trace == producer_trace
    assert consumer_parent == producer_span


# -- our own spans ------------------------------------------------------------------------------------
def test_span_helper_names_attributes_and_errors(exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(RuntimeError),
        tracing.span("db query", db__system__name="postgresql", missing=None) as s,
    ):
        raise RuntimeError("connection reset")
    assert s.get_span_context().is_valid
    done = finished(exporter, _hex(s.get_span_context().trace_id, 32))[-1]
    assert done.attributes is not None and done.attributes["db.system.name"] == "postgresql"
    assert "missing" not in done.attributes
    assert done.status.status_code is StatusCode.ERROR
    assert tracing.extract_context(None) is not None
    assert tracing.extract_context({"traceparent": "garbage"}) is not None
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_mcp_tool_calls_are_spans(exporter: InMemorySpanExporter) -> None:
    async def call() -> None:
        async with metered("search_repo"):
            await asyncio.sleep(0)

    asyncio.run(call())
    span = next(s for s in reversed(exporter.get_finished_spans()) if s.name == "tools/call search_repo")
    assert span.attributes is not None
    assert span.attributes["gen_ai.tool.name"] == "search_repo"
    assert span.attributes["mimir.tool.outcome"] == "ok"
