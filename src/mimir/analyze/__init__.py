"""Repository analysis for Mimir: imports, references, a symbol graph, ranks and repo maps.

Everything here is a pure function of in-memory files (:class:`SourceFile`), so it is easy to test
and to run on any snapshot.  Definitions come from Lens's tree-sitter extraction, so symbol names,
kinds and lines agree with what Lens indexes.  :func:`analyze_repository` runs every pass, parsing
each file once and sharing the tree between passes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence

from lens.parse import treesitter
from lens.parse.model import Symbol
from mimir.analyze import _syntax
from mimir.analyze.graph import build_symbol_graph
from mimir.analyze.imports import analyze_imports, extract_imports, resolve_imports
from mimir.analyze.model import (
    Analysis,
    Edge,
    FileImports,
    GraphNode,
    ImportEdge,
    ImportResult,
    ImportStatement,
    Ranks,
    Reference,
    RepoMap,
    SourceFile,
    SymbolGraph,
    UnresolvedImport,
)
from mimir.analyze.rank import rank, rank_files, rank_symbols
from mimir.analyze.refs import ReferenceScan, extract_references, scan_references
from mimir.analyze.repomap import render_repo_map
from mimir.analyze.tokens import estimate_tokens

PHASES = ("parse", "definitions", "imports", "references", "graph", "rank")


class _Clock:
    """Accumulates wall and CPU seconds per phase (phases interleave because files stream)."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self._phase = ""
        self._wall0 = self._cpu0 = 0.0

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._wall0, self._cpu0 = phase, time.perf_counter(), time.process_time()

    def stop(self) -> None:
        if self._phase:
            self.wall[self._phase] += time.perf_counter() - self._wall0
            self.cpu[self._phase] += time.process_time() - self._cpu0
            self._phase = ""


def analyze_repository(
    files: Sequence[SourceFile], personalization: Mapping[str, float] | None = None
) -> Analysis:
    """Definitions, imports, references, symbol graph and ranks of ``files``, with phase timings.

    Files whose language has no grammar are listed in ``Analysis.skipped`` (``go.mod`` files still
    inform Go import resolution).  ``personalization`` biases the file PageRank (see
    :func:`~mimir.analyze.rank.rank_files`).  Each file is parsed once; its tree is dropped before
    the next file so memory stays proportional to the source, not to the syntax trees.  Python's
    cyclic garbage collector is paused for the duration (process-wide) and restored afterwards.
    """
    # The passes allocate millions of small acyclic objects; the cyclic collector would re-walk all
    # of them over and over (about 20% of the run time on large repositories), so it is paused.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _analyze(files, personalization)
    finally:
        if gc_was_enabled:
            gc.enable()


def _analyze(files: Sequence[SourceFile], personalization: Mapping[str, float] | None) -> Analysis:
    clock = _Clock()
    definitions: dict[str, list[Symbol]] = {}
    extracted: dict[str, FileImports] = {}
    scans: list[ReferenceScan] = []
    skipped: list[str] = []
    for source in files:
        lang = _syntax.file_language(source)
        if lang is None:
            skipped.append(source.path)
            continue
        clock.start("parse")
        content = source.text.encode("utf-8")
        tree = _syntax.parse(lang, content)
        clock.start("definitions")
        symbols = treesitter.extract(lang, content, tree).symbols
        definitions[source.path] = symbols
        clock.start("imports")
        extracted[source.path] = extract_imports(source, tree, lang)
        clock.start("references")
        scan = scan_references(source, symbols, tree, lang)
        if scan is not None:
            scans.append(scan)
    clock.start("imports")
    imports = resolve_imports(files, extracted)
    clock.start("references")
    known = {sym.name for symbols in definitions.values() for sym in symbols}
    references = [ref for scan in scans for ref in scan.finish(known)]
    del scans
    clock.start("graph")
    graph = build_symbol_graph(files, definitions, imports, references)
    clock.start("rank")
    ranks = rank(graph, personalization)
    clock.stop()
    durations = {k: round(v, 4) for k, v in clock.wall.items()}
    durations["total"] = round(sum(clock.wall.values()), 4)
    cpu = {k: round(v, 4) for k, v in clock.cpu.items()}
    cpu["total"] = round(sum(clock.cpu.values()), 4)
    return Analysis(definitions, imports, references, graph, ranks, durations, cpu, skipped)


__all__ = [
    "PHASES",
    "Analysis",
    "Edge",
    "FileImports",
    "GraphNode",
    "ImportEdge",
    "ImportResult",
    "ImportStatement",
    "Ranks",
    "Reference",
    "RepoMap",
    "SourceFile",
    "SymbolGraph",
    "UnresolvedImport",
    "analyze_imports",
    "analyze_repository",
    "build_symbol_graph",
    "estimate_tokens",
    "extract_imports",
    "extract_references",
    "rank",
    "rank_files",
    "rank_symbols",
    "render_repo_map",
    "resolve_imports",
    "scan_references",
]
