"""Indexing: discover -> parse -> write a shard, fully or incrementally, atomically.

Readers never see a half-built index: a full build writes a private generation
directory that is published by one rename; an incremental update is one SQLite
transaction in the live generation. Killing the process at any moment leaves the
previous state searchable and the next run completes the work.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
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
from lens.parse.model import Chunk
from lens.parse.tokens import line_token_texts, token_text

# (stage, done, total): stages are "discover", "parse", "write", "embed".
Progress = Callable[[str, int, int], None]

_PARALLEL_MIN_FILES = 64
_BATCH_FILES = 128
_BATCH_BYTES = 2 << 20  # a batch also ends at this much content, so huge files do not pile up
_SIDE_QUEUE = 16  # batches waiting for a side FTS thread
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


# Payloads between the indexer and its parse workers are plain tuples: pickling them is several
# times cheaper than pickling dataclasses, and the workers get only what they need (not the oid or
# sha256) and send back only what the indexer does not have (not the content).
_Job = tuple[str, str | None, bytes]  # path, lang, content
SymbolRow = tuple[str, str, str | None, int, int, int]  # name, kind, container, start, end, line
ChunkRow = tuple[int, int, str, str | None, str, str]  # start, end, kind, name, hash, BM25 tokens
Parsed = tuple[int, str, list[SymbolRow], list[ChunkRow]]  # lines, parser, symbols, chunks


def chunk_body(content_lines: list[str], start_line: int, end_line: int) -> str:
    return "\n".join(content_lines[start_line - 1 : end_line])


def chunk_tokens(path: str, name: str | None, body: str) -> str:
    """BM25 text of a chunk: derivable from stored data, so deletes can recompute it.

    Equal to ``" ".join(tokenize(...))`` of the same text (contentless FTS5 deletes need the
    tokens that were inserted, exactly).
    """
    return token_text(f"{path} {name or ''} {body}")


def _chunk_rows(path: str, content: bytes, chunks: list[Chunk]) -> list[ChunkRow]:
    """Hash and BM25 tokens of each chunk, as :func:`text_hash` / :func:`chunk_tokens` compute them.

    ASCII files (nearly all code) are sliced and tokenized as bytes, without decoding.
    """
    out: list[ChunkRow] = []
    if content.isascii():
        blines = content.split(b"\n")
        line_tokens = line_token_texts(content)
        for c in chunks:
            body = b"\n".join(blines[c.start_line - 1 : c.end_line])
            digest = hashlib.sha256(embed_text(path, c.kind, c.name, "").encode("utf-8", "surrogatepass"))
            digest.update(body)
            head = token_text(f"{path} {c.name or ''}")
            tokens = "".join(line_tokens[c.start_line - 1 : c.end_line])[:-1]
            out.append(
                (
                    c.start_line,
                    c.end_line,
                    c.kind,
                    c.name,
                    digest.hexdigest(),
                    f"{head} {tokens}" if head and tokens else head or tokens,
                )
            )
        return out
    lines = content.decode("utf-8").split("\n")
    for c in chunks:
        text = "\n".join(lines[c.start_line - 1 : c.end_line])
        out.append(
            (
                c.start_line,
                c.end_line,
                c.kind,
                c.name,
                text_hash(embed_text(path, c.kind, c.name, text)),
                chunk_tokens(path, c.name, text),
            )
        )
    return out


def _parse_jobs(jobs: list[_Job]) -> list[Parsed]:
    """Worker entry point (runs in a process pool for large runs)."""
    results = parse_batch(jobs, chunk_text=False)
    out: list[Parsed] = []
    for (path, _lang, content), r in zip(jobs, results, strict=True):
        lines = content.count(b"\n") + (0 if content.endswith(b"\n") or not content else 1)
        symbols = [(s.name, s.kind, s.container, s.start_line, s.end_line, s.line) for s in r.symbols]
        out.append((lines, r.parser, symbols, _chunk_rows(path, content, r.chunks)))
    return out


def _batched(items: Iterable[LoadedFile], size: int, max_bytes: int) -> Iterator[list[LoadedFile]]:
    batch: list[LoadedFile] = []
    nbytes = 0
    for it in items:
        batch.append(it)
        nbytes += len(it.content)
        if len(batch) >= size or nbytes >= max_bytes:
            yield batch
            batch = []
            nbytes = 0
    if batch:
        yield batch


def _jobs(batch: list[LoadedFile]) -> list[_Job]:
    return [(f.path, f.lang, f.content) for f in batch]


def _parsed_stream(
    files: Iterator[LoadedFile], total: int
) -> Iterator[tuple[list[LoadedFile], list[Parsed]]]:
    """Batches of files with their parse results, in input order.

    Parsing runs in worker processes when the run is large enough to pay for them.
    """
    workers = os.cpu_count() or 1
    if total < _PARALLEL_MIN_FILES or workers < 2:
        for batch in _batched(files, _BATCH_FILES, _BATCH_BYTES):
            yield batch, _parse_jobs(_jobs(batch))
        return
    # forkserver, not fork: forked workers would inherit the repository's flock (and git pipes)
    # and keep holding them if this process is killed.
    pool: Executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("forkserver")
    )
    try:
        pending: deque[tuple[list[LoadedFile], Future[list[Parsed]]]] = deque()
        for batch in _batched(files, _BATCH_FILES, _BATCH_BYTES):
            pending.append((batch, pool.submit(_parse_jobs, _jobs(batch))))
            while len(pending) > workers * 3:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class _SideFts:
    """One FTS5 table of a fresh shard, filled on a thread of its own in a private side database.

    The FTS5 inserts (tokenizing every file into trigrams, every chunk into BM25 terms) are the
    largest costs of writing a shard, and SQLite runs them without the GIL, so on their own
    thread they overlap the rest of the build. The side database is declared with the shard's
    schema, so its finished index is the shard's index: :func:`shardlib.copy_fts` copies it in.
    """

    def __init__(self, path: Path, table: str, column: str) -> None:
        self.path = path
        self.table = table
        self._sql = f"INSERT INTO {table}(rowid, {column}) VALUES(?, ?)"
        self._queue: queue.Queue[list[tuple[int, str]] | None] = queue.Queue(maxsize=_SIDE_QUEUE)
        self._error: BaseException | None = None
        self._stop = False
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-32768")
        conn.executescript(shardlib.SCHEMA_TABLES)
        self._conn = conn
        # Started by the first put(): the shard's connection attaches this database first, and
        # reads it only after finish(), so the two connections never contend for its locks.
        self._thread = threading.Thread(target=self._run, name=f"lens-{table}", daemon=True)

    def _run(self) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN")
            while (rows := self._queue.get()) is not None:
                if not self._stop:
                    conn.executemany(self._sql, rows)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._error = exc
            while self._queue.get() is not None:  # keep the producer from blocking on a full queue
                pass
        finally:
            conn.close()

    def put(self, rows: list[tuple[int, str]]) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()
        self._queue.put(rows)

    def finish(self) -> None:
        """Wait until every row is in and committed."""
        self._close(stop=False)
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self._close(stop=True)

    def _close(self, *, stop: bool) -> None:
        if self._thread.ident is None:  # never started: nothing was put
            self._conn.close()
            return
        self._stop = stop
        self._queue.put(None)
        self._thread.join()


class _Writer:
    """Row-level writes to an open shard inside the caller's transaction.

    ``side`` maps FTS table names to side builders that take those inserts instead (full builds).
    """

    def __init__(self, conn: sqlite3.Connection, side: dict[str, _SideFts] | None = None) -> None:
        self.conn = conn
        self.side = side or {}
        self.next_id: dict[int, int] = {}
        for cls in (shardlib.CLASS_NORMAL, shardlib.CLASS_TEST, shardlib.CLASS_LOW):
            lo = shardlib.class_base(cls)
            hi = shardlib.class_base(cls + 1)
            row = conn.execute("SELECT max(id) FROM files WHERE id >= ? AND id < ?", (lo, hi)).fetchone()
            self.next_id[cls] = (row[0] + 1) if row[0] is not None else lo
        # chunks.id is AUTOINCREMENT: never reuse an id, even one whose row was deleted.
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
        top = conn.execute("SELECT max(id) FROM chunks").fetchone()[0]
        self.next_chunk_id = max(seq[0] if seq else 0, top or 0) + 1

    def add(self, files: list[LoadedFile], parsed: list[Parsed]) -> None:
        """Insert a batch of files with their symbols and chunks."""
        file_rows = []
        fts_rows: list[tuple[int, str]] = []
        symbol_rows = []
        chunk_rows = []
        chunk_fts_rows: list[tuple[int, str]] = []
        cid = self.next_chunk_id
        for f, (lines, parser, symbols, chunks) in zip(files, parsed, strict=True):
            cls = rank_class(f.path)
            file_id = self.next_id[cls]
            self.next_id[cls] += 1
            text = f.content.decode("utf-8")
            file_rows.append((file_id, f.path, f.oid, f.sha256, f.lang, len(f.content), lines, parser, text))
            fts_rows.append((file_id, text))
            symbol_rows.extend([(file_id, *s) for s in symbols])
            for start, end, kind, name, digest, tokens in chunks:
                chunk_rows.append((cid, file_id, start, end, kind, name, digest))
                chunk_fts_rows.append((cid, tokens))
                cid += 1
        self.next_chunk_id = cid
        conn = self.conn
        conn.executemany(
            "INSERT INTO files(id, path, oid, sha256, lang, size, lines, parser, content)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            file_rows,
        )
        self._fts("files_fts", "INSERT INTO files_fts(rowid, content) VALUES(?, ?)", fts_rows)
        conn.executemany(
            "INSERT INTO symbols(file_id, name, kind, container, start_line, end_line, line)"
            " VALUES(?, ?, ?, ?, ?, ?, ?)",
            symbol_rows,
        )
        conn.executemany(
            "INSERT INTO chunks(id, file_id, start_line, end_line, kind, name, hash)"
            " VALUES(?, ?, ?, ?, ?, ?, ?)",
            chunk_rows,
        )
        self._fts("chunks_fts", "INSERT INTO chunks_fts(rowid, tokens) VALUES(?, ?)", chunk_fts_rows)

    def _fts(self, table: str, sql: str, rows: list[tuple[int, str]]) -> None:
        side = self.side.get(table)
        if side is not None:
            side.put(rows)
        else:
            self.conn.executemany(sql, rows)

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
            # The build directory is private until published, so a full build needs no journal.
            conn = shardlib.create(build_dir / SHARD_FILE, bulk=True)
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
        side: dict[str, _SideFts] = {}
        try:
            if full_build and len(to_read) >= _PARALLEL_MIN_FILES:
                assert build_dir is not None
                for table, column in (("files_fts", "content"), ("chunks_fts", "tokens")):
                    side[table] = _SideFts(build_dir / f"side-{table}.sqlite", table, column)
                    conn.execute(f"ATTACH DATABASE ? AS side_{table}", (str(side[table].path),))
            # A full build's side databases are attached, and BEGIN IMMEDIATE would lock them
            # against their own builders: that transaction takes its locks as it goes.
            conn.execute("BEGIN" if full_build else "BEGIN IMMEDIATE")
            writer = _Writer(conn, side)
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
            for batch, parsed in _parsed_stream(loaded, len(to_read)):
                writer.add(batch, parsed)
                written.extend(f.path for f in batch)
                if len(written) < len(to_read):  # the last batch is reported once, below
                    report_progress("index", len(written), len(to_read))
            report_progress("index", len(to_read), len(to_read))
            timings["write"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            for table, builder in side.items():
                builder.finish()
                shardlib.copy_fts(conn, f"side_{table}", table)
            if full_build:
                shardlib.create_indexes(conn)
            timings["finish"] = time.perf_counter() - t1
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
            for builder in side.values():
                builder.abort()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        if previous is not None:
            conn.execute("DETACH DATABASE prev")
        for table, builder in side.items():
            conn.execute(f"DETACH DATABASE side_{table}")
            builder.path.unlink()
        if full_build:
            shardlib.finish_bulk(conn)
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
