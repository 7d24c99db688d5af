"""Importance: PageRank over the file import graph, and symbol scores derived from it.

A file matters when many (important) files import it, which is what PageRank measures on the
importer -> imported graph.  A definition matters when its file does and when it is used a lot:
``file_rank * (1 + log(1 + uses))`` where uses counts incoming calls, inherits and references
(ambiguous edges excluded: they are guesses, and common names would collect thousands).
Scores are rounded to 12 significant digits before ordering so that ties (e.g. symmetric files)
break by path / id, identically on every machine.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mimir.analyze.model import FILE_KIND, Ranks, SymbolGraph

if TYPE_CHECKING:
    import networkx as nx  # type: ignore[import-untyped]

ALPHA = 0.85
_USE_KINDS = ("called_by", "inherited_by", "referenced_by")


def _round(x: float) -> float:
    return float(f"{x:.12g}")


def _has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


def _pagerank_numpy(
    graph: nx.DiGraph,
    alpha: float,
    personalization: Mapping[str, float] | None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> dict[str, float]:
    """networkx's PageRank semantics (weighted, dangling mass follows personalization) without scipy."""
    edges = [(u, v, float(w)) for u, v, w in graph.edges(data="weight", default=1.0)]
    return _pagerank_arrays(list(graph), edges, alpha, personalization, max_iter, tol)


def _pagerank_arrays(
    nodes: Sequence[str],
    edges: Sequence[tuple[str, str, float]],
    alpha: float,
    personalization: Mapping[str, float] | None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> dict[str, float]:
    """The power iteration of :func:`_pagerank_numpy` over nodes and (src, dst, weight) edges in the
    order a ``networkx.DiGraph`` lists them (the order fixes the floating-point sums)."""
    n = len(nodes)
    index = {node: i for i, node in enumerate(nodes)}
    src = np.array([index[u] for u, _, _ in edges], dtype=np.int64)
    dst = np.array([index[v] for _, v, _ in edges], dtype=np.int64)
    weight = np.array([w for _, _, w in edges])
    out = np.bincount(src, weights=weight, minlength=n)
    dangling = out == 0
    weight = weight / out[src] if len(edges) else weight  # sparse row-normalized transition matrix
    if personalization:
        p = np.array([float(personalization.get(node, 0.0)) for node in nodes])
        p /= p.sum()
    else:
        p = np.full(n, 1.0 / n)
    x = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        last = x
        flow = np.bincount(dst, weights=x[src] * weight, minlength=n)
        x = alpha * (flow + x[dangling].sum() * p) + (1 - alpha) * p
        if np.abs(x - last).sum() < n * tol:
            break
    return {node: float(v) for node, v in zip(nodes, x, strict=True)}


def pagerank(
    graph: nx.DiGraph, personalization: Mapping[str, float] | None = None, alpha: float = ALPHA
) -> dict[str, float]:
    """``networkx.pagerank``; it needs scipy, so without scipy an equivalent numpy iteration runs."""
    if graph.number_of_nodes() == 0:
        return {}
    if _has_scipy():
        import networkx as nx  # slow to import: only when it is used

        scores: dict[str, float] = nx.pagerank(
            graph, alpha=alpha, personalization=personalization, weight="weight"
        )
        return scores
    return _pagerank_numpy(graph, alpha, personalization)


def _file_edges(graph: SymbolGraph) -> tuple[list[str], list[tuple[str, str, float]]]:
    """Files (sorted) and import edges with their counts as weights, in :func:`file_graph`'s order."""
    edges = [
        (src, e.target, float(e.count))
        for src, out in sorted(graph.adjacency.get("imports", {}).items())
        for e in out
    ]
    return graph.files(), edges


def file_graph(graph: SymbolGraph) -> nx.DiGraph:
    """Files as nodes (sorted, so results do not depend on insertion order), import counts as weights."""
    import networkx as nx  # slow to import: only when it is used

    nodes, edges = _file_edges(graph)
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    for src, dst, weight in edges:
        g.add_edge(src, dst, weight=weight)
    return g


def rank_files(
    graph: SymbolGraph, personalization: Mapping[str, float] | None = None, alpha: float = ALPHA
) -> dict[str, float]:
    """PageRank of every file, most important first.

    ``personalization`` (path -> weight, e.g. the files a question mentions) biases the random
    jumps towards those files and what they import; unknown paths are ignored.
    """
    nodes, edges = _file_edges(graph)
    known = set(nodes)
    pers = None
    if personalization:
        pers = {p: float(w) for p, w in personalization.items() if p in known and w > 0}
        pers = pers or None
    raw: dict[str, float]
    if not nodes:
        raw = {}
    elif _has_scipy():
        raw = pagerank(file_graph(graph), pers, alpha)
    else:  # the same iteration as pagerank() without building a networkx graph (or importing networkx)
        raw = _pagerank_arrays(nodes, edges, alpha, pers)
    scores = {path: _round(s) for path, s in raw.items()}
    return dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))


def rank_symbols(graph: SymbolGraph, file_ranks: Mapping[str, float]) -> dict[str, float]:
    """``file_rank * (1 + log(1 + uses))`` for every definition, most important first."""
    scores: dict[str, float] = {}
    for sid, node in graph.nodes.items():
        if node.kind == FILE_KIND:
            continue
        uses = sum(
            e.count
            for kind in _USE_KINDS
            for e in graph.adjacency.get(kind, {}).get(sid, ())
            if e.resolution != "ambiguous"
        )
        scores[sid] = _round(file_ranks.get(node.path, 0.0) * (1.0 + math.log1p(uses)))
    return dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))


def rank(graph: SymbolGraph, personalization: Mapping[str, float] | None = None) -> Ranks:
    """File and symbol ranks of ``graph`` (see :func:`rank_files`, :func:`rank_symbols`)."""
    files = rank_files(graph, personalization)
    return Ranks(files=files, symbols=rank_symbols(graph, files))
