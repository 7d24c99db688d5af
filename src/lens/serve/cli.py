"""The ``lens`` command: a thin shell over :class:`lens.engine.Lens`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lens.config import LensSettings
from lens.engine import Lens
from lens.errors import LensError

if TYPE_CHECKING:
    from starlette.types import ASGIApp

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Lens: code search (index, search, serve)."
)
out = Console()
err = Console(stderr=True)


def _lens() -> Lens:
    return Lens(LensSettings())


def _fail(exc: LensError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": exc.to_dict()}))
    else:
        err.print(f"[red]error:[/red] {exc.message}")
    raise typer.Exit(2 if exc.status < 500 else 1)


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="Git repository or plain directory")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Repository name (default: directory name)")] = None,
    rev: Annotated[str | None, typer.Option(help="Git revision to index (default HEAD)")] = None,
    worktree: Annotated[
        bool, typer.Option(help="Index the working directory, uncommitted changes included")
    ] = False,
    full: Annotated[bool, typer.Option(help="Rebuild from scratch instead of incrementally")] = False,
    embed: Annotated[bool, typer.Option(help="Compute embeddings for semantic search after indexing")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Index PATH (incremental when it was indexed before)."""
    lens = _lens()
    show = not as_json and sys.stderr.isatty()
    try:
        with Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not show,
            transient=False,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total or 1)
                bar.update(tasks[stage], completed=done, total=total or 1)

            report = lens.index(path, name=name, rev=rev, worktree=worktree, full=full, progress=progress)
            embedded = 0
            if embed and lens.settings.embed:
                embedded = lens.embed(report.name, progress=lambda d, t: progress("embed", d, t))
    except LensError as exc:
        _fail(exc, as_json)
        return
    data = report.to_dict() | {"embedded": embedded}
    if as_json:
        print(json.dumps(data))
        return
    mode = "full build" if report.full_build else "incremental"
    out.print(
        f"[bold]{report.name}[/bold] @ {report.commit or report.kind}: {mode}, "
        f"generation {report.generation}, "
        f"{report.files} files ({report.bytes_indexed / 1e6:.1f} MB), {report.symbols} symbols, "
        f"{report.chunks} chunks in {report.seconds:.2f}s"
    )
    out.print(
        f"  added {report.added}, changed {report.changed}, deleted {report.deleted}, "
        f"unchanged {report.unchanged}; embedded {embedded} chunks"
    )
    if report.skipped:
        out.print("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Query (see docs/query-syntax.md)")],
    mode: Annotated[str, typer.Option(help="exact, ranked, semantic or hybrid")] = "exact",
    limit: Annotated[int, typer.Option(help="Results per page")] = 100,
    context: Annotated[int, typer.Option(help="Context lines before and after")] = 0,
    cursor: Annotated[str | None, typer.Option(help="Cursor from a previous page")] = None,
    repo: Annotated[list[str] | None, typer.Option(help="Restrict to repository (repeatable)")] = None,
    timeout_ms: Annotated[int, typer.Option(help="Time budget")] = 5000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Search the indexed repositories."""
    lens = _lens()
    try:
        result = lens.search(
            query, mode=mode, limit=limit, context=context, cursor=cursor, timeout_ms=timeout_ms, repos=repo
        )
    except LensError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    for hit in result.results:
        for i, line in enumerate(hit.before):
            out.print(
                Text(f"{hit.repo}/{hit.path}-{hit.line_number - len(hit.before) + i}-{line}", style="dim")
            )
        text = Text(hit.line)
        for s, e in hit.ranges:
            text.stylize("bold red", s, e)
        where = Text(f"{hit.repo}/{hit.path}:{hit.line_number}:", style="magenta")
        out.print(where + text + Text(f"  [{','.join(hit.why)}]", style="dim"), soft_wrap=True)
        for i, line in enumerate(hit.after):
            out.print(Text(f"{hit.repo}/{hit.path}-{hit.line_number + 1 + i}-{line}", style="dim"))
    total = f"~{result.total}" if result.total_is_estimate else str(result.total)
    tail = " (timed out: partial)" if result.timed_out else ""
    err.print(f"{len(result.results)} shown of {total} in {result.took_ms:.1f} ms{tail}")
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    if result.next_cursor:
        err.print(f"next page: --cursor {result.next_cursor}")


@app.command()
def repos(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """List indexed repositories with their counts and skipped files."""
    lens = _lens()
    infos = lens.repos()
    if as_json:
        print(json.dumps({"repos": infos}))
        return
    table = Table("name", "commit", "gen", "files", "MB", "symbols", "semantic", "skipped")
    for r in infos:
        sem = r["semantic"]
        table.add_row(
            r["name"],
            (r["commit"] or r["kind"] or "")[:12],
            str(r["generation"]),
            str(r["files"]),
            f"{(r['bytes'] or 0) / 1e6:.1f}",
            str(r["symbols"]),
            f"{sem['status']} {sem['embedded']}/{sem['total']}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["skipped"].items())) or "-",
        )
    out.print(table)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="Repository name")]) -> None:
    """Remove a repository's index."""
    try:
        _lens().remove(name)
    except LensError as exc:
        _fail(exc, False)
    out.print(f"removed {name}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default LENS_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default LENS_PORT or 3000)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (metrics are merged over them)")] = 1,
    role: Annotated[
        str | None,
        typer.Option(help="all (index + search), indexer (publish shards), searcher (serve shipped shards)"),
    ] = None,
) -> None:
    """Serve the HTTP API."""
    from infra.observability.process import prepare_multiprocess_dir, serve

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    if role:
        overrides["role"] = role
    for key, value in overrides.items():  # workers are fresh interpreters: they read the environment
        os.environ[f"LENS_{key.upper()}"] = str(value)
    prepare_multiprocess_dir(workers=workers)  # before any metric exists in this process
    from lens.serve.api import create_app

    try:
        settings = LensSettings(**overrides)
    except ValueError as exc:  # *_FILE conflicts, unreadable secret files, invalid values
        err.print(f"error: configuration: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    _setup_observability(settings)
    try:
        # Built here even with N workers: a bad configuration fails now, with a message.
        application = create_app(Lens(settings), settings)
    except LensError as exc:
        _fail(exc, False)
        return
    logging.getLogger("lens.serve").info(
        "Lens listening on http://%s:%d (data: %s)", settings.host, settings.port, settings.data_dir
    )
    serve(
        application if workers == 1 else None,
        factory="lens.serve.cli:asgi_app",
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=settings.log_level,
        shutdown_grace_s=settings.shutdown_grace_s,
    )


def _setup_observability(settings: LensSettings) -> None:
    from infra.observability.process import setup_process
    from lens import __version__

    setup_process("lens", __version__, settings)


def asgi_app() -> ASGIApp:
    """The app of one ``lens serve --workers N`` worker process (settings from the environment)."""
    from infra.observability.process import ShutdownHooks
    from lens.serve.api import create_app

    settings = LensSettings()
    _setup_observability(settings)
    return ShutdownHooks(create_app(Lens(settings), settings))


config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration (LENS_* variables).")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Print the effective settings (secrets masked) and every problem; exit 1 if there is any."""
    from infra.config_cli import run_check

    raise typer.Exit(run_check(LensSettings, "lens", as_json=as_json, console=out))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
