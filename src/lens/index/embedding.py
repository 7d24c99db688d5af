"""The embedding pass: vectors for chunks that have none yet, after lexical search is live.

Embedding is the slow part (~220 chunks/s on 2 AMX cores with OpenVINO, ~50 with onnxruntime;
docs/benchmarks.md), so it runs after the lexical index is committed, in small committed batches:
search works (and reports semantic as pending) meanwhile, and a killed run resumes where it stopped.
Vectors are keyed by the hash of the embedded text, so unchanged chunks keep theirs.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lens.index import shard as shardlib
from lens.index.embedder import Embedder

_BATCH = 128


def embed_text(path: str, kind: str, name: str | None, body: str) -> str:
    """What the model sees for a chunk: where it lives, what it is, then the code."""
    head = f"{kind} {name}" if name else kind
    return f"{path}\n{head}\n{body}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def pending_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(chunks with a vector, all chunks)."""
    total = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    missing = conn.execute(
        "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.hash = c.hash)"
    ).fetchone()[0]
    return int(total) - int(missing), int(total)


def embed_pending(
    shard: Path,
    embedder: Embedder,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Embed every chunk without a vector; returns how many were embedded."""
    conn = shardlib.connect(shard)
    try:
        meta = shardlib.get_meta(conn)
        if meta.get("embed_model") != embedder.model_id:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM vectors")
            shardlib.set_meta(conn, embed_model=embedder.model_id, embed_dim=embedder.dim)
            conn.execute("COMMIT")
        done, total = pending_counts(conn)
        embedded = 0
        while not (should_stop and should_stop()):
            rows = conn.execute(
                "SELECT c.hash, f.path, c.kind, c.name, c.start_line, c.end_line, c.file_id"
                " FROM chunks c JOIN files f ON f.id = c.file_id"
                " WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.hash = c.hash)"
                " ORDER BY c.file_id, c.start_line LIMIT ?",
                (_BATCH,),
            ).fetchall()
            if not rows:
                break
            texts: dict[str, str] = {}
            contents: dict[int, list[str]] = {}
            for h, path, kind, name, start, end, file_id in rows:
                if file_id not in contents:
                    content = conn.execute("SELECT content FROM files WHERE id = ?", (file_id,)).fetchone()[0]
                    contents[file_id] = content.split("\n")
                body = "\n".join(contents[file_id][start - 1 : end])
                texts[h] = embed_text(path, kind, name, body)
            hashes = list(texts)
            vectors = embedder.embed([texts[h] for h in hashes]).astype(np.float16)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO vectors(hash, vec) VALUES(?, ?)",
                [(h, vectors[i].tobytes()) for i, h in enumerate(hashes)],
            )
            version = int(shardlib.get_meta(conn).get("vectors_version", 0)) + 1
            shardlib.set_meta(conn, vectors_version=version)
            conn.execute("COMMIT")
            embedded += len(rows)
            done += len(rows)
            if progress:
                progress(min(done, total), total)
        return embedded
    finally:
        conn.close()
