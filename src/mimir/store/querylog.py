"""Best-effort query logging: an answer already computed is never turned into an error.

The query log is for trends (what is asked, how fast, by whom), so when the database is
briefly unavailable the entry is dropped with a warning instead of failing the request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mimir.errors import StoreUnavailable
from mimir.store.base import MetadataStore

log = logging.getLogger("mimir.store.querylog")


def record_query(
    store: MetadataStore,
    kind: str,
    index_id: str | None,
    query: str,
    k: int | None,
    started: float,
    result: dict[str, Any],
    principal: str | None,
) -> None:
    """Log one search ("results") or ask ("findings"); ``started`` is a ``time.perf_counter()``."""
    took_ms = round((time.perf_counter() - started) * 1000, 3)
    hits = result.get("results", result.get("findings", []))
    try:
        store.log_query(kind, index_id, query, k, took_ms, len(hits), principal or "anonymous")
    except StoreUnavailable as exc:
        log.warning("query log entry dropped: %s", exc.message)
