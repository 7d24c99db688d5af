"""Evidence access for one ready index: the research database plus Lens, with honest fallbacks.

Every read says where it came from. When Lens cannot be reached, spans come from
the snippets stored at index time (definitions only) and the caller is told which
signals are missing; nothing pretends to be complete.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lens.engine import MAX_BATCH_LINES, MAX_BATCH_SPANS, MAX_SPAN_LINES
from mimir.errors import BadRequest, LensDown, UnknownIndex
from mimir.lensclient import LensBackend, LensRequestError, LensUnavailable, fallback_ready
from mimir.pipeline import research_db
from mimir.research.citations import cite, span_sha256
from mimir.store import IndexRecord


@dataclass
class SymbolRow:
    id: str
    name: str
    kind: str
    container: str | None
    path: str
    start_line: int
    end_line: int
    line: int
    importance: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "container": self.container,
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "line": self.line,
            "importance": round(self.importance, 6),
        }


_SYM_COLS = "id, name, kind, container, path, start_line, end_line, line, importance"


@dataclass
class SpanReads:
    """One request's batched Lens reads (:meth:`IndexEvidence.prefetch`), consulted before Lens.

    ``lines`` holds what Lens answered per exact range ``(path, start, end)``: the lines, or the
    error Lens gave for that range; ``missing`` the paths Lens does not have (any range of them is
    not found). ``lens_down``: a batched read found Lens unavailable, so the rest of the request
    reads stored snippets without asking Lens again. ``unbatched``: Lens refused the batched read
    (e.g. an older Lens without it), so spans are read one by one, as before.
    """

    lines: dict[tuple[str, int, int], list[str] | LensRequestError] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    lens_down: bool = False
    unbatched: bool = False

    def knows(self, path: str, start: int, end: int) -> bool:
        return self.lens_down or path in self.missing or (path, start, end) in self.lines


@dataclass
class Degradation:
    """What an answer lacks because a dependency failed; also the request's :class:`SpanReads`."""

    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reads: SpanReads = field(default_factory=SpanReads, repr=False, compare=False)

    @property
    def degraded(self) -> bool:
        return bool(self.missing)

    def add(self, what: str, error: str) -> None:
        if what not in self.missing:
            self.missing.append(what)
        self.errors.append(error)

    def to_dict(self) -> dict[str, Any]:
        return {"degraded": self.degraded, "missing": self.missing, "errors": self.errors[:5]}


class IndexEvidence:
    def __init__(self, record: IndexRecord, index_dir: Path, lens: LensBackend) -> None:
        if record.status != "ready" and not (index_dir / "research.sqlite").exists():
            raise UnknownIndex(
                f"index {record.index_id!r} is not ready (status {record.status}); poll index_status",
                details={"index_id": record.index_id, "status": record.status},
            )
        self.record = record
        self.dir = index_dir
        self.lens = lens
        self._local = threading.local()

    @property
    def commit(self) -> str | None:
        return self.record.commit

    def db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "db", None)
        if conn is None:
            conn = research_db.open_readonly(self.dir / "research.sqlite")
            self._local.db = conn
        return conn

    # -- symbols ------------------------------------------------------------------------
    def _symbols(self, sql: str, params: tuple[Any, ...]) -> list[SymbolRow]:
        return [SymbolRow(*r) for r in self.db().execute(f"SELECT {_SYM_COLS} FROM symbols {sql}", params)]

    def symbol(self, symbol_id: str) -> SymbolRow | None:
        rows = self._symbols("WHERE id = ?", (symbol_id,))
        return rows[0] if rows else None

    def symbols_named(self, name: str, limit: int = 20) -> list[SymbolRow]:
        exact = self._symbols(
            "WHERE name = ? COLLATE NOCASE ORDER BY importance DESC, path LIMIT ?", (name, limit)
        )
        if exact:
            return exact
        esc = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self._symbols(
            "WHERE name LIKE ? ESCAPE '\\' ORDER BY importance DESC, path LIMIT ?", (esc + "%", limit)
        )

    def enclosing_symbol(self, path: str, line: int) -> SymbolRow | None:
        rows = self._symbols(
            "WHERE path = ? AND start_line <= ? AND end_line >= ? ORDER BY end_line - start_line LIMIT 1",
            (path, line, line),
        )
        return rows[0] if rows else None

    def neighbors(
        self, symbol_id: str, kind: str, reverse: bool = False, limit: int = 10
    ) -> list[tuple[SymbolRow, str | None]]:
        col, other = ("dst", "src") if reverse else ("src", "dst")
        out: list[tuple[SymbolRow, str | None]] = []
        for other_id, resolution in self.db().execute(
            f"SELECT {other}, resolution FROM edges WHERE {col} = ? AND kind = ? LIMIT ?",
            (symbol_id, kind, limit * 3),
        ):
            sym = self.symbol(other_id)
            if sym is not None:
                out.append((sym, resolution))
        out.sort(key=lambda t: (-t[0].importance, t[0].path, t[0].line))
        return out[:limit]

    def references(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {"name": n, "path": p, "line": ln, "kind": k, "enclosing": e}
            for n, p, ln, k, e in self.db().execute(
                "SELECT name, path, line, kind, enclosing FROM refs WHERE name = ?"
                " ORDER BY path, line LIMIT ?",
                (name, limit),
            )
        ]

    def file_rank(self, path: str) -> float:
        row = self.db().execute("SELECT rank FROM files WHERE path = ?", (path,)).fetchone()
        return float(row[0]) if row else 0.0

    def max_rank(self) -> float:
        row = self.db().execute("SELECT max(rank) FROM files").fetchone()
        return float(row[0] or 0.0) or 1.0

    # -- spans ---------------------------------------------------------------------------
    def prefetch(self, spans: Iterable[tuple[str, int, int]], context: int, deg: Degradation) -> None:
        """Read the spans ``(path, start, end)`` with ``context`` lines around them in one Lens call.

        What :meth:`span` (same ``context``) and :meth:`read_lines` will ask for is cached in
        ``deg.reads``, so they answer without a Lens call each; ranges already known are skipped.
        Requests bigger than Lens's caps are split. When Lens is unavailable the degradation is
        recorded once and the request's reads fall back to stored snippets, as read_lines does.
        """
        reads = deg.reads
        if reads.lens_down or reads.unbatched:
            return
        wanted: dict[tuple[str, int, int], None] = {}
        for path, start, end in spans:
            key = (path, max(1, start - context), end + context)
            if not reads.knows(*key) and key[2] - key[1] < MAX_SPAN_LINES:  # longer: read_file's answer
                wanted.setdefault(key)
        batch: list[tuple[str, int, int]] = []
        lines = 0
        for key in wanted:
            size = key[2] - key[1] + 1
            if batch and (len(batch) >= MAX_BATCH_SPANS or lines + size > MAX_BATCH_LINES):
                if not self._read_batch(batch, deg):
                    return
                batch, lines = [], 0
            batch.append(key)
            lines += size
        if batch:
            self._read_batch(batch, deg)

    def _read_batch(self, batch: list[tuple[str, int, int]], deg: Degradation) -> bool:
        reads = deg.reads
        try:
            with fallback_ready():  # stored snippets answer when Lens cannot
                data = self.lens.read_spans(self.record.lens_repo, batch)
        except LensUnavailable as exc:
            deg.add("lens", f"read_spans: {exc}")
            reads.lens_down = True
            return False
        except LensRequestError:
            reads.unbatched = True  # read_file, one span at a time, answers exactly as before
            return False
        items = data.get("spans")
        if not isinstance(items, list) or len(items) != len(batch):
            reads.unbatched = True
            return False
        for key, item in zip(batch, items, strict=True):
            if item.get("path") != key[0]:
                continue  # not what was asked for: leave this range to read_file
            err = item.get("error")
            if err is None:
                reads.lines[key] = list(item["lines"])
            elif err.get("code") == "not_found":
                reads.missing.add(key[0])
            else:
                code = str(err.get("code", "bad_request"))
                reads.lines[key] = LensRequestError(
                    code, str(err.get("message", "")), 400, details=dict(err.get("details") or {})
                )
        return True

    def span_known(self, path: str, start: int, end: int, context: int, deg: Degradation) -> bool:
        """:meth:`span` with this ``context`` needs no Lens call (prefetched, or Lens is known down)."""
        return deg.reads.knows(path, max(1, start - context), end + context)

    def read_lines(self, path: str, start: int, end: int, deg: Degradation) -> tuple[list[str], str] | None:
        """Lines [start, end] at the indexed commit: from Lens, else from a stored snippet."""
        reads = deg.reads
        cached = reads.lines.get((path, start, end))
        if path in reads.missing:
            return None
        if isinstance(cached, list):
            return list(cached), "lens"
        if cached is None and not reads.lens_down:
            try:
                with fallback_ready():  # stored snippets answer when Lens cannot
                    data = self.lens.read_file(self.record.lens_repo, path, start, end)
                return list(data["lines"]), "lens"
            except LensRequestError as exc:
                cached = exc
            except LensUnavailable as exc:
                deg.add("lens", f"read_file: {exc}")
        if cached is not None:
            if cached.code == "not_found":
                reads.missing.add(path)  # no other range of it exists either
                return None
            raise BadRequest(cached.message, details={"path": path}) from cached
        row = (
            self.db()
            .execute(
                "SELECT start_line, end_line, text FROM snippets"
                " WHERE path = ? AND start_line <= ? AND end_line >= ?"
                " ORDER BY end_line - start_line LIMIT 1",
                (path, start, end),
            )
            .fetchone()
        )
        if row is None:
            return None
        lines = row[2].split("\n")
        return lines[start - row[0] : end - row[0] + 1], "snippet"

    def span(self, path: str, start: int, end: int, context: int, deg: Degradation) -> dict[str, Any] | None:
        """A cited span with its context lines and hash."""
        lo = max(1, start - context)
        got = self.read_lines(path, lo, end + context, deg)
        if got is None:
            got = self.read_lines(path, start, end, deg)
            lo = start
            if got is None:
                return None
        lines, source = got
        cited = lines[start - lo : start - lo + (end - start + 1)]
        end = start + len(cited) - 1 if cited else start
        return {
            "path": path,
            "start_line": start,
            "end_line": end,
            "citation": cite(path, start, end, self.commit),
            "sha256": span_sha256(cited),
            "snippet": {"start_line": lo, "lines": lines},
            "source": source,
        }


def require_lens(deg: Degradation, what: str) -> None:
    if "lens" in deg.missing:
        raise LensDown(f"Lens is unavailable and {what} needs it", details={"errors": deg.errors[:3]})
