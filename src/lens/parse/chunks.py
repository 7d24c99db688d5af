"""AST-aware chunks: the units that semantic search embeds and ranks.

A definition is the natural unit of meaning in code, so chunks follow definitions: one per top-level
function or class, with large classes broken into their members so no chunk dilutes many unrelated
methods into one vector.  Everything else (imports, module-level statements, files we cannot parse)
is covered by overlapping line windows so that no code is unreachable by semantic search.

Each chunk's ``text`` starts with a header line naming the file and the definition's context; the
header is embedding input only, line numbers always refer to the real file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lens.parse.model import Chunk, Symbol

CLASS_SPLIT_LINES = 60  # a class longer than this is chunked per member
MAX_CHUNK_LINES = 80  # a definition longer than this is cut into windows
SPLIT_WINDOW, SPLIT_OVERLAP = 60, 10  # windows over an over-long definition
WINDOW, WINDOW_OVERLAP = 40, 10  # windows over code outside any definition
MAX_LEAD_LINES = 40  # at most this many comment/decorator lines are pulled into a definition's chunk

# Kinds that get a chunk of their own; constants, variables and one-liners are left to windows.
CHUNK_KINDS = frozenset(
    {"function", "method", "class", "struct", "interface", "trait", "enum", "module", "macro", "type", "impl"}
)
_CONTAINER_KINDS = frozenset({"class", "struct", "interface", "trait", "enum", "module", "impl"})

_KEYWORDS: dict[tuple[str, str], str] = {
    ("python", "function"): "def",
    ("python", "method"): "def",
    ("go", "function"): "func",
    ("go", "method"): "func",
    ("rust", "function"): "fn",
    ("rust", "method"): "fn",
    ("rust", "module"): "mod",
    ("rust", "macro"): "macro_rules!",
}

_HASH_COMMENT_LANGS = frozenset(
    {"python", "ruby", "shell", "perl", "r", "makefile", "yaml", "toml", "dockerfile", "elixir"}
)
_DASH_COMMENT_LANGS = frozenset({"lua", "sql", "haskell"})
_HAS_ALNUM = re.compile(r"\w")


@dataclass
class _Node:
    sym: Symbol
    start: int
    end: int
    children: list[_Node] = field(default_factory=list)


def split_lines(text: str) -> list[str]:
    """Lines as numbered by editors and tree-sitter (``\\n`` only; a final newline adds no line)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "\r" not in text:
        return lines
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _lead_prefixes(lang: str | None) -> tuple[str, ...]:
    if lang == "python":
        return ("#", "@")
    if lang in _HASH_COMMENT_LANGS:
        return ("#",)
    if lang in _DASH_COMMENT_LANGS:
        return ("--",)
    # C family (C, C++, Java, JS/TS, Go, Rust, C#, ...): comments, annotations, Rust attributes.
    return ("//", "/*", "*", "@", "#[", "#![")


def _lead_start(lines: Sequence[str], start: int, floor: int, prefixes: tuple[str, ...]) -> int:
    """First line of the comments/decorators directly above line ``start`` (not above ``floor``).

    Doc comments describe the definition in prose, the best possible embedding input, so they join
    the definition's chunk.  A blank line ends the lead, so detached comments stay out.
    """
    first = start
    i = start - 1
    limit = max(floor, start - MAX_LEAD_LINES)
    while i >= limit:
        line = lines[i - 1].strip()
        if not line:
            break
        if line.endswith("*/") and "/*" not in line and "/*" in prefixes:
            j = i - 1
            while j >= limit and "/*" not in lines[j - 1]:
                j -= 1
            if j < limit:
                break
            first = i = j
        elif line.startswith(prefixes):
            first = i
        else:
            break
        i -= 1
    return first


def _nest(symbols: Sequence[Symbol], n_lines: int) -> list[_Node]:
    """Chunkable definitions as a forest by line containment (siblings in source order)."""
    cands = [
        s
        for s in symbols
        if s.kind in CHUNK_KINDS and 1 <= s.start_line <= n_lines and s.end_line > s.start_line
    ]
    cands.sort(key=lambda s: (s.start_line, -s.end_line))
    roots: list[_Node] = []
    stack: list[_Node] = []
    for s in cands:
        node = _Node(s, s.start_line, min(s.end_line, n_lines))
        while stack and not (stack[-1].start <= node.start and node.end <= stack[-1].end):
            stack.pop()
        if stack and (stack[-1].start, stack[-1].end) == (node.start, node.end):
            continue  # same span twice (e.g. overloads): one chunk is enough
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
    return roots


class _Builder:
    def __init__(
        self,
        path: str,
        lines: Sequence[str],
        lang: str | None,
        leads: Mapping[int, int],
        with_text: bool = True,
    ) -> None:
        self.path = path
        self.lines = lines
        self.lang = lang
        self.leads = leads
        self.with_text = with_text
        self.prefixes = _lead_prefixes(lang)
        self.chunks: list[Chunk] = []

    def label(self, sym: Symbol) -> str:
        return f"{_KEYWORDS.get((self.lang or '', sym.kind), sym.kind)} {sym.name}"

    def header(self, context: Sequence[str]) -> str:
        return " :: ".join([f"# {self.path}", *context])

    def emit(self, start: int, end: int, kind: str, name: str | None, context: Sequence[str]) -> None:
        """Add a chunk for lines start..end without blank edge lines, unless nothing searchable is left."""
        lines = self.lines
        while start <= end and not lines[start - 1].strip():
            start += 1
        while end >= start and not lines[end - 1].strip():
            end -= 1
        body = lines[start - 1 : end]
        if not any(_HAS_ALNUM.search(line) for line in body):
            return  # nothing searchable (blank lines, lone braces)
        if self.chunks and (self.chunks[-1].start_line, self.chunks[-1].end_line) == (start, end):
            return  # two overlapping windows trimmed down to the same lines
        text = self.header(context) + "\n" + "\n".join(body) if self.with_text else ""
        self.chunks.append(Chunk(start_line=start, end_line=end, kind=kind, name=name, text=text))

    def windows(
        self,
        start: int,
        end: int,
        size: int,
        overlap: int,
        kind: str,
        name: str | None,
        context: Sequence[str],
    ) -> None:
        pos = start
        while pos <= end:
            stop = min(pos + size - 1, end)
            self.emit(pos, stop, kind, name, context)
            if stop >= end:
                break
            pos = stop - overlap + 1

    def region(self, lo: int, hi: int, nodes: Sequence[_Node], context: list[str]) -> None:
        """Chunk lines lo..hi: each definition node, then windows over whatever they left uncovered."""
        covered_to = lo - 1
        for node in nodes:
            if node.start <= covered_to or node.end > hi:
                continue  # overlaps an earlier sibling: it is inside that chunk already
            lead = min(self.leads.get(node.start, node.start), node.start)
            lead = max(lead, covered_to + 1)
            lead = _lead_start(self.lines, lead, covered_to + 1, self.prefixes)
            self.gap(covered_to + 1, lead - 1, context)
            sym = node.sym
            inner = list(context)
            if sym.container and (not context or not context[-1].endswith(f" {sym.container}")):
                inner.append(sym.container)
            if (
                sym.kind in _CONTAINER_KINDS
                and node.children
                and node.end - node.start + 1 > CLASS_SPLIT_LINES
            ):
                self.region(lead, node.end, node.children, [*inner, self.label(sym)])
            else:
                inner.append(self.label(sym))
                if node.end - lead + 1 > MAX_CHUNK_LINES:
                    self.windows(lead, node.end, SPLIT_WINDOW, SPLIT_OVERLAP, sym.kind, sym.name, inner)
                else:
                    self.emit(lead, node.end, sym.kind, sym.name, inner)
            covered_to = node.end
        self.gap(covered_to + 1, hi, context)

    def gap(self, start: int, end: int, context: Sequence[str]) -> None:
        """Windows over lines not in any definition chunk, trimmed of blank edge lines."""
        while start <= end and not self.lines[start - 1].strip():
            start += 1
        while end >= start and not self.lines[end - 1].strip():
            end -= 1
        if start <= end:
            self.windows(start, end, WINDOW, WINDOW_OVERLAP, "window", None, context)


def build_chunks(
    path: str,
    text: str,
    symbols: Sequence[Symbol],
    lang: str | None = None,
    *,
    scopes: Sequence[Symbol] = (),
    leads: Mapping[int, int] | None = None,
    with_text: bool = True,
) -> list[Chunk]:
    """Chunks for one file from its definitions, in line order.

    ``scopes`` are extra containers that are not symbols (Rust ``impl`` blocks) and ``leads`` maps a
    definition's start line to its first decorator line; both only shape the chunks. Without
    ``with_text`` every chunk's ``text`` is ``""`` (the indexer only needs the spans).
    """
    lines = split_lines(text)
    builder = _Builder(path, lines, lang, leads or {}, with_text)
    builder.region(1, len(lines), _nest([*symbols, *scopes], len(lines)), [])
    builder.chunks.sort(key=lambda c: (c.start_line, c.end_line))
    return builder.chunks


def window_chunks(path: str, text: str, *, with_text: bool = True) -> list[Chunk]:
    """Plain line windows over the whole file, for files without usable definitions."""
    lines = split_lines(text)
    builder = _Builder(path, lines, None, {}, with_text)
    builder.gap(1, len(lines), [])
    return builder.chunks
