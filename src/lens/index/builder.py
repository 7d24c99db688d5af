"""Indexing: discover -> parse -> write a shard, fully or incrementally, atomically.

Readers never see a half-built index: a full build writes a private generation
directory that is published by one rename; an incremental update is one SQLite
transaction in the live generation. Killing the process at any moment leaves the
previous state searchable and the next run completes the work.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lens.discover.filters import discover, load
from lens.discover.model import FileEntry, LoadedFile, SkipCounts
from lens.discover.source import open_source
from lens.index import shard as shardlib
from lens.index.catalog import SHARD_FILE, Catalog
from lens.index.embedding import embed_text, text_hash
from lens.index.ranking import rank_class
from lens.parse import parse_batch
from lens.parse.model import Chunk, ParseResult
from lens.parse.tokens import tokenize

# (stage, done, total): stages are "discover", "parse", "write", "embed".
Progress = Callable[[str, int, int], None]

_PARALLEL_MIN_FILES = 64
_BATCH_FILES = 128
_FULL_REBUILD_FRACTION = 0.5


@dataclass
class IndexReport:
    name: str
    kind: str
    commit: str | None
    generation: int
    full_build: bool
    files: int
    added: int
    changed: int
    deleted: int
    unchanged: int
    bytes_indexed: int
    symbols: int
    chunks: int
    skipped: dict[str, int]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParsedChunk:
    start_line: int
    end_line: int
    kind: str
    name: str | None
    hash: str
    tokens: str


@dataclass
class ParsedFile:
    loaded: LoadedFile
    result: ParseResult
    chunks: list[ParsedChunk]
    lines: int


def chunk_body(content_lines: list[str], start_line: int, end_line: int) -> str:
    return "\n".join(content_lines[start_line - 1 : end_line])


def chunk_tokens(path: str, name: str | None, body: str) -> str:
    """BM25 text of a chunk: derivable from stored data, so deletes can recompute it."""
    return " ".join(tokenize(f"{path} {name or ''} {body}"))


def _prepare_chunks(path: str, content: str, chunks: list[Chunk]) -> list[ParsedChunk]:
    lines = content.split("\n")
    out = []
    for c in chunks:
        body = chunk_body(lines, c.start_line, c.end_line)
        out.append(
            ParsedChunk(
                start_line=c.start_line,
                end_line=c.end_line,
                kind=c.kind,
                name=c.name,
                hash=text_hash(embed_text(path, c.kind, c.name, body)),
                tokens=chunk_tokens(path, c.name, body),
            )
        )
    return out


def _parse_files(files: list[LoadedFile]) -> list[ParsedFile]:
    """Worker entry point (runs in a process pool for large runs)."""
    results = parse_batch([(f.path, f.lang, f.content) for f in files])
    out = []
    for f, r in zip(files, results, strict=True):
        text = f.content.decode("utf-8")
        lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        out.append(ParsedFile(f, r, _prepare_chunks(f.path, text, r.chunks), lines))
    return out


def _batched(items: Iterable[LoadedFile], size: int) -> Iterator[list[LoadedFile]]:
    batch: list[LoadedFile] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parsed_stream(files: Iterator[LoadedFile], total: int) -> Iterator[ParsedFile]:
    """Parse in worker processes when the run is large enough to pay for them."""
    workers = os.cpu_count() or 1
    if total < _PARALLEL_MIN_FILES or workers < 2:
        for batch in _batched(files, _BATCH_FILES):
            yield from _parse_files(batch)
        return
    # forkserver, not fork: forked workers would inherit the repository's flock (and git pipes)
    # and keep holding them if this process is killed.
    pool: Executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("forkserver")
    )
    try:
        pending = []
        for batch in _batched(files, _BATCH_FILES):
            pending.append(pool.submit(_parse_files, batch))
            while len(pending) > workers * 3:
                yield from pending.pop(0).result()
        for fut in pending:
            yield from fut.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class _Writer:
    """Row-level writes to an open shard inside the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.next_id: dict[int, int] = {}
        for cls in (shardlib.CLASS_NORMAL, shardlib.CLASS_TEST, shardlib.CLASS_LOW):
            lo = shardlib.class_base(cls)
            hi = shardlib.class_base(cls + 1)
            row = conn.execute("SELECT max(id) FROM files WHERE id >= ? AND id < ?", (lo, hi)).fetchone()
            self.next_id[cls] = (row[0] + 1) if row[0] is not None else lo

    def add(self, pf: ParsedFile) -> None:
        f = pf.loaded
        cls = rank_class(f.path)
        file_id = self.next_id[cls]
        self.next_id[cls] += 1
        text = f.content.decode("utf-8")
        self.conn.execute(
            "INSERT INTO files(id, path, oid, sha256, lang, size, lines, parser, content)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, f.path, f.oid, f.sha256, f.lang, len(f.content), pf.lines, pf.result.parser, text),
        )
        self.conn.execute("INSERT INTO files_fts(rowid, content) VALUES(?, ?)", (file_id, text))
        self.conn.executemany(
            "INSERT INTO symbols(file_id, name, kind, container, start_line, end_line, line)"
            " VALUES(?, ?, ?, ?, ?, ?, ?)",
            [
                (file_id, s.name, s.kind, s.container, s.start_line, s.end_line, s.line)
                for s in pf.result.symbols
            ],
        )
        for c in pf.chunks:
            cur = self.conn.execute(
                "INSERT INTO chunks(file_id, start_line, end_line, kind, name, hash)"
                " VALUES(?, ?, ?, ?, ?, ?)",
                (file_id, c.start_line, c.end_line, c.kind, c.name, c.hash),
            )
            self.conn.execute("INSERT INTO chunks_fts(rowid, tokens) VALUES(?, ?)", (cur.lastrowid, c.tokens))

    def delete(self, file_id: int) -> None:
        row = self.conn.execute("SELECT path, content FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            return
        path, content = row
        self.conn.execute(
            "INSERT INTO files_fts(files_fts, rowid, content) VALUES('delete', ?, ?)", (file_id, content)
        )
        lines = content.split("\n")
        for cid, start, end, name in self.conn.execute(
            "SELECT id, start_line, end_line, name FROM chunks WHERE file_id = ?", (file_id,)
        ).fetchall():
            tokens = chunk_tokens(path, name, chunk_body(lines, start, end))
            self.conn.execute(
                "INSERT INTO chunks_fts(chunks_fts, rowid, tokens) VALUES('delete', ?, ?)", (cid, tokens)
            )
        self.conn.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
        self.conn.execute("DELETE FROM symbols WHERE file_id = ?", (file_id,))
        self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))


def _counts(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
    files, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM files").fetchone()
    symbols = conn.execute("SELECT count(*) FROM symbols").fetchone()[0]
    chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    return files, size, symbols, chunks


def index_repository(
    catalog: Catalog,
    name: str,
    path: Path,
    *,
    rev: str | None = None,
    worktree: bool = False,
    max_file_bytes: int = 1 << 20,
    full: bool = False,
    progress: Progress | None = None,
    seed_from: Path | None = None,
) -> IndexReport:
    """Index ``path`` as repository ``name``; incremental when a compatible shard exists.

    ``seed_from`` (another repository's shard) lets a new repository start from a
    copy of a related one, e.g. the same project at an earlier commit, so only the
    files that differ are parsed and embedded again.
    """
    started = time.perf_counter()
    report_progress: Progress = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    with catalog.lock(name), open_source(path, rev=rev, worktree=worktree) as source:
        t0 = time.perf_counter()
        skips = SkipCounts()
        entries = discover(source, max_file_bytes=max_file_bytes, skips=skips)
        timings["discover"] = time.perf_counter() - t0
        report_progress("discover", len(entries), len(entries))

        current = catalog.current_shard(name)
        conn: sqlite3.Connection | None = None
        build_dir: Path | None = None
        existing: dict[str, tuple[int, str]] = {}
        known_skips: dict[str, tuple[str, str]] = {}
        prior_generation = _generation_of(current) if current is not None else 0
        base = current
        if current is None and seed_from is not None and seed_from.exists() and not full:
            build_dir = catalog.new_build_dir(name)
            _copy_shard(seed_from, build_dir / SHARD_FILE)
            base = build_dir / SHARD_FILE
        if base is not None and not full:
            conn = shardlib.connect(base)
            meta = shardlib.get_meta(conn)
            if meta.get("schema_version") != shardlib.SCHEMA_VERSION:
                conn.close()
                conn = None
            else:
                existing = {p: (i, o) for i, p, o in conn.execute("SELECT id, path, oid FROM files")}
                known_skips = {p: (o, r) for p, o, r in conn.execute("SELECT path, oid, reason FROM skipped")}

        wanted = {e.path: e for e in entries}
        reused_skips: list[tuple[str, str, str]] = []
        to_read: list[FileEntry] = []
        unchanged: list[FileEntry] = []
        for e in entries:
            before = known_skips.get(e.path)
            if before is not None and before[0] == e.oid:
                reused_skips.append((e.path, e.oid, before[1]))
            elif e.path in existing and existing[e.path][1] == e.oid:
                unchanged.append(e)
            else:
                to_read.append(e)
        deleted_ids = [i for p, (i, _o) in existing.items() if p not in wanted]
        changed_ids = [existing[e.path][0] for e in to_read if e.path in existing]
        if conn is not None and len(to_read) + len(deleted_ids) > _FULL_REBUILD_FRACTION * max(
            len(entries), 1
        ):
            conn.close()
            conn = None
        full_build = conn is None
        if full_build:
            build_dir = catalog.new_build_dir(name)  # also clears a seed copy made above
            conn = shardlib.create(build_dir / SHARD_FILE)
            to_read = to_read + unchanged
            to_read.sort(key=lambda e: e.path)
            unchanged, changed_ids = [], []
            deleted_ids_for_report = len(deleted_ids)
            deleted_ids = []
        else:
            deleted_ids_for_report = len(deleted_ids)
        for _p, _o, reason in reused_skips:
            skips.add(reason)

        assert conn is not None
        previous = current if current is not None else seed_from
        if not full_build or previous is None or not previous.exists():
            previous = None
        if previous is not None:
            conn.execute("ATTACH DATABASE ? AS prev", (str(previous),))
        try:
            conn.execute("BEGIN IMMEDIATE")
            writer = _Writer(conn)
            t0 = time.perf_counter()
            for fid in deleted_ids + changed_ids:
                writer.delete(fid)
            content_skips: list[tuple[str, str, str]] = []
            loaded = load(
                source,
                to_read,
                skips=skips,
                on_skip=lambda entry, reason: content_skips.append((entry.path, entry.oid, reason)),
            )
            written: list[str] = []
            for done, pf in enumerate(_parsed_stream(loaded, len(to_read)), start=1):
                writer.add(pf)
                written.append(pf.loaded.path)
                if done % 50 == 0:
                    report_progress("index", done, len(to_read))
            report_progress("index", len(to_read), len(to_read))
            conn.execute("DELETE FROM skipped")
            conn.executemany(
                "INSERT OR REPLACE INTO skipped(path, oid, reason) VALUES(?, ?, ?)", content_skips
            )
            conn.executemany(
                "INSERT OR REPLACE INTO skipped(path, oid, reason) VALUES(?, ?, ?)", reused_skips
            )
            if previous is not None:
                _carry_vectors(conn)
            timings["index"] = time.perf_counter() - t0
            files, size, symbols, chunks = _counts(conn)
            meta = shardlib.get_meta(conn)
            generation = max(int(meta.get("generation", 0)), prior_generation) + 1
            shardlib.set_meta(
                conn,
                name=name,
                kind=source.kind,
                source_path=str(source.root),
                rev=rev or ("HEAD" if source.kind == "git" else None),
                commit=source.commit,
                generation=generation,
                indexed_at=time.time(),
                files=files,
                bytes=size,
                symbols=symbols,
                chunks=chunks,
                skipped=skips.as_dict(),
                max_file_bytes=max_file_bytes,
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        if previous is not None:
            conn.execute("DETACH DATABASE prev")
        if build_dir is not None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            catalog.publish(name, build_dir)
        else:
            conn.close()
        added = sum(1 for p in written if p not in existing)
        return IndexReport(
            name=name,
            kind=source.kind,
            commit=source.commit,
            generation=generation,
            full_build=full_build,
            files=files,
            added=added,
            changed=len(written) - added,
            deleted=deleted_ids_for_report,
            unchanged=len(unchanged),
            bytes_indexed=size,
            symbols=symbols,
            chunks=chunks,
            skipped=skips.as_dict(),
            seconds=time.perf_counter() - started,
            timings=timings,
        )


def _carry_vectors(conn: sqlite3.Connection) -> None:
    """Keep the previous generation's embeddings for chunks whose text did not change."""
    row = conn.execute("SELECT value FROM prev.meta WHERE key = 'embed_model'").fetchone()
    if row is None:
        return
    conn.execute(
        "INSERT OR IGNORE INTO vectors(hash, vec) SELECT hash, vec FROM prev.vectors"
        " WHERE hash IN (SELECT hash FROM chunks)"
    )
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('embed_model', ?)", (row[0],))
    dim = conn.execute("SELECT value FROM prev.meta WHERE key = 'embed_dim'").fetchone()
    if dim is not None:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('embed_dim', ?)", (dim[0],))


def _copy_shard(src: Path, dst: Path) -> None:
    """A consistent copy of a live shard (the backup API sees committed WAL frames too)."""
    source = shardlib.connect(src, readonly=True)
    target = sqlite3.connect(str(dst))
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    conn = shardlib.connect(dst)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _generation_of(shard: Path) -> int:
    conn = shardlib.connect(shard, readonly=True)
    try:
        return int(shardlib.get_meta(conn).get("generation", 0))
    finally:
        conn.close()
