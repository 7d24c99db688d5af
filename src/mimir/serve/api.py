"""The Mimir HTTP server: a REST API and the MCP Streamable HTTP endpoint (``/mcp``) in one FastAPI app.

Same conventions as the Lens API: errors are always JSON
``{"error": {"code", "message", "details"}}`` with the status the error type names;
bearer tokens (``MIMIR_API_TOKENS``) are compared as SHA-256 digests in constant time;
``/health``, ``/ready``, ``/metrics`` and the OpenAPI document stay public.

The MCP transport runs *stateless*: every POST is served on its own, so all three kinds
of client work against the same endpoint -- 2026-era clients that never initialize,
handshake-era clients that initialize first, and handshake-era clients that skip the
handshake. Progress notifications still flow (on the POST's SSE response); what
stateless mode gives up is server-to-client requests (sampling, elicitation), which
Mimir does not use. Auth and observability (infra.observability.http) are pure ASGI
middleware rather than ``@app.middleware("http")``, so the long-lived SSE responses of
``/mcp`` stream through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from infra.auth import (
    CURRENT_PRINCIPAL,
    WELL_KNOWN_PATH,
    protected_resource_metadata,
    request_base_url,
    split_scopes,
)
from infra.health import ComponentState, Readiness
from infra.observability.http import ObservabilityMiddleware
from infra.observability.metrics import exposition, set_build_info
from infra.ratelimit import make_rate_limiter
from infra.ratelimit import readiness_probe as rate_limiter_probe
from lens.errors import BadRequest, LensError, NotFound
from lens.serve.http_common import (
    BodySizeLimit,
    RequestGate,
    admission,
    install_error_handlers,
    is_loopback,
)
from mimir import __version__
from mimir.config import MimirSettings
from mimir.serve import metrics
from mimir.serve.cache import install_cache
from mimir.serve.mcp import build_mcp_server
from mimir.service import Mimir
from mimir.store.audit import audited, principal_name

log = logging.getLogger("mimir.api")
ModeName = Literal["hybrid", "exact", "ranked", "semantic"]
PUBLIC_PATHS = frozenset(
    {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    | {WELL_KNOWN_PATH}
)
MCP_PATH = "/mcp"


class InsecureBind(LensError):
    """Serving on a non-loopback address without tokens would expose every repository under the roots."""

    code = "insecure_bind"
    status = 500


# -- request bodies ---------------------------------------------------------------------
class IndexRequest(BaseModel):
    path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="Repository on the server; must lie under MIMIR_ALLOWED_ROOTS",
    )
    rev: str = Field("HEAD", min_length=1, max_length=256, description="Git revision (branch, tag, commit)")
    force: bool = Field(False, description="Rebuild even when a ready index for this commit exists")


class SearchRequest(BaseModel):
    index_id: str = Field(..., min_length=1, max_length=200)
    query: str = Field(..., min_length=1, max_length=2000, description="Plain text; no query syntax")
    k: int = Field(20, ge=1, le=200)
    mode: ModeName = "hybrid"
    context_lines: int = Field(5, ge=0, le=50)
    token_budget: int | None = Field(None, ge=128, le=200_000)


class AskRequest(BaseModel):
    index_id: str = Field(..., min_length=1, max_length=200)
    question: str = Field(..., min_length=1, max_length=4000)
    max_hops: int = Field(3, ge=0, le=6)
    token_budget: int | None = Field(None, ge=128, le=200_000)


class ImportRequest(BaseModel):
    path: str = Field(..., description="A Mimir bundle (.tar.zst) on the server, under MIMIR_ALLOWED_ROOTS")


class VerifyRequest(BaseModel):
    citation: str = Field(..., min_length=3, max_length=4200, description="path:Lstart-Lend@commit")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


# -- helpers ----------------------------------------------------------------------------
def _principal(request: Request) -> object:
    """The caller the auth gate put on the request (None when auth is off: "anonymous")."""
    return getattr(request.state, "principal", None)


class GuardMiddleware:
    """Auth then rate limit (http_common.RequestGate) but on public paths (pure ASGI; metrics elsewhere)."""

    def __init__(self, app: ASGIApp, gate: RequestGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self.gate.refusal(scope)  # 401/403/429; sets scope["state"]["principal"]
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        token = CURRENT_PRINCIPAL.set(scope.get("state", {}).get("principal"))
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_PRINCIPAL.reset(token)


def _transport_security(host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection on loopback; elsewhere bearer tokens are mandatory and protect /mcp."""
    if is_loopback(host):
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


# -- the app ----------------------------------------------------------------------------
def create_app(mimir: Mimir | None = None, settings: MimirSettings | None = None) -> FastAPI:
    """Build the app; raises :class:`InsecureBind` for a non-loopback host without tokens."""
    settings = settings or (mimir.settings if mimir is not None else MimirSettings())
    authenticator = admission(settings, log)  # refuses unsafe settings in staging/production
    if not authenticator.enabled and not is_loopback(settings.host):
        raise InsecureBind(
            f"refusing to serve on {settings.host} without MIMIR_API_TOKENS: auth may be off only on "
            "loopback (set MIMIR_API_TOKENS=<token>[,<token>...] or bind to 127.0.0.1)",
            details={"host": settings.host},
        )
    owned = mimir is None
    service = mimir if mimir is not None else Mimir(settings)
    mcp_server = build_mcp_server(service)
    # Builds the session manager; we mount its ASGI handler ourselves and run it in our lifespan.
    mcp_server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=False,
        transport_security=_transport_security(settings.host),
        host=settings.host,
    )
    session_manager = mcp_server.session_manager
    state: dict[str, bool] = {"mcp": False}
    gate = RequestGate(
        authenticator,
        make_rate_limiter(
            settings.redis_url,
            settings.rate_limit_per_minute,
            f"{settings.nats_namespace}:mimir",
            on_error=metrics.RATE_LIMITER_ERRORS.inc,
        ),
        realm="mimir",
        on_limited=metrics.RATE_LIMITED.inc,
        public_paths=PUBLIC_PATHS,
        resource_metadata=bool(settings.jwt_issuer),
        public_url=settings.public_url,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        set_build_info(metrics.BUILD_INFO, __version__)
        async with session_manager.run():
            state["mcp"] = True
            try:
                yield
            finally:
                state["mcp"] = False
        if owned:
            service.close()
        gate.close()
        if cache is not None:
            cache.close()

    app = FastAPI(
        title="Mimir",
        version=__version__,
        lifespan=lifespan,
        description="Code research over indexed git repositories: search, multi-hop questions, symbols, "
        "citations. The same tools are available over MCP (Streamable HTTP) at /mcp.",
        # Server spans come from infra.observability.http (one per request, ids in the logs).
        telemetry={"tracing": False},
    )
    app.state.mimir = service
    # Probes beyond the built-in checks of /ready; each dependency adds its own where it is created.
    app.state.readiness = readiness = Readiness()
    readiness.add("database", service.store.probe)  # SELECT 1 with a short timeout

    def lens_probe() -> ComponentState:
        lens = service.lens_status()
        reachable = bool(lens.get("reachable"))
        metrics.LENS_REACHABLE.set(1 if reachable else 0)
        detail = {k: lens.get(k) for k in ("mode", "breaker", "latency_ms")}
        if lens.get("error"):
            detail["error"] = lens["error"]
        return ComponentState("ok" if reachable else "down", detail)

    readiness.add("lens", lens_probe)
    readiness.add("mcp", lambda: ComponentState("ok" if state["mcp"] else "down"))
    if gate.limiter is not None:
        readiness.add("rate_limiter", rate_limiter_probe(gate.limiter), required=False)
    cache = install_cache(service, readiness)
    # The index work queue (NATS JetStream): required in queue mode, "disabled" otherwise.
    readiness.add("queue", service.manager.queue_probe, required=service.manager.queue_mode)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)  # inside: auth comes first
    app.add_middleware(GuardMiddleware, gate=gate)
    # Added last, so it wraps the guard: refused requests are counted, traced and logged too.
    app.add_middleware(ObservabilityMiddleware, metrics=metrics.HTTP, logger_name="mimir.http")
    # A plain Starlette route (not a Mount) so "/mcp" itself matches without a slash redirect.
    app.router.routes.append(Route(MCP_PATH, StreamableHTTPASGIApp(session_manager), include_in_schema=False))

    install_error_handlers(app, log)

    def check_length(what: str, text: str) -> None:
        if len(text) > settings.max_query_length:
            raise BadRequest(
                f"{what} is too long ({len(text)} characters, at most {settings.max_query_length})",
                details={"max_query_length": settings.max_query_length},
            )

    issuer = settings.jwt_issuer
    if issuer:

        @app.get(WELL_KNOWN_PATH, tags=["ops"])
        def protected_resource(request: Request) -> dict[str, Any]:
            """OAuth protected resource metadata (RFC 9728): which authorization server issues tokens."""
            base = request_base_url(request.url.scheme, request.scope["headers"], settings.public_url)
            return protected_resource_metadata(base, issuer, split_scopes(settings.jwt_required_scope))

    # -- indexing ---------------------------------------------------------------------
    @app.post("/api/index/repository", status_code=202, tags=["indexing"])
    def index_repository(req: IndexRequest, request: Request) -> dict[str, Any]:
        """Start (or reuse) the index of a repository at a revision; poll GET /api/jobs/{id}."""
        detail = {"rev": req.rev, "force": req.force}
        with audited(service.store, "index", _principal(request), req.path, detail) as entry:
            out = service.ensure_repo_index(req.path, req.rev, req.force)
            entry.detail.update(index_id=out["index_id"], reused=out.get("reused"))
        return {"job": out.get("run"), **{k: v for k, v in out.items() if k != "run"}}

    @app.get("/api/jobs/{job_id}", tags=["indexing"])
    def get_job(job_id: str) -> dict[str, Any]:
        return {"job": service.job(job_id)}

    @app.get("/api/indexes", tags=["indexing"])
    def list_indexes() -> dict[str, Any]:
        return {"indexes": service.list_indexes()}

    @app.post("/api/indexes/import", tags=["indexing"])
    def import_bundle(req: ImportRequest, request: Request) -> dict[str, Any]:
        """Register another Mimir's bundle so its index is searchable here, offline."""
        with audited(service.store, "import", _principal(request), req.path) as entry:
            out = service.import_bundle(req.path)
            entry.detail.update(index_id=out.get("index_id"), imported=out.get("imported"))
        return out

    @app.get("/api/indexes/{index_id}", tags=["indexing"])
    def index_status(index_id: str) -> dict[str, Any]:
        return service.index_status(index_id)

    @app.post("/api/indexes/{index_id}/cancel", tags=["indexing"])
    def cancel(index_id: str, request: Request) -> dict[str, Any]:
        with audited(service.store, "cancel", _principal(request), index_id):
            return service.cancel(index_id)

    @app.get("/api/indexes/{index_id}/manifest", tags=["indexing"])
    def manifest(index_id: str) -> dict[str, Any]:
        return service.manifest(index_id)

    @app.get("/api/indexes/{index_id}/log", tags=["indexing"], response_class=PlainTextResponse)
    def run_log(index_id: str) -> str:
        return service.log(index_id)

    @app.get("/api/indexes/{index_id}/bundle", tags=["indexing"], response_class=FileResponse)
    def bundle(index_id: str) -> FileResponse:
        """Download the index's portable bundle (tar + zstd)."""
        info = service.get_repo_bundle(index_id)
        path = Path(info["path"])
        if not path.is_file():
            raise NotFound(f"bundle of {index_id!r} is missing on disk", details={"path": str(path)})
        return FileResponse(path, media_type="application/zstd", filename=f"{index_id}.tar.zst")

    # -- research ---------------------------------------------------------------------
    @app.post("/api/search", tags=["research"])
    def search(req: SearchRequest, request: Request) -> dict[str, Any]:
        check_length("query", req.query)
        return service.search_repo(
            req.index_id,
            req.query,
            k=req.k,
            mode=req.mode,
            context_lines=req.context_lines,
            token_budget=req.token_budget,
            principal=principal_name(_principal(request)),
        )

    @app.post("/api/ask", tags=["research"])
    def ask(req: AskRequest, request: Request) -> dict[str, Any]:
        check_length("question", req.question)
        return service.ask_index(
            req.index_id,
            req.question,
            max_hops=req.max_hops,
            token_budget=req.token_budget,
            principal=principal_name(_principal(request)),
        )

    @app.get("/api/indexes/{index_id}/symbols", tags=["research"])
    def find_symbol(index_id: str, name: str = Query(..., min_length=1, max_length=200)) -> dict[str, Any]:
        return service.find_symbol(index_id, name)

    @app.get("/api/indexes/{index_id}/references", tags=["research"])
    def find_references(
        index_id: str, symbol: str = Query(..., min_length=1, max_length=200)
    ) -> dict[str, Any]:
        return service.find_references(index_id, symbol)

    @app.get("/api/indexes/{index_id}/span", tags=["research"])
    def read_span(
        index_id: str,
        path: str = Query(..., min_length=1),
        start: int = Query(..., ge=1),
        end: int = Query(..., ge=1),
    ) -> dict[str, Any]:
        return service.read_span(index_id, path, start, end)

    @app.get("/api/indexes/{index_id}/repomap", tags=["research"])
    def repo_map(index_id: str, token_budget: int = Query(2048, ge=64, le=65_536)) -> dict[str, Any]:
        return service.repo_map(index_id, token_budget)

    @app.post("/api/citations/verify", tags=["research"])
    def verify_citation(req: VerifyRequest) -> dict[str, Any]:
        return service.verify_citation(req.citation, req.sha256)

    @app.get("/api/lens/status", tags=["ops"])
    def lens_status() -> dict[str, Any]:
        return service.lens_status()

    # -- ops ----------------------------------------------------------------------------
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
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return app


__all__ = ["MCP_PATH", "PUBLIC_PATHS", "GuardMiddleware", "InsecureBind", "create_app"]
