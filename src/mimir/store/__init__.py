"""Mimir's metadata: repositories, indexes, runs and their stages, files, symbol summaries,
the query log and the audit log.

``MetadataStore`` is the seam. ``SqliteStore`` is the embedded default (one file under
the data dir); ``PostgresStore`` is used when ``MIMIR_DATABASE_URL``/``DATABASE_URL`` is
set. Both pass the same conformance suite (tests/mimir/test_store_conformance.py).
"""

from __future__ import annotations

from mimir.config import MimirSettings
from mimir.store.base import (
    RUN_STATES,
    AuditEntry,
    FileRow,
    IndexRecord,
    MetadataStore,
    QueryLogEntry,
    RepositoryRecord,
    RunRecord,
    SymbolCount,
)
from mimir.store.postgres import PostgresStore
from mimir.store.sqlite import SqliteStore


def store_for(settings: MimirSettings, *, migrate: bool | None = None) -> MetadataStore:
    """PostgreSQL when a database URL is set, else SQLite under ``data_dir``.

    ``migrate`` defaults to ``settings.db_migrate_on_start``; pipeline workers pass False
    (the process that started them already migrated).
    """
    if settings.database_url:
        return PostgresStore(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout_s=settings.db_timeout_s,
            migrate=settings.db_migrate_on_start if migrate is None else migrate,
        )
    return SqliteStore(settings.data_dir / "mimir.sqlite")


__all__ = [
    "RUN_STATES",
    "AuditEntry",
    "FileRow",
    "IndexRecord",
    "MetadataStore",
    "PostgresStore",
    "QueryLogEntry",
    "RepositoryRecord",
    "RunRecord",
    "SqliteStore",
    "SymbolCount",
    "store_for",
]
