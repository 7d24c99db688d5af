"""The Lens HTTP API: a thin FastAPI layer over :class:`lens.engine.Lens`.

Errors are always JSON ``{"error": {"code", "message", "details"}}`` with the
status the error type names; a bad query is a 400 naming the position, never a 500.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from infra.health import ComponentState, Readiness
from infra.observability.http import ObservabilityMiddleware
from infra.observability.metrics import exposition, set_build_info
from infra.ratelimit import make_rate_limiter
from infra.ratelimit import readiness_probe as rate_limiter_probe
from lens import __version__
from lens.config import LensSettings
from lens.engine import MAX_BATCH_LINES, MAX_BATCH_SPANS, MAX_SPAN_LINES, Lens
from lens.errors import BadRequest, LensError, Unauthorized
from lens.serve import metrics
from lens.serve.cache import install_search_cache
from lens.serve.http_common import (
    BodySizeLimit,
    RequestGate,
    admission,
    install_error_handlers,
    is_loopback,
)
from lens.serve.jobs import JobRunner
from lens.ship.runtime import shipping_for

log = logging.getLogger("lens.api")
ModeName = Literal["exact", "ranked", "semantic", "hybrid"]
_PUBLIC_PATHS = {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


class SearchRequest(BaseModel):
    q: str = Field(..., description="Query in Lens syntax (see docs/query-syntax.md)")
    mode: ModeName = "exact"
    limit: int = Field(100, ge=1, le=1000)
    context: int = Field(0, ge=0, le=20)
    cursor: str | None = None
    timeout_ms: int | None = Field(None, ge=1, le=60000)
    repos: list[str] | None = Field(None, description="Restrict to these repositories")


class IndexRequest(BaseModel):
    path: str = Field(
        ..., description="Repository or directory on the server; must lie under LENS_ALLOWED_ROOTS"
    )
    name: str | None = None
    rev: str | None = Field(None, description="Git revision (default HEAD)")
    worktree: bool = False
    full: bool = False
    seed: str | None = Field(None, description="Indexed repository to start from when `name` is new")


class SpanItem(BaseModel):
    path: str = Field(..., description="File path inside the repository, as indexed")
    start: int = Field(..., description="First line (1-based)")
    end: int = Field(..., description="Last line (inclusive); clamped to the end of the file")


class SpansRequest(BaseModel):
    spans: list[SpanItem] = Field(
        ...,
        description=(
            f"At most {MAX_BATCH_SPANS} line ranges, {MAX_SPAN_LINES} lines each and "
            f"{MAX_BATCH_LINES} lines in all"
        ),
    )


class GuardMiddleware:
    """Auth, then rate limit (http_common.RequestGate), except on public paths.

    Pure ASGI: ``@app.middleware("http")`` (BaseHTTPMiddleware) streamed every response through
    an extra task and memory stream, about 5% of a search request's CPU.
    """

    def __init__(self, app: ASGIApp, gate: RequestGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = await self.gate.refusal(scope)  # 401/403/429; sets scope["state"]["principal"]
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(lens: Lens | None = None, settings: LensSettings | None = None) -> FastAPI:
    settings = settings or (lens.settings if lens else LensSettings())
    authenticator = admission(settings, log)  # refuses unsafe settings in staging/production
    if not authenticator.enabled and not is_loopback(settings.host):
        raise LensError(
            f"refusing to serve on {settings.host} without LENS_API_TOKENS: auth may be off only on loopback"
        )
    engine = lens or Lens(settings)
    shipping = shipping_for(engine.catalog, settings)  # LENS_ROLE indexer/searcher: NATS shard shipping
    rate_limiter = make_rate_limiter(
        settings.redis_url,
        settings.rate_limit_per_minute,
        f"{settings.nats_namespace}:lens",
        on_error=metrics.RATE_LIMITER_ERRORS.inc,
    )
    gate = RequestGate(
        authenticator,
        rate_limiter,
        realm="lens",
        public_paths=_PUBLIC_PATHS,
        on_limited=metrics.RATE_LIMITED.inc,
    )
    runner_box: dict[str, JobRunner] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner_box["runner"] = JobRunner(engine, on_success=shipping.after_index if shipping else None)
        set_build_info(metrics.BUILD_INFO, __version__)
        for info in engine.repos():
            metrics.SHARD_GENERATION.labels(repo=info["name"]).set(info["generation"] or 0)
            metrics.REPO_FILES.labels(repo=info["name"]).set(info["files"] or 0)
        if shipping is not None:
            shipping.start(readiness)
        yield
        runner_box["runner"].close()
        if shipping is not None:
            shipping.close()
        gate.close()
        search_cache.close()

    app = FastAPI(
        title="Lens",
        version=__version__,
        lifespan=lifespan,
        description="Code search: literal, regex, symbol, ranked (BM25) and semantic queries.",
        # Server spans come from infra.observability.http (one per request, ids in the logs).
        telemetry={"tracing": False},
    )
    # Probes beyond the built-in checks of /ready; each dependency adds its own where it is created.
    app.state.readiness = readiness = Readiness()
    readiness.add("data_dir", lambda: ComponentState("ok", {"repos": len(engine.catalog.names())}))

    def index_worker_probe() -> ComponentState:
        box = runner_box.get("runner")
        if box is None or not box._thread.is_alive():
            return ComponentState("down", {"queued": None})
        return ComponentState("ok", {"queued": box.pending()})

    readiness.add("index_worker", index_worker_probe)
    if rate_limiter is not None:
        readiness.add("rate_limiter", rate_limiter_probe(rate_limiter), required=False)
    search_cache = install_search_cache(engine, settings, readiness)

    def runner() -> JobRunner:
        return runner_box["runner"]

    # Inside the guard: a caller is authenticated before its body is read.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(GuardMiddleware, gate=gate)

    # Added last, so it wraps the guard: refused requests are counted, traced and logged too.
    app.add_middleware(ObservabilityMiddleware, metrics=metrics.HTTP, logger_name="lens.http")

    def count_bad_query(exc: LensError) -> None:
        if exc.status == 400:
            metrics.SEARCH_ERRORS.labels(code=exc.code).inc()

    install_error_handlers(app, log, count_bad_query)

    def run_search(req: SearchRequest) -> dict[str, Any]:
        started = time.perf_counter()
        result = engine.search(
            req.q,
            mode=req.mode,
            limit=req.limit,
            context=req.context,
            cursor=req.cursor,
            timeout_ms=req.timeout_ms or settings.search_timeout_ms,
            repos=req.repos,
        )
        metrics.SEARCH_LATENCY.labels(mode=req.mode).observe(time.perf_counter() - started)
        metrics.SEARCH_RESULTS.labels(mode=req.mode).observe(len(result.results))
        if result.truncated:
            metrics.SEARCH_TRUNCATED.labels(mode=req.mode).inc()
        if result.timed_out:
            metrics.SEARCH_TIMEOUTS.labels(mode=req.mode).inc()
        return result.to_dict()

    limiter = anyio.CapacityLimiter(settings.search_concurrency or (os.cpu_count() or 1))

    async def run_search_limited(req: SearchRequest) -> dict[str, Any]:
        """Searches are CPU-bound: a few at a time finish sooner than many interleaved (GIL)."""
        params = req.model_dump(exclude={"timeout_ms"})  # a search that finished is the same under any budget
        compute = functools.partial(run_search, req)
        return await anyio.to_thread.run_sync(search_cache.search, params, compute, limiter=limiter)

    @app.get("/api/v1/search", tags=["search"])
    async def search_get(
        q: str = Query(...),
        mode: ModeName = "exact",
        limit: int = Query(100, ge=1, le=1000),
        context: int = Query(0, ge=0, le=20),
        cursor: str | None = None,
        timeout_ms: int | None = Query(None, ge=1, le=60000),
        repo: list[str] | None = Query(None),
    ) -> dict[str, Any]:
        return await run_search_limited(
            SearchRequest(
                q=q, mode=mode, limit=limit, context=context, cursor=cursor, timeout_ms=timeout_ms, repos=repo
            )
        )

    @app.post("/api/v1/search", tags=["search"])
    async def search_post(req: SearchRequest) -> dict[str, Any]:
        return await run_search_limited(req)

    @app.post("/api/v1/repos", status_code=202, tags=["repos"])
    def index_repo(req: IndexRequest) -> dict[str, Any]:
        from lens.engine import check_allowed
        from lens.index.catalog import validate_name

        if shipping is not None:
            shipping.check_writable("index requests")
        path = check_allowed(Path(req.path), settings.roots())
        name = validate_name(req.name or path.name)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise BadRequest(f"path {req.path!r} {what}", details={"path": req.path})
        job = runner().submit(name, path, rev=req.rev, worktree=req.worktree, full=req.full, seed=req.seed)
        return {"job": job.to_dict()}

    @app.get("/api/v1/jobs/{job_id}", tags=["repos"])
    def get_job(job_id: str) -> dict[str, Any]:
        return {"job": runner().get(job_id).to_dict()}

    @app.get("/api/v1/repos", tags=["repos"])
    def list_repos() -> dict[str, Any]:
        return {"repos": engine.repos()}

    @app.get("/api/v1/repos/{name}", tags=["repos"])
    def get_repo(name: str) -> dict[str, Any]:
        return {"repo": engine.repo(name)}

    @app.delete("/api/v1/repos/{name}", tags=["repos"])
    def delete_repo(name: str) -> dict[str, Any]:
        if shipping is not None:
            shipping.check_writable("deletes")
        engine.remove(name)
        if shipping is not None:
            shipping.after_delete(name)
        return {"deleted": name}

    @app.get("/api/v1/repos/{name}/files/{path:path}", tags=["repos"])
    def read_file(
        name: str, path: str, start: int | None = Query(None, ge=1), end: int | None = Query(None, ge=1)
    ) -> dict[str, Any]:
        return engine.read_file(name, path, start, end)

    @app.post("/api/v1/repos/{name}/spans", tags=["repos"])
    def read_spans(name: str, req: SpansRequest) -> dict[str, Any]:
        """Many line ranges in one call, from one snapshot; per item the lines or an error."""
        return engine.read_spans(name, [(s.path, s.start, s.end) for s in req.spans])

    @app.get("/api/v1/repos/{name}/symbols", tags=["repos"])
    def symbols(
        name: str,
        q: str = Query(..., min_length=1, max_length=200),
        kind: str | None = None,
        limit: int = Query(50, ge=1, le=1000),
    ) -> dict[str, Any]:
        return {"symbols": engine.symbols(name, q, kind=kind, limit=limit)}

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    def ready() -> JSONResponse:
        ok, checks = readiness.report()
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> Response:
        with contextlib.suppress(OSError):
            metrics.SHARDS.set(len(engine.catalog.names()))
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return app


__all__ = ["Unauthorized", "create_app", "is_loopback"]
