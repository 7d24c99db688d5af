"""Versioned PostgreSQL migrations: ``migrations/NNNN_name.sql``, applied in order, once each.

Each file runs in its own transaction together with its ``schema_migrations`` row, so a
failing migration leaves nothing behind. A session advisory lock (per schema) serializes
runners, so replicas starting at the same moment apply each version exactly once; the
others wait, then find nothing to do. Applied files are pinned by checksum: editing one
after release is refused, because databases that already ran it would silently differ.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from lens.errors import LensError
from mimir.errors import StoreUnavailable

log = logging.getLogger("mimir.store.migrate")
DEFAULT_SCHEMA = "mimir"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Two-int advisory lock key: (this constant, hashtext(schema)).
_LOCK_CLASS = 0x4D494D49  # "MIMI"
Conn = psycopg.Connection[TupleRow]


class MigrationError(LensError):
    code = "migration_failed"
    status = 500


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied_at: float | None  # None: pending
    checksum_ok: bool  # False: the file changed after it was applied, or the file is unknown here
    known: bool = True  # False: applied by a newer build


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files, by version; names must be ``NNNN_snake_case.sql`` and versions unique."""
    where = directory if directory is not None else resources.files("mimir.store") / "migrations"
    found: dict[int, Migration] = {}
    for entry in where.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _FILE.match(entry.name)
        if m is None:
            raise MigrationError(f"bad migration file name {entry.name!r} (want NNNN_name.sql)")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def connect(url: str, timeout_s: float = 5.0) -> Conn:
    """An autocommit connection for the runner; unreachable means :class:`StoreUnavailable`."""
    try:
        return psycopg.connect(
            url, autocommit=True, connect_timeout=max(2, round(timeout_s)), application_name="mimir-migrate"
        )
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"PostgreSQL is unreachable: {exc}".strip(), details={"backend": "postgres"}
        ) from exc


def _lock(conn: Conn, schema: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema)).fetchone()
        if row and row[0]:
            return
        if time.monotonic() > deadline:
            raise MigrationError(
                f"another migration of schema {schema!r} held the lock for more than {timeout_s:.0f}s",
                details={"schema": schema},
            )
        time.sleep(0.1)


def _unlock(conn: Conn, schema: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, schema))


def _prepare(conn: Conn, schema: str) -> None:
    """Create the schema (only if missing: its owner may be another role) and the version table."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if exists is None:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now(), duration_ms double precision NOT NULL)"
    )


def _applied(conn: Conn) -> dict[int, tuple[str, str, float]]:
    rows = conn.execute(
        "SELECT version, name, checksum, extract(epoch FROM applied_at)::float8 FROM schema_migrations"
    ).fetchall()
    return {int(v): (str(n), str(c), float(a)) for v, n, c, a in rows}


def _check(migrations: Sequence[Migration], applied: dict[int, tuple[str, str, float]]) -> None:
    for m in migrations:
        if m.version in applied and applied[m.version][1] != m.checksum:
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} changed after it was applied;"
                " add a new migration instead",
                details={"version": m.version, "applied": applied[m.version][1], "file": m.checksum},
            )


def upgrade(
    conn: Conn,
    schema: str = DEFAULT_SCHEMA,
    migrations: Sequence[Migration] | None = None,
    lock_timeout_s: float = 120.0,
) -> list[Migration]:
    """Apply every pending migration (on an autocommit connection); returns those applied now."""
    todo = load_migrations() if migrations is None else list(migrations)
    _lock(conn, schema, lock_timeout_s)
    try:
        _prepare(conn, schema)
        applied = _applied(conn)
        _check(todo, applied)
        done: list[Migration] = []
        for m in todo:
            if m.version in applied:
                continue
            t0 = time.perf_counter()
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations(version, name, checksum, duration_ms)"
                    " VALUES (%s, %s, %s, %s)",
                    (m.version, m.name, m.checksum, round((time.perf_counter() - t0) * 1000, 3)),
                )
            log.info("applied migration %04d_%s to schema %s", m.version, m.name, schema)
            done.append(m)
        unknown = sorted(set(applied) - {m.version for m in todo})
        if unknown:
            log.warning("schema %s has migrations this build does not know: %s", schema, unknown)
        return done
    finally:
        _unlock(conn, schema)


def status(
    conn: Conn,
    schema: str = DEFAULT_SCHEMA,
    migrations: Sequence[Migration] | None = None,
) -> list[MigrationState]:
    """Every known and applied version, in order; read-only (creates nothing)."""
    todo = load_migrations() if migrations is None else list(migrations)
    table = conn.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text))", (schema,)
    ).fetchone()
    applied: dict[int, tuple[str, str, float]] = {}
    if table is not None and table[0] is not None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        applied = _applied(conn)
    out = [
        MigrationState(
            m.version,
            m.name,
            applied[m.version][2] if m.version in applied else None,
            m.version not in applied or applied[m.version][1] == m.checksum,
        )
        for m in todo
    ]
    known = {m.version for m in todo}
    out += [
        MigrationState(v, name, at, False, known=False)
        for v, (name, _c, at) in sorted(applied.items())
        if v not in known
    ]
    return sorted(out, key=lambda s: s.version)
