"""Read access to the live shards, safe for many threads.

Each thread keeps its own read-only SQLite connection per shard generation; a
query runs inside one read transaction, so it sees one consistent snapshot even
while an incremental update commits. Per-generation in-memory tables (paths,
languages) are shared by all threads and reloaded when the generation changes.
So are the trigram document counts the exact prefilter picks its trigrams by: read
from FTS5's vocabulary one trigram at a time, on first use, and kept for the generation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens.index import shard as shardlib
from lens.index.catalog import Catalog

_VOCAB = "lens_files_vocab"
_MAX_TRIGRAM_COUNTS = 200_000


class TrigramStats:
    """How many of a shard generation's files contain each trigram (FTS5 folds case)."""

    def __init__(self, files: int) -> None:
        self.files = files
        self._counts: dict[str, int] = {}

    def count(self, conn: sqlite3.Connection, gram: str) -> int:
        """Files containing ``gram`` (lower case); one vocabulary lookup the first time."""
        found = self._counts.get(gram)
        if found is not None:
            return found
        row = conn.execute(f"SELECT doc FROM temp.{_VOCAB} WHERE term = ?", (gram,)).fetchone()
        found = int(row[0]) if row else 0
        if len(self._counts) >= _MAX_TRIGRAM_COUNTS:
            self._counts.clear()  # plain dict ops: safe from any thread (GIL); a lost entry is recounted
        self._counts[gram] = found
        return found


@dataclass(frozen=True)
class FileInfo:
    id: int
    path: str
    lang: str | None
    rank_class: int


class Snapshot:
    """One shard as of one read transaction."""

    def __init__(
        self,
        repo: str,
        shard: Path,
        conn: sqlite3.Connection,
        meta: dict[str, Any],
        files: dict[int, FileInfo],
        trigrams: TrigramStats | None = None,
    ):
        self.repo = repo
        self.shard = shard
        self.conn = conn
        self.meta = meta
        self.files = files
        self._trigrams = trigrams

    def trigram_count(self, gram: str) -> int:
        """Files of this generation containing ``gram`` (lower case); all of them when unknown."""
        if self._trigrams is None:
            return len(self.files)
        return self._trigrams.count(self.conn, gram)

    @property
    def has_trigram_counts(self) -> bool:
        return self._trigrams is not None

    @property
    def commit(self) -> str | None:
        value = self.meta.get("commit")
        return str(value) if value else None

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation", 0))

    def content(self, file_id: int) -> bytes:
        row = self.conn.execute("SELECT CAST(content AS BLOB) FROM files WHERE id = ?", (file_id,)).fetchone()
        return bytes(row[0]) if row else b""


class ShardView:
    """A repository's live shard; cheap to query from any thread."""

    def __init__(self, catalog: Catalog, repo: str) -> None:
        self.catalog = catalog
        self.repo = repo
        self._local = threading.local()
        self._lock = threading.Lock()
        self._files: tuple[Path, int, dict[int, FileInfo]] | None = None
        self._trigrams: tuple[Path, int, TrigramStats] | None = None

    def _conn(self) -> tuple[Path, sqlite3.Connection]:
        shard = self.catalog.require_shard(self.repo)
        cached: tuple[Path, sqlite3.Connection] | None = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == shard:
            return cached
        if cached is not None:
            cached[1].close()
        conn = shardlib.connect(shard, readonly=True)
        # FTS5's per-term document counts, through a vocabulary table in this connection's own
        # temp schema (nothing is written to the shard).
        conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{_VOCAB} USING fts5vocab(main, files_fts, row)"
        )
        self._local.conn = (shard, conn)
        return shard, conn

    def _file_table(self, shard: Path, generation: int, conn: sqlite3.Connection) -> dict[int, FileInfo]:
        cached = self._files
        if cached is not None and cached[0] == shard and cached[1] == generation:
            return cached[2]
        with self._lock:
            cached = self._files
            if cached is not None and cached[0] == shard and cached[1] == generation:
                return cached[2]
            table = {
                i: FileInfo(i, p, lang, shardlib.class_of_id(i))
                for i, p, lang in conn.execute("SELECT id, path, lang FROM files ORDER BY id")
            }
            self._files = (shard, generation, table)
            return table

    def _trigram_stats(self, shard: Path, generation: int, files: int) -> TrigramStats:
        cached = self._trigrams
        if cached is not None and cached[0] == shard and cached[1] == generation:
            return cached[2]
        with self._lock:
            cached = self._trigrams
            if cached is None or cached[0] != shard or cached[1] != generation:
                cached = self._trigrams = (shard, generation, TrigramStats(files))
            return cached[2]

    def _meta(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """The shard's meta table as of the open read transaction, re-read only after a commit.

        ``PRAGMA data_version`` opens the read transaction (so it names this snapshot) and changes
        only when another connection has committed since this connection last looked.
        """
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        cached: tuple[sqlite3.Connection, int, dict[str, Any]] | None = getattr(self._local, "meta", None)
        if cached is not None and cached[0] is conn and cached[1] == version:
            return cached[2]
        meta = shardlib.get_meta(conn)
        self._local.meta = (conn, version, meta)
        return meta

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        shard, conn = self._conn()
        conn.execute("BEGIN")
        try:
            meta = self._meta(conn)
            generation = int(meta.get("generation", 0))
            files = self._file_table(shard, generation, conn)
            trigrams = self._trigram_stats(shard, generation, len(files))
            yield Snapshot(self.repo, shard, conn, meta, files, trigrams)
        finally:
            conn.execute("ROLLBACK")


class ShardSet:
    """All repositories of a catalog, with views created on first use."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._views: dict[str, ShardView] = {}
        self._lock = threading.Lock()

    def view(self, repo: str) -> ShardView:
        with self._lock:
            view = self._views.get(repo)
            if view is None:
                view = self._views[repo] = ShardView(self.catalog, repo)
            return view

    def views(self) -> list[ShardView]:
        return [self.view(name) for name in self.catalog.names()]
