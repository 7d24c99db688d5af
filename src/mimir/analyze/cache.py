"""Per-file analysis results keyed by content, so that a re-index parses only the files that changed.

A file's definitions, import statements and references depend on its text and language only, with
one exception: identifier and type uses are kept only for names that some file of the repository
defines (:meth:`~mimir.analyze.refs.ReferenceScan.finish`).  A cache therefore records the set of
defined names (``known``) its references were filtered with, and :func:`mimir.analyze.analyze_repository`
corrects reused references for the names a new commit adds or removes, which keeps an incremental
analysis identical to a full one:

* a removed name drops the uses of it (calls and inherits are kept whatever their name);
* an added name can only be used by a file whose text contains it, and such a file is re-scanned.

Entries are keyed by (sha256 of the UTF-8 text, language) and stored without their path, so copies
of one file (empty ``__init__.py`` files, say) share an entry and a renamed file is not re-parsed.
The cache is an SQLite file next to the index (never part of a bundle); :func:`fingerprint` covers
the code and grammars that produce the entries, so a change to any of them invalidates it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

from lens.parse import model as lens_model
from lens.parse import treesitter
from lens.parse.model import Symbol
from mimir.analyze.model import FileImports, ImportStatement, Reference

CACHE_VERSION = 1
FILE_NAME = "analysis-cache.sqlite"
_GRAMMARS = (
    "tree-sitter",
    "tree-sitter-python",
    "tree-sitter-javascript",
    "tree-sitter-typescript",
    "tree-sitter-go",
    "tree-sitter-rust",
    "tree-sitter-java",
)
_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE facts(sha256 TEXT NOT NULL, lang TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY(sha256, lang));
"""

Key = tuple[str, str]  # (sha256 of the text, language)
_SYMBOL_FIELDS = tuple(f.name for f in dataclasses.fields(Symbol))  # Lens's type: follow its fields


def content_key(content: bytes, lang: str) -> Key:
    return hashlib.sha256(content).hexdigest(), lang


@functools.cache
def fingerprint() -> str:
    """Hash of what an entry depends on besides the file: this code, Lens's extraction, the grammars."""
    from mimir.analyze import _syntax, imports, model, refs  # they import this module

    modules: tuple[ModuleType, ...] = (
        treesitter,
        lens_model,
        _syntax,
        imports,
        model,
        refs,
        sys.modules[__name__],
    )
    h = hashlib.sha256(f"mimir-analysis-cache {CACHE_VERSION}\n".encode())
    for mod in modules:
        h.update(Path(mod.__file__ or "").read_bytes())
    for dist in _GRAMMARS:
        try:
            h.update(f"{dist}={metadata.version(dist)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=-\n".encode())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the per-file passes found in one file; ``references`` are filtered by the cache's ``known``."""

    path: str
    lang: str
    symbols: list[Symbol]
    imports: FileImports
    references: list[Reference]

    def encode(self) -> str:
        """Compact JSON without the path (entries are shared by files with the same content)."""
        return json.dumps(
            [
                [[getattr(s, name) for name in _SYMBOL_FIELDS] for s in self.symbols],
                self.imports.package,
                [
                    [st.line, st.module, st.names, st.aliases, st.binding, st.kind]
                    for st in self.imports.statements
                ],
                [[r.line, r.col, r.name, r.kind, r.enclosing, r.qualifier] for r in self.references],
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def decode(cls, data: str, path: str, lang: str) -> FileFacts:
        symbols, package, statements, refs = json.loads(data)
        return cls(
            path,
            lang,
            [Symbol(*row) for row in symbols],
            FileImports(
                tuple(
                    ImportStatement(path, line, module, tuple(names), tuple(aliases), binding, kind)
                    for line, module, names, aliases, binding, kind in statements
                ),
                package,
            ),
            [
                Reference(path, line, col, name, kind, enclosing, qualifier)
                for line, col, name, kind, enclosing, qualifier in refs
            ],
        )


@dataclass
class AnalysisCache:
    """Entries of one analysis: decoded facts, or their JSON as read from disk (decoded on demand)."""

    known: frozenset[str]
    entries: dict[Key, FileFacts | str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Key, path: str) -> tuple[FileFacts, str | None] | None:
        """The facts for a file with content ``key`` at ``path``, and their JSON when read from disk."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if isinstance(entry, str):
            try:
                return FileFacts.decode(entry, path, key[1]), entry
            except (ValueError, TypeError):  # a damaged entry: analyze the file instead
                return None
        if entry.path != path:  # same content at another path: the JSON has no paths
            return FileFacts.decode(entry.encode(), path, key[1]), None
        return entry, None

    def save(self, path: Path) -> int:
        """Write the cache to ``path`` (replacing it); returns the number of entries."""
        path.unlink(missing_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO meta VALUES(?, ?)",
                [("fingerprint", fingerprint()), ("known", json.dumps(sorted(self.known)))],
            )
            conn.executemany(
                "INSERT INTO facts VALUES(?, ?, ?)",
                (
                    (sha, lang, entry if isinstance(entry, str) else entry.encode())
                    for (sha, lang), entry in self.entries.items()
                ),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return len(self.entries)

    @classmethod
    def load(cls, path: Path) -> AnalysisCache | None:
        """The cache at ``path``, or None when it is missing, unreadable or from other code/grammars."""
        if not path.is_file():
            return None
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta"))
                if meta.get("fingerprint") != fingerprint():
                    return None
                known = frozenset(json.loads(meta["known"]))
                rows = conn.execute("SELECT sha256, lang, data FROM facts")
                entries: dict[Key, FileFacts | str] = {(sha, lang): data for sha, lang, data in rows}
            finally:
                conn.close()
        except (sqlite3.Error, KeyError, ValueError, TypeError):
            return None
        return cls(known, entries)


def build_cache(
    known: Iterable[str], facts: Mapping[Key, FileFacts], raw: Mapping[Key, str] | None = None
) -> AnalysisCache:
    """A cache of ``facts``; ``raw`` has the JSON of entries reused unchanged (saved without re-encoding)."""
    entries: dict[Key, FileFacts | str] = {}
    for key, value in facts.items():
        text = raw.get(key) if raw else None
        entries[key] = text if text is not None else value
    return AnalysisCache(frozenset(known), entries)
