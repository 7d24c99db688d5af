"""Data types of Mimir's repository analysis: the input (:class:`SourceFile`) and everything derived.

Everything is a plain dataclass made of strings, ints, tuples, lists and dicts, so that the whole
analysis can be written as a JSON artifact (:meth:`SymbolGraph.to_dict`) and read back unchanged.
Lines are 1-based like Lens's; columns are 1-based character columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lens.parse.model import Symbol

if TYPE_CHECKING:
    from mimir.analyze.cache import AnalysisCache

RefKind = Literal["call", "inherit", "type", "ref"]
Resolution = Literal["local", "import", "unique_name", "ambiguous"]

# Resolutions from most to least trustworthy; an edge seen several ways keeps the best one.
RESOLUTION_ORDER: tuple[Resolution, ...] = ("local", "import", "unique_name", "ambiguous")

# Edge kinds of the symbol graph, each stored in both directions so either end can be queried.
FORWARD_EDGE_KINDS: dict[str, str] = {
    "contains": "contained_by",
    "calls": "called_by",
    "imports": "imported_by",
    "inherits": "inherited_by",
    "references": "referenced_by",
}
EDGE_KINDS: dict[str, str] = {**FORWARD_EDGE_KINDS, **{rev: fwd for fwd, rev in FORWARD_EDGE_KINDS.items()}}

FILE_KIND = "file"  # GraphNode.kind of a file node, whose id is the file's path
GRAPH_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of the repository, in memory. ``lang`` None means "detect from the path"."""

    path: str  # repository-relative, "/"-separated
    lang: str | None
    text: str


@dataclass(frozen=True, slots=True)
class ImportStatement:
    """One import as written, before resolution (a statement importing several modules yields several).

    ``names`` are the imported members in their original spelling ("*" for a wildcard, "default" for
    a JS default import) and ``aliases`` the local name of each (same length).  ``binding`` is the
    local name bound to the module itself (``import a.b as c`` -> "c", ``import * as ns``, a Go
    package alias, Rust ``mod x;`` -> "x").  For Rust ``use`` the resolver decides whether the last
    path segment is a module or an item, so extraction puts its local name in ``binding``.
    """

    path: str
    line: int
    module: str  # as written: "a.b", "..x", "./x", "crate::a::b", "a.b.C", "example.com/m/util"
    names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    binding: str | None = None
    kind: str = "import"  # "import", "mod" (Rust ``mod x;``) or "static" (Java ``import static``)


@dataclass(frozen=True, slots=True)
class FileImports:
    """The syntactic imports of one file, plus its declared package (Go, Java) if any."""

    statements: tuple[ImportStatement, ...] = ()
    package: str | None = None


@dataclass(frozen=True, slots=True)
class ImportEdge:
    """An import resolved to a file of the repository (one edge per imported file).

    ``names``/``aliases``/``binding`` are as in :class:`ImportStatement`, restricted to what this
    destination provides (``from pkg import mod, func`` becomes an edge to ``pkg/mod.py`` bound to
    "mod" and one to ``pkg/__init__.py`` with names ("func",)).
    """

    src_path: str
    dst_path: str
    names: tuple[str, ...]
    line: int
    module: str = ""
    aliases: tuple[str, ...] = ()
    binding: str | None = None

    def bound_names(self) -> dict[str, str]:
        """Local name -> original name for the members this edge imports (wildcards excluded)."""
        aliases = self.aliases if len(self.aliases) == len(self.names) else self.names
        return {alias: name for name, alias in zip(self.names, aliases, strict=True) if name != "*"}


@dataclass(frozen=True, slots=True)
class UnresolvedImport:
    """An import of something outside the repository (or that could not be found in it)."""

    path: str
    module: str
    line: int
    names: tuple[str, ...] = ()
    bound: tuple[str, ...] = ()  # local names it introduces, so references to them are not guessed


@dataclass
class ImportResult:
    """Resolved import edges, external imports, and declared packages by path (Go, Java)."""

    edges: list[ImportEdge] = field(default_factory=list)
    unresolved: list[UnresolvedImport] = field(default_factory=list)
    packages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reference:
    """A use of a name: a call, a base class/trait, a type annotation, or another identifier use.

    ``qualifier`` is the receiver or path before the name (``self`` in ``self.f()``, ``pkg`` in
    ``pkg.F()``, ``Foo`` in ``Foo::new()``), "*" when the receiver is an expression that is not a
    plain dotted name, and None for a bare name.  ``enclosing`` is the qualified name
    (``container.name``) of the innermost definition around the use; for an inherit reference it is
    the class/struct that inherits (the implementing type for Rust ``impl Trait for X``).
    """

    path: str
    line: int
    col: int
    name: str
    kind: RefKind
    enclosing: str | None
    qualifier: str | None = None


@dataclass(frozen=True, slots=True)
class GraphNode:
    """A definition (id ``path:qualified.name:line``) or a file (id = path, kind "file")."""

    id: str
    path: str
    name: str
    kind: str
    container: str | None
    start_line: int
    end_line: int
    line: int
    signature: str  # the definition's first line(s), whitespace-collapsed, for repo maps


@dataclass(frozen=True, slots=True)
class Edge:
    """An outgoing edge from the node it is stored under.

    ``resolution`` says how a call/inherit/reference target was found (None for contains/imports);
    ``line`` is the first line in the source file where the relation appears and ``count`` how many
    times it appears.
    """

    kind: str
    target: str
    resolution: Resolution | None = None
    line: int = 0
    count: int = 1


@dataclass
class SymbolGraph:
    """Definitions and files with their relations, as adjacency lists keyed by edge kind then node id.

    Every edge is stored in both directions (``calls``/``called_by`` and so on, see
    :data:`EDGE_KINDS`).  ``refs`` keeps every reference by name for :meth:`references`.
    """

    nodes: dict[str, GraphNode] = field(default_factory=dict)
    adjacency: dict[str, dict[str, list[Edge]]] = field(default_factory=dict)
    imports: list[ImportEdge] = field(default_factory=list)
    external_imports: list[UnresolvedImport] = field(default_factory=list)
    refs: dict[str, list[Reference]] = field(default_factory=dict)
    _by_name: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the name index after ``nodes`` was changed in place."""
        by_name: dict[str, list[str]] = {}
        for node in self.nodes.values():
            if node.kind != FILE_KIND:
                by_name.setdefault(node.name, []).append(node.id)
        self._by_name = by_name

    # -- queries ---------------------------------------------------------------------------------

    def definitions(self, name: str) -> list[GraphNode]:
        """Definitions named ``name``; ``Class.method`` (the container, a dot, the name) narrows them."""
        container = None
        if name not in self._by_name and "." in name:
            container, name = name.rsplit(".", 1)
        ids = self._by_name.get(name, [])
        nodes = [self.nodes[i] for i in ids]
        if container is not None:
            nodes = [n for n in nodes if n.container == container]
        return sorted(nodes, key=lambda n: n.id)

    def files(self) -> list[str]:
        """Paths of the file nodes, sorted."""
        return sorted(n.id for n in self.nodes.values() if n.kind == FILE_KIND)

    def edges(self, kind: str, node_id: str) -> list[Edge]:
        """Outgoing edges of one kind from ``node_id`` (empty if none)."""
        return list(self.adjacency.get(kind, {}).get(node_id, ()))

    def callers(self, symbol_id: str) -> list[Edge]:
        """Who calls ``symbol_id``: ``called_by`` edges whose targets are the callers (or files)."""
        return self.edges("called_by", symbol_id)

    def callees(self, symbol_id: str) -> list[Edge]:
        """What ``symbol_id`` (a definition, or a file for module-level code) calls."""
        return self.edges("calls", symbol_id)

    def references(self, name: str) -> list[Reference]:
        """Every recorded use of ``name`` (calls, inherits, types and plain references), in path order."""
        return list(self.refs.get(name, ()))

    def neighbors(self, symbol_id: str, kinds: Iterable[str] | None = None) -> list[Edge]:
        """Edges of the given kinds (all kinds when None) from ``symbol_id``, grouped by kind."""
        wanted = list(self.adjacency) if kinds is None else list(kinds)
        out: list[Edge] = []
        for kind in sorted(set(wanted)):
            out.extend(self.adjacency.get(kind, {}).get(symbol_id, ()))
        return out

    # -- serialization ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, compact because graphs of large repositories become artifacts.

        Rows are lists rather than objects; edges and references point at nodes and paths by
        index; only forward edge kinds are written (:meth:`from_dict` rebuilds the reverse ones).
        """
        index = {node_id: i for i, node_id in enumerate(self.nodes)}
        paths = sorted({r.path for refs in self.refs.values() for r in refs})
        path_index = {p: i for i, p in enumerate(paths)}
        return {
            "version": GRAPH_FORMAT_VERSION,
            "nodes": [
                [n.id, n.path, n.name, n.kind, n.container, n.start_line, n.end_line, n.line, n.signature]
                for n in self.nodes.values()
            ],
            "edges": {
                kind: [
                    [index[src], [[index[e.target], e.resolution, e.line, e.count] for e in edges]]
                    for src, edges in by_src.items()
                ]
                for kind, by_src in self.adjacency.items()
                if kind in FORWARD_EDGE_KINDS
            },
            "imports": [
                [e.src_path, e.dst_path, list(e.names), e.line, e.module, list(e.aliases), e.binding]
                for e in self.imports
            ],
            "external_imports": [
                [u.path, u.module, u.line, list(u.names), list(u.bound)] for u in self.external_imports
            ],
            "ref_paths": paths,
            "refs": {
                name: [[path_index[r.path], r.line, r.col, r.kind, r.enclosing, r.qualifier] for r in refs]
                for name, refs in self.refs.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SymbolGraph:
        """Inverse of :meth:`to_dict`."""
        version = data.get("version")
        if version != GRAPH_FORMAT_VERSION:
            raise ValueError(f"unsupported symbol graph format version {version!r}")
        nodes = {row[0]: GraphNode(*row) for row in data["nodes"]}
        ids = list(nodes)
        adjacency: dict[str, dict[str, list[Edge]]] = {kind: {} for kind in sorted(EDGE_KINDS)}
        for kind, rows in data["edges"].items():
            reverse = EDGE_KINDS[kind]
            for src_index, edges in rows:
                src = ids[src_index]
                for dst_index, resolution, line, count in edges:
                    dst = ids[dst_index]
                    adjacency[kind].setdefault(src, []).append(Edge(kind, dst, resolution, line, count))
                    adjacency[reverse].setdefault(dst, []).append(Edge(reverse, src, resolution, line, count))
        for kind, by_src in adjacency.items():
            for edges in by_src.values():
                edges.sort(key=lambda e: e.target)
            adjacency[kind] = dict(sorted(by_src.items()))
        imports = [
            ImportEdge(src, dst, tuple(names), line, module, tuple(aliases), binding)
            for src, dst, names, line, module, aliases, binding in data["imports"]
        ]
        external = [
            UnresolvedImport(path, module, line, tuple(names), tuple(bound))
            for path, module, line, names, bound in data["external_imports"]
        ]
        paths = data["ref_paths"]
        refs = {
            name: [
                Reference(paths[p], line, col, name, kind, enclosing, qualifier)
                for p, line, col, kind, enclosing, qualifier in rows
            ]
            for name, rows in data["refs"].items()
        }
        return cls(nodes=nodes, adjacency=adjacency, imports=imports, external_imports=external, refs=refs)


@dataclass
class Ranks:
    """Importance scores, each dict ordered from most to least important (ties by path / id)."""

    files: dict[str, float] = field(default_factory=dict)
    symbols: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RepoMap:
    """A token-budgeted outline of the repository; ``tokens`` is :func:`estimate_tokens` of ``text``."""

    text: str
    files_included: tuple[str, ...]
    symbols_included: tuple[str, ...]
    truncated: bool  # True when some ranked file or definition did not fit in the budget
    tokens: int


@dataclass
class Analysis:
    """Everything :func:`mimir.analyze.analyze_repository` derives, with per-phase timings.

    ``durations`` are wall-clock seconds and ``cpu_durations`` process CPU seconds, per phase.
    ``cache`` holds the per-file results for the next analysis (:mod:`mimir.analyze.cache`) and
    ``reuse`` counts the analyzed files three ways: taken from the previous cache (``reused``),
    taken from it but scanned for references again because a newly defined name appears in them
    (``rescanned``), and analyzed from scratch (``analyzed``).
    """

    definitions: dict[str, list[Symbol]]
    imports: ImportResult
    references: list[Reference]
    graph: SymbolGraph
    ranks: Ranks
    durations: dict[str, float] = field(default_factory=dict)
    cpu_durations: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # paths without a supported language
    cache: AnalysisCache | None = None
    reuse: dict[str, int] = field(default_factory=dict)
