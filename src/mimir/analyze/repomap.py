"""A repository map: the most important files and definitions, as signatures, within a token budget.

In the spirit of aider's repo map: it tells a model what exists and where, at a fraction of the cost
of the source.  The ``n`` most important definitions (by symbol rank) are chosen, their files are
listed in file-rank order (with every higher-ranked file too, even one without chosen definitions,
so the map never skips an important file), each definition shows its signature line under its file,
and members are indented under their class.  The largest ``n`` whose rendering fits the budget is
found by binary search, since the rendering only grows with ``n``.  Definitions nested in functions
(closures, local helpers) are left out: they are not part of any interface, and private names are
shown only after public ones of similar rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimir.analyze.model import FILE_KIND, GraphNode, Ranks, RepoMap, SymbolGraph
from mimir.analyze.tokens import estimate_tokens

_INDENT = "  "
PRIVATE_WEIGHT = 0.1


def _name_weight(name: str) -> float:
    """Private and dunder names (``_helper``, ``__eq__``) matter less to a reader than public API;
    ``__init__`` is kept at full weight because it shows how to construct the class."""
    return PRIVATE_WEIGHT if name.startswith("_") and name != "__init__" else 1.0


@dataclass(frozen=True)
class _Rendered:
    text: str
    files: tuple[str, ...]
    symbols: tuple[str, ...]


class _Renderer:
    def __init__(self, graph: SymbolGraph, ranks: Ranks) -> None:
        self.graph = graph
        files = [p for p in ranks.files if p in graph.nodes]
        ranked = set(files)
        files += [p for p in graph.files() if p not in ranked]
        self.files = files
        self.file_pos = {p: i for i, p in enumerate(files)}
        self.parent: dict[str, str] = {}
        for sid, edges in graph.adjacency.get("contained_by", {}).items():
            if edges:
                self.parent[sid] = edges[0].target
        symbols = [s for s in ranks.symbols if s in graph.nodes]
        seen = set(symbols)
        symbols += sorted(s for s, n in graph.nodes.items() if n.kind != FILE_KIND and s not in seen)
        order = {s: i for i, s in enumerate(symbols)}
        score = {s: ranks.symbols.get(s, 0.0) * _name_weight(graph.nodes[s].name) for s in symbols}
        self.symbols = sorted(
            (s for s in symbols if not self._in_function(s)), key=lambda s: (-score[s], order[s])
        )

    def _in_function(self, sid: str) -> bool:
        parent = self.parent.get(sid)
        while parent is not None:
            if self.graph.nodes[parent].kind in ("function", "method"):
                return True
            parent = self.parent.get(parent)
        return False

    def _depth(self, sid: str, shown: set[str]) -> int:
        depth = 0
        parent = self.parent.get(sid)
        while parent is not None and self.graph.nodes[parent].kind != FILE_KIND:
            if parent in shown:
                depth += 1
            parent = self.parent.get(parent)
        return depth

    def render(self, n: int) -> _Rendered:
        nodes = self.graph.nodes
        shown: set[str] = set()
        for sid in self.symbols[:n]:
            shown.add(sid)
            parent = self.parent.get(sid)
            while parent is not None and nodes[parent].kind != FILE_KIND:  # headers of chosen members
                shown.add(parent)
                parent = self.parent.get(parent)
        if not shown:
            return _Rendered("", (), ())
        by_file: dict[str, list[GraphNode]] = {}
        for sid in shown:
            by_file.setdefault(nodes[sid].path, []).append(nodes[sid])
        last = max(self.file_pos.get(p, -1) for p in by_file)
        lines: list[str] = []
        out_symbols: list[str] = []
        for path in self.files[: last + 1]:
            lines.append(f"{path}:")
            for node in sorted(by_file.get(path, ()), key=lambda d: (d.start_line, d.line, d.id)):
                lines.append(_INDENT * (1 + self._depth(node.id, shown)) + (node.signature or node.name))
                out_symbols.append(node.id)
        return _Rendered("\n".join(lines) + "\n", tuple(self.files[: last + 1]), tuple(out_symbols))


def render_repo_map(graph: SymbolGraph, ranks: Ranks, token_budget: int) -> RepoMap:
    """The repo map of ``graph`` that fits ``token_budget`` (as counted by :func:`estimate_tokens`).

    When not even one definition fits, the map lists as many top-ranked file paths as fit.
    """
    renderer = _Renderer(graph, ranks)
    total_files, total_symbols = len(renderer.files), len(renderer.symbols)
    if token_budget <= 0:
        return RepoMap("", (), (), total_files > 0, 0)
    lo, hi = 0, min(total_symbols, token_budget)  # every definition line costs at least one token
    best = _Rendered("", (), ())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = renderer.render(mid)
        if estimate_tokens(candidate.text) <= token_budget:
            lo, best = mid, candidate
        else:
            hi = mid - 1
    if not best.files:  # paths only
        paths: list[str] = []
        size = 0
        for path in renderer.files:
            size += len(path) + 2
            if estimate_tokens("x" * size) > token_budget:
                break
            paths.append(path)
        best = _Rendered("".join(f"{p}:\n" for p in paths), tuple(paths), ())
    truncated = lo < total_symbols or len(best.files) < total_files
    return RepoMap(best.text, best.files, best.symbols, truncated, estimate_tokens(best.text))
