"""Mimir as an MCP server: twelve tools and four resource templates over the :class:`Mimir` facade.

Design decisions worth knowing:

- Every tool body runs the (blocking, SQLite- and Lens-bound) facade method in a worker
  thread, so one slow search never stalls the event loop, progress notifications or
  other sessions.
- Every :class:`~lens.errors.LensError` (unknown index, path outside MIMIR_ALLOWED_ROOTS,
  cancelled run, Lens unavailable, bad argument) becomes an MCP tool error
  (``isError: true``) whose text names the problem, its code and what to do; so does
  any unexpected exception (logged with its traceback). The server never crashes on a
  tool call.
- Results are plain JSON objects, so the SDK emits them as ``structuredContent`` (and as
  a JSON text block for clients that only read text).
- ``ensure_repo_index`` streams progress only when the client asked for it (sent a
  progress token); then it waits, bounded, for the run to finish. Without a token it
  returns at once and the client polls ``index_status``.
- Bundles: ``mimir://indexes/{id}/bundle`` is the bundle's *metadata* (path, size,
  sha256, manifest summary) as JSON, because hosts often paste resources into the
  model's context and a base64 archive there is useless and expensive. The raw bytes
  are a separate resource, ``mimir://indexes/{id}/bundle.tar.zst`` (a blob,
  ``application/zstd``), served only up to 8 MiB; larger bundles are refused with a
  pointer to the file path and the REST download ``GET /api/indexes/{id}/bundle``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from infra.auth import CURRENT_PRINCIPAL
from infra.observability import tracing
from lens.errors import LensError, NotFound
from mimir import __version__
from mimir.serve import metrics
from mimir.service import Mimir
from mimir.store.audit import audited, principal_name

log = logging.getLogger("mimir.mcp")
T = TypeVar("T")

SearchMode = Literal["hybrid", "exact", "ranked", "semantic"]
MAX_BUNDLE_BLOB_BYTES = 8 << 20
PROGRESS_WAIT_S = 600.0
POLL_INTERVAL_S = 0.25
_TERMINAL_RUN_STATES = ("succeeded", "failed", "cancelled")

INSTRUCTIONS = """\
Mimir answers questions about source code in git repositories on this machine, with citations.

Workflow:
1. ensure_repo_index(path) -> index_id. Indexing an unseen commit takes seconds to minutes;
   poll index_status(index_id) until index.status is "ready" (or pass a progress token to
   get progress notifications while ensure_repo_index waits). The same repository at the
   same commit is reused instantly.
2. Research with the index_id:
   - search_repo: ranked code spans for a query (hybrid lexical + semantic + symbol + call graph).
   - ask_index: multi-hop evidence for a question (follows calls/inheritance), with an answer
     built only from cited findings.
   - find_symbol / find_references: definitions, references and callers of a name.
   - read_span: exact lines of a file at the indexed commit.
   - repo_map: a compact overview of the most central files and their definitions.
3. Cite results by their `citation` (path:Lstart-Lend@commit). verify_citation tells whether
   a citation still matches the files on disk (valid) or the code changed (stale).

list_indexes shows what is already indexed. Results marked degraded: true are incomplete
(the `missing` field says which signal failed); say so rather than presenting them as complete.
"""

_INDEX_ID = Field(
    description="The index_id returned by ensure_repo_index (or listed by list_indexes).",
    min_length=1,
    max_length=200,
)
_TOKEN_BUDGET = Field(
    ge=128,
    le=200_000,
    description=(
        "Optional cap on the size of the result in tokens (about 4 characters each). When the result is "
        "larger, context lines are trimmed first, then the lowest-ranked items dropped; the result's "
        "`trimmed` field reports what was cut. Omit for no cap."
    ),
)


def describe_error(exc: LensError) -> str:
    """One line for the model: what went wrong, its stable code, and compact details."""
    text = f"{exc.message} [code: {exc.code}]"
    if exc.details:
        details = json.dumps(exc.details, default=str, sort_keys=True)
        if len(details) > 600:
            details = details[:600] + "..."
        text += f" details: {details}"
    return text


class InternalToolError(ToolError):
    """An unexpected exception in Mimir, reported to the client as a tool error (and logged)."""


async def run_blocking(tool: str, fn: Callable[[], T]) -> T:
    """Run a blocking facade call off the event loop; map every failure to a tool error."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except LensError as exc:
        log.info("tool %s failed: %s", tool, describe_error(exc))
        raise ToolError(describe_error(exc)) from exc
    except Exception as exc:
        log.exception("tool %s crashed", tool)
        raise InternalToolError(
            f"internal error in Mimir ({type(exc).__name__}: {exc}); this is a bug, see the server log"
        ) from exc


@asynccontextmanager
async def metered(tool: str) -> AsyncIterator[None]:
    """Count one tool call by outcome (ok, error, crash, cancelled), time it, and trace it."""
    started = time.perf_counter()
    outcome = "crash"
    attrs = {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool}
    with tracing.span(f"tools/call {tool}", attributes=attrs) as current:
        try:
            yield
            outcome = "ok"
        except InternalToolError:
            raise
        except ToolError:
            outcome = "error"
            raise
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        finally:
            current.set_attribute("mimir.tool.outcome", outcome)
            metrics.MCP_TOOL_CALLS.labels(tool=tool, outcome=outcome).inc()
            metrics.MCP_TOOL_LATENCY.labels(tool=tool, outcome=outcome).observe(time.perf_counter() - started)


async def call_in_thread(tool: str, fn: Callable[[], T]) -> T:
    """One metered tool call: the facade method in a worker thread, errors as tool errors."""
    async with metered(tool):
        return await run_blocking(tool, fn)


def _progress_token(ctx: Context) -> str | int | None:
    """The client's progress token for this request, if it sent one."""
    try:
        rc = ctx.request_context
    except ValueError:
        return None
    token = (rc.meta or {}).get("progress_token")
    if token is None and rc.params:
        meta = rc.params.get("_meta")
        if isinstance(meta, dict):
            token = meta.get("progressToken")
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


_F = TypeVar("_F", bound=Callable[..., Any])


def _tool_registrar(server: MCPServer) -> Callable[..., Callable[[_F], _F]]:
    """Like ``@server.tool`` but with the docstring dedented (Python 3.11 keeps its indentation)."""

    def register(*, title: str, annotations: ToolAnnotations) -> Callable[[_F], _F]:
        def decorator(fn: _F) -> _F:
            server.add_tool(
                fn, title=title, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations
            )
            return fn

        return decorator

    return register


def build_mcp_server(
    mimir: Mimir,
    *,
    progress_wait_s: float = PROGRESS_WAIT_S,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> MCPServer:
    """The MCP server for ``mimir``; the caller picks the transport (stdio or streamable HTTP)."""
    server: MCPServer = MCPServer(
        "mimir",
        title="Mimir code research",
        description="Index git repositories and research them with cited code evidence.",
        instructions=INSTRUCTIONS,
        version=__version__,
    )
    tool = _tool_registrar(server)
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

    # -- indexing --------------------------------------------------------------------
    @tool(
        title="Index a repository (or reuse its index)",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def ensure_repo_index(
        ctx: Context,
        path: Annotated[
            str,
            Field(
                min_length=1,
                max_length=4096,
                description="Absolute path of a git repository (or a directory inside one) on the Mimir "
                "server's machine. Must lie under MIMIR_ALLOWED_ROOTS.",
            ),
        ],
        rev: Annotated[
            str,
            Field(
                min_length=1,
                max_length=256,
                description="Git revision to index: a branch, tag or commit. Default HEAD.",
            ),
        ] = "HEAD",
        force: Annotated[
            bool, Field(description="Rebuild even when an index for this commit is already ready.")
        ] = False,
    ) -> dict[str, Any]:
        """Call this first for any repository: it returns the index_id every other tool needs.

        Idempotent: the same repository at the same commit maps to the same index_id, and a
        ready index is reused instantly (reused: true). Otherwise an indexing run starts in
        the background and this returns at once with status "queued"/"indexing" and the run's
        progress; poll index_status(index_id) about every second until index.status is
        "ready" (or "failed"/"cancelled"). If you send a progress token, this call instead
        waits (up to 10 minutes) while streaming progress notifications, and returns the final
        status. Returns {index_id, status, commit, reused, run: {run_id, state, stage,
        percent, message, error}}.
        """
        caller = CURRENT_PRINCIPAL.get()

        def ensure() -> dict[str, Any]:
            with audited(mimir.store, "index", caller, path, {"rev": rev, "force": force, "via": "mcp"}) as e:
                out = mimir.ensure_repo_index(path, rev, force)
                e.target = out["index_id"]
            return out

        async with metered("ensure_repo_index"):
            result = await run_blocking("ensure_repo_index", ensure)
            if _progress_token(ctx) is None or result.get("status") == "ready" or not result.get("run"):
                return result
            return await _wait_with_progress(ctx, result)

    async def _wait_with_progress(ctx: Context, result: dict[str, Any]) -> dict[str, Any]:
        index_id: str = result["index_id"]
        deadline = time.monotonic() + progress_wait_s
        last_progress = -1.0
        last_message = ""
        status: dict[str, Any] = {"index": {"status": result.get("status")}, "run": result.get("run")}
        while True:
            run = status.get("run") or {}
            percent = float(run.get("percent") or 0.0)
            message = (
                f"{run.get('stage') or run.get('state') or 'queued'}: {run.get('message') or ''}".strip()
            )
            # Progress must increase with every notification; a new message at the same
            # percent still gets through with a token step forward.
            if percent > last_progress or (message != last_message and last_progress < 99.99):
                value = max(percent, last_progress + 0.01) if percent <= last_progress else percent
                value = min(value, 100.0)
                try:
                    await ctx.report_progress(value, 100.0, message)
                except Exception:  # a client gone away must not fail the indexing answer
                    log.debug("progress notification failed", exc_info=True)
                last_progress, last_message = value, message
            # The run's own state, not the index's, ends the wait: the index turns "ready" a
            # moment before its run records "succeeded".
            if run.get("state") in _TERMINAL_RUN_STATES or (
                not run and status["index"].get("status") == "ready"
            ):
                break
            if time.monotonic() >= deadline:
                out = await run_blocking("ensure_repo_index", functools.partial(mimir.index_status, index_id))
                return {
                    **result,
                    "status": out["index"]["status"],
                    "run": out["run"],
                    "waited": "timeout",
                    "message": f"still indexing after {progress_wait_s:.0f}s; poll index_status",
                }
            await anyio.sleep(poll_interval_s)
            status = await run_blocking("ensure_repo_index", functools.partial(mimir.index_status, index_id))
        run = status.get("run") or {}
        if run.get("state") in ("failed", "cancelled") and status["index"].get("status") != "ready":
            err = run.get("error") or {}
            raise ToolError(
                f"indexing {index_id} {run['state']}: {err.get('message') or 'no reason recorded'} "
                f"[code: {err.get('code') or run['state']}]; see resource mimir://indexes/{index_id}/log"
            )
        return {**result, "status": status["index"].get("status"), "run": run}

    @tool(title="Index status and progress", annotations=read_only)
    async def index_status(index_id: Annotated[str, _INDEX_ID]) -> dict[str, Any]:
        """Status of an index and its latest run: poll this after ensure_repo_index.

        Returns {index: {index_id, repo, root, commit, status, ...}, run: {run_id, state, stage,
        percent, message, error, stages}}. index.status is "queued", "indexing", "ready",
        "failed" or "cancelled"; research tools work once it is "ready". run.percent (0-100)
        and run.message describe progress; run.error says why a run failed.
        """
        return await call_in_thread("index_status", functools.partial(mimir.index_status, index_id))

    @tool(
        title="Cancel indexing",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def cancel(index_id: Annotated[str, _INDEX_ID]) -> dict[str, Any]:
        """Stop the index's running indexing run (kills its worker; nothing half-written is kept).

        A previous ready index for the same commit stays usable. Cancelling a finished run is a
        no-op that returns it unchanged. Returns {index_id, run: {run_id, state, ...}}.
        """
        caller = CURRENT_PRINCIPAL.get()

        def cancel_audited() -> dict[str, Any]:
            with audited(mimir.store, "cancel", caller, index_id, {"via": "mcp"}):
                return mimir.cancel(index_id)

        return await call_in_thread("cancel", cancel_audited)

    @tool(title="List indexes", annotations=read_only)
    async def list_indexes() -> dict[str, Any]:
        """Every index Mimir knows, newest first: use it to find an index_id without re-indexing.

        Returns {indexes: [{index_id, repo, root, rev, commit, status, latest_run, created_at,
        updated_at, counts}]}.
        """
        found = await call_in_thread("list_indexes", mimir.list_indexes)
        return {"indexes": found}

    @tool(title="Repository bundle (metadata)", annotations=read_only)
    async def get_repo_bundle(index_id: Annotated[str, _INDEX_ID]) -> dict[str, Any]:
        """Where the index's portable bundle is and how to fetch it (the index must be ready).

        The bundle (.tar.zst) holds the research database, repo map and Lens shard, for
        moving an index to another machine. Returns {index_id, path, size, sha256, uri, blob_uri}:
        read resource `blob_uri` for the bytes (only up to 8 MiB), or copy `path`.
        """
        info = await call_in_thread("get_repo_bundle", functools.partial(mimir.get_repo_bundle, index_id))
        return {
            **info,
            "blob_uri": f"mimir://indexes/{index_id}/bundle.tar.zst",
            "blob_max_bytes": MAX_BUNDLE_BLOB_BYTES,
        }

    # -- research --------------------------------------------------------------------
    @tool(title="Search a repository", annotations=read_only)
    async def search_repo(
        index_id: Annotated[str, _INDEX_ID],
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=2000,
                description="What to find, in natural language or identifiers, e.g. 'where are retries "
                "configured' or 'parse_config'. Plain text: no query syntax needed.",
            ),
        ],
        k: Annotated[int, Field(ge=1, le=200, description="Maximum number of results (1-200).")] = 20,
        mode: Annotated[
            SearchMode,
            Field(
                description="hybrid (default, best): fuses every signal. exact: literal identifier/line "
                "matches only. ranked: BM25 keyword ranking. semantic: embedding similarity, for "
                "concepts that do not share words with the code.",
            ),
        ] = "hybrid",
        context_lines: Annotated[
            int, Field(ge=0, le=50, description="Lines of context before and after each span (0-50).")
        ] = 5,
        token_budget: Annotated[int | None, _TOKEN_BUDGET] = None,
    ) -> dict[str, Any]:
        """Find the code most relevant to a query in one ready index, best first, with citations.

        Use for "where is X", "how is Y implemented", or to find code to read next. Each result
        is a whole definition (function/class) when one encloses the hit: {rank, score, signals
        (per-signal scores: exact, bm25, semantic, symbol, graph), reason, symbol, path,
        start_line, end_line, citation (path:Lstart-Lend@commit), sha256 (of the cited lines),
        snippet: {start_line, lines}}. The top level has index_id, commit, degraded, missing
        and trimmed.
        """
        return await call_in_thread(
            "search_repo",
            functools.partial(
                mimir.search_repo,
                index_id,
                query,
                k=k,
                mode=mode,
                context_lines=context_lines,
                token_budget=token_budget,
                principal=principal_name(CURRENT_PRINCIPAL.get()),
            ),
        )

    @tool(title="Research a question", annotations=read_only)
    async def ask_index(
        index_id: Annotated[str, _INDEX_ID],
        question: Annotated[
            str,
            Field(
                min_length=1,
                max_length=4000,
                description="A question about the code, e.g. 'how does a request reach the database?'",
            ),
        ],
        max_hops: Annotated[
            int,
            Field(
                ge=0,
                le=6,
                description="How far to follow calls / called-by / inheritance from the "
                "best matches (0-6). More hops find more connected code but take longer.",
            ),
        ] = 3,
        token_budget: Annotated[int | None, _TOKEN_BUDGET] = None,
    ) -> dict[str, Any]:
        """Answer a "how/why/what connects" question with multi-hop evidence from one ready index.

        Starts from the best search matches and follows the call graph and class hierarchy.
        Returns {answer, answer_kind ("extractive" or "llm"), findings: [{id (E1..), hop,
        relation, from, symbol, reason, path, start_line, end_line, citation, sha256, snippet}],
        hops, degraded, missing}. The answer only cites findings; quote their citations.
        Prefer search_repo for simple lookups.
        """
        return await call_in_thread(
            "ask_index",
            functools.partial(
                mimir.ask_index,
                index_id,
                question,
                max_hops=max_hops,
                token_budget=token_budget,
                principal=principal_name(CURRENT_PRINCIPAL.get()),
            ),
        )

    @tool(title="Find a symbol's definitions", annotations=read_only)
    async def find_symbol(
        index_id: Annotated[str, _INDEX_ID],
        name: Annotated[
            str,
            Field(
                min_length=1,
                max_length=200,
                description="Symbol name (function, class, method, variable); case-insensitive. "
                "Falls back to prefix matches when nothing matches exactly.",
            ),
        ],
    ) -> dict[str, Any]:
        """Where a name is defined: use when you know (part of) an identifier.

        Returns {index_id, name, symbols: [{id, name, kind, container, path, start_line,
        end_line, line, importance, citation}]}, most important first.
        """
        return await call_in_thread("find_symbol", functools.partial(mimir.find_symbol, index_id, name))

    @tool(title="Find references and callers", annotations=read_only)
    async def find_references(
        index_id: Annotated[str, _INDEX_ID],
        symbol: Annotated[
            str, Field(min_length=1, max_length=200, description="The symbol name to look up, e.g. 'save'.")
        ],
    ) -> dict[str, Any]:
        """Who uses a symbol: every reference by name, plus resolved callers from the call graph.

        Returns {index_id, symbol, references: [{name, path, line, kind, enclosing, citation}],
        callers: [{caller: {...symbol}, callee, resolution, citation}]}. Use before changing a
        function to see what depends on it.
        """
        return await call_in_thread(
            "find_references", functools.partial(mimir.find_references, index_id, symbol)
        )

    @tool(title="Read lines of a file", annotations=read_only)
    async def read_span(
        index_id: Annotated[str, _INDEX_ID],
        path: Annotated[
            str,
            Field(
                min_length=1,
                max_length=4096,
                description="File path relative to the repository root, as in results.",
            ),
        ],
        start: Annotated[int, Field(ge=1, description="First line, 1-based.")],
        end: Annotated[int, Field(ge=1, description="Last line, inclusive; at most 2000 lines after start.")],
    ) -> dict[str, Any]:
        """Exact lines of a file at the indexed commit (not the working tree), with a citation.

        Returns {path, start_line, end_line, citation, sha256, lines, source}. Use to read
        beyond a search snippet.
        """
        return await call_in_thread(
            "read_span", functools.partial(mimir.read_span, index_id, path, start, end)
        )

    @tool(title="Repository map", annotations=read_only)
    async def repo_map(
        index_id: Annotated[str, _INDEX_ID],
        token_budget: Annotated[
            int, Field(ge=64, le=65_536, description="Size of the map in tokens (64-65536); default 2048.")
        ] = 2048,
    ) -> dict[str, Any]:
        """A compact overview of the repository: most central files first, each with its key
        definitions' signatures. Use to orient yourself in an unfamiliar repository.

        Returns {text, tokens, files_included, symbols_included, truncated, token_budget}.
        """
        return await call_in_thread("repo_map", functools.partial(mimir.repo_map, index_id, token_budget))

    @tool(title="Verify a citation", annotations=read_only)
    async def verify_citation(
        citation: Annotated[
            str,
            Field(
                min_length=3,
                max_length=4200,
                description="A citation as returned by Mimir: path:Lstart-Lend@commit.",
            ),
        ],
        sha256: Annotated[
            str | None,
            Field(
                pattern=r"^[0-9a-fA-F]{64}$",
                description="The sha256 returned with the citation; when omitted, the lines at the cited "
                "commit are used as the reference.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Check whether cited lines still read the same in the repository's working tree.

        Returns {citation, status, reason, expected_sha256, current_sha256}: status "valid"
        (unchanged), "stale" (the lines or the file changed since) or "invalid" (no such span
        at that commit). Use before relying on an old answer.
        """
        return await call_in_thread(
            "verify_citation", functools.partial(mimir.verify_citation, citation, sha256)
        )

    # -- resources -------------------------------------------------------------------
    async def _resource(fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except NotFound as exc:  # includes UnknownIndex
            raise ResourceNotFoundError(describe_error(exc)) from exc
        except LensError as exc:
            raise ResourceError(describe_error(exc)) from exc

    @server.resource(
        "mimir://indexes/{index_id}/status",
        name="index-status",
        title="Index status",
        description="The index and its latest run (same as the index_status tool), as JSON.",
        mime_type="application/json",
    )
    async def status_resource(index_id: str) -> str:
        return json.dumps(await _resource(functools.partial(mimir.index_status, index_id)), default=str)

    @server.resource(
        "mimir://indexes/{index_id}/manifest",
        name="index-manifest",
        title="Index manifest",
        description="What a ready index holds: commit, counts, skipped files, stage timings, tool versions.",
        mime_type="application/json",
    )
    async def manifest_resource(index_id: str) -> str:
        return json.dumps(await _resource(functools.partial(mimir.manifest, index_id)), default=str)

    @server.resource(
        "mimir://indexes/{index_id}/log",
        name="index-log",
        title="Indexing log",
        description="The tail (64 kB) of the latest indexing run's log: read it when a run failed.",
        mime_type="text/plain",
    )
    async def log_resource(index_id: str) -> str:
        return await _resource(functools.partial(mimir.log, index_id))

    @server.resource(
        "mimir://indexes/{index_id}/bundle",
        name="index-bundle",
        title="Index bundle (metadata)",
        description="Path, size and sha256 of the index's portable bundle, as JSON (the bytes are at "
        "mimir://indexes/{index_id}/bundle.tar.zst).",
        mime_type="application/json",
    )
    async def bundle_resource(index_id: str) -> str:
        info = await _resource(functools.partial(mimir.get_repo_bundle, index_id))
        return json.dumps(
            {
                **info,
                "blob_uri": f"mimir://indexes/{index_id}/bundle.tar.zst",
                "blob_max_bytes": MAX_BUNDLE_BLOB_BYTES,
            },
            default=str,
        )

    @server.resource(
        "mimir://indexes/{index_id}/bundle.tar.zst",
        name="index-bundle-bytes",
        title="Index bundle (bytes)",
        description="The bundle archive itself (tar + zstd), only when it is at most 8 MiB.",
        mime_type="application/zstd",
    )
    async def bundle_bytes_resource(index_id: str) -> bytes:
        info = await _resource(functools.partial(mimir.get_repo_bundle, index_id))
        path = Path(info["path"])

        def read() -> bytes:
            size = path.stat().st_size
            if size > MAX_BUNDLE_BLOB_BYTES:
                raise ResourceError(
                    f"bundle of {index_id} is {size} bytes, over the {MAX_BUNDLE_BLOB_BYTES}-byte resource "
                    f"limit; copy {path} or download GET /api/indexes/{index_id}/bundle"
                )
            return path.read_bytes()

        try:
            return await anyio.to_thread.run_sync(read)
        except FileNotFoundError as exc:
            raise ResourceNotFoundError(f"bundle file {path} is missing") from exc

    return server


__all__ = [
    "INSTRUCTIONS",
    "MAX_BUNDLE_BLOB_BYTES",
    "InternalToolError",
    "build_mcp_server",
    "call_in_thread",
    "describe_error",
    "metered",
    "run_blocking",
]
