"""Evidence access for one ready index: the research database plus Lens, with honest fallbacks.

Every read says where it came from. When Lens cannot be reached, spans come from
the snippets stored at index time (definitions only) and the caller is told which
signals are missing; nothing pretends to be complete.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
class Degradation:
    """What an answer lacks because a dependency failed."""

    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

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
    def read_lines(self, path: str, start: int, end: int, deg: Degradation) -> tuple[list[str], str] | None:
        """Lines [start, end] at the indexed commit: from Lens, else from a stored snippet."""
        try:
            with fallback_ready():  # stored snippets answer when Lens cannot
                data = self.lens.read_file(self.record.lens_repo, path, start, end)
            return list(data["lines"]), "lens"
        except LensRequestError as exc:
            if exc.code == "not_found":
                return None
            raise BadRequest(exc.message, details={"path": path}) from exc
        except LensUnavailable as exc:
            deg.add("lens", f"read_file: {exc}")
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
