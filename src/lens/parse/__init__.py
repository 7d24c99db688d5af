"""The parse stage: symbols and chunks for each source file.

tree-sitter handles the languages we ship grammars for; everything else gets universal-ctags symbols
when parsed in a batch (one ctags process per batch), or plain line windows.  Parsing never raises:
source code in the wild is malformed, truncated or mislabelled often enough that a failure here must
degrade to windows instead of dropping the file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lens.parse import treesitter
from lens.parse.chunks import build_chunks, window_chunks
from lens.parse.ctags import ctags_symbols
from lens.parse.model import Chunk, ParseResult, Symbol

log = logging.getLogger(__name__)

TREE_SITTER_LANGUAGES: frozenset[str] = treesitter.LANGUAGES
# Languages worth a ctags run: code, not prose or data (ctags would find no definitions there).
_NO_CTAGS = frozenset({"text", "markdown", "json", "yaml", "toml", "xml", "html", "css"})
MAX_TREE_SITTER_BYTES = 4 << 20  # bigger files are generated or data; windows are enough for them

__all__ = [
    "TREE_SITTER_LANGUAGES",
    "Chunk",
    "ParseResult",
    "Symbol",
    "parse_batch",
    "parse_file",
    "wants_ctags",
]


def _decode(content: bytes) -> str:
    return content.decode("utf-8", "replace")


def _windows_only(path: str, content: bytes, chunk_text: bool = True) -> ParseResult:
    try:
        return ParseResult(chunks=window_chunks(path, _decode(content), with_text=chunk_text), parser="none")
    except Exception:  # never raise out of the parse stage
        log.exception("windowing failed for %s", path)
        return ParseResult(parser="none")


def _tree_sitter(path: str, lang: str, content: bytes, chunk_text: bool) -> ParseResult:
    ext = treesitter.extract(lang, content)
    chunks = build_chunks(
        path, _decode(content), ext.symbols, lang, scopes=ext.scopes, leads=ext.leads, with_text=chunk_text
    )
    return ParseResult(symbols=ext.symbols, chunks=chunks, parser="tree-sitter")


def parse_file(path: str, lang: str | None, content: bytes, *, chunk_text: bool = True) -> ParseResult:
    """Symbols and chunks of one file; tree-sitter when ``lang`` is supported, else windows only.

    ``path`` only appears in chunk headers (embedding input), so pass the repository-relative path.
    Without ``chunk_text`` chunks carry their spans only (``text`` is ``""``): cheaper for the indexer,
    which reads chunk bodies from the file itself.
    """
    if lang is not None and treesitter.supports(lang) and len(content) <= MAX_TREE_SITTER_BYTES:
        try:
            return _tree_sitter(path, lang, content, chunk_text)
        except Exception:
            log.exception("tree-sitter parse failed for %s; falling back to windows", path)
    return _windows_only(path, content, chunk_text)


def wants_ctags(lang: str | None) -> bool:
    """Whether a file goes through ctags in :func:`parse_batch`."""
    return lang is not None and lang not in _NO_CTAGS and not treesitter.supports(lang)


def parse_batch(
    files: Sequence[tuple[str, str | None, bytes]], *, chunk_text: bool = True
) -> list[ParseResult]:
    """:func:`parse_file` for many files, plus one ctags run covering the ones tree-sitter cannot do.

    Results are in input order.  Use batches of a few hundred to a few thousand files: each batch is
    written to a temporary directory for ctags.
    """
    results: list[ParseResult | None] = [None] * len(files)
    for_ctags: list[int] = []
    for i, (path, lang, content) in enumerate(files):
        if wants_ctags(lang):
            for_ctags.append(i)
        else:
            results[i] = parse_file(path, lang, content, chunk_text=chunk_text)

    tags: dict[str, list[Symbol]] = {}
    if for_ctags:
        try:
            tags = ctags_symbols([(files[i][0], files[i][2]) for i in for_ctags])
        except Exception:
            log.exception("ctags batch failed")
    for i in for_ctags:
        path, lang, content = files[i]
        syms = tags.get(path)
        if syms is None:
            results[i] = _windows_only(path, content, chunk_text)
            continue
        try:
            chunks = build_chunks(path, _decode(content), syms, lang, with_text=chunk_text)
            results[i] = ParseResult(symbols=syms, chunks=chunks, parser="ctags")
        except Exception:
            log.exception("chunking failed for %s", path)
            results[i] = _windows_only(path, content, chunk_text)
    return [r if r is not None else ParseResult() for r in results]
