"""Helpers shared by the analysis passes: language ids, parsing, node text and enclosing definitions."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import tree_sitter as ts

from lens.discover.language import detect_language, normalize_language
from lens.parse import treesitter
from lens.parse.model import Symbol
from mimir.analyze.model import SourceFile

# Definition kinds that can have members, inherit, or be named in type positions.
TYPE_KINDS = frozenset({"class", "struct", "interface", "trait", "enum", "type"})
JS_LANGS = frozenset({"javascript", "typescript", "tsx"})

_QUERIES: dict[tuple[str, str], ts.Query] = {}
_QUERIES_LOCK = threading.Lock()


def file_language(source: SourceFile) -> str | None:
    """The canonical tree-sitter language of ``source``, or None when we have no grammar for it."""
    lang = normalize_language(source.lang) if source.lang else detect_language(source.path)
    return lang if treesitter.supports(lang) else None


def parse(lang: str, content: bytes) -> ts.Tree:
    """Parse with Lens's cached per-thread parser, so trees match the ones Lens extracts from."""
    return treesitter.parse(lang, content)


def query(lang: str, key: str, source: str) -> ts.Query:
    """Compile ``source`` for ``lang`` once per process (queries are immutable and thread-safe)."""
    q = _QUERIES.get((lang, key))
    if q is None:
        with _QUERIES_LOCK:
            q = _QUERIES.get((lang, key))
            if q is None:
                q = ts.Query(treesitter.language(lang), source)
                _QUERIES[(lang, key)] = q
    return q


def text(content: bytes, node: ts.Node | None) -> str:
    """The source text of ``node`` ("" for None); slicing ``content`` avoids a copy per attribute."""
    if node is None:
        return ""
    return content[node.start_byte : node.end_byte].decode("utf-8", "replace")


def common_prefix_depth(a: str, b: str) -> int:
    """How many leading directories two directory paths share (ranks candidates by closeness)."""
    n = 0
    for x, y in zip(a.split("/"), b.split("/"), strict=False):
        if x != y or not x:
            break
        n += 1
    return n


def qualified_name(symbol: Symbol) -> str:
    """``container.name`` (or just ``name``), the spelling used in ids and ``Reference.enclosing``."""
    return f"{symbol.container}.{symbol.name}" if symbol.container else symbol.name


def symbol_id(path: str, symbol: Symbol) -> str:
    """Graph node id of a definition: ``path:qualified.name:line``."""
    return f"{path}:{qualified_name(symbol)}:{symbol.line}"


@dataclass(frozen=True)
class Scopes:
    """Innermost definition of each line of a file, from the definitions' line spans.

    Painting spans onto a per-line array (outer definitions first) makes every lookup O(1), which
    matters because every reference of the file asks.
    """

    symbols: Sequence[Symbol]
    innermost: list[int]  # line -> index into symbols, -1 outside every definition
    parents: list[int]  # symbol index -> index of the definition whose span contains it, or -1

    def at(self, line: int) -> int:
        """Index of the innermost definition containing ``line``, or -1."""
        return self.innermost[line] if 0 <= line < len(self.innermost) else -1

    def type_at(self, line: int) -> int:
        """Index of the innermost class-like definition containing ``line``, or -1."""
        i = self.at(line)
        while i >= 0 and self.symbols[i].kind not in TYPE_KINDS:
            i = self.parents[i]
        return i

    def class_name(self, index: int) -> str | None:
        """Name of the class/struct that definition ``index`` belongs to (itself if class-like)."""
        i = index
        while i >= 0:
            sym = self.symbols[i]
            if sym.kind in TYPE_KINDS:
                return sym.name
            if sym.kind == "method" and sym.container:
                return sym.container  # Go/Rust methods are not nested inside their type
            i = self.parents[i]
        return None


def build_scopes(symbols: Sequence[Symbol], n_lines: int) -> Scopes:
    """Index ``symbols`` (one file's definitions) by line; see :class:`Scopes`."""
    innermost = [-1] * (n_lines + 2)
    parents = [-1] * len(symbols)
    order = sorted(range(len(symbols)), key=lambda i: (symbols[i].start_line, -symbols[i].end_line, i))
    stack: list[int] = []
    limit = n_lines + 1
    for i in order:
        sym = symbols[i]
        while stack:
            top = symbols[stack[-1]]
            if top.start_line <= sym.start_line and sym.end_line <= top.end_line:
                break
            stack.pop()
        parents[i] = stack[-1] if stack else -1
        stack.append(i)
        start, end = max(sym.start_line, 0), min(sym.end_line, limit)
        if end >= start:
            innermost[start : end + 1] = [i] * (end - start + 1)
    return Scopes(symbols, innermost, parents)
