"""Mimir's metadata: indexes, runs and their stage history.

``MetadataStore`` is the seam; ``SqliteStore`` is the embedded default (step 3
adds PostgreSQL behind the same interface). Pipeline worker processes write
progress here directly, so the store must work across processes: SQLite in WAL
mode with short transactions does.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mimir.errors import UnknownIndex, UnknownJob

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")

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
"""


@dataclass
class IndexRecord:
    index_id: str
    repo: str
    root: str
    rev: str | None
    commit: str | None
    lens_repo: str
    status: str  # indexing, ready, failed, cancelled
    latest_run: str | None
    created_at: float
    updated_at: float
    manifest: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunRecord:
    run_id: str
    index_id: str
    state: str
    stage: str
    percent: float
    message: str
    error: dict[str, Any] | None
    pid: int | None
    created_at: float
    updated_at: float
    finished_at: float | None
    stages: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetadataStore(Protocol):
    def upsert_index(self, rec: IndexRecord) -> None: ...
    def get_index(self, index_id: str) -> IndexRecord: ...
    def find_index(self, root: str, commit: str) -> IndexRecord | None: ...
    def latest_ready_for_root(self, root: str) -> IndexRecord | None: ...
    def indexes_for_commit(self, commit: str) -> list[IndexRecord]: ...
    def list_indexes(self) -> list[IndexRecord]: ...
    def set_index_status(
        self, index_id: str, status: str, manifest: dict[str, Any] | None = None
    ) -> None: ...
    def create_run(self, run_id: str, index_id: str) -> RunRecord: ...
    def get_run(self, run_id: str) -> RunRecord: ...
    def update_run(self, run_id: str, **fields: Any) -> None: ...
    def stage_started(self, run_id: str, stage: str) -> None: ...
    def stage_finished(
        self, run_id: str, stage: str, seconds: float, status: str, detail: Any = None
    ) -> None: ...


class SqliteStore:
    """Embedded metadata store; safe for several threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    # -- indexes --------------------------------------------------------------------
    def upsert_index(self, rec: IndexRecord) -> None:
        self._conn().execute(
            "INSERT INTO indexes(index_id, repo, root, rev, commit_id, lens_repo, status, latest_run,"
            " created_at,"
            " updated_at, manifest) VALUES(?,?,?,?,?,?,?,?,?,?,?)"
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

    def _index(self, row: tuple[Any, ...]) -> IndexRecord:
        return IndexRecord(
            index_id=row[0],
            repo=row[1],
            root=row[2],
            rev=row[3],
            commit=row[4],
            lens_repo=row[5],
            status=row[6],
            latest_run=row[7],
            created_at=row[8],
            updated_at=row[9],
            manifest=json.loads(row[10]) if row[10] else None,
        )

    _COLS = (
        "index_id, repo, root, rev, commit_id, lens_repo, status, latest_run, created_at, updated_at,"
        " manifest"
    )

    def get_index(self, index_id: str) -> IndexRecord:
        row = (
            self._conn()
            .execute(f"SELECT {self._COLS} FROM indexes WHERE index_id = ?", (index_id,))
            .fetchone()
        )
        if row is None:
            raise UnknownIndex(
                f"unknown index {index_id!r}: call ensure_repo_index first or list_indexes",
                details={"index_id": index_id},
            )
        return self._index(row)

    def find_index(self, root: str, commit: str) -> IndexRecord | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._COLS} FROM indexes WHERE root = ? AND commit_id = ?", (root, commit))
            .fetchone()
        )
        return self._index(row) if row else None

    def latest_ready_for_root(self, root: str) -> IndexRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._COLS} FROM indexes WHERE root = ? AND status = 'ready'"
                " ORDER BY updated_at DESC LIMIT 1",
                (root,),
            )
            .fetchone()
        )
        return self._index(row) if row else None

    def indexes_for_commit(self, commit: str) -> list[IndexRecord]:
        rows = self._conn().execute(f"SELECT {self._COLS} FROM indexes WHERE commit_id = ?", (commit,))
        return [self._index(r) for r in rows]

    def list_indexes(self) -> list[IndexRecord]:
        rows = self._conn().execute(f"SELECT {self._COLS} FROM indexes ORDER BY updated_at DESC")
        return [self._index(r) for r in rows]

    def set_index_status(self, index_id: str, status: str, manifest: dict[str, Any] | None = None) -> None:
        if manifest is not None:
            self._conn().execute(
                "UPDATE indexes SET status = ?, manifest = ?, updated_at = ? WHERE index_id = ?",
                (status, json.dumps(manifest), time.time(), index_id),
            )
        else:
            self._conn().execute(
                "UPDATE indexes SET status = ?, updated_at = ? WHERE index_id = ?",
                (status, time.time(), index_id),
            )

    # -- runs -----------------------------------------------------------------------
    def create_run(self, run_id: str, index_id: str) -> RunRecord:
        now = time.time()
        self._conn().execute(
            "INSERT INTO runs(run_id, index_id, state, stage, percent, message, created_at, updated_at)"
            " VALUES(?, ?, 'queued', 'queued', 0, 'queued', ?, ?)",
            (run_id, index_id, now, now),
        )
        self._conn().execute(
            "UPDATE indexes SET latest_run = ?, updated_at = ? WHERE index_id = ?", (run_id, now, index_id)
        )
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        conn = self._conn()
        row = conn.execute(
            "SELECT run_id, index_id, state, stage, percent, message, error, pid, created_at, updated_at,"
            " finished_at FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise UnknownJob(f"unknown job {run_id!r}", details={"job_id": run_id})
        stages = [
            {
                "stage": s,
                "started_at": a,
                "seconds": sec,
                "status": st,
                "detail": json.loads(d) if d else None,
            }
            for s, a, sec, st, d in conn.execute(
                "SELECT stage, started_at, seconds, status, detail FROM stages WHERE run_id = ?"
                " ORDER BY started_at",
                (run_id,),
            )
        ]
        return RunRecord(
            run_id=row[0],
            index_id=row[1],
            state=row[2],
            stage=row[3],
            percent=row[4],
            message=row[5],
            error=json.loads(row[6]) if row[6] else None,
            pid=row[7],
            created_at=row[8],
            updated_at=row[9],
            finished_at=row[10],
            stages=stages,
        )

    def update_run(self, run_id: str, **fields: Any) -> None:
        allowed = {"state", "stage", "percent", "message", "error", "pid", "finished_at"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown run fields: {sorted(bad)}")
        if "error" in fields and fields["error"] is not None:
            fields["error"] = json.dumps(fields["error"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._conn().execute(
            f"UPDATE runs SET {cols}, updated_at = ? WHERE run_id = ?",
            (*fields.values(), time.time(), run_id),
        )

    def stage_started(self, run_id: str, stage: str) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO stages(run_id, stage, started_at, status) VALUES(?, ?, ?, 'running')",
            (run_id, stage, time.time()),
        )

    def stage_finished(
        self, run_id: str, stage: str, seconds: float, status: str, detail: Any = None
    ) -> None:
        self._conn().execute(
            "UPDATE stages SET seconds = ?, status = ?, detail = ? WHERE run_id = ? AND stage = ?",
            (seconds, status, json.dumps(detail) if detail is not None else None, run_id, stage),
        )
