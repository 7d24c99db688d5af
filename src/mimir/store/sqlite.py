"""The embedded metadata store: one SQLite file in WAL mode, shared by threads and processes.

The API process and the pipeline worker subprocesses write to the same file, so every
write is one short transaction and readers never block writers. The schema only grows
(``CREATE ... IF NOT EXISTS``), so an older file is upgraded by opening it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from infra.health import ComponentState
from mimir.errors import UnknownIndex, UnknownJob
from mimir.store.base import (
    MAX_LOGGED_QUERY,
    AuditEntry,
    FileRow,
    IndexRecord,
    QueryLogEntry,
    RepositoryRecord,
    RunRecord,
    SymbolCount,
    check_run_fields,
    symbol_counts,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS indexes(
  index_id TEXT PRIMARY KEY,
  repo TEXT NOT NULL,
  root TEXT NOT NULL,
  rev TEXT,
  commit_id TEXT,
  lens_repo TEXT NOT NULL,
  status TEXT NOT NULL,
  latest_run TEXT,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  manifest TEXT
);
CREATE INDEX IF NOT EXISTS indexes_commit ON indexes(commit_id);
CREATE INDEX IF NOT EXISTS indexes_root ON indexes(root, updated_at);
CREATE TABLE IF NOT EXISTS runs(
  run_id TEXT PRIMARY KEY,
  index_id TEXT NOT NULL,
  state TEXT NOT NULL,
  stage TEXT NOT NULL,
  percent REAL NOT NULL,
  message TEXT NOT NULL,
  error TEXT,
  pid INTEGER,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  finished_at REAL
);
CREATE INDEX IF NOT EXISTS runs_index ON runs(index_id, created_at);
CREATE TABLE IF NOT EXISTS stages(
  run_id TEXT NOT NULL,
  stage TEXT NOT NULL,
  started_at REAL NOT NULL,
  seconds REAL,
  status TEXT NOT NULL,
  detail TEXT,
  PRIMARY KEY(run_id, stage)
);
CREATE TABLE IF NOT EXISTS files(
  index_id TEXT NOT NULL,
  path TEXT NOT NULL,
  language TEXT,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  oid TEXT,
  PRIMARY KEY(index_id, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS symbol_summary(
  index_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  language TEXT NOT NULL,
  count INTEGER NOT NULL,
  PRIMARY KEY(index_id, kind, language)
);
CREATE TABLE IF NOT EXISTS query_log(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at REAL NOT NULL,
  kind TEXT NOT NULL,
  index_id TEXT,
  query TEXT NOT NULL,
  k INTEGER,
  took_ms REAL NOT NULL,
  results INTEGER NOT NULL,
  principal TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS query_log_index ON query_log(index_id, id);
CREATE TABLE IF NOT EXISTS audit_log(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at REAL NOT NULL,
  action TEXT NOT NULL,
  principal TEXT NOT NULL,
  target TEXT,
  detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_action ON audit_log(action, id);
"""

_COLS = (
    "index_id, repo, root, rev, commit_id, lens_repo, status, latest_run, created_at, updated_at, manifest"
)
_RUN_COLS = (
    "run_id, index_id, state, stage, percent, message, error, pid, created_at, updated_at, finished_at"
)


def _dumps(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _index(r: tuple[Any, ...]) -> IndexRecord:
    return IndexRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], _loads(r[10]))


class SqliteStore:
    """Embedded metadata store; safe for several threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._conn().execute(sql, params)

    def _require_index(self, conn: sqlite3.Connection, index_id: str) -> None:
        if conn.execute("SELECT 1 FROM indexes WHERE index_id = ?", (index_id,)).fetchone() is None:
            raise UnknownIndex(f"unknown index {index_id!r}", details={"index_id": index_id})

    # -- indexes --------------------------------------------------------------------
    def upsert_index(self, rec: IndexRecord) -> None:
        self._write(
            f"INSERT INTO indexes({_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(index_id) DO UPDATE SET status=excluded.status, latest_run=excluded.latest_run,"
            " updated_at=excluded.updated_at, rev=excluded.rev",
            (
                rec.index_id,
                rec.repo,
                rec.root,
                rec.rev,
                rec.commit,
                rec.lens_repo,
                rec.status,
                rec.latest_run,
                rec.created_at,
                rec.updated_at,
                json.dumps(rec.manifest) if rec.manifest else None,
            ),
        )

    def get_index(self, index_id: str) -> IndexRecord:
        row = self._conn().execute(f"SELECT {_COLS} FROM indexes WHERE index_id = ?", (index_id,)).fetchone()
        if row is None:
            raise UnknownIndex(
                f"unknown index {index_id!r}: call ensure_repo_index first or list_indexes",
                details={"index_id": index_id},
            )
        return _index(row)

    def find_index(self, root: str, commit: str) -> IndexRecord | None:
        row = (
            self._conn()
            .execute(f"SELECT {_COLS} FROM indexes WHERE root = ? AND commit_id = ?", (root, commit))
            .fetchone()
        )
        return _index(row) if row else None

    def latest_ready_for_root(self, root: str) -> IndexRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_COLS} FROM indexes WHERE root = ? AND status = 'ready'"
                " ORDER BY updated_at DESC LIMIT 1",
                (root,),
            )
            .fetchone()
        )
        return _index(row) if row else None

    def indexes_for_commit(self, commit: str) -> list[IndexRecord]:
        rows = self._conn().execute(f"SELECT {_COLS} FROM indexes WHERE commit_id = ?", (commit,))
        return [_index(r) for r in rows]

    def list_indexes(self) -> list[IndexRecord]:
        rows = self._conn().execute(f"SELECT {_COLS} FROM indexes ORDER BY updated_at DESC")
        return [_index(r) for r in rows]

    def set_index_status(self, index_id: str, status: str, manifest: dict[str, Any] | None = None) -> None:
        if manifest is not None:
            self._write(
                "UPDATE indexes SET status = ?, manifest = ?, updated_at = ? WHERE index_id = ?",
                (status, json.dumps(manifest), time.time(), index_id),
            )
        else:
            self._write(
                "UPDATE indexes SET status = ?, updated_at = ? WHERE index_id = ?",
                (status, time.time(), index_id),
            )

    def list_repositories(self) -> list[RepositoryRecord]:
        rows = self._conn().execute(
            "SELECT root, MIN(repo), COUNT(*), SUM(status = 'ready'), MAX(updated_at) FROM indexes"
            " GROUP BY root ORDER BY MAX(updated_at) DESC"
        )
        return [RepositoryRecord(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # -- runs -----------------------------------------------------------------------
    def create_run(self, run_id: str, index_id: str) -> RunRecord:
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._require_index(conn, index_id)
            conn.execute(
                "INSERT INTO runs(run_id, index_id, state, stage, percent, message, created_at, updated_at)"
                " VALUES(?, ?, 'queued', 'queued', 0, 'queued', ?, ?)",
                (run_id, index_id, now, now),
            )
            conn.execute(
                "UPDATE indexes SET latest_run = ?, updated_at = ? WHERE index_id = ?",
                (run_id, now, index_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        conn = self._conn()
        row = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"unknown job {run_id!r}", details={"job_id": run_id})
        stages = [
            {"stage": s, "started_at": a, "seconds": sec, "status": st, "detail": _loads(d)}
            for s, a, sec, st, d in conn.execute(
                "SELECT stage, started_at, seconds, status, detail FROM stages WHERE run_id = ?"
                " ORDER BY started_at",
                (run_id,),
            )
        ]
        r = row
        return RunRecord(r[0], r[1], r[2], r[3], r[4], r[5], _loads(r[6]), r[7], r[8], r[9], r[10], stages)

    def update_run(self, run_id: str, **fields: Any) -> None:
        check_run_fields(fields)
        if "error" in fields:
            fields["error"] = _dumps(fields["error"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._write(
            f"UPDATE runs SET {cols}, updated_at = ? WHERE run_id = ?",
            (*fields.values(), time.time(), run_id),
        )

    def stage_started(self, run_id: str, stage: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO stages(run_id, stage, started_at, status) VALUES(?, ?, ?, 'running')",
            (run_id, stage, time.time()),
        )

    def stage_finished(
        self, run_id: str, stage: str, seconds: float, status: str, detail: Any = None
    ) -> None:
        self._write(
            "UPDATE stages SET seconds = ?, status = ?, detail = ? WHERE run_id = ? AND stage = ?",
            (seconds, status, _dumps(detail), run_id, stage),
        )

    # -- per-index contents ---------------------------------------------------------
    def _replace(self, index_id: str, table: str, sql: str, rows: Iterable[tuple[Any, ...]]) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._require_index(conn, index_id)
            conn.execute(f"DELETE FROM {table} WHERE index_id = ?", (index_id,))
            n = conn.executemany(sql, rows).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return n

    def put_files(self, index_id: str, rows: Iterable[FileRow]) -> int:
        return self._replace(
            index_id,
            "files",
            "INSERT INTO files(index_id, path, language, bytes, sha256, oid) VALUES(?,?,?,?,?,?)",
            ((index_id, r.path, r.language, r.bytes, r.sha256, r.oid) for r in rows),
        )

    def files(self, index_id: str, limit: int | None = None) -> list[FileRow]:
        rows = self._conn().execute(
            "SELECT path, language, bytes, sha256, oid FROM files WHERE index_id = ? ORDER BY path LIMIT ?",
            (index_id, -1 if limit is None else limit),
        )
        return [FileRow(*r) for r in rows]

    def put_symbol_summary(self, index_id: str, rows: Iterable[SymbolCount]) -> None:
        merged = symbol_counts(rows)
        self._replace(
            index_id,
            "symbol_summary",
            "INSERT INTO symbol_summary(index_id, kind, language, count) VALUES(?,?,?,?)",
            ((index_id, kind, lang, n) for (kind, lang), n in merged.items()),
        )

    def symbol_summary(self, index_id: str) -> list[SymbolCount]:
        rows = self._conn().execute(
            "SELECT kind, language, count FROM symbol_summary WHERE index_id = ? ORDER BY kind, language",
            (index_id,),
        )
        return [SymbolCount(*r) for r in rows]

    # -- logs -----------------------------------------------------------------------
    def log_query(
        self,
        kind: str,
        index_id: str | None,
        query: str,
        k: int | None,
        took_ms: float,
        results: int,
        principal: str,
    ) -> None:
        self._write(
            "INSERT INTO query_log(at, kind, index_id, query, k, took_ms, results, principal)"
            " VALUES(?,?,?,?,?,?,?,?)",
            (time.time(), kind, index_id, query[:MAX_LOGGED_QUERY], k, took_ms, results, principal),
        )

    def recent_queries(self, limit: int = 50, index_id: str | None = None) -> list[QueryLogEntry]:
        sql = "SELECT id, at, kind, index_id, query, k, took_ms, results, principal FROM query_log"
        params: tuple[Any, ...] = (limit,)
        if index_id is not None:
            sql += " WHERE index_id = ?"
            params = (index_id, limit)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", params)
        return [QueryLogEntry(*r) for r in rows]

    def audit(
        self, action: str, principal: str, target: str | None, detail: dict[str, Any] | None = None
    ) -> None:
        self._write(
            "INSERT INTO audit_log(at, action, principal, target, detail) VALUES(?,?,?,?,?)",
            (time.time(), action, principal, target, _dumps(detail)),
        )

    def audit_entries(self, limit: int = 50, action: str | None = None) -> list[AuditEntry]:
        sql = "SELECT id, at, action, principal, target, detail FROM audit_log"
        params: tuple[Any, ...] = (limit,)
        if action is not None:
            sql += " WHERE action = ?"
            params = (action, limit)
        rows = self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", params)
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], _loads(r[5])) for r in rows]

    # -- operations -----------------------------------------------------------------
    def probe(self, timeout_s: float = 2.0) -> ComponentState:
        """SQLite is a file: readable means ready (``timeout_s`` bounds a lock wait)."""
        try:
            conn = sqlite3.connect(str(self.path), timeout=timeout_s)
            try:
                conn.execute("SELECT count(*) FROM indexes").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return ComponentState("down", {"backend": "sqlite", "error": str(exc)})
        return ComponentState("ok", {"backend": "sqlite", "path": str(self.path)})

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
