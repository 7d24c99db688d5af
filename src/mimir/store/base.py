"""The metadata seam: records and the ``MetadataStore`` protocol every backend implements.

Times are Unix seconds (float) at this boundary whatever the backend stores, so callers
never see a backend's date type. Writes that replace a set (files, symbol summary) are
atomic: a reader sees the old set or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from infra.health import ComponentState

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# Longest query text the query log keeps; longer ones are cut (the log is for trends, not replay).
MAX_LOGGED_QUERY = 2000


@dataclass
class IndexRecord:
    index_id: str
    repo: str
    root: str
    rev: str | None
    commit: str | None
    lens_repo: str
    status: str  # queued, indexing, ready, failed, cancelled
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


@dataclass(frozen=True)
class RepositoryRecord:
    """A repository root with a summary of its indexes."""

    root: str
    name: str
    indexes: int
    ready: int
    last_updated: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FileRow:
    """One indexed file: ``oid`` is the git blob id, or ``<size>:<mtime_ns>`` for a worktree or directory."""

    path: str
    language: str | None
    bytes: int
    sha256: str
    oid: str | None = None


@dataclass(frozen=True)
class SymbolCount:
    kind: str
    language: str
    count: int


@dataclass(frozen=True)
class QueryLogEntry:
    id: int
    at: float
    kind: str
    index_id: str | None
    query: str
    k: int | None
    took_ms: float
    results: int
    principal: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    action: str
    principal: str
    target: str | None
    detail: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetadataStore(Protocol):
    # -- indexes and repositories ---------------------------------------------------
    def upsert_index(self, rec: IndexRecord) -> None: ...
    def get_index(self, index_id: str) -> IndexRecord: ...
    def find_index(self, root: str, commit: str) -> IndexRecord | None: ...
    def latest_ready_for_root(self, root: str) -> IndexRecord | None: ...
    def indexes_for_commit(self, commit: str) -> list[IndexRecord]: ...
    def list_indexes(self) -> list[IndexRecord]: ...
    def set_index_status(
        self, index_id: str, status: str, manifest: dict[str, Any] | None = None
    ) -> None: ...
    def list_repositories(self) -> list[RepositoryRecord]: ...

    # -- runs and their stage history -----------------------------------------------
    def create_run(self, run_id: str, index_id: str) -> RunRecord: ...
    def get_run(self, run_id: str) -> RunRecord: ...
    def update_run(self, run_id: str, **fields: Any) -> None: ...
    def stage_started(self, run_id: str, stage: str) -> None: ...
    def stage_finished(
        self, run_id: str, stage: str, seconds: float, status: str, detail: Any = None
    ) -> None: ...

    # -- per-index contents (replaced as a whole) -----------------------------------
    def put_files(self, index_id: str, rows: Iterable[FileRow]) -> int: ...
    def files(self, index_id: str, limit: int | None = None) -> list[FileRow]: ...
    def put_symbol_summary(self, index_id: str, rows: Iterable[SymbolCount]) -> None: ...
    def symbol_summary(self, index_id: str) -> list[SymbolCount]: ...

    # -- logs -------------------------------------------------------------------------
    def log_query(
        self,
        kind: str,
        index_id: str | None,
        query: str,
        k: int | None,
        took_ms: float,
        results: int,
        principal: str,
    ) -> None: ...
    def recent_queries(self, limit: int = 50, index_id: str | None = None) -> list[QueryLogEntry]: ...
    def audit(
        self, action: str, principal: str, target: str | None, detail: dict[str, Any] | None = None
    ) -> None: ...
    def audit_entries(self, limit: int = 50, action: str | None = None) -> list[AuditEntry]: ...

    # -- operations -------------------------------------------------------------------
    def probe(self, timeout_s: float = 2.0) -> ComponentState: ...
    def close(self) -> None: ...


RUN_FIELDS = frozenset({"state", "stage", "percent", "message", "error", "pid", "finished_at"})


def check_run_fields(fields: dict[str, Any]) -> None:
    """``update_run`` accepts only these columns: the names go into SQL."""
    bad = set(fields) - RUN_FIELDS
    if bad:
        raise ValueError(f"unknown run fields: {sorted(bad)}")


def symbol_counts(rows: Iterable[SymbolCount]) -> dict[tuple[str, str], int]:
    """Merge duplicate (kind, language) rows so both backends store one row per pair."""
    merged: dict[tuple[str, str], int] = {}
    for r in rows:
        merged[(r.kind, r.language)] = merged.get((r.kind, r.language), 0) + r.count
    return merged
