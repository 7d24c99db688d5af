"""Helpers shared by the analysis tests: build an Analysis from inline files, look up nodes and edges."""

from __future__ import annotations

from textwrap import dedent

from mimir.analyze import Analysis, SourceFile, analyze_repository
from mimir.analyze.model import Edge, SymbolGraph


def analyze(files: dict[str, str]) -> Analysis:
    return analyze_repository(
        [SourceFile(path, None, dedent(text).lstrip("\n")) for path, text in files.items()]
    )


def node_id(graph: SymbolGraph, path: str, qualified: str) -> str:
    """The id of the one definition ``qualified`` (``Class.method`` or ``name``) in ``path``."""
    matches = [
        n.id
        for n in graph.nodes.values()
        if n.path == path
        and n.kind != "file"
        and (f"{n.container}.{n.name}" if n.container else n.name) == qualified
    ]
    assert len(matches) == 1, (path, qualified, matches)
    return matches[0]


def edge(graph: SymbolGraph, kind: str, src: str, dst: str) -> Edge | None:
    return next((e for e in graph.edges(kind, src) if e.target == dst), None)


def resolution(graph: SymbolGraph, kind: str, src: str, dst: str) -> str | None:
    found = edge(graph, kind, src, dst)
    assert found is not None, f"missing {kind} edge {src} -> {dst}; have {graph.edges(kind, src)}"
    return found.resolution


def import_pairs(analysis: Analysis) -> set[tuple[str, str]]:
    return {(e.src_path, e.dst_path) for e in analysis.imports.edges}
