"""The shard: one repository at one revision, as one self-contained SQLite file.

Why SQLite: FTS5's trigram tokenizer gives a compact substring index
(``detail=none`` keeps only document lists, no positions), WAL gives readers a
consistent snapshot while an incremental update commits, and a single file can
be copied between machines as it is.

Tables:
- ``files``: path, content and per-file metadata; ``id`` encodes the rank class
  (normal files first, tests and vendored code later) so candidate streams come
  out in rank order without sorting.
- ``files_fts``: trigram index over ``files.content`` (external content).
- ``symbols``: definitions from tree-sitter / ctags.
- ``chunks`` + ``chunks_fts``: AST-aware chunks and their identifier tokens (BM25).
- ``vectors``: chunk embeddings keyed by chunk hash, so unchanged chunks keep
  their vectors across re-indexing.
- ``skipped``: content-level skips (binary, undecodable) remembered by oid.
- ``meta``: key/value facts (commit, generation, counts, embedding model, ...).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Rank classes, lowest first; each owns a disjoint range of file ids.
CLASS_NORMAL = 0
CLASS_TEST = 1
CLASS_LOW = 2  # vendored, generated, examples/docs
_CLASS_STRIDE = 1 << 40

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files(
  id INTEGER PRIMARY KEY,
  path TEXT NOT NULL UNIQUE,
  oid TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  lang TEXT,
  size INTEGER NOT NULL,
  lines INTEGER NOT NULL,
  parser TEXT NOT NULL,
  content TEXT NOT NULL
);
CREATE VIRTUAL TABLE files_fts USING fts5(
  content, content='files', content_rowid='id',
  tokenize='trigram case_sensitive 0', detail=none, columnsize=0
);
CREATE TABLE symbols(
  id INTEGER PRIMARY KEY,
  file_id INTEGER NOT NULL,
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  container TEXT,
  start_line INTEGER NOT NULL,
  end_line INTEGER NOT NULL,
  line INTEGER NOT NULL
);
CREATE INDEX symbols_name ON symbols(name);
CREATE INDEX symbols_name_nocase ON symbols(name COLLATE NOCASE);
CREATE INDEX symbols_file ON symbols(file_id);
CREATE TABLE chunks(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  file_id INTEGER NOT NULL,
  start_line INTEGER NOT NULL,
  end_line INTEGER NOT NULL,
  kind TEXT NOT NULL,
  name TEXT,
  hash TEXT NOT NULL
);
CREATE INDEX chunks_file ON chunks(file_id);
CREATE INDEX chunks_hash ON chunks(hash);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
  tokens, content='', tokenize='unicode61 remove_diacritics 0', detail=full
);
CREATE TABLE vectors(hash TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE skipped(path TEXT PRIMARY KEY, oid TEXT NOT NULL, reason TEXT NOT NULL);
"""


def class_base(rank_class: int) -> int:
    return rank_class * _CLASS_STRIDE + 1


def class_of_id(file_id: int) -> int:
    return (file_id - 1) // _CLASS_STRIDE


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a shard; autocommit mode so callers manage transactions explicitly."""
    if readonly:
        uri = f"file:{path}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA mmap_size=1073741824")
    return conn


def create(path: Path) -> sqlite3.Connection:
    """A new, empty shard at ``path`` (which must not exist)."""
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    set_meta(conn, schema_version=SCHEMA_VERSION, generation=0)
    return conn


def get_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        [(k, json.dumps(v)) for k, v in values.items()],
    )
