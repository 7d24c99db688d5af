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
from dataclasses import dataclass

from lens.parse import treesitter
from lens.parse.model import Symbol
from mimir.analyze import _syntax
from mimir.analyze.cache import AnalysisCache, FileFacts, Key, build_cache, content_key
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

PHASES = ("cache", "parse", "definitions", "imports", "references", "graph", "rank")
# Reference kinds found syntactically, kept whatever their name (the others need a known definition).
_KEPT_KINDS = frozenset({"call", "inherit"})


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
    files: Sequence[SourceFile],
    personalization: Mapping[str, float] | None = None,
    *,
    previous: AnalysisCache | None = None,
    hashes: Mapping[str, str] | None = None,
) -> Analysis:
    """Definitions, imports, references, symbol graph and ranks of ``files``, with phase timings.

    Files whose language has no grammar are listed in ``Analysis.skipped`` (``go.mod`` files still
    inform Go import resolution).  ``personalization`` biases the file PageRank (see
    :func:`~mimir.analyze.rank.rank_files`).  Each file is parsed once; its tree is dropped before
    the next file so memory stays proportional to the source, not to the syntax trees.  Python's
    cyclic garbage collector is paused for the duration (process-wide) and restored afterwards.

    ``previous`` (the ``cache`` of an earlier analysis, e.g. of the parent commit) supplies the
    per-file results of files whose content it has seen, so only new content is parsed; the
    repository-wide passes (import resolution, graph, ranks) always run.  The result is the same
    as without ``previous`` (see :mod:`mimir.analyze.cache`).  ``hashes`` (path -> sha256 of the
    UTF-8 text, when the caller has them) spare hashing the files again.
    """
    # The passes allocate millions of small acyclic objects; the cyclic collector would re-walk all
    # of them over and over (about 20% of the run time on large repositories), so it is paused.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _analyze(files, personalization, previous, hashes or {})
    finally:
        if gc_was_enabled:
            gc.enable()


@dataclass
class _Slot:
    """One analyzed file between the per-file loop and the reference filter."""

    source: SourceFile
    lang: str
    key: Key
    symbols: list[Symbol]
    imports: FileImports
    scan: ReferenceScan | None = None  # analyzed now
    cached: list[Reference] | None = None  # reused: references filtered by the previous known names
    raw: str | None = None  # reused: the entry's JSON, while it still describes the file


def _analyze(
    files: Sequence[SourceFile],
    personalization: Mapping[str, float] | None,
    previous: AnalysisCache | None,
    hashes: Mapping[str, str],
) -> Analysis:
    clock = _Clock()
    definitions: dict[str, list[Symbol]] = {}
    extracted: dict[str, FileImports] = {}
    slots: list[_Slot] = []
    skipped: list[str] = []
    reuse = {"reused": 0, "rescanned": 0, "analyzed": 0}
    for source in files:
        lang = _syntax.file_language(source)
        if lang is None:
            skipped.append(source.path)
            continue
        clock.start("cache")
        content = source.text.encode("utf-8")
        sha = hashes.get(source.path)
        key = (sha, lang) if sha else content_key(content, lang)
        hit = previous.get(key, source.path) if previous is not None else None
        if hit is not None:
            old, old_json = hit
            definitions[source.path] = old.symbols
            extracted[source.path] = old.imports
            slots.append(
                _Slot(source, lang, key, old.symbols, old.imports, cached=old.references, raw=old_json)
            )
            reuse["reused"] += 1
            continue
        reuse["analyzed"] += 1
        clock.start("parse")
        tree = _syntax.parse(lang, content)
        clock.start("definitions")
        symbols = treesitter.extract(lang, content, tree).symbols
        definitions[source.path] = symbols
        clock.start("imports")
        file_imports = extracted[source.path] = extract_imports(source, tree, lang)
        clock.start("references")
        scan = scan_references(source, symbols, tree, lang)
        slots.append(_Slot(source, lang, key, symbols, file_imports, scan=scan))
    clock.start("imports")
    imports = resolve_imports(files, extracted)
    clock.start("references")
    known = {sym.name for symbols in definitions.values() for sym in symbols}
    added = sorted(known - previous.known) if previous is not None else []
    removed = previous is not None and not previous.known <= known
    references: list[Reference] = []
    facts: dict[Key, FileFacts] = {}
    raw: dict[Key, str] = {}
    for slot in slots:
        path = slot.source.path
        if slot.cached is not None:
            refs = slot.cached
            if added and any(name in slot.source.text for name in added):
                # A name defined only now may be used here: redo the scan (definitions are unchanged).
                scan = scan_references(slot.source, slot.symbols, None, slot.lang)
                refs = scan.finish(known) if scan is not None else []
                slot.raw = None
                reuse["reused"] -= 1
                reuse["rescanned"] += 1
            elif removed:
                kept = [r for r in refs if r.kind in _KEPT_KINDS or r.name in known]
                if len(kept) != len(refs):
                    refs, slot.raw = kept, None
        else:
            refs = slot.scan.finish(known) if slot.scan is not None else []
            slot.scan = None  # drop the file's bytes and candidates
        references.extend(refs)
        facts[slot.key] = FileFacts(path, slot.lang, slot.symbols, slot.imports, refs)
        if slot.raw is not None:
            raw[slot.key] = slot.raw
    del slots
    clock.start("graph")
    graph = build_symbol_graph(files, definitions, imports, references)
    clock.start("rank")
    ranks = rank(graph, personalization)
    clock.stop()
    durations = {k: round(v, 4) for k, v in clock.wall.items()}
    durations["total"] = round(sum(clock.wall.values()), 4)
    cpu = {k: round(v, 4) for k, v in clock.cpu.items()}
    cpu["total"] = round(sum(clock.cpu.values()), 4)
    cache = build_cache(known, facts, raw)
    return Analysis(definitions, imports, references, graph, ranks, durations, cpu, skipped, cache, reuse)


__all__ = [
    "PHASES",
    "Analysis",
    "AnalysisCache",
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
