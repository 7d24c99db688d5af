"""One indexing run: acquire -> repomap -> symbols -> search_index -> snippets -> bundle.

A run executes in its own worker process (its own process group), so ``cancel``
can kill it, and everything it started, at once. Artifacts are written into a
private ``.tmp-<run>`` directory that becomes the index directory with one rename
at the very end: a cancelled or crashed run leaves nothing half-written behind.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import platform
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.observability import tracing
from lens import __version__ as lens_version
from lens.discover.filters import discover, load
from lens.discover.model import SkipCounts
from lens.discover.source import open_source
from lens.ship.publisher import nats_publisher
from mimir import __version__ as mimir_version
from mimir.analyze import Analysis, analyze_repository, render_repo_map
from mimir.analyze import cache as analysis_cache
from mimir.analyze.model import FILE_KIND, SourceFile
from mimir.bundle import create_bundle
from mimir.config import MimirSettings
from mimir.lensclient import LensBackend, make_lens_backend
from mimir.pipeline import research_db
from mimir.store import FileRow, MetadataStore, SymbolCount, store_for

# (stage, share of the run's progress when it ends)
STAGES: tuple[tuple[str, float], ...] = (
    ("acquire", 0.05),
    ("repomap", 0.15),
    ("symbols", 0.25),
    ("search_index", 0.85),
    ("snippets", 0.92),
    ("bundle", 1.0),
)
MAX_SNIPPET_LINES = 400


def index_dir(settings: MimirSettings, index_id: str) -> Path:
    return settings.data_dir / "indexes" / index_id


def log_path(settings: MimirSettings, run_id: str) -> Path:
    return settings.data_dir / "logs" / f"{run_id}.log"


def lens_backend(settings: MimirSettings) -> LensBackend:
    return make_lens_backend(
        settings.lens_url,
        data_dir=settings.data_dir / "lens",
        token=settings.lens_token,
        timeout_s=settings.lens_timeout_s,
        embed=settings.embed,
    )


def build_backend(settings: MimirSettings) -> LensBackend:
    """The Lens that search_index builds with: with NATS, this worker's own (in-process), then shipped."""
    if not settings.nats_url:
        return lens_backend(settings)
    return make_lens_backend(None, data_dir=settings.data_dir / "lens", token=None, embed=settings.embed)


@dataclass
class RunState:
    settings: MimirSettings
    index_id: str
    run_id: str
    root: Path
    rev: str | None
    commit: str | None
    lens_repo: str
    seed: str | None
    work: Path
    log: logging.Logger
    store: MetadataStore
    files: list[SourceFile] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the file's bytes
    skipped: dict[str, int] = field(default_factory=dict)
    analysis: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lens_report: dict[str, Any] = field(default_factory=dict)
    previous_index: str | None = None  # the root's latest ready index: its analysis cache is reused
    gc_frozen: bool = False

    def progress(self, stage: str, fraction: float, message: str) -> None:
        start = 0.0
        for name, end in STAGES:
            if name == stage:
                pct = round(100 * (start + (end - start) * max(0.0, min(fraction, 1.0))), 1)
                self.store.update_run(self.run_id, stage=stage, percent=pct, message=message)
                return
            start = end


def _stage_acquire(st: RunState) -> None:
    skips = SkipCounts()
    with open_source(st.root, rev=st.commit if st.commit else None) as source:
        entries = discover(source, skips=skips)
        loaded = list(load(source, entries, skips=skips))
    st.files = [SourceFile(f.path, f.lang, f.content.decode("utf-8")) for f in loaded]
    st.sha256 = {f.path: f.sha256 for f in loaded}  # strict UTF-8: the same bytes as the text encoded
    st.store.put_files(
        st.index_id, (FileRow(f.path, f.lang, len(f.content), f.sha256, f.oid or None) for f in loaded)
    )
    st.skipped = skips.as_dict()
    st.counts["files"] = len(st.files)
    st.log.info("acquired %d files at %s (skipped %s)", len(st.files), st.commit, st.skipped)


def _previous_cache(st: RunState) -> analysis_cache.AnalysisCache | None:
    """The analysis cache of the root's latest ready index (None if absent, stale or unreadable)."""
    if st.previous_index is None:
        return None
    path = index_dir(st.settings, st.previous_index) / analysis_cache.FILE_NAME
    cache = analysis_cache.AnalysisCache.load(path)
    st.log.info("analysis cache of %s: %s", st.previous_index, f"{len(cache)} entries" if cache else "none")
    return cache


def _stage_repomap(st: RunState) -> None:
    """Parse once, resolve imports, rank files with PageRank, render the default repo map.

    Files whose content the previous index of this root analyzed are not parsed again: their
    per-file results come from its analysis cache (identical output, see mimir.analyze.cache).
    """
    st.analysis = analyze_repository(st.files, previous=_previous_cache(st), hashes=st.sha256)
    a: Analysis = st.analysis
    # The analysis is alive until the run ends: keep the cyclic GC from re-walking its millions of
    # objects in every later stage (0.8 s on django); run_pipeline unfreezes at the end.
    gc.freeze()
    st.gc_frozen = True
    st.log.info("analysis: %s", a.reuse)
    if a.cache is not None:
        try:
            a.cache.save(st.work / analysis_cache.FILE_NAME)
        except (OSError, sqlite3.Error) as exc:  # only the next run's speed depends on it
            (st.work / analysis_cache.FILE_NAME).unlink(missing_ok=True)
            st.log.warning("analysis cache not saved: %s", exc)
    st.counts["import_edges"] = len(a.imports.edges)
    st.counts["external_imports"] = len(a.imports.unresolved)
    (st.work / "repomap.md").write_text(render_repo_map(a.graph, a.ranks, 4096).text)
    (st.work / "graph.json").write_text(json.dumps(a.graph.to_dict(), separators=(",", ":")))


def _stage_symbols(st: RunState) -> None:
    """Persist definitions, resolved edges and references for research and degraded answers."""
    a: Analysis = st.analysis
    conn = research_db.create(st.work / "research.sqlite", indexes=False)
    try:
        conn.execute("BEGIN")
        ranks = a.ranks
        research_db.insert_many(
            conn,
            "files",
            (
                (
                    f.path,
                    f.lang,
                    st.sha256.get(f.path) or hashlib.sha256(f.text.encode()).hexdigest(),
                    f.text.count("\n") + 1,
                    float(ranks.files.get(f.path, 0.0)),
                )
                for f in st.files
            ),
        )
        nodes = [n for n in a.graph.nodes.values() if n.kind != FILE_KIND]
        st.counts["symbols"] = research_db.insert_many(
            conn,
            "symbols",
            (
                (
                    n.id,
                    n.name,
                    n.kind,
                    n.container,
                    n.path,
                    n.start_line,
                    n.end_line,
                    n.line,
                    float(ranks.symbols.get(n.id, 0.0)),
                )
                for n in nodes
            ),
        )
        edge_rows = [
            (src, e.target, kind, e.resolution)
            for kind in ("calls", "inherits", "contains", "imports")
            for src, edges in a.graph.adjacency.get(kind, {}).items()
            for e in edges
        ]
        st.counts["edges"] = research_db.insert_many(conn, "edges", edge_rows)
        langs = {f.path: f.lang or "unknown" for f in st.files}
        kinds = Counter((n.kind, langs.get(n.path, "unknown")) for n in nodes)
        st.store.put_symbol_summary(st.index_id, (SymbolCount(k, lang, c) for (k, lang), c in kinds.items()))
        st.counts["refs"] = research_db.insert_many(
            conn, "refs", ((r.name, r.path, r.line, r.kind, r.enclosing) for r in a.references)
        )
        conn.execute(
            "INSERT INTO meta VALUES('commit', ?), ('index_id', ?), ('root', ?), ('analysis_seconds', ?)",
            (
                json.dumps(st.commit),
                json.dumps(st.index_id),
                json.dumps(str(st.root)),
                json.dumps(a.durations),
            ),
        )
        research_db.create_indexes(conn, ("symbols", "edges", "refs"))  # faster after the rows
        conn.execute("COMMIT")
    finally:
        conn.close()
    st.log.info("symbols %d, edges %d, refs %d", st.counts["symbols"], st.counts["edges"], st.counts["refs"])


def _stage_search_index(st: RunState, should_stop: Callable[[], bool]) -> None:
    backend = build_backend(st.settings)

    def progress(stage: str, done: int, total: int) -> None:
        share = {"discover": 0.05, "index": 0.5, "embed": 1.0}.get(stage, 0.5)
        st.progress("search_index", share * (done / total if total else 1.0), f"lens {stage} {done}/{total}")

    settings = st.settings
    with nats_publisher(settings.data_dir / "lens", settings.nats_url, settings.nats_namespace) as ship:
        if ship is not None:  # build on the newest shipped shards, so this generation is newer still
            ship.prime([st.lens_repo, st.seed])
        st.lens_report = backend.index(
            st.root, st.lens_repo, rev=st.commit, seed=st.seed, progress=progress, should_stop=should_stop
        )
        if ship is not None:  # the searchers behind LENS_URL serve what is shipped, before the run ends
            st.lens_report["shipped"] = ship.publish(st.lens_repo).to_dict()
    st.counts["chunks"] = int(st.lens_report.get("chunks", 0))
    st.log.info("lens indexed %s: %s", st.lens_repo, {k: st.lens_report.get(k) for k in ("files", "chunks")})


def _stage_snippets(st: RunState) -> None:
    texts = {f.path: f.text for f in st.files}
    split: dict[str, list[str]] = {}  # only files with definitions: most files have none
    conn = sqlite3.connect(str(st.work / "research.sqlite"), isolation_level=None)
    try:
        rows = []
        for sid, path, start, end in conn.execute("SELECT id, path, start_line, end_line FROM symbols"):
            lines = split.get(path)
            if lines is None:
                whole = texts.get(path)
                if whole is None:
                    continue
                lines = split[path] = whole.split("\n")
            end = min(end, start + MAX_SNIPPET_LINES - 1, len(lines))
            text = "\n".join(lines[start - 1 : end])
            rows.append((sid, path, start, end, hashlib.sha256(text.encode()).hexdigest(), text))
        conn.execute("BEGIN")
        st.counts["snippets"] = research_db.insert_many(conn, "snippets", rows)
        research_db.create_indexes(conn, ("snippets",))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _stage_bundle(st: RunState) -> dict[str, Any]:
    backend = build_backend(st.settings)
    members: dict[str, Path] = {
        "research.sqlite": st.work / "research.sqlite",
        "repomap.md": st.work / "repomap.md",
        "graph.json": st.work / "graph.json",
    }
    shard = backend.shard_path(st.lens_repo)
    if shard is not None:
        copy = st.work / "lens-shard.sqlite"
        src = sqlite3.connect(f"file:{shard}?mode=ro", uri=True)
        dst = sqlite3.connect(str(copy))
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        members["lens-shard.sqlite"] = copy
    manifest = {
        "index_id": st.index_id,
        "root": str(st.root),
        "rev": st.rev,
        "commit": st.commit,
        "lens_repo": st.lens_repo,
        "created_at": time.time(),
        "counts": st.counts,
        "skipped": st.skipped,
        "stage_seconds": st.timings,
        "analysis_seconds": st.analysis.durations if st.analysis is not None else {},
        "analysis_reuse": st.analysis.reuse if st.analysis is not None else {},
        "tool_versions": {
            "mimir": mimir_version,
            "lens": lens_version,
            "python": platform.python_version(),
            "embed_model": st.lens_report.get("embed_model"),
        },
    }
    info = create_bundle(st.work / "bundle.tar.zst", members, manifest)
    manifest["artifacts"] = info.get("members", {})
    manifest["bundle"] = {"size": info["size"], "sha256": info["sha256"]}
    if "lens-shard.sqlite" in members:
        members["lens-shard.sqlite"].unlink()
        manifest["artifacts"].pop("lens-shard.sqlite", None)
    return manifest


def run_pipeline(
    settings: MimirSettings,
    index_id: str,
    run_id: str,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    final_attempt: bool = True,
) -> dict[str, Any]:
    """Execute one run end to end; on success the index directory holds its artifacts.

    ``final_attempt=False`` (one attempt of a queued job): a failure records only its error and leaves
    the run's state to the queue worker, which retries it or fails it for good.
    """
    store = store_for(settings, migrate=False)  # the process that started this worker migrated
    rec = store.get_index(index_id)
    work = settings.data_dir / "indexes" / f".tmp-{run_id}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = _run_logger(settings, run_id)
    previous = store.latest_ready_for_root(rec.root)
    st = RunState(
        settings=settings,
        index_id=index_id,
        run_id=run_id,
        root=Path(rec.root),
        rev=rec.rev,
        commit=rec.commit,
        lens_repo=rec.lens_repo,
        seed=previous.lens_repo if previous is not None and previous.index_id != index_id else None,
        work=work,
        log=log,
        store=store,
        previous_index=previous.index_id if previous is not None else None,
    )
    store.update_run(run_id, state="running", pid=os.getpid(), message="starting")
    store.set_index_status(index_id, "indexing")
    manifest: dict[str, Any] = {}
    try:
        for stage, _end in STAGES:
            if should_stop():
                raise InterruptedError("cancelled")
            st.progress(stage, 0.0, f"{stage} started")
            store.stage_started(run_id, stage)
            t0 = time.perf_counter()
            with tracing.span(f"pipeline {stage}", attributes={"mimir.stage": stage, "mimir.run_id": run_id}):
                if stage == "acquire":
                    _stage_acquire(st)
                elif stage == "repomap":
                    _stage_repomap(st)
                elif stage == "symbols":
                    _stage_symbols(st)
                elif stage == "search_index":
                    _stage_search_index(st, should_stop)
                elif stage == "snippets":
                    _stage_snippets(st)
                else:
                    manifest = _stage_bundle(st)
            seconds = time.perf_counter() - t0
            st.timings[stage] = round(seconds, 4)
            store.stage_finished(run_id, stage, seconds, "succeeded", {"counts": dict(st.counts)})
            st.progress(stage, 1.0, f"{stage} done in {seconds:.2f}s")
            log.info("stage %s done in %.3fs", stage, seconds)
        manifest["stage_seconds"] = st.timings
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = index_dir(settings, index_id)
        if final.exists():
            trash = final.with_name(f".old-{run_id}")
            os.rename(final, trash)
            os.rename(work, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(work, final)
        store.set_index_status(index_id, "ready", manifest)
        store.update_run(
            run_id, state="succeeded", stage="done", percent=100.0, message="ready", finished_at=time.time()
        )
        log.info("run %s succeeded", run_id)
        return manifest
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        log.exception("run %s failed", run_id)
        cancelled = isinstance(exc, InterruptedError)
        error = {"code": "cancelled" if cancelled else type(exc).__name__, "message": str(exc)}
        if not final_attempt:
            store.update_run(run_id, error=error)
            raise
        store.update_run(
            run_id, state="cancelled" if cancelled else "failed", error=error, finished_at=time.time()
        )
        store.set_index_status(index_id, "cancelled" if cancelled else "failed")
        raise
    finally:
        if st.gc_frozen:  # the repomap stage froze the analysis; let this process collect it again
            gc.unfreeze()
        store.close()
        for h in list(log.handlers):
            h.close()
            log.removeHandler(h)


def _run_logger(settings: MimirSettings, run_id: str) -> logging.Logger:
    path = log_path(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"mimir.run.{run_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log
