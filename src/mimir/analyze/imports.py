"""Imports: extraction with tree-sitter, then resolution to files of the repository.

Extraction is syntactic and per file (:func:`extract_imports`); resolution needs the whole file list
(:func:`resolve_imports`) because it emulates each language's lookup rules over it:

* Python: ``a.b`` -> ``a/b.py`` or ``a/b/__init__.py`` under any package root (the first directory
  above a chain of ``__init__.py`` packages, so ``src/`` layouts work), then any path suffix for
  namespace packages; relative imports from the importer's directory.  ``from m import x`` points
  at ``m/x.py`` when ``x`` is a submodule and at ``m`` otherwise.
* JS/TS: relative specifiers with extension and ``index.*`` resolution (``./x.js`` may be ``x.ts``);
  bare specifiers are packages, hence external.
* Go: the package directory (all non-test ``.go`` files), via the ``go.mod`` module path when one is
  among the files, else by matching the import path against directory suffixes.
* Rust: ``crate::``/``self::``/``super::`` and child-module paths to ``x.rs``/``x/mod.rs`` below the
  crate root (the directory holding ``lib.rs``/``main.rs``); ``mod x;`` likewise.  Other crates are
  external.
* Java: fully qualified class names via the files' ``package`` declarations, falling back to path
  suffixes; ``a.b.*`` imports every file of the package.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import tree_sitter as ts

from mimir.analyze import _syntax
from mimir.analyze._syntax import common_prefix_depth, text
from mimir.analyze.model import (
    FileImports,
    ImportEdge,
    ImportResult,
    ImportStatement,
    SourceFile,
    UnresolvedImport,
)

_QUERIES: dict[str, str] = {
    "python": """
(import_statement) @import
(import_from_statement) @from
""",
    "javascript": """
(import_statement) @import
(export_statement source: (_)) @export
(call_expression function: (identifier) @_fn arguments: (arguments . (string)) (#eq? @_fn "require")) @require
(call_expression function: (import) arguments: (arguments . (string))) @dynamic
""",
    "go": """
(import_spec) @import
(package_clause (package_identifier) @package)
""",
    "rust": """
(use_declaration argument: (_) @use)
(mod_item !body) @mod
(extern_crate_declaration) @extern
""",
    "java": """
(import_declaration) @import
(package_declaration) @package
""",
}
_QUERIES["typescript"] = _QUERIES["tsx"] = _QUERIES["javascript"]


def _line(node: ts.Node) -> int:
    return int(node.start_point[0]) + 1


def _squash(s: str) -> str:
    return "".join(s.split())


# -- extraction -----------------------------------------------------------------------------------


def extract_imports(source: SourceFile, tree: ts.Tree | None = None, lang: str | None = None) -> FileImports:
    """The import statements of one file (empty for unsupported languages).

    ``tree`` (and ``lang``) let a caller share one parse between passes.
    """
    lang = lang or _syntax.file_language(source)
    if lang is None:
        return FileImports()
    content = source.text.encode("utf-8")
    if tree is None:
        tree = _syntax.parse(lang, content)
    caps = ts.QueryCursor(_syntax.query(lang, "imports", _QUERIES[lang])).captures(tree.root_node)
    path = source.path
    package: str | None = None
    statements: Iterator[ImportStatement]
    if lang == "python":
        statements = _python(path, content, caps)
    elif lang in _syntax.JS_LANGS:
        statements = _javascript(path, content, caps)
    elif lang == "go":
        statements = _go(path, content, caps)
        package = text(content, caps["package"][0]) if caps.get("package") else None
    elif lang == "rust":
        statements = _rust(path, content, caps)
    else:
        statements = _java(path, content, caps)
        for decl in caps.get("package", ())[:1]:
            named = [c for c in decl.named_children if c.type in ("scoped_identifier", "identifier")]
            package = _squash(text(content, named[0])) if named else None
    return FileImports(tuple(sorted(statements, key=lambda st: st.line)), package)


def _python(path: str, content: bytes, caps: dict[str, list[ts.Node]]) -> Iterator[ImportStatement]:
    for node in caps.get("import", ()):
        for child in node.children_by_field_name("name"):
            if child.type == "aliased_import":
                module = _squash(text(content, child.child_by_field_name("name")))
                alias = text(content, child.child_by_field_name("alias"))
                yield ImportStatement(path, _line(node), module, binding=alias)
            else:
                module = _squash(text(content, child))
                yield ImportStatement(path, _line(node), module, binding=module.split(".")[0])
    for node in caps.get("from", ()):
        module = _squash(text(content, node.child_by_field_name("module_name")))
        names: list[str] = []
        aliases: list[str] = []
        if any(c.type == "wildcard_import" for c in node.children):
            names, aliases = ["*"], ["*"]
        for child in node.children_by_field_name("name"):
            if child.type == "aliased_import":
                names.append(_squash(text(content, child.child_by_field_name("name"))))
                aliases.append(text(content, child.child_by_field_name("alias")))
            else:
                names.append(_squash(text(content, child)))
                aliases.append(names[-1])
        yield ImportStatement(path, _line(node), module, tuple(names), tuple(aliases))


def _js_string(content: bytes, node: ts.Node | None) -> str | None:
    raw = text(content, node)
    if len(raw) >= 2 and raw[0] in "'\"`" and raw[-1] == raw[0]:
        return raw[1:-1]
    return None


def _js_specifiers(content: bytes, node: ts.Node) -> tuple[list[str], list[str]]:
    """Names and local aliases of ``{a, b as c}`` (import or export clause)."""
    names: list[str] = []
    aliases: list[str] = []
    for spec in node.named_children:
        if spec.type not in ("import_specifier", "export_specifier"):
            continue
        name = text(content, spec.child_by_field_name("name")).strip("'\"")
        alias = spec.child_by_field_name("alias")
        names.append(name)
        aliases.append(text(content, alias).strip("'\"") if alias is not None else name)
    return names, aliases


def _javascript(path: str, content: bytes, caps: dict[str, list[ts.Node]]) -> Iterator[ImportStatement]:
    for node in caps.get("import", ()):
        spec = _js_string(content, node.child_by_field_name("source"))
        names: list[str] = []
        aliases: list[str] = []
        binding: str | None = None
        for clause in node.named_children:
            if clause.type == "import_require_clause":  # TS: import x = require('./x')
                spec = _js_string(content, clause.child_by_field_name("source"))
                ident = clause.named_children[0] if clause.named_children else None
                binding = text(content, ident) or None
            elif clause.type == "import_clause":
                for part in clause.named_children:
                    if part.type == "identifier":
                        names.append("default")
                        aliases.append(text(content, part))
                    elif part.type == "named_imports":
                        more, more_aliases = _js_specifiers(content, part)
                        names += more
                        aliases += more_aliases
                    elif part.type == "namespace_import" and part.named_children:
                        binding = text(content, part.named_children[0])
        if spec is not None:
            yield ImportStatement(path, _line(node), spec, tuple(names), tuple(aliases), binding)
    for node in caps.get("export", ()):
        spec = _js_string(content, node.child_by_field_name("source"))
        if spec is None:
            continue
        names, aliases, binding = ["*"], ["*"], None
        for part in node.named_children:
            if part.type == "export_clause":
                names, aliases = _js_specifiers(content, part)
            elif part.type == "namespace_export" and part.named_children:
                names, aliases, binding = [], [], text(content, part.named_children[0])
        yield ImportStatement(path, _line(node), spec, tuple(names), tuple(aliases), binding)
    for kind in ("require", "dynamic"):
        for node in caps.get(kind, ()):
            args = node.child_by_field_name("arguments")
            spec = _js_string(content, args.named_children[0]) if args and args.named_children else None
            if spec is None:
                continue
            names, aliases, binding = [], [], None
            parent = node.parent if kind == "require" else None
            if parent is not None and parent.type == "variable_declarator":
                target = parent.child_by_field_name("name")
                if target is not None and target.type == "identifier":
                    binding = text(content, target)
                elif target is not None and target.type == "object_pattern":
                    for prop in target.named_children:
                        if prop.type == "shorthand_property_identifier_pattern":
                            names.append(text(content, prop))
                            aliases.append(names[-1])
                        elif prop.type == "pair_pattern":
                            names.append(text(content, prop.child_by_field_name("key")))
                            aliases.append(text(content, prop.child_by_field_name("value")))
            yield ImportStatement(path, _line(node), spec, tuple(names), tuple(aliases), binding)


def _go(path: str, content: bytes, caps: dict[str, list[ts.Node]]) -> Iterator[ImportStatement]:
    for node in caps.get("import", ()):
        module = text(content, node.child_by_field_name("path")).strip('"`')
        if not module:
            continue
        name = node.child_by_field_name("name")
        if name is None:  # the resolver binds the imported package's declared name
            yield ImportStatement(path, _line(node), module)
        elif name.type == "dot":
            yield ImportStatement(path, _line(node), module, ("*",), ("*",))
        else:  # an alias, or "_" for a side-effect import (binds nothing)
            yield ImportStatement(path, _line(node), module, binding=text(content, name))


def _rust_segments(content: bytes, node: ts.Node | None) -> list[str]:
    return [s for s in _squash(text(content, node)).split("::") if s]


def _flatten_use(
    content: bytes, node: ts.Node, prefix: list[str]
) -> Iterator[tuple[list[str], str | None, bool]]:
    """(path segments, alias, is_glob) of every leaf of a Rust use tree."""
    kind = node.type
    if kind == "use_as_clause":
        segs = prefix + _rust_segments(content, node.child_by_field_name("path"))
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        yield segs, text(content, node.child_by_field_name("alias")) or None, False
    elif kind == "scoped_use_list":
        inner = prefix + _rust_segments(content, node.child_by_field_name("path"))
        items = node.child_by_field_name("list")
        for child in items.named_children if items is not None else ():
            yield from _flatten_use(content, child, inner)
    elif kind == "use_list":
        for child in node.named_children:
            yield from _flatten_use(content, child, prefix)
    elif kind == "use_wildcard":
        glob_path = node.named_children[0] if node.named_children else None
        yield prefix + _rust_segments(content, glob_path), None, True
    elif kind in ("scoped_identifier", "identifier", "crate", "self", "super"):
        segs = prefix + _rust_segments(content, node)
        if segs and segs[-1] == "self":  # ``use a::b::{self}`` imports the module b
            segs = segs[:-1]
        yield segs, None, False


def _rust(path: str, content: bytes, caps: dict[str, list[ts.Node]]) -> Iterator[ImportStatement]:
    for node in caps.get("use", ()):
        line = _line(node)
        for segs, alias, glob in _flatten_use(content, node, []):
            if not segs:
                continue
            module = "::".join(segs)
            if glob:
                yield ImportStatement(path, line, module, ("*",), ("*",))
            else:
                yield ImportStatement(path, line, module, binding=alias or segs[-1])
    for node in caps.get("mod", ()):
        name = text(content, node.child_by_field_name("name"))
        if name:
            yield ImportStatement(path, _line(node), name, binding=name, kind="mod")
    for node in caps.get("extern", ()):
        name = text(content, node.child_by_field_name("name"))
        alias_node = node.child_by_field_name("alias")
        if name:
            yield ImportStatement(
                path, _line(node), name, binding=text(content, alias_node) if alias_node else name
            )


def _java(path: str, content: bytes, caps: dict[str, list[ts.Node]]) -> Iterator[ImportStatement]:
    for node in caps.get("import", ()):
        kinds = {c.type for c in node.children}
        named = [c for c in node.named_children if c.type in ("scoped_identifier", "identifier")]
        if not named:
            continue
        module = _squash(text(content, named[0]))
        kind = "static" if "static" in kinds else "import"
        if "asterisk" in kinds:
            yield ImportStatement(path, _line(node), module, ("*",), ("*",), kind=kind)
        else:
            last = module.rsplit(".", 1)[-1]
            yield ImportStatement(path, _line(node), module, (last,), (last,), kind=kind)


# -- resolution -----------------------------------------------------------------------------------


def _closest(candidates: Sequence[str], importer: str) -> str:
    """The candidate nearest the importer in the directory tree, then the shallowest, then by name."""
    here = posixpath.dirname(importer)
    return min(candidates, key=lambda p: (-common_prefix_depth(posixpath.dirname(p), here), p.count("/"), p))


@dataclass
class _Target:
    """One resolved destination of a statement."""

    dst: str
    names: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    binding: str | None = None


class _PythonIndex:
    """Python files by canonical module name (via ``__init__.py`` chains) and by dotted path suffix."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.files = set(paths)
        init_dirs = {
            posixpath.dirname(p) for p in paths if posixpath.basename(p) in ("__init__.py", "__init__.pyi")
        }
        self.canonical: dict[str, list[str]] = {}
        self.root_of: dict[str, str] = {}
        self.package_roots: set[str] = set()
        self.suffixes: dict[str, list[str]] = {}
        for p in sorted(paths):
            d, base = posixpath.split(p)
            stem = base.rsplit(".", 1)[0]
            parts = [] if stem == "__init__" else [stem]
            while d and d in init_dirs:
                parts.append(posixpath.basename(d))
                d = posixpath.dirname(d)
            parts.reverse()
            self.root_of[p] = d
            if not parts:
                continue
            self.canonical.setdefault(".".join(parts), []).append(p)
            if len(parts) > 1 or stem == "__init__":
                self.package_roots.add(d)
            segs = p.rsplit(".", 1)[0].split("/")
            if segs[-1] == "__init__":
                segs.pop()
            for i in range(len(segs) - 1):
                self.suffixes.setdefault(".".join(segs[i:]), []).append(p)

    def module_file(self, base: str, package_only: bool = False) -> str | None:
        """The file of the module at slash path ``base`` (no extension), or None."""
        options = (
            ("/__init__.py", "/__init__.pyi")
            if package_only
            else (".py", ".pyi", "/__init__.py", "/__init__.pyi")
        )
        for suffix in options:
            cand = (base + suffix).lstrip("/")
            if cand in self.files:
                return cand
        return None

    def absolute(self, module: str, importer: str) -> str | None:
        """File of absolute module ``module`` as seen from ``importer``."""
        own_root = self.root_of.get(importer, posixpath.dirname(importer))
        cands = [
            p
            for p in self.canonical.get(module, ())
            if self.root_of[p] in self.package_roots or self.root_of[p] == own_root
        ]
        if not cands and "." in module:
            cands = self.suffixes.get(module, [])
        return _closest(cands, importer) if cands else None

    def relative_base(self, module: str, importer: str) -> str | None:
        """Slash path of the module a relative import names (``..a.b`` from ``p/q/m.py`` -> ``p/a/b``)."""
        dots = len(module) - len(module.lstrip("."))
        base = posixpath.dirname(importer)
        for _ in range(dots - 1):
            if not base:
                return None
            base = posixpath.dirname(base)
        rest = module[dots:].replace(".", "/")
        return posixpath.join(base, rest) if rest else base

    def resolve(self, st: ImportStatement) -> tuple[list[_Target], list[str]]:
        """Targets of ``st`` and the names that could not be found."""
        if not st.names:  # import a.b [as c]
            dst = self.absolute(st.module, st.path)
            return ([_Target(dst, binding=st.binding)], []) if dst else ([], [])
        relative = st.module.startswith(".")
        base = self.relative_base(st.module, st.path) if relative else None
        if relative:
            if base is None:
                return [], list(st.names)
            mod_file = self.module_file(base, package_only=not st.module.strip("."))
        else:
            mod_file = self.absolute(st.module, st.path)
        targets: dict[str, _Target] = {}
        missing: list[str] = []
        for name, alias in zip(st.names, st.aliases, strict=True):
            sub = None
            if name != "*" and base is not None:
                sub = self.module_file(posixpath.join(base, name))
            elif name != "*":
                sub = self.absolute(f"{st.module}.{name}", st.path)
            if sub is not None:
                targets[f"{sub}\0{alias}"] = _Target(sub, binding=alias)
            elif mod_file is not None:
                target = targets.setdefault(mod_file, _Target(mod_file))
                target.names.append(name)
                target.aliases.append(alias)
            else:
                missing.append(name)
        return list(targets.values()), missing


_JS_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")
_JS_EMITTED = re.compile(r"\.(?:js|jsx|mjs|cjs)$")


def _resolve_js(files: set[str], spec: str, importer: str) -> str | None:
    if not spec.startswith("."):
        return None  # a package (or an absolute/aliased path we do not model)
    target = posixpath.normpath(posixpath.join(posixpath.dirname(importer), spec))
    if target == "..":
        return None
    if target.startswith("../"):
        return None
    target = "" if target == "." else target
    index = posixpath.join(target, "index")
    cands = [target, *(target + e for e in _JS_EXTS), *(index + e for e in _JS_EXTS)]
    emitted = _JS_EMITTED.search(target)
    if emitted:  # TS sources import their compiled name: './x.js' means x.ts
        stem = target[: emitted.start()]
        cands[1:1] = [stem + e for e in (".ts", ".tsx", ".mts", ".cts", ".d.ts")]
    for cand in cands:
        if cand in files:
            return cand
    return None


class _GoIndex:
    """Go package directories, and module paths from any ``go.mod`` files among the inputs."""

    _MODULE_RE = re.compile(r"^\s*module\s+\"?([^\s\"]+)\"?", re.MULTILINE)

    def __init__(self, go_paths: Sequence[str], go_mods: Mapping[str, str]) -> None:
        self.dirs: dict[str, list[str]] = {}
        for p in sorted(go_paths):
            if not p.endswith("_test.go"):
                self.dirs.setdefault(posixpath.dirname(p), []).append(p)
        self.by_base: dict[str, list[str]] = {}
        for d in self.dirs:
            self.by_base.setdefault(posixpath.basename(d), []).append(d)
        self.modules: list[tuple[str, str]] = []
        for path, content in go_mods.items():
            m = self._MODULE_RE.search(content)
            if m:
                self.modules.append((posixpath.dirname(path), m.group(1)))
        self.modules.sort(key=lambda dm: (-len(dm[1]), dm[0]))

    def resolve(self, module: str, importer: str) -> list[str]:
        for mdir, mpath in self.modules:
            if module == mpath or module.startswith(mpath + "/"):
                rel = module[len(mpath) :].lstrip("/")
                files = self.dirs.get(posixpath.join(mdir, rel) if rel else mdir)
                if files:
                    return files
        # Directories whose path ends with the whole import path (GOPATH/vendor/std layouts).
        base = module.rsplit("/", 1)[-1]
        cands = [d for d in self.by_base.get(base, ()) if d == module or d.endswith("/" + module)]
        if cands:
            return self.dirs[_closest(cands, importer)]
        if not self.modules:  # no go.mod: the repo root may be any prefix of the import path
            segs = module.split("/")
            for i in range(1, len(segs)):
                files = self.dirs.get("/".join(segs[i:]))
                if files:
                    return files
        return []


class _JavaIndex:
    """Java files by fully qualified class name (``package`` + file stem) and by package."""

    def __init__(self, java_paths: Sequence[str], packages: Mapping[str, str]) -> None:
        self.fqcn: dict[str, list[str]] = {}
        self.by_package: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for p in sorted(java_paths):
            stem = posixpath.basename(p).rsplit(".", 1)[0]
            pkg = packages.get(p)
            self.fqcn.setdefault(f"{pkg}.{stem}" if pkg else stem, []).append(p)
            self.by_package.setdefault(pkg or "", []).append(p)
            self.by_stem.setdefault(stem, []).append(p)

    def lookup(self, fqcn: str, importer: str) -> str | None:
        cands = self.fqcn.get(fqcn)
        if not cands:  # no (or a wrong) package declaration: match the path suffix a/b/C.java
            suffix = fqcn.replace(".", "/") + ".java"
            stem = fqcn.rsplit(".", 1)[-1]
            cands = [p for p in self.by_stem.get(stem, ()) if p == suffix or p.endswith("/" + suffix)]
        return _closest(cands, importer) if cands else None

    def resolve(self, st: ImportStatement) -> list[_Target]:
        glob = st.names == ("*",)
        if glob and st.kind != "static":
            files = self.by_package.get(st.module)
            if not files:
                suffix = st.module.replace(".", "/")
                files = [
                    p for ps in self.by_package.values() for p in ps if posixpath.dirname(p).endswith(suffix)
                ]
            return [_Target(p, ["*"], ["*"]) for p in files if p != st.path]
        parts = st.module.split(".")
        for k in range(len(parts), max(len(parts) - 3, 0), -1):
            dst = self.lookup(".".join(parts[:k]), st.path)
            if dst is None:
                continue
            member = parts[k:]
            if glob:
                return [_Target(dst, ["*"], ["*"])]
            name = member[-1] if member else parts[-1]
            return [_Target(dst, [name], [name])]
        return []


class _RustIndex:
    """Rust files by crate root (nearest directory holding ``lib.rs``/``main.rs``) and module path."""

    def __init__(self, rust_paths: Sequence[str]) -> None:
        self.files = set(rust_paths)
        self._roots: dict[str, str] = {}

    def crate_root(self, path: str) -> str:
        start = posixpath.dirname(path)
        d = start
        seen: list[str] = []
        while True:
            if d in self._roots:
                root = self._roots[d]
                break
            seen.append(d)
            if posixpath.join(d, "lib.rs") in self.files or posixpath.join(d, "main.rs") in self.files:
                root = d
                break
            if not d:
                root = start
                break
            d = posixpath.dirname(d)
        for s in seen:
            self._roots[s] = root
        return root

    def module_path(self, path: str, root: str) -> list[str]:
        rel = path[len(root) + 1 :] if root else path
        segs = rel[: -len(".rs")].split("/") if rel.endswith(".rs") else rel.split("/")
        if segs in (["lib"], ["main"]):
            return []
        return segs[:-1] if segs[-1] == "mod" else segs

    def module_file(self, root: str, segs: Sequence[str]) -> str | None:
        if not segs:
            for name in ("lib.rs", "main.rs"):
                if posixpath.join(root, name) in self.files:
                    return posixpath.join(root, name)
            return None
        base = posixpath.join(root, *segs)
        for cand in (base + ".rs", base + "/mod.rs"):
            if cand in self.files:
                return cand
        return None

    def resolve(self, st: ImportStatement) -> list[_Target]:
        if st.kind == "mod":
            directory, fname = posixpath.split(st.path)
            child_dir = (
                directory
                if fname in ("lib.rs", "main.rs", "mod.rs")
                else posixpath.join(directory, fname[: -len(".rs")])
            )
            for cand in (
                posixpath.join(child_dir, st.module + ".rs"),
                posixpath.join(child_dir, st.module, "mod.rs"),
            ):
                if cand in self.files:
                    return [_Target(cand, binding=st.binding)]
            return []
        glob = st.names == ("*",)
        segs = st.module.split("::")
        root = self.crate_root(st.path)
        cur = self.module_path(st.path, root)
        head = segs[0]
        if head == "crate":
            base, rest = [], segs[1:]
        elif head in ("self", "super"):
            base, rest = list(cur), list(segs)
            while rest and rest[0] in ("self", "super"):
                if rest.pop(0) == "super":
                    if not base:
                        return []
                    base.pop()
        elif self.module_file(root, [*cur, head]):  # 2018 uniform paths: a child module
            base, rest = list(cur), segs
        elif self.module_file(root, [head]):  # a top-level module of this crate
            base, rest = [], segs
        else:
            return []  # another crate
        full = base + rest
        for k in range(len(full), len(base) - 1, -1):
            dst = self.module_file(root, full[:k])
            if dst is not None:
                break
        else:
            return []
        items = full[k:]
        if glob:
            return [_Target(dst, ["*"], ["*"])]
        binding = st.binding if st.binding != "_" else None
        if not items:
            return [_Target(dst, binding=binding)]
        return [_Target(dst, [items[-1]], [binding or items[-1]])]


class _Resolver:
    """Per-language indexes over the file list, built on first use."""

    def __init__(self, files: Sequence[SourceFile], packages: Mapping[str, str]) -> None:
        self.by_lang: dict[str, list[str]] = {}
        self.go_mods: dict[str, str] = {}
        for f in files:
            lang = _syntax.file_language(f)
            if lang is not None:
                self.by_lang.setdefault(lang, []).append(f.path)
            elif posixpath.basename(f.path) == "go.mod":
                self.go_mods[f.path] = f.text
        self.packages = packages
        self._python: _PythonIndex | None = None
        self._js: set[str] | None = None
        self._go: _GoIndex | None = None
        self._rust: _RustIndex | None = None
        self._java: _JavaIndex | None = None

    def resolve(self, lang: str, st: ImportStatement) -> tuple[list[_Target], list[str]]:
        """Targets, plus the names that were not found (all of them when nothing resolved)."""
        if lang == "python":
            if self._python is None:
                self._python = _PythonIndex(self.by_lang.get("python", []))
            return self._python.resolve(st)
        targets: list[_Target] = []
        if lang in _syntax.JS_LANGS:
            if self._js is None:
                self._js = {p for lg in _syntax.JS_LANGS for p in self.by_lang.get(lg, [])}
            dst = _resolve_js(self._js, st.module, st.path)
            if dst is not None:
                targets = [_Target(dst, list(st.names), list(st.aliases), st.binding)]
        elif lang == "go":
            if self._go is None:
                self._go = _GoIndex(self.by_lang.get("go", []), self.go_mods)
            dsts = [p for p in self._go.resolve(st.module, st.path) if p != st.path]
            binding = st.binding
            if binding is None and not st.names and dsts:
                binding = self.packages.get(dsts[0]) or _go_default_name(st.module)
            if binding == "_":
                binding = None
            targets = [_Target(p, list(st.names), list(st.aliases), binding) for p in dsts]
        elif lang == "rust":
            if self._rust is None:
                self._rust = _RustIndex(self.by_lang.get("rust", []))
            targets = self._rust.resolve(st)
        elif lang == "java":
            if self._java is None:
                self._java = _JavaIndex(self.by_lang.get("java", []), self.packages)
            targets = self._java.resolve(st)
        return targets, ([] if targets else list(st.names))


def _go_default_name(module: str) -> str:
    """Go's conventional package name for an import path: the last segment, skipping ``/vN``."""
    segs = module.split("/")
    if len(segs) > 1 and re.fullmatch(r"v\d+", segs[-1]):
        return segs[-2]
    return segs[-1].split(".")[0]


def resolve_imports(files: Sequence[SourceFile], extracted: Mapping[str, FileImports]) -> ImportResult:
    """Resolve every file's :class:`ImportStatement` against ``files`` (see the module docstring).

    ``go.mod`` files among ``files`` (language None) supply Go module paths.  Edges to the importing
    file itself are dropped.  Output is sorted by (path, line).
    """
    packages = {path: fi.package for path, fi in extracted.items() if fi.package}
    langs = {f.path: _syntax.file_language(f) for f in files}
    resolver = _Resolver(files, packages)
    result = ImportResult(packages=dict(sorted(packages.items())))
    for path in sorted(extracted):
        lang = langs.get(path)
        if lang is None:
            continue
        for st in extracted[path].statements:
            targets, missing = resolver.resolve(lang, st)
            for t in targets:
                if t.dst == path:
                    continue
                result.edges.append(
                    ImportEdge(path, t.dst, tuple(t.names), st.line, st.module, tuple(t.aliases), t.binding)
                )
            if (not targets and st.kind != "mod") or missing:
                bound = [a for n, a in zip(st.names, st.aliases, strict=False) if n in missing and a != "*"]
                if not targets:
                    binding = st.binding
                    if binding is None and lang == "go" and not st.names:
                        binding = _go_default_name(st.module)
                    if binding and binding != "_":
                        bound.append(binding)
                result.unresolved.append(
                    UnresolvedImport(path, st.module, st.line, tuple(missing), tuple(bound))
                )
    return result


def analyze_imports(files: Sequence[SourceFile]) -> ImportResult:
    """Extract and resolve the imports of ``files`` in one call (parses each file)."""
    extracted = {f.path: extract_imports(f) for f in files if _syntax.file_language(f) is not None}
    return resolve_imports(files, extracted)
