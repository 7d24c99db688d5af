"""The research database: symbol graph, file ranks and evidence snippets of one index.

It is what Mimir answers from when Lens cannot be reached, and it travels in the
bundle, so it is a single SQLite file with plain tables.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files(path TEXT PRIMARY KEY, lang TEXT, sha256 TEXT NOT NULL, lines INTEGER NOT NULL,
                   rank REAL NOT NULL);
CREATE TABLE symbols(id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, container TEXT,
                     path TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
                     line INTEGER NOT NULL, importance REAL NOT NULL);
CREATE INDEX symbols_name ON symbols(name COLLATE NOCASE);
CREATE INDEX symbols_path ON symbols(path, start_line);
CREATE TABLE edges(src TEXT NOT NULL, dst TEXT NOT NULL, kind TEXT NOT NULL, resolution TEXT);
CREATE INDEX edges_src ON edges(src, kind);
CREATE INDEX edges_dst ON edges(dst, kind);
CREATE TABLE refs(name TEXT NOT NULL, path TEXT NOT NULL, line INTEGER NOT NULL, kind TEXT NOT NULL,
                  enclosing TEXT);
CREATE INDEX refs_name ON refs(name);
CREATE TABLE snippets(symbol_id TEXT PRIMARY KEY, path TEXT NOT NULL, start_line INTEGER NOT NULL,
                      end_line INTEGER NOT NULL, sha256 TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX snippets_path ON snippets(path, start_line);
"""


_STATEMENTS = [stmt.strip() for stmt in SCHEMA.split(";") if stmt.strip()]
_INDEX_RE = re.compile(r"CREATE INDEX \w+ ON (\w+)\(")


def _index_table(stmt: str) -> str | None:
    m = _INDEX_RE.match(stmt)
    return m.group(1) if m else None


def create(path: Path, *, indexes: bool = True) -> sqlite3.Connection:
    """A new research database; ``indexes=False`` leaves out the secondary indexes, which are
    cheaper to build once the rows are in (:func:`create_indexes`)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(
        ";\n".join(stmt for stmt in _STATEMENTS if indexes or _index_table(stmt) is None) + ";"
    )
    return conn


def create_indexes(conn: sqlite3.Connection, tables: Iterable[str]) -> None:
    """Build the secondary indexes of ``tables`` (after a bulk insert into a :func:`create` without them)."""
    wanted = set(tables)
    for stmt in _STATEMENTS:
        if _index_table(stmt) in wanted:
            conn.execute(stmt)


def open_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    return conn


def insert_many(conn: sqlite3.Connection, table: str, rows: Iterable[tuple[Any, ...]]) -> int:
    rows = list(rows)
    if not rows:
        return 0
    marks = ", ".join("?" for _ in rows[0])
    conn.executemany(f"INSERT OR REPLACE INTO {table} VALUES({marks})", rows)
    return len(rows)
