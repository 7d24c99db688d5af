"""Read access to the live shards, safe for many threads.

Each thread keeps its own read-only SQLite connection per shard generation; a
query runs inside one read transaction, so it sees one consistent snapshot even
while an incremental update commits. Per-generation in-memory tables (paths,
languages) are shared by all threads and reloaded when the generation changes.
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
    ):
        self.repo = repo
        self.shard = shard
        self.conn = conn
        self.meta = meta
        self.files = files

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

    def _conn(self) -> tuple[Path, sqlite3.Connection]:
        shard = self.catalog.require_shard(self.repo)
        cached: tuple[Path, sqlite3.Connection] | None = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == shard:
            return cached
        if cached is not None:
            cached[1].close()
        conn = shardlib.connect(shard, readonly=True)
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

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        shard, conn = self._conn()
        conn.execute("BEGIN")
        try:
            meta = shardlib.get_meta(conn)
            files = self._file_table(shard, int(meta.get("generation", 0)), conn)
            yield Snapshot(self.repo, shard, conn, meta, files)
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
