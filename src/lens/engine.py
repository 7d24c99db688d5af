"""Lens as a library: the facade the CLI, the HTTP API and Mimir all use.

Everything a surface needs (index, search, list, read a file at the indexed
revision, look up symbols) goes through here, so behaviour is the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lens.config import LensSettings
from lens.errors import BadRequest, NotFound, PathNotAllowed
from lens.index import shard as shardlib
from lens.index.builder import IndexReport, Progress, index_repository
from lens.index.catalog import Catalog, validate_name
from lens.index.embedder import Embedder, default_embedder
from lens.index.embedding import embed_pending, pending_counts
from lens.query.results import SearchResult
from lens.query.searcher import Searcher

MAX_SPAN_LINES = 5000


def check_allowed(path: Path, roots: list[Path]) -> Path:
    """Resolve symlinks first, then require the path to lie under an allowed root."""
    resolved = path.expanduser().resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathNotAllowed(
        f"path {str(path)!r} is outside the allowed roots",
        details={"path": str(path), "allowed_roots": [str(r) for r in roots]},
    )


class Lens:
    def __init__(
        self,
        settings: LensSettings | None = None,
        *,
        embedder_factory: Callable[[], Embedder] | None = None,
    ) -> None:
        self.settings = settings or LensSettings()
        self.catalog = Catalog(self.settings.data_dir)
        factory = embedder_factory if embedder_factory is not None else default_embedder
        self._embedder_factory: Callable[[], Embedder] | None = factory if self.settings.embed else None
        self.searcher = Searcher(
            self.catalog, self._embedder_factory, max_query_length=self.settings.max_query_length
        )

    # -- indexing -----------------------------------------------------------------
    def index(
        self,
        path: Path,
        *,
        name: str | None = None,
        rev: str | None = None,
        worktree: bool = False,
        full: bool = False,
        progress: Progress | None = None,
        enforce_roots: bool = False,
        seed: str | None = None,
    ) -> IndexReport:
        """Index ``path``; ``seed`` names an indexed repository to start from when ``name`` is new."""
        if enforce_roots:
            path = check_allowed(path, self.settings.roots())
        resolved = path.expanduser().resolve()
        repo_name = validate_name(name or resolved.name)
        return index_repository(
            self.catalog,
            repo_name,
            resolved,
            rev=rev,
            worktree=worktree,
            max_file_bytes=self.settings.max_file_bytes,
            full=full,
            progress=progress,
            seed_from=self.catalog.require_shard(validate_name(seed)) if seed else None,
        )

    def embed(
        self,
        name: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Compute missing chunk vectors for ``name`` (no-op when semantic search is off)."""
        if self._embedder_factory is None:
            return 0
        embedder = self.searcher.embedder()
        assert embedder is not None
        with self.catalog.lock(name):
            shard = self.catalog.require_shard(name)
            return embed_pending(shard, embedder, progress=progress, should_stop=should_stop)

    def remove(self, name: str) -> None:
        self.catalog.remove(name)

    # -- reading ------------------------------------------------------------------
    def search(self, query: str, **kwargs: Any) -> SearchResult:
        return self.searcher.search(query, **kwargs)

    def repos(self) -> list[dict[str, Any]]:
        return [self.repo(n) for n in self.catalog.names()]

    def repo(self, name: str) -> dict[str, Any]:
        view = self.searcher.shards.view(validate_name(name))
        shard = self.catalog.require_shard(name)
        with view.snapshot() as snap:
            meta = snap.meta
            embedded, total = pending_counts(snap.conn)
        size = data_dir_usage(shard.parent)
        semantic = (
            "disabled" if self._embedder_factory is None else ("ready" if embedded == total else "pending")
        )
        return {
            "name": name,
            "kind": meta.get("kind"),
            "source_path": meta.get("source_path"),
            "rev": meta.get("rev"),
            "commit": meta.get("commit"),
            "generation": meta.get("generation"),
            "indexed_at": meta.get("indexed_at"),
            "files": meta.get("files"),
            "bytes": meta.get("bytes"),
            "symbols": meta.get("symbols"),
            "chunks": meta.get("chunks"),
            "skipped": meta.get("skipped", {}),
            "index_bytes": size,
            "semantic": {
                "status": semantic,
                "embedded": embedded,
                "total": total,
                "model": meta.get("embed_model"),
            },
        }

    def read_file(
        self, name: str, path: str, start: int | None = None, end: int | None = None
    ) -> dict[str, Any]:
        """A line range of a file exactly as indexed (1-based, inclusive)."""
        view = self.searcher.shards.view(validate_name(name))
        with view.snapshot() as snap:
            row = snap.conn.execute(
                "SELECT content, lang, sha256, lines FROM files WHERE path = ?", (path,)
            ).fetchone()
            commit = snap.commit
        if row is None:
            raise NotFound(
                f"file {path!r} is not in repository {name!r}", details={"repo": name, "path": path}
            )
        content, lang, sha, total_lines = row
        lines = content.split("\n")
        if content.endswith("\n"):
            lines = lines[:-1]
        first = 1 if start is None else start
        last = len(lines) if end is None else min(end, len(lines))
        if first < 1 or (end is not None and end < first) or (first > len(lines) and lines):
            raise BadRequest(
                "invalid line range: need 1 <= start <= end", details={"start": start, "end": end}
            )
        if last - first + 1 > MAX_SPAN_LINES:
            raise BadRequest(
                f"line range too large (at most {MAX_SPAN_LINES} lines)",
                details={"start": first, "end": last},
            )
        return {
            "repo": name,
            "path": path,
            "commit": commit,
            "language": lang,
            "sha256": sha,
            "start": first,
            "end": max(last, first - 1),
            "total_lines": total_lines,
            "lines": lines[first - 1 : last],
        }

    def symbols(self, name: str, q: str, *, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Definitions whose name starts with ``q`` (case-insensitive), exact matches first."""
        if not q:
            raise BadRequest("q must not be empty", details={"q": q})
        view = self.searcher.shards.view(validate_name(name))
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        sql = (
            "SELECT s.name, s.kind, s.container, s.start_line, s.end_line, s.line, f.path, f.lang, f.id"
            " FROM symbols s JOIN files f ON f.id = s.file_id"
            " WHERE s.name LIKE ? ESCAPE '\\'"
            + (" AND s.kind = ?" if kind else "")
            + " ORDER BY (s.name = ?) DESC, (lower(s.name) = lower(?)) DESC, f.id, s.line LIMIT ?"
        )
        params: list[Any] = [escaped + "%"] + ([kind] if kind else []) + [q, q, limit]
        with view.snapshot() as snap:
            rows = snap.conn.execute(sql, params).fetchall()
            commit = snap.commit
        return [
            {
                "name": r[0],
                "kind": r[1],
                "container": r[2],
                "start_line": r[3],
                "end_line": r[4],
                "line": r[5],
                "path": r[6],
                "language": r[7],
                "repo": name,
                "commit": commit,
                "rank_class": shardlib.class_of_id(r[8]),
            }
            for r in rows
        ]


def data_dir_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
    return total
