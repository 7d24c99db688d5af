"""Semantic mode: cosine similarity between the query and chunk embeddings.

Brute force with numpy: one matrix product over every chunk vector of a shard
(~100k chunks x 384 dims is a few milliseconds). Matrices are loaded once per
shard generation and vector batch, and shared by all threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lens.index.embedder import Embedder
from lens.query.exact import ExactPlan
from lens.query.ranked import chunk_hit
from lens.query.results import Hit
from lens.query.shards import Snapshot


@dataclass(frozen=True)
class VectorTable:
    chunk_ids: npt.NDArray[np.int64]
    file_ids: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    embedded: int
    total: int
    model: str | None


_cache: dict[tuple[str, str, int, int], VectorTable] = {}
_cache_lock = threading.Lock()


def vector_table(snap: Snapshot, dim: int) -> VectorTable:
    # The shard path names the data dir and generation directory: a rebuilt shard never reuses a table.
    key = (
        str(snap.shard.parent.parent),
        str(snap.shard),
        snap.generation,
        int(snap.meta.get("vectors_version", 0)),
    )
    table = _cache.get(key)
    if table is not None:
        return table
    with _cache_lock:
        table = _cache.get(key)
        if table is not None:
            return table
        rows = snap.conn.execute(
            "SELECT c.id, c.file_id, v.vec FROM chunks c JOIN vectors v ON v.hash = c.hash ORDER BY c.id"
        ).fetchall()
        total = snap.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        if rows:
            matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float16).reshape(len(rows), -1)
            matrix32 = matrix.astype(np.float32)
        else:
            matrix32 = np.zeros((0, dim), dtype=np.float32)
        table = VectorTable(
            chunk_ids=np.array([r[0] for r in rows], dtype=np.int64),
            file_ids=np.array([r[1] for r in rows], dtype=np.int64),
            matrix=matrix32,
            embedded=len(rows),
            total=int(total),
            model=snap.meta.get("embed_model"),
        )
        for old in [k for k in _cache if k[0] == key[0]]:
            del _cache[old]
        _cache[key] = table
        return table


def semantic_status(snap: Snapshot, embedder_id: str | None, dim: int) -> dict[str, Any]:
    table = vector_table(snap, dim)
    if embedder_id is not None and table.model not in (None, embedder_id):
        status = "stale_model"
    elif table.total == 0:
        status = "empty"
    elif table.embedded < table.total:
        status = "pending"
    else:
        status = "ready"
    return {"status": status, "embedded": table.embedded, "total": table.total, "model": table.model}


def search_semantic(snap: Snapshot, plan: ExactPlan, embedder: Embedder, text: str, want: int) -> list[Hit]:
    table = vector_table(snap, embedder.dim)
    if table.embedded == 0 or table.model != embedder.model_id:
        return []
    q = embedder.embed_query(text)
    scores = table.matrix @ q
    hits: list[Hit] = []
    for idx in _best_first(scores, want):
        if len(hits) >= want:
            break
        file_id = int(table.file_ids[idx])
        info = snap.files.get(file_id)
        if info is None or not plan.path_filter.accepts(info.path, info.lang):
            continue
        row = snap.conn.execute(
            "SELECT start_line, end_line, kind, name FROM chunks WHERE id = ?", (int(table.chunk_ids[idx]),)
        ).fetchone()
        if row is None:
            continue
        hits.append(
            chunk_hit(
                snap,
                file_id,
                row[0],
                row[1],
                row[2],
                row[3],
                float(scores[idx]),
                [],
                "semantic",
                plan.context,
            )
        )
    return hits


def _best_first(scores: npt.NDArray[np.float32], want: int) -> Iterator[int]:
    """Indices by descending score, lazily: filters may reject hits, so a generous head is
    found with argpartition (linear) and sorted; the full sort happens only if that runs out."""
    head = min(len(scores), max(want * 8, 256))
    part = (
        np.sort(np.argpartition(-scores, head - 1)[:head]) if head < len(scores) else np.arange(len(scores))
    )
    top = part[np.argsort(-scores[part], kind="stable")]
    yield from (int(i) for i in top)
    if head < len(scores):
        seen = set(top.tolist())
        yield from (int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen)
