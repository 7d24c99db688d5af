"""Lens as a library: the facade the CLI, the HTTP API and Mimir all use.

Everything a surface needs (index, search, list, read a file at the indexed
revision, look up symbols) goes through here, so behaviour is the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
# read_spans: at most this many ranges, and this many requested lines in all, per call.
MAX_BATCH_SPANS = 256
MAX_BATCH_LINES = 50_000
MAX_PATH_CHARS = 4096
_SQL_PARAMS = 500  # paths per IN (...) lookup, well below SQLite's variable limit


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
        return {
            "repo": name,
            "path": path,
            "commit": commit,
            **_line_range(_split_lines(content), lang, sha, total_lines, start, end),
        }

    def read_spans(self, name: str, spans: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
        """Many line ranges ``(path, start, end)`` in one call, all from one snapshot (one commit).

        Each item of ``spans`` in the answer is what :meth:`read_file` returns for that range (minus
        ``repo`` and ``commit``, which are given once), or ``{"path", "start", "end", "error": {"code",
        "message", "details"}}`` where read_file would raise: ``not_found`` when the file is not in
        the repository, ``bad_request`` when the range starts past its end. The request as a whole is
        refused (BadRequest) when it is malformed or too big: at most :data:`MAX_BATCH_SPANS` items,
        each ``1 <= start <= end`` and at most :data:`MAX_SPAN_LINES` lines, and at most
        :data:`MAX_BATCH_LINES` requested lines in all. Paths are keys of the index, never opened on disk.
        """
        name = validate_name(name)
        check_spans(spans)
        view = self.searcher.shards.view(name)
        wanted: dict[str, list[int]] = {}  # path -> positions of its ranges in ``spans``
        for i, (path, _, _) in enumerate(spans):
            wanted.setdefault(path, []).append(i)
        items: list[dict[str, Any] | None] = [None] * len(spans)
        paths = list(wanted)
        with view.snapshot() as snap:
            for i in range(0, len(paths), _SQL_PARAMS):
                chunk = paths[i : i + _SQL_PARAMS]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT path, content, lang, sha256, lines FROM files WHERE path IN ({marks})"
                # One file's text in memory at a time, however many files the batch names.
                for path, content, lang, sha, total_lines in snap.conn.execute(sql, chunk):
                    lines = _split_lines(content)
                    for pos in wanted[path]:
                        _, start, end = spans[pos]
                        try:
                            item = {"path": path, **_line_range(lines, lang, sha, total_lines, start, end)}
                        except BadRequest as exc:
                            item = {"path": path, "start": start, "end": end, "error": exc.to_dict()}
                        items[pos] = item
            commit = snap.commit
        for pos, (path, start, end) in enumerate(spans):
            if items[pos] is None:
                missing = NotFound(
                    f"file {path!r} is not in repository {name!r}", details={"repo": name, "path": path}
                )
                items[pos] = {"path": path, "start": start, "end": end, "error": missing.to_dict()}
        return {"repo": name, "commit": commit, "spans": items}

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


def check_spans(spans: Sequence[tuple[str, int, int]]) -> None:
    """Refuse a malformed or oversized :meth:`Lens.read_spans` request (BadRequest, 400)."""
    if len(spans) > MAX_BATCH_SPANS:
        raise BadRequest(
            f"too many spans: {len(spans)} (at most {MAX_BATCH_SPANS} per request)",
            details={"spans": len(spans), "max_spans": MAX_BATCH_SPANS},
        )
    total = 0
    for i, item in enumerate(spans):
        path, start, end = item
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS or "\x00" in path:
            raise BadRequest(
                f"spans[{i}]: path must be a non-empty string of at most {MAX_PATH_CHARS} characters, no NUL",
                details={"index": i},
            )
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
        if not ints or start < 1 or end < start:
            raise BadRequest(
                f"spans[{i}]: invalid line range: need 1 <= start <= end",
                details={"index": i, "path": path, "start": start, "end": end},
            )
        if end - start + 1 > MAX_SPAN_LINES:
            raise BadRequest(
                f"spans[{i}]: line range too large (at most {MAX_SPAN_LINES} lines)",
                details={"index": i, "path": path, "start": start, "end": end},
            )
        total += end - start + 1
    if total > MAX_BATCH_LINES:
        raise BadRequest(
            f"too many lines requested: {total} (at most {MAX_BATCH_LINES} per request)",
            details={"lines": total, "max_lines": MAX_BATCH_LINES},
        )


def _split_lines(content: str) -> list[str]:
    lines = content.split("\n")
    if content.endswith("\n"):
        lines = lines[:-1]
    return lines


def _line_range(
    lines: list[str], lang: str | None, sha: str, total_lines: int, start: int | None, end: int | None
) -> dict[str, Any]:
    """Lines [start, end] (1-based, inclusive, clamped to the file) of one file, as read_file answers."""
    first = 1 if start is None else start
    last = len(lines) if end is None else min(end, len(lines))
    if first < 1 or (end is not None and end < first) or (first > len(lines) and lines):
        raise BadRequest("invalid line range: need 1 <= start <= end", details={"start": start, "end": end})
    if last - first + 1 > MAX_SPAN_LINES:
        raise BadRequest(
            f"line range too large (at most {MAX_SPAN_LINES} lines)",
            details={"start": first, "end": last},
        )
    return {
        "language": lang,
        "sha256": sha,
        "start": first,
        "end": max(last, first - 1),
        "total_lines": total_lines,
        "lines": lines[first - 1 : last],
    }


def data_dir_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
    return total
