"""The ``mimir`` command: MCP over stdio, the HTTP server, and a few research commands.

In ``mimir mcp`` stdout belongs to the protocol: logs go to stderr, and while the
service is being built file descriptor 1 itself points at stderr, so not even a C
library or a child process can write a stray byte into the JSON-RPC stream (the SDK's
stdio transport keeps that diversion up while serving).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lens.errors import LensError
from mimir.config import MimirSettings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from mimir.service import Mimir

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Mimir: code research server (MCP, REST) built on Lens."
)
out = Console()
err = Console(stderr=True)
_TERMINAL = ("succeeded", "failed", "cancelled")


def _logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _fail(exc: LensError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": exc.to_dict()}))
    else:
        err.print(f"[red]error:[/red] {exc.message}")
    raise typer.Exit(2 if exc.status < 500 else 1)


def _mimir() -> Mimir:
    """Built lazily: importing the service loads the whole stack, which `--help` does not need."""
    from mimir.service import Mimir

    return Mimir(MimirSettings())


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 (and sys.stdout) at stderr for the duration, at the OS level."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@app.command()
def mcp() -> None:
    """Serve MCP over stdio (for Claude Code, Claude Desktop and other MCP hosts)."""
    with _stdout_to_stderr():
        try:
            from mimir.serve.mcp import build_mcp_server
            from mimir.service import Mimir

            settings = MimirSettings()
            _setup_observability(settings)  # logs (with trace ids) on stderr: stdout is the protocol
            service = Mimir(settings)
            server = build_mcp_server(service)
        except LensError as exc:
            err.print(f"[red]error:[/red] {exc.message}")
            raise typer.Exit(1) from exc
    try:
        server.run("stdio")
    finally:
        service.close()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default MIMIR_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default MIMIR_PORT or 8000)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (metrics are merged over them)")] = 1,
) -> None:
    """Serve the REST API and MCP (Streamable HTTP at /mcp)."""
    from infra.observability.process import prepare_multiprocess_dir, serve

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    for key, value in overrides.items():  # workers are fresh interpreters: they read the environment
        os.environ[f"MIMIR_{key.upper()}"] = str(value)
    prepare_multiprocess_dir(workers=workers)  # before any metric exists in this process
    from mimir.serve.api import create_app

    try:
        settings = MimirSettings(**overrides)
    except ValueError as exc:  # *_FILE conflicts, unreadable secret files, invalid values
        err.print(f"error: configuration: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    _setup_observability(settings)
    try:
        # Built here even with N workers: a bad configuration fails now, with a message.
        application = create_app(settings=settings)
    except LensError as exc:
        _fail(exc, False)
        return
    if workers > 1:
        application.state.mimir.close()
    base = f"http://{settings.host}:{settings.port}"
    logging.getLogger("mimir.serve").info("Mimir listening on %s (MCP at %s/mcp)", base, base)
    serve(
        application if workers == 1 else None,
        factory="mimir.serve.cli:asgi_app",
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=settings.log_level,
        shutdown_grace_s=settings.shutdown_grace_s,
    )


def _setup_observability(settings: MimirSettings) -> None:
    from infra.observability.process import setup_process
    from mimir import __version__

    setup_process("mimir", __version__, settings)


def asgi_app() -> ASGIApp:
    """The app of one ``mimir serve --workers N`` worker process (settings from the environment)."""
    from infra.observability.process import ShutdownHooks
    from mimir.serve.api import create_app

    settings = MimirSettings()
    _setup_observability(settings)
    return ShutdownHooks(create_app(settings=settings))


def _run_label(run: dict[str, Any]) -> str:
    return f"{run.get('stage') or run.get('state')}: {run.get('message') or ''}"[:60]


def _wait_for_run(service: Mimir, result: dict[str, Any], timeout: float, *, show: bool) -> dict[str, Any]:
    """Poll the run's status until it ends (or ``timeout``), drawing a progress bar on stderr."""
    index_id = result["index_id"]
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
    ) as bar:
        task = bar.add_task(index_id, total=100)
        while True:
            status = service.index_status(index_id)
            run = status.get("run") or {}
            bar.update(task, completed=float(run.get("percent") or 0.0), description=_run_label(run))
            if run.get("state") in _TERMINAL or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    return {**result, "status": status["index"]["status"], "run": status.get("run")}


@app.command()
def index(
    path: Annotated[str, typer.Argument(help="Git repository (under MIMIR_ALLOWED_ROOTS)")] = ".",
    rev: Annotated[str, typer.Option(help="Git revision to index")] = "HEAD",
    force: Annotated[bool, typer.Option(help="Rebuild even when a ready index exists")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish, showing progress")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Index PATH at REV (reused instantly when that commit is already indexed)."""
    _logging()
    service = _mimir()
    result: dict[str, Any] = {}
    try:
        result = service.ensure_repo_index(os.path.abspath(path), rev, force)
        if wait and result["status"] != "ready" and result.get("run"):
            result = _wait_for_run(service, result, timeout, show=not as_json and sys.stderr.isatty())
    except LensError as exc:
        _fail(exc, as_json)
        return
    except KeyboardInterrupt:
        if result.get("index_id"):
            service.cancel(result["index_id"])
            err.print(f"cancelled indexing of {result['index_id']}")
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(result, default=str))
    else:
        run = result.get("run") or {}
        commit = (result.get("commit") or "worktree")[:12]
        line = f"[bold]{result['index_id']}[/bold] @ {commit}: {result['status']}"
        if result.get("reused"):
            line += " (reused)"
        out.print(line)
        if run.get("error"):
            err.print(f"[red]{run['error'].get('code')}:[/red] {run['error'].get('message')}")
    if result["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command()
def search(
    index_id: Annotated[str, typer.Argument(help="Index id (see `mimir indexes`)")],
    query: Annotated[str, typer.Argument(help="What to look for, in plain text")],
    k: Annotated[int, typer.Option(help="Maximum results (1-200)")] = 20,
    mode: Annotated[str, typer.Option(help="hybrid, exact, ranked or semantic")] = "hybrid",
    context_lines: Annotated[int, typer.Option(help="Context lines around each span")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Search one index; each hit is a cited span."""
    _logging()
    try:
        result = _mimir().search_repo(index_id, query, k=k, mode=mode, context_lines=context_lines)
    except LensError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print(json.dumps(result, default=str))
        return
    for r in result["results"]:
        sym = r.get("symbol") or {}
        what = f" {sym.get('kind')} {sym.get('name')}" if sym else ""
        out.print(
            f"[bold]{r['rank']:>3}[/bold] [magenta]{r['citation']}[/magenta]{what}  [dim]{r['reason']}[/dim]",
            soft_wrap=True,
        )
    if result.get("degraded"):
        err.print(f"[yellow]degraded:[/yellow] missing {', '.join(result.get('missing', []))}")
    if not result["results"]:
        err.print("no results")


@app.command()
def ask(
    index_id: Annotated[str, typer.Argument(help="Index id (see `mimir indexes`)")],
    question: Annotated[str, typer.Argument(help="A question about the code")],
    max_hops: Annotated[int, typer.Option(help="Graph hops to follow (0-6)")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Answer a question from cited evidence."""
    _logging()
    try:
        result = _mimir().ask_index(index_id, question, max_hops=max_hops)
    except LensError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print(json.dumps(result, default=str))
        return
    out.print(result["answer"], soft_wrap=True)
    for f in result.get("findings", []):
        out.print(
            f"  [dim]{f['id']} hop {f['hop']}[/dim] [magenta]{f['citation']}[/magenta] {f['relation']}",
            soft_wrap=True,
        )


@app.command("import")
def import_bundle(
    bundle: Annotated[str, typer.Argument(help="A Mimir bundle (.tar.zst) under MIMIR_ALLOWED_ROOTS")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Import a bundle from another Mimir; its index becomes searchable here, offline."""
    _logging()
    try:
        result = _mimir().import_bundle(os.path.abspath(bundle))
    except LensError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print(json.dumps(result))
    else:
        out.print(f"{result['index_id']}: {'imported' if result['imported'] else 'already present'}")


@app.command()
def indexes(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """List known indexes, newest first."""
    _logging()
    found = _mimir().list_indexes()
    if as_json:
        print(json.dumps({"indexes": found}, default=str))
        return
    table = Table("repo", "commit", "status", "files", "symbols")
    # index_id is what users copy into other commands: never truncate it.
    table.add_column("index_id", overflow="fold", min_width=len(found[0]["index_id"]) if found else 8)
    for r in found:
        counts = r.get("counts") or {}
        table.add_row(
            r["repo"],
            (r.get("commit") or "worktree")[:12],
            r["status"],
            str(counts.get("files", "-")),
            str(counts.get("symbols", "-")),
            r["index_id"],
        )
    out.print(table)


db_app = typer.Typer(
    no_args_is_help=True,
    help="The metadata database: PostgreSQL migrations (MIMIR_DATABASE_URL / DATABASE_URL).",
)
app.add_typer(db_app, name="db")


def _database_url(settings: MimirSettings) -> str | None:
    if not settings.database_url:
        err.print(
            f"no database URL set: metadata is in SQLite at {settings.data_dir / 'mimir.sqlite'},"
            " whose schema is created when it is opened (set MIMIR_DATABASE_URL for PostgreSQL)"
        )
    return settings.database_url


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations, each in its own transaction; prints the versions applied."""
    from mimir.store.migrate import connect, upgrade

    _logging()
    settings = MimirSettings()
    url = _database_url(settings)
    if url is None:
        return
    try:
        with connect(url, settings.db_timeout_s) as conn:
            applied = upgrade(conn)
    except LensError as exc:
        _fail(exc, False)
        return
    for m in applied:
        out.print(f"applied {m.version:04d}_{m.name}")
    if not applied:
        out.print("up to date")


@db_app.command("status")
def db_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Show every migration: applied (when), pending, or changed since it was applied."""
    from mimir.store.migrate import connect, status

    _logging()
    settings = MimirSettings()
    url = _database_url(settings)
    if url is None:
        return
    try:
        with connect(url, settings.db_timeout_s) as conn:
            states = status(conn)
    except LensError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print(json.dumps({"migrations": [dataclasses.asdict(s) for s in states]}))
    else:
        table = Table("version", "name", "state")
        for st in states:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st.applied_at)) if st.applied_at else ""
            state = "pending" if st.applied_at is None else f"applied {when} UTC"
            if not st.known:
                state += " (unknown to this build)"
            elif not st.checksum_ok:
                state += " [red](file changed since)[/red]"
            table.add_row(f"{st.version:04d}", st.name, state)
        out.print(table)
    if any(st.known and not st.checksum_ok for st in states):
        raise typer.Exit(1)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Jobs run at once (default MIMIR_WORKER_CONCURRENCY)")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on MIMIR_HOST:PORT (default: off)")
    ] = None,
) -> None:
    """Run index jobs from the NATS work queue (needs MIMIR_NATS_URL); SIGTERM hands unfinished ones back."""
    from mimir.pipeline.dispatch import serve as serve_queue

    settings = MimirSettings()
    _setup_observability(settings)
    raise typer.Exit(serve_queue(settings, concurrency=concurrency, metrics_port=metrics_port))


config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration (MIMIR_* variables).")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Print the effective settings (secrets masked) and every problem; exit 1 if there is any."""
    from infra.config_cli import run_check

    raise typer.Exit(run_check(MimirSettings, "mimir", as_json=as_json, console=out))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
