"""The symbol graph: definitions and files as nodes, contains/imports/inherits/calls/references edges.

Name resolution is heuristic (no type inference) but ordered from most to least certain, and every
call/inherit/reference edge records which rule found it (:data:`~mimir.analyze.model.Resolution`):

1. ``local``: a definition with that name in the same file (a ``self.``/``this.``/``Self::``
   receiver first looks in the enclosing class and then its resolved base classes);
2. ``import``: a definition in a file the caller's file imports.  Imported names are followed
   through aliases, module bindings (``pkg.f()`` after ``import pkg``) and re-exports
   (``__init__.py``, ``index.ts``, up to three hops); Go and Java package-mates count as imported;
3. ``unique_name``: the only definition with that name anywhere in the repository;
4. ``ambiguous``: several name-only matches, kept as up to five edges (closest directories first);
   a name with more than 20 definitions gets no name-only edges at all, it is too generic.

Names bound to external imports (``from os.path import join``) are never guessed, and bare names
never resolve to methods (except in Java, where ``foo()`` means ``this.foo()``).  Identifier and
type uses become ``references`` edges only when resolved unambiguously.
"""

from __future__ import annotations

import heapq
import operator
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lens.parse.model import Symbol
from mimir.analyze import _syntax
from mimir.analyze._syntax import (
    TYPE_KINDS,
    Scopes,
    build_scopes,
    common_prefix_depth,
    qualified_name,
    symbol_id,
)
from mimir.analyze.model import (
    EDGE_KINDS,
    FILE_KIND,
    RESOLUTION_ORDER,
    Edge,
    GraphNode,
    ImportResult,
    Reference,
    Resolution,
    SourceFile,
    SymbolGraph,
)

CALLABLE_KINDS = frozenset({"function", "method", "class", "struct"})
SELF_RECEIVERS = frozenset({"self", "this", "cls", "Self", "super"})
MAX_AMBIGUOUS = 5
MAX_NAME_ONLY = 20  # a name defined more often than this is too generic to guess from the name alone
MAX_REEXPORT_HOPS = 3
MAX_SIGNATURE = 200
_PATH_SPLIT = re.compile(r"\.|::")
_RANK = {res: i for i, res in enumerate(RESOLUTION_ORDER)}


def signature(lines: Sequence[str], line: int) -> str:
    """The definition's header: its name line, continued while parentheses are open (max 5 lines)."""
    if not 0 < line <= len(lines):
        return ""
    parts = [lines[line - 1].strip()]
    depth = parts[0].count("(") - parts[0].count(")")
    i = line
    while depth > 0 and i < len(lines) and i < line + 5:
        nxt = lines[i].strip()
        parts.append(nxt)
        depth += nxt.count("(") - nxt.count(")")
        i += 1
    sig = " ".join(" ".join(parts).split())
    return sig if len(sig) <= MAX_SIGNATURE else sig[: MAX_SIGNATURE - 1] + "…"


@dataclass
class _FileScope:
    """What one file can see through its imports."""

    lang: str
    imported: set[str] = field(default_factory=set)  # every resolved import destination
    names: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # local -> [(file, original)]
    modules: dict[str, list[str]] = field(default_factory=dict)  # local module binding -> files
    star: list[str] = field(default_factory=list)  # wildcard / re-export-all destinations
    external: set[str] = field(default_factory=set)  # local names bound by unresolved imports


class _Builder:
    def __init__(
        self,
        files: Sequence[SourceFile],
        definitions_by_path: Mapping[str, Sequence[Symbol]],
        imports: ImportResult,
    ) -> None:
        self.nodes: dict[str, GraphNode] = {}
        self.edges: dict[tuple[str, str, str], list[int]] = {}  # (src, kind, dst) -> [rank, line, count]
        self.ids: dict[str, list[str]] = {}  # path -> node id per definition index
        self.scopes: dict[str, Scopes] = {}
        self.by_name: dict[str, list[str]] = {}
        self.in_file: dict[tuple[str, str], list[str]] = {}
        self.types_in_dir: dict[tuple[str, str], list[str]] = {}
        self.files: dict[str, _FileScope] = {}
        self.bases: dict[str, list[str]] = {}  # class id -> resolved base class ids
        self.dir_of: dict[str, str] = {}
        self.files_in_dir: dict[str, list[str]] = {}
        # Caches: resolution repeats the same questions (``fmt.Println`` in every Go file) and
        # common names (``String``, ``get``) have thousands of definitions, so nothing per reference
        # may scan all of them twice.
        self._cands: dict[tuple[str, frozenset[str] | None, bool], list[str]] = {}
        self._visible_files: dict[str, frozenset[str]] = {}
        self._resolved: dict[tuple[str, str, str | None, str, str | None], list[tuple[str, Resolution]]] = {}
        texts = {f.path: f for f in files}
        for path in sorted(set(definitions_by_path) | {f.path for f in files}):
            source = texts.get(path)
            lang = (
                _syntax.file_language(source) if source else _syntax.file_language(SourceFile(path, None, ""))
            )
            if lang is None:
                continue
            self._add_file(path, lang, source.text if source else "", definitions_by_path.get(path, ()))
        self._add_contains()
        self._add_imports(imports)

    # -- nodes and static edges ------------------------------------------------------------------

    def _add_file(self, path: str, lang: str, text: str, symbols: Sequence[Symbol]) -> None:
        lines = text.splitlines()
        self.files[path] = _FileScope(lang)
        self.dir_of[path] = posixpath.dirname(path)
        self.files_in_dir.setdefault(self.dir_of[path], []).append(path)
        self.nodes[path] = GraphNode(
            path, path, posixpath.basename(path), FILE_KIND, None, 1, max(len(lines), 1), 1, ""
        )
        scopes = build_scopes(symbols, len(lines) + 1)
        self.scopes[path] = scopes
        ids: list[str] = []
        directory = posixpath.dirname(path)
        for sym in symbols:
            sid = symbol_id(path, sym)
            ids.append(sid)
            if sid in self.nodes:
                continue  # same name, container and line twice: keep the first
            self.nodes[sid] = GraphNode(
                sid,
                path,
                sym.name,
                sym.kind,
                sym.container,
                sym.start_line,
                sym.end_line,
                sym.line,
                signature(lines, sym.line),
            )
            self.by_name.setdefault(sym.name, []).append(sid)
            self.in_file.setdefault((path, sym.name), []).append(sid)
            if sym.kind in TYPE_KINDS:
                self.types_in_dir.setdefault((directory, sym.name), []).append(sid)
        self.ids[path] = ids

    def _add_contains(self) -> None:
        """Contains edges, once every file's types are known (a Go method may precede its type)."""
        for path, scopes in self.scopes.items():
            ids = self.ids[path]
            for i, sym in enumerate(scopes.symbols):
                self._edge(self._container_of(path, scopes, i), "contains", ids[i], None, sym.line)

    def _container_of(self, path: str, scopes: Scopes, index: int) -> str:
        """Id of the node containing definition ``index``: its span parent, else its named type."""
        sym = scopes.symbols[index]
        parent = scopes.parents[index]
        if sym.container is None:
            return self.ids[path][parent] if parent >= 0 else path
        while parent >= 0 and scopes.symbols[parent].name != sym.container:
            parent = scopes.parents[parent]
        if parent >= 0:
            return self.ids[path][parent]
        # Go methods, Rust impl methods, JS prototype assignments: the type is declared elsewhere.
        for sid in self.in_file.get((path, sym.container), ()):
            if self.nodes[sid].kind in TYPE_KINDS:
                return sid
        for sid in self.types_in_dir.get((posixpath.dirname(path), sym.container), ()):
            return sid
        return path

    def _add_imports(self, imports: ImportResult) -> None:
        for e in imports.edges:
            scope = self.files.get(e.src_path)
            if scope is None or e.dst_path not in self.files:
                continue
            self._edge(e.src_path, "imports", e.dst_path, None, e.line)
            scope.imported.add(e.dst_path)
            if e.binding:
                scope.modules.setdefault(e.binding, []).append(e.dst_path)
            if e.names:
                for local, original in e.bound_names().items():
                    scope.names.setdefault(local, []).append((e.dst_path, original))
            if "*" in e.names:
                scope.star.append(e.dst_path)
        for u in imports.unresolved:
            scope = self.files.get(u.path)
            if scope is not None:
                scope.external.update(u.bound)

    def _edge(self, src: str, kind: str, dst: str, resolution: Resolution | None, line: int) -> None:
        key = (src, kind, dst)
        rank = _RANK[resolution] if resolution is not None else -1
        entry = self.edges.get(key)
        if entry is None:
            self.edges[key] = [rank, line, 1]
        else:
            entry[0] = min(entry[0], rank)
            entry[1] = min(entry[1], line)
            entry[2] += 1

    # -- resolution ------------------------------------------------------------------------------

    def _kind_ok(self, sid: str, kinds: frozenset[str] | None, bare: bool = False) -> bool:
        """Whether definition ``sid`` may be the target (``bare``: a plain name cannot be a method)."""
        kind = self.nodes[sid].kind
        return (kinds is None or kind in kinds) and not (bare and kind == "method")

    def _find_in(self, targets: Iterable[tuple[str, str]], kinds: frozenset[str] | None) -> list[str]:
        """Definitions named as given in the given files, following re-exports breadth-first."""
        frontier = list(targets)
        seen: set[tuple[str, str]] = set()
        for _ in range(MAX_REEXPORT_HOPS + 1):
            found: list[str] = []
            nxt: list[tuple[str, str]] = []
            for path, name in frontier:
                if (path, name) in seen:
                    continue
                seen.add((path, name))
                hits = [s for s in self.in_file.get((path, name), ()) if self._kind_ok(s, kinds)]
                if hits:  # an imported name is a module-level definition when there is one
                    found.extend([s for s in hits if self.nodes[s].container is None] or hits)
                    continue
                scope = self.files.get(path)
                if scope is not None:
                    nxt.extend(scope.names.get(name, ()))
                    nxt.extend((dst, name) for dst in scope.star)
            if found:
                return sorted(set(found))
            frontier = nxt
        return []

    def _visible(self, path: str) -> frozenset[str]:
        """Files ``path`` sees: its resolved imports, plus its Go/Java package-mates."""
        visible = self._visible_files.get(path)
        if visible is None:
            scope = self.files[path]
            mates = self.files_in_dir[self.dir_of[path]] if scope.lang in ("go", "java") else ()
            visible = frozenset(scope.imported).union(mates) - {path}
            self._visible_files[path] = visible
        return visible

    def _candidates(self, name: str, kinds: frozenset[str] | None, bare: bool = False) -> list[str]:
        key = (name, kinds, bare)
        cands = self._cands.get(key)
        if cands is None:
            cands = [s for s in self.by_name.get(name, ()) if self._kind_ok(s, kinds, bare)]
            self._cands[key] = cands
        return cands

    def _pick(
        self, cands: list[str], path: str, class_name: str | None, how: Resolution
    ) -> list[tuple[str, Resolution]]:
        """One candidate with ``how``, or the best few marked ambiguous."""
        if len(cands) > 1 and class_name is not None:
            same_class = [c for c in cands if self.nodes[c].container == class_name]
            cands = same_class or cands
        if len(cands) > 1:
            top_level = [c for c in cands if self.nodes[c].container is None]
            cands = top_level if len(top_level) == 1 else cands
        if len(cands) == 1:
            return [(cands[0], how)]
        here = self.dir_of[path]
        best = heapq.nsmallest(
            MAX_AMBIGUOUS,
            cands,
            key=lambda c: (-common_prefix_depth(self.dir_of[self.nodes[c].path], here), c),
        )  # closest directories first
        return [(c, "ambiguous") for c in best]

    def _tiers(
        self,
        name: str,
        kinds: frozenset[str] | None,
        path: str,
        class_name: str | None,
        bare: bool = False,
        guess: bool = False,
    ) -> list[tuple[str, Resolution]]:
        """Same file, then visible files, then anywhere.

        ``guess`` marks a member access on a receiver of unknown type (``x.get()``): a repo-wide
        match is then only a guess, so it is labelled ambiguous even when unique, and names with
        more than :data:`MAX_AMBIGUOUS` definitions (``get``, ``append``...) are not guessed at all.
        """
        cands = self._candidates(name, kinds, bare)
        if not cands:
            return []
        local = [c for c in self.in_file.get((path, name), ()) if self._kind_ok(c, kinds, bare)]
        if local:
            return self._pick(local, path, class_name, "local")
        visible = self._visible(path)
        if len(cands) <= len(visible):
            near = [c for c in cands if self.nodes[c].path in visible]
        else:
            near = [
                c for f in visible for c in self.in_file.get((f, name), ()) if self._kind_ok(c, kinds, bare)
            ]
            near.sort()
        if near:
            return self._pick(near, path, class_name, "import")
        if guess:
            if len(cands) > MAX_AMBIGUOUS:
                return []
            return [(c, "ambiguous") for c, _ in self._pick(cands, path, class_name, "unique_name")]
        if len(cands) > MAX_NAME_ONLY:
            return []
        return self._pick(cands, path, class_name, "unique_name")

    def _located(self, ids: list[str], path: str, via_import: bool = False) -> list[tuple[str, Resolution]]:
        """Label definitions found by a scoped lookup: ``local`` in the same file, else ``import``
        when the lookup followed the file's imports (``via_import``) or the file sees the target's
        file, else ``unique_name`` (e.g. a base class that was itself found by name only)."""
        if len(ids) > 1:
            return [(i, "ambiguous") for i in ids[:MAX_AMBIGUOUS]]
        out: list[tuple[str, Resolution]] = []
        for sid in ids:
            other = self.nodes[sid].path
            if other == path:
                out.append((sid, "local"))
            elif via_import or other in self._visible(path):
                out.append((sid, "import"))
            else:
                out.append((sid, "unique_name"))
        return out

    def _class_ids(self, path: str, class_name: str) -> list[str]:
        local = [s for s in self.in_file.get((path, class_name), ()) if self.nodes[s].kind in TYPE_KINDS]
        if local:
            return local[:1]
        found = self._tiers(class_name, TYPE_KINDS, path, None)
        return [found[0][0]] if len(found) == 1 else []

    def _members(self, class_id: str, name: str, kinds: frozenset[str] | None) -> list[str]:
        """Definitions named ``name`` whose container is the class (in its file or package)."""
        cls = self.nodes[class_id]
        here = self.dir_of[cls.path]
        cands = self._candidates(name, kinds)
        mates = self.files_in_dir.get(here, [cls.path])
        if len(cands) > len(mates):
            cands = [s for f in mates for s in self.in_file.get((f, name), ()) if self._kind_ok(s, kinds)]
        return [
            s
            for s in cands
            if self.nodes[s].container == cls.name and self.dir_of[self.nodes[s].path] == here
        ]

    def _in_hierarchy(
        self, class_ids: list[str], name: str, kinds: frozenset[str] | None, skip_self: bool
    ) -> list[str]:
        """Members named ``name`` of the classes or, nearest first, their base classes."""
        level = list(class_ids)
        seen: set[str] = set()
        for depth in range(6):
            if not level:
                break
            found: list[str] = []
            nxt: list[str] = []
            for cid in level:
                if cid in seen:
                    continue
                seen.add(cid)
                if depth > 0 or not skip_self:
                    found.extend(self._members(cid, name, kinds))
                nxt.extend(self.bases.get(cid, ()))
            if found:
                return sorted(set(found))
            level = nxt
        return []

    def resolve(self, ref: Reference, class_name: str | None) -> list[tuple[str, Resolution]]:
        """Target definitions of one reference (see the module docstring for the rules), memoized."""
        key = (ref.path, ref.name, ref.qualifier, ref.kind, class_name)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolve(ref, class_name)
            self._resolved[key] = found
        return found

    def _resolve(self, ref: Reference, class_name: str | None) -> list[tuple[str, Resolution]]:
        path, name, q = ref.path, ref.name, ref.qualifier
        scope = self.files[path]
        kinds: frozenset[str] | None
        if ref.kind == "call":
            kinds = CALLABLE_KINDS
        elif ref.kind in ("inherit", "type"):
            kinds = TYPE_KINDS
        else:
            kinds = None
        if q is None:
            if name in scope.names:
                targets = list(scope.names[name])
                targets += [(dst, name) for dst, original in targets if original == "default"]
                found = self._find_in(targets, kinds)
                if found:
                    return self._located(found, path, via_import=True)
            elif name in scope.external:
                return []
            if scope.lang == "java" and class_name is not None and ref.kind == "call":
                found = self._in_hierarchy(self._class_ids(path, class_name), name, kinds, False)
                if found:
                    return self._located(found, path)
            return self._tiers(name, kinds, path, class_name, bare=scope.lang != "java")

        segments = _PATH_SPLIT.split(q)
        head, last = segments[0], segments[-1]
        if q in SELF_RECEIVERS:
            if class_name is not None:
                found = self._in_hierarchy(self._class_ids(path, class_name), name, kinds, q == "super")
                if found:
                    return self._located(found, path)
        elif head in scope.modules:
            found = self._find_in([(f, name) for f in scope.modules[head]], kinds)
            return self._located(found, path, via_import=True)
        elif head in scope.external and head not in scope.names:
            return []
        elif q != "*" and (last in scope.names or last[:1].isupper()):  # Foo.create(), Foo::new()
            imported = len(segments) == 1 and last in scope.names
            if imported:
                classes = self._find_in(scope.names[last], TYPE_KINDS)
            else:
                classes = self._class_ids(path, last)
            found = self._in_hierarchy(classes, name, kinds, False)
            if found:
                return self._located(found, path, via_import=imported)
        member_kinds = frozenset({"method"})
        if scope.lang in _syntax.JS_LANGS or "::" in q:
            member_kinds = member_kinds | {"function"}
        kinds = member_kinds if kinds is None else kinds & member_kinds
        return self._tiers(name, kinds, path, class_name, guess=True)

    def source_of(self, ref: Reference) -> tuple[str, str | None]:
        """(node id of the definition the reference is in, or the file; name of its class, if any)."""
        scopes = self.scopes[ref.path]
        idx = scopes.type_at(ref.line) if ref.kind == "inherit" else scopes.at(ref.line)
        if idx < 0 and ref.kind == "inherit":
            idx = scopes.at(ref.line)
        start = idx
        while idx >= 0 and qualified_name(scopes.symbols[idx]) != ref.enclosing:
            idx = scopes.parents[idx]
        if idx >= 0:
            return self.ids[ref.path][idx], scopes.class_name(idx)
        if ref.enclosing is not None and ref.kind == "inherit":  # Rust ``impl Trait for Type``
            owner = self._class_ids(ref.path, ref.enclosing)
            if owner:
                return owner[0], ref.enclosing
        return ref.path, scopes.class_name(start) if start >= 0 else None

    def add_references(self, refs: Sequence[Reference]) -> None:
        order = {"inherit": 0, "call": 1, "type": 2, "ref": 2}
        for ref in sorted(refs, key=lambda r: order[r.kind]):  # bases first: self.f() walks them
            if ref.path not in self.files:
                continue
            src, class_name = self.source_of(ref)
            targets = self.resolve(ref, class_name)
            if ref.kind == "call":
                for dst, how in targets:
                    self._edge(src, "calls", dst, how, ref.line)
            elif ref.kind == "inherit":
                for dst, how in targets:
                    if dst != src:
                        self._edge(src, "inherits", dst, how, ref.line)
                        bases = self.bases.setdefault(src, [])
                        if dst not in bases:
                            bases.append(dst)
            elif targets and targets[0][1] != "ambiguous":
                for dst, how in targets:
                    if dst != src:
                        self._edge(src, "references", dst, how, ref.line)

    def graph(self, imports: ImportResult, refs: Sequence[Reference]) -> SymbolGraph:
        """Materialize adjacency lists (sorted by target, sources by id) and the reference index."""
        adjacency: dict[str, dict[str, list[Edge]]] = {kind: {} for kind in EDGE_KINDS}
        for (src, kind, dst), (rank, line, count) in self.edges.items():
            resolution = RESOLUTION_ORDER[rank] if rank >= 0 else None
            adjacency[kind].setdefault(src, []).append(Edge(kind, dst, resolution, line, count))
            reverse = EDGE_KINDS[kind]
            adjacency[reverse].setdefault(dst, []).append(Edge(reverse, src, resolution, line, count))
        by_target = operator.attrgetter("target")
        for by_src in adjacency.values():
            for edges in by_src.values():
                edges.sort(key=by_target)
        by_name: dict[str, list[Reference]] = {}
        for ref in sorted(refs, key=operator.attrgetter("path", "line", "col", "kind")):
            by_name.setdefault(ref.name, []).append(ref)
        return SymbolGraph(
            nodes=self.nodes,
            adjacency={k: dict(sorted(v.items())) for k, v in sorted(adjacency.items())},
            imports=list(imports.edges),
            external_imports=list(imports.unresolved),
            refs=dict(sorted(by_name.items())),
        )


def build_symbol_graph(
    files: Sequence[SourceFile],
    definitions_by_path: Mapping[str, Sequence[Symbol]],
    imports: ImportResult,
    refs: Sequence[Reference],
) -> SymbolGraph:
    """Build the graph from the outputs of the other passes.

    ``files`` supply the languages and the text for signatures; ``definitions_by_path`` are Lens
    symbols; ``imports`` and ``refs`` come from :mod:`mimir.analyze.imports` and
    :mod:`mimir.analyze.refs`.  Files in unsupported languages are left out.
    """
    builder = _Builder(files, definitions_by_path, imports)
    builder.add_references(refs)
    return builder.graph(imports, refs)
