"""What parsing a source file yields: symbol definitions and AST-aware chunks."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Symbol:
    """A definition. Lines are 1-based and inclusive; ``line`` is where the name appears."""

    name: str
    kind: str  # function, method, class, struct, interface, enum, type, constant, variable, module, ...
    container: str | None
    start_line: int
    end_line: int
    line: int


@dataclass(frozen=True)
class Chunk:
    """A span of a file to embed and rank as one unit (a function, a class, or a window)."""

    start_line: int
    end_line: int
    kind: str  # the symbol kind, or "window" for the fallback
    name: str | None
    text: str


@dataclass
class ParseResult:
    symbols: list[Symbol] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    parser: str = "none"  # "tree-sitter", "ctags" or "none"
