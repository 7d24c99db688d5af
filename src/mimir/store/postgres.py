"""The PostgreSQL metadata store: a psycopg 3 connection pool shared by the process's threads.

Every call checks a connection out of the pool, runs one transaction and returns it, so a
call that returns has committed. Connections are checked on checkout, so after a
PostgreSQL restart the pool throws away the dead ones and reconnects by itself; while the
database is away, calls fail after ``timeout_s`` with :class:`StoreUnavailable` (HTTP 503).
Idempotent calls are retried once when their connection breaks mid-call; appends (runs,
logs) are not, so a retry can never write a row twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from infra.health import ComponentState
from infra.observability import tracing
from mimir.errors import StoreUnavailable, UnknownIndex, UnknownJob
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
from mimir.store.migrate import DEFAULT_SCHEMA, connect, upgrade

log = logging.getLogger("mimir.store.postgres")
T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

_INDEX_SELECT = (
    "SELECT i.index_id, r.name, r.root, i.rev, i.commit_id, i.lens_repo, i.status, i.latest_run,"
    " i.created_at, i.updated_at, i.manifest FROM indexes i JOIN repositories r USING (repository_id)"
)
_RUN_SELECT = (
    "SELECT run_id, index_id, state, stage, percent, message, error, pid, created_at, updated_at,"
    " finished_at FROM runs WHERE run_id = %s"
)


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _index(r: tuple[Any, ...]) -> IndexRecord:
    return IndexRecord(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8].timestamp(), r[9].timestamp(), r[10]
    )


def _operation(fn: Callable[..., Any]) -> str:
    """The store method a transaction body belongs to (``PostgresStore.get_run.<locals>.go`` -> get_run)."""
    parts = fn.__qualname__.split(".")
    return parts[parts.index("<locals>") - 1] if "<locals>" in parts[1:] else parts[-1]


def _unknown_index(index_id: str) -> UnknownIndex:
    return UnknownIndex(
        f"unknown index {index_id!r}: call ensure_repo_index first or list_indexes",
        details={"index_id": index_id},
    )


class PostgresStore:
    """Metadata in PostgreSQL (``schema``, default ``mimir``); one pool per process."""

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        migrate: bool = False,
        name: str = "mimir",
    ) -> None:
        self.schema = schema
        self.timeout_s = timeout_s
        self._statement_ms = int(statement_timeout_s * 1000)
        if migrate:
            with connect(url, timeout_s) as conn:
                upgrade(conn, schema)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max(max_size, min_size),
            timeout=timeout_s,
            open=False,
            name=name,
            check=ConnectionPool.check_connection,
            configure=self._configure,
            # Give up a reconnect attempt early, so the next call starts a fresh one instead
            # of waiting for a long exponential backoff once the database is back.
            reconnect_timeout=max(10.0, 2 * timeout_s),
            reconnect_failed=lambda pool: log.warning("pool %s: database still unreachable", pool.name),
            kwargs={
                "connect_timeout": max(2, round(timeout_s)),
                "application_name": name,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
        self._pool.open(wait=False)

    def _configure(self, conn: Conn) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{self._statement_ms}ms",))
        conn.execute("SET idle_in_transaction_session_timeout = '60s'")
        conn.commit()

    def _run(self, fn: Callable[[Conn], T], *, retry: bool = False) -> T:
        """One transaction on a pooled connection; connection trouble becomes StoreUnavailable."""
        attempts = 2 if retry else 1
        op = _operation(fn)
        attrs = {"db.system.name": "postgresql", "db.operation.name": op}
        for attempt in range(1, attempts + 1):
            try:
                with tracing.span(f"postgres {op}", attributes=attrs), self._pool.connection() as conn:
                    return fn(conn)
            except PoolTimeout as exc:
                raise StoreUnavailable(
                    f"PostgreSQL is unavailable: no connection within {self.timeout_s:g}s",
                    details={"backend": "postgres", "pool": self._pool.name},
                ) from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if attempt < attempts:
                    log.info("retrying after a connection failure: %s", exc)
                    continue
                raise StoreUnavailable(
                    f"PostgreSQL is unavailable: {type(exc).__name__}: {exc}".strip(),
                    details={"backend": "postgres", "pool": self._pool.name},
                ) from exc
        raise AssertionError("unreachable")

    # -- indexes and repositories -----------------------------------------------------
    def upsert_index(self, rec: IndexRecord) -> None:
        def go(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO repositories(root, name) VALUES (%s, %s) ON CONFLICT (root) DO NOTHING",
                (rec.root, rec.repo),
            )
            conn.execute(
                "INSERT INTO indexes(index_id, repository_id, rev, commit_id, lens_repo, status, latest_run,"
                " manifest, created_at, updated_at)"
                " SELECT %s, repository_id, %s, %s, %s, %s, %s, %s, %s, %s FROM repositories WHERE root = %s"
                " ON CONFLICT (index_id) DO UPDATE SET status = EXCLUDED.status,"
                " latest_run = EXCLUDED.latest_run, updated_at = EXCLUDED.updated_at, rev = EXCLUDED.rev",
                (
                    rec.index_id,
                    rec.rev,
                    rec.commit,
                    rec.lens_repo,
                    rec.status,
                    rec.latest_run,
                    _jsonb(rec.manifest or None),
                    _dt(rec.created_at),
                    _dt(rec.updated_at),
                    rec.root,
                ),
            )

        self._run(go, retry=True)

    def _one_index(self, where: str, params: tuple[Any, ...]) -> IndexRecord | None:
        def go(conn: Conn) -> IndexRecord | None:
            row = conn.execute(f"{_INDEX_SELECT} WHERE {where}", params).fetchone()
            return _index(row) if row else None

        return self._run(go, retry=True)

    def _indexes(self, where: str, params: tuple[Any, ...]) -> list[IndexRecord]:
        def go(conn: Conn) -> list[IndexRecord]:
            return [_index(r) for r in conn.execute(f"{_INDEX_SELECT} {where}", params)]

        return self._run(go, retry=True)

    def get_index(self, index_id: str) -> IndexRecord:
        rec = self._one_index("i.index_id = %s", (index_id,))
        if rec is None:
            raise _unknown_index(index_id)
        return rec

    def find_index(self, root: str, commit: str) -> IndexRecord | None:
        return self._one_index("r.root = %s AND i.commit_id = %s", (root, commit))

    def latest_ready_for_root(self, root: str) -> IndexRecord | None:
        return self._one_index(
            "r.root = %s AND i.status = 'ready' ORDER BY i.updated_at DESC LIMIT 1", (root,)
        )

    def indexes_for_commit(self, commit: str) -> list[IndexRecord]:
        return self._indexes("WHERE i.commit_id = %s", (commit,))

    def list_indexes(self) -> list[IndexRecord]:
        return self._indexes("ORDER BY i.updated_at DESC", ())

    def set_index_status(self, index_id: str, status: str, manifest: dict[str, Any] | None = None) -> None:
        now = _dt(time.time())
        if manifest is not None:
            q = "UPDATE indexes SET status = %s, manifest = %s, updated_at = %s WHERE index_id = %s"
            params: tuple[Any, ...] = (status, Jsonb(manifest), now, index_id)
        else:
            q = "UPDATE indexes SET status = %s, updated_at = %s WHERE index_id = %s"
            params = (status, now, index_id)
        self._run(lambda conn: conn.execute(q, params), retry=True)

    def list_repositories(self) -> list[RepositoryRecord]:
        def go(conn: Conn) -> list[RepositoryRecord]:
            rows = conn.execute(
                "SELECT r.root, r.name, count(*), count(*) FILTER (WHERE i.status = 'ready'),"
                " max(i.updated_at) FROM repositories r JOIN indexes i USING (repository_id)"
                " GROUP BY r.repository_id ORDER BY max(i.updated_at) DESC"
            )
            return [
                RepositoryRecord(root, name, n, ready, at.timestamp()) for root, name, n, ready, at in rows
            ]

        return self._run(go, retry=True)

    # -- runs -------------------------------------------------------------------------
    def create_run(self, run_id: str, index_id: str) -> RunRecord:
        now = _dt(time.time())

        def go(conn: Conn) -> RunRecord:
            try:
                conn.execute(
                    "INSERT INTO runs(run_id, index_id, state, stage, percent, message, created_at,"
                    " updated_at) VALUES (%s, %s, 'queued', 'queued', 0, 'queued', %s, %s)",
                    (run_id, index_id, now, now),
                )
            except errors.ForeignKeyViolation:
                raise _unknown_index(index_id) from None
            conn.execute(
                "UPDATE indexes SET latest_run = %s, updated_at = %s WHERE index_id = %s",
                (run_id, now, index_id),
            )
            return self._get_run(conn, run_id)

        return self._run(go)

    def _get_run(self, conn: Conn, run_id: str) -> RunRecord:
        row = conn.execute(_RUN_SELECT, (run_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"unknown job {run_id!r}", details={"job_id": run_id})
        stages = [
            {"stage": s, "started_at": a.timestamp(), "seconds": sec, "status": st, "detail": d}
            for s, a, sec, st, d in conn.execute(
                "SELECT stage, started_at, seconds, status, detail FROM run_stages WHERE run_id = %s"
                " ORDER BY started_at",
                (run_id,),
            )
        ]
        r = row
        at, updated, finished = r[8].timestamp(), r[9].timestamp(), _ts(r[10])
        return RunRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], at, updated, finished, stages)

    def get_run(self, run_id: str) -> RunRecord:
        return self._run(lambda conn: self._get_run(conn, run_id), retry=True)

    def update_run(self, run_id: str, **fields: Any) -> None:
        check_run_fields(fields)
        if "error" in fields:
            fields["error"] = _jsonb(fields["error"])
        if "finished_at" in fields:
            fields["finished_at"] = _dt(fields["finished_at"])
        sets = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(k)) for k in [*fields, "updated_at"]
        )
        q = sql.SQL("UPDATE runs SET {} WHERE run_id = %s").format(sets)
        params = (*fields.values(), _dt(time.time()), run_id)
        self._run(lambda conn: conn.execute(q, params), retry=True)

    def stage_started(self, run_id: str, stage: str) -> None:
        def go(conn: Conn) -> None:
            try:
                conn.execute(
                    "INSERT INTO run_stages(run_id, stage, started_at, status) VALUES (%s, %s, %s, 'running')"
                    " ON CONFLICT (run_id, stage) DO UPDATE SET started_at = EXCLUDED.started_at,"
                    " status = 'running', seconds = NULL, detail = NULL",
                    (run_id, stage, _dt(time.time())),
                )
            except errors.ForeignKeyViolation:
                raise UnknownJob(f"unknown job {run_id!r}", details={"job_id": run_id}) from None

        self._run(go, retry=True)

    def stage_finished(
        self, run_id: str, stage: str, seconds: float, status: str, detail: Any = None
    ) -> None:
        params = (seconds, status, _jsonb(detail), run_id, stage)
        self._run(
            lambda conn: conn.execute(
                "UPDATE run_stages SET seconds = %s, status = %s, detail = %s"
                " WHERE run_id = %s AND stage = %s",
                params,
            ),
            retry=True,
        )

    # -- per-index contents ---------------------------------------------------------
    def _require_index(self, conn: Conn, index_id: str) -> None:
        # FOR KEY SHARE: the index cannot be deleted until this transaction ends.
        found = conn.execute(
            "SELECT 1 FROM indexes WHERE index_id = %s FOR KEY SHARE", (index_id,)
        ).fetchone()
        if found is None:
            raise _unknown_index(index_id)

    def put_files(self, index_id: str, rows: Iterable[FileRow]) -> int:
        """Replace the index's file list in one transaction, streamed with COPY."""
        data = list(rows)  # materialized, so a retry sends the same rows

        def go(conn: Conn) -> int:
            self._require_index(conn, index_id)
            with conn.cursor() as cur:
                cur.execute("DELETE FROM files WHERE index_id = %s", (index_id,))
                with cur.copy("COPY files (index_id, path, language, bytes, sha256, oid) FROM STDIN") as cp:
                    for r in data:
                        cp.write_row((index_id, r.path, r.language, r.bytes, r.sha256, r.oid))
            return len(data)

        return self._run(go, retry=True)

    def files(self, index_id: str, limit: int | None = None) -> list[FileRow]:
        def go(conn: Conn) -> list[FileRow]:
            rows = conn.execute(
                "SELECT path, language, bytes, sha256, oid FROM files WHERE index_id = %s"
                " ORDER BY path LIMIT %s",
                (index_id, limit),
            )
            return [FileRow(*r) for r in rows]

        return self._run(go, retry=True)

    def put_symbol_summary(self, index_id: str, rows: Iterable[SymbolCount]) -> None:
        merged = symbol_counts(rows)

        def go(conn: Conn) -> None:
            self._require_index(conn, index_id)
            with conn.cursor() as cur:
                cur.execute("DELETE FROM symbol_summary WHERE index_id = %s", (index_id,))
                cur.executemany(
                    "INSERT INTO symbol_summary(index_id, kind, language, count) VALUES (%s, %s, %s, %s)",
                    [(index_id, kind, lang, n) for (kind, lang), n in merged.items()],
                )

        self._run(go, retry=True)

    def symbol_summary(self, index_id: str) -> list[SymbolCount]:
        def go(conn: Conn) -> list[SymbolCount]:
            rows = conn.execute(
                "SELECT kind, language, count FROM symbol_summary WHERE index_id = %s"
                " ORDER BY kind, language",
                (index_id,),
            )
            return [SymbolCount(*r) for r in rows]

        return self._run(go, retry=True)

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
        params = (_dt(time.time()), kind, index_id, query[:MAX_LOGGED_QUERY], k, took_ms, results, principal)
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO query_log(at, kind, index_id, query, k, took_ms, results, principal)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                params,
            )
        )

    def recent_queries(self, limit: int = 50, index_id: str | None = None) -> list[QueryLogEntry]:
        where = "WHERE index_id = %s" if index_id is not None else ""
        params = (index_id, limit) if index_id is not None else (limit,)

        def go(conn: Conn) -> list[QueryLogEntry]:
            rows = conn.execute(
                "SELECT id, at, kind, index_id, query, k, took_ms, results, principal FROM query_log "
                f"{where} ORDER BY id DESC LIMIT %s",
                params,
            )
            return [QueryLogEntry(r[0], r[1].timestamp(), *r[2:]) for r in rows]

        return self._run(go, retry=True)

    def audit(
        self, action: str, principal: str, target: str | None, detail: dict[str, Any] | None = None
    ) -> None:
        params = (_dt(time.time()), action, principal, target, _jsonb(detail))
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO audit_log(at, action, principal, target, detail) VALUES (%s, %s, %s, %s, %s)",
                params,
            )
        )

    def audit_entries(self, limit: int = 50, action: str | None = None) -> list[AuditEntry]:
        where = "WHERE action = %s" if action is not None else ""
        params = (action, limit) if action is not None else (limit,)

        def go(conn: Conn) -> list[AuditEntry]:
            rows = conn.execute(
                f"SELECT id, at, action, principal, target, detail FROM audit_log {where}"
                " ORDER BY id DESC LIMIT %s",
                params,
            )
            return [AuditEntry(r[0], r[1].timestamp(), *r[2:]) for r in rows]

        return self._run(go, retry=True)

    # -- operations -------------------------------------------------------------------
    def probe(self, timeout_s: float = 2.0) -> ComponentState:
        """``SELECT 1`` through the pool within ``timeout_s``: the "database" readiness component."""
        started = time.perf_counter()
        try:
            with self._pool.connection(timeout=timeout_s) as conn:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (f"{int(timeout_s * 1000)}ms",)
                )
                conn.execute("SELECT 1").fetchone()
        except (psycopg.Error, OSError) as exc:
            return ComponentState(
                "down", {"backend": "postgres", "error": f"{type(exc).__name__}: {exc}".strip()}
            )
        stats = self._pool.get_stats()
        return ComponentState(
            "ok",
            {
                "backend": "postgres",
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "pool_size": stats.get("pool_size", 0),
                "pool_available": stats.get("pool_available", 0),
                "requests_waiting": stats.get("requests_waiting", 0),
            },
        )

    def close(self) -> None:
        self._pool.close()
