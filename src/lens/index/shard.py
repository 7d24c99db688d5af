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

# Tables first, then the secondary indexes: a full build loads the tables and creates the indexes
# afterwards (one sort each instead of a random B-tree insert per row).
SCHEMA_TABLES = """
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
CREATE TABLE chunks(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  file_id INTEGER NOT NULL,
  start_line INTEGER NOT NULL,
  end_line INTEGER NOT NULL,
  kind TEXT NOT NULL,
  name TEXT,
  hash TEXT NOT NULL
);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
  tokens, content='', tokenize='unicode61 remove_diacritics 0', detail=full
);
CREATE TABLE vectors(hash TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE skipped(path TEXT PRIMARY KEY, oid TEXT NOT NULL, reason TEXT NOT NULL);
"""
SCHEMA_INDEXES = """
CREATE INDEX symbols_name ON symbols(name);
CREATE INDEX symbols_name_nocase ON symbols(name COLLATE NOCASE);
-- Hybrid mode's symbol signal looks names up with underscores removed (get_user -> getuser).
CREATE INDEX symbols_flat ON symbols(replace(name, '_', '') COLLATE NOCASE);
CREATE INDEX symbols_file ON symbols(file_id);
CREATE INDEX chunks_file ON chunks(file_id);
CREATE INDEX chunks_hash ON chunks(hash);
"""
SCHEMA = SCHEMA_TABLES + SCHEMA_INDEXES

# FTS5 tables and the shadow tables that hold their whole index (external-content and contentless
# tables keep no text of their own). Two identically declared tables with the same shadow rows are
# the same index, which lets a full build fill an FTS table in a side database and copy it in.
FTS_TABLES = ("files_fts", "chunks_fts")
_FTS_SHADOWS = ("data", "idx", "docsize", "config")


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


def create(path: Path, *, bulk: bool = False) -> sqlite3.Connection:
    """A new, empty shard at ``path`` (which must not exist).

    ``bulk`` is for a private build directory that is published only after a successful build: no
    journal and no syncs while loading, and no secondary indexes until :func:`finish_bulk` (which
    must run before the shard is used).
    """
    conn = connect(path)
    if bulk:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        # Mapped pages count as the indexer's memory: a large build would map up to mmap_size of
        # its own output while it creates the indexes. Reads during a build are few; plain I/O is enough.
        conn.execute("PRAGMA mmap_size=0")
        conn.executescript(SCHEMA_TABLES)
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    set_meta(conn, schema_version=SCHEMA_VERSION, generation=0)
    return conn


def create_indexes(conn: sqlite3.Connection) -> None:
    """Create the secondary indexes a ``bulk`` shard was made without (in the build's transaction)."""
    for statement in SCHEMA_INDEXES.strip().split(";"):
        if statement.strip():
            conn.execute(statement)


def finish_bulk(conn: sqlite3.Connection) -> None:
    """Turn a committed bulk-loaded shard into a normal one: WAL journal, normal syncs."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def fts_shadow_tables(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    """The shadow tables of FTS5 table ``table`` that exist in attached database ``schema``."""
    names = {f"{table}_{suffix}" for suffix in _FTS_SHADOWS}
    rows = conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'").fetchall()
    return sorted(name for (name,) in rows if name in names)


def copy_fts(conn: sqlite3.Connection, schema: str, table: str) -> None:
    """Replace FTS5 table ``table``'s index with the one in attached database ``schema``.

    Both tables must be declared identically (same ``SCHEMA``), and the target must not be read or
    written through the FTS5 table by this connection afterwards (FTS5 caches its structure per
    connection): call it last, on a connection that closes after the commit.
    """
    for shadow in fts_shadow_tables(conn, schema, table):
        conn.execute(f"DELETE FROM main.{shadow}")
        conn.execute(f"INSERT INTO main.{shadow} SELECT * FROM {schema}.{shadow}")


def get_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def set_meta(conn: sqlite3.Connection, **values: Any) -> None:
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        [(k, json.dumps(v)) for k, v in values.items()],
    )
