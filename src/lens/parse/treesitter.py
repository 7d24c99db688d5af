"""Symbol definitions from tree-sitter syntax trees for the languages we ship grammars for.

Definitions are found with one tags-style query per language, run in C, so Python only touches the
matched nodes.  Containers are then resolved from byte-range nesting of the matches (a stack walk
over sorted ranges) instead of ``Node.parent`` walks, which cost O(depth) each in tree-sitter.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import tree_sitter as ts

from lens.parse.model import Symbol

# Kinds whose members are "methods" and which header a chunk of their members.
CLASS_LIKE_KINDS = frozenset({"class", "struct", "interface", "trait", "enum", "impl"})

# Capture conventions shared by every query below:
#   @name          the node whose text is the symbol name (and whose line is Symbol.line)
#   @def.<kind>    the definition node (its span is the symbol span); <kind> may be a raw kind that
#                  _classify() refines (gotype, jsvar, jsconst, jsassign, javafield, rstatic)
#   @scope.impl    a container that is not itself a definition (a Rust impl block)
#   @recv @type @value @mods   extra nodes used by _classify()
#   @lead / @lead.def   a decorated definition and its inner def (only to extend chunks upward)

_PYTHON_QUERY = r"""
(function_definition name: (identifier) @name) @def.function
(class_definition name: (identifier) @name) @def.class
((module (expression_statement (assignment left: (identifier) @name) @def.constant))
  (#match? @name "^_*[A-Z][A-Z0-9_]*$"))
(decorated_definition definition: (_) @lead.def) @lead
"""

_GO_QUERY = r"""
(function_declaration name: (identifier) @name) @def.function
(method_declaration receiver: (parameter_list) @recv name: (field_identifier) @name) @def.method
(method_elem name: (field_identifier) @name) @def.method
(type_spec name: (type_identifier) @name type: (_) @type) @def.gotype
(type_alias name: (type_identifier) @name) @def.type
(source_file (const_declaration (const_spec name: (identifier) @name) @def.constant))
(source_file (var_declaration (var_spec name: (identifier) @name) @def.variable))
(source_file (var_declaration (var_spec_list (var_spec name: (identifier) @name) @def.variable)))
"""

_RUST_QUERY = r"""
(function_item name: (identifier) @name) @def.function
(function_signature_item name: (identifier) @name) @def.function
(struct_item name: (type_identifier) @name) @def.struct
(union_item name: (type_identifier) @name) @def.struct
(enum_item name: (type_identifier) @name) @def.enum
(trait_item name: (type_identifier) @name) @def.trait
(type_item name: (type_identifier) @name) @def.type
(mod_item name: (identifier) @name) @def.module
(macro_definition name: (identifier) @name) @def.macro
(const_item name: (identifier) @name) @def.constant
(static_item name: (identifier) @name) @def.rstatic
(impl_item type: (_) @name) @scope.impl
"""

_JAVA_QUERY = r"""
(class_declaration name: (identifier) @name) @def.class
(record_declaration name: (identifier) @name) @def.class
(enum_declaration name: (identifier) @name) @def.enum
(interface_declaration name: (identifier) @name) @def.interface
(annotation_type_declaration name: (identifier) @name) @def.interface
(method_declaration name: (identifier) @name) @def.method
(constructor_declaration name: (identifier) @name) @def.method
(compact_constructor_declaration name: (identifier) @name) @def.method
(field_declaration
  (modifiers) @mods declarator: (variable_declarator name: (identifier) @name)) @def.javafield
(constant_declaration declarator: (variable_declarator name: (identifier) @name)) @def.constant
"""

# Shared by JavaScript, TypeScript and TSX (TS grammars extend the JS one).
_JS_COMMON = r"""
(function_declaration name: (identifier) @name) @def.function
(generator_function_declaration name: (identifier) @name) @def.function
(class_declaration name: (_) @name) @def.class
(class name: (_) @name) @def.class
(method_definition name: (_) @name) @def.method
(variable_declarator
  name: (identifier) @name
  value: [(arrow_function) (function_expression) (generator_function) (class)] @value) @def.jsvar
(program (lexical_declaration "const"
  (variable_declarator name: (identifier) @name value: (_) @value) @def.jsconst))
(program (export_statement declaration: (lexical_declaration "const"
  (variable_declarator name: (identifier) @name value: (_) @value) @def.jsconst)))
(expression_statement
  (assignment_expression
    left: [(identifier) (member_expression)] @name
    right: [(arrow_function) (function_expression) (generator_function)]) @def.jsassign)
"""

_JS_QUERY = (
    _JS_COMMON
    + r"""
(field_definition
  property: [(property_identifier) (private_property_identifier)] @name
  value: [(arrow_function) (function_expression)]) @def.method
"""
)

_TS_QUERY = (
    _JS_COMMON
    + r"""
(public_field_definition
  name: [(property_identifier) (private_property_identifier)] @name
  value: [(arrow_function) (function_expression)]) @def.method
(abstract_class_declaration name: (_) @name) @def.class
(function_signature name: (identifier) @name) @def.function
(method_signature name: (_) @name) @def.method
(abstract_method_signature name: (_) @name) @def.method
(interface_declaration name: (_) @name) @def.interface
(enum_declaration name: (_) @name) @def.enum
(type_alias_declaration name: (_) @name) @def.type
(internal_module name: (_) @name) @def.module
(module name: (_) @name) @def.module
(internal_module body: (statement_block (lexical_declaration "const"
  (variable_declarator name: (identifier) @name value: (_) @value) @def.jsconst)))
(internal_module body: (statement_block (export_statement declaration: (lexical_declaration "const"
  (variable_declarator name: (identifier) @name value: (_) @value) @def.jsconst))))
"""
)


def _grammar(lang: str) -> object:
    """The grammar's raw TSLanguage pointer; imported lazily so unused grammars cost nothing."""
    if lang == "python":
        import tree_sitter_python

        return tree_sitter_python.language()
    if lang == "javascript":
        import tree_sitter_javascript

        return tree_sitter_javascript.language()
    if lang in ("typescript", "tsx"):
        import tree_sitter_typescript

        if lang == "tsx":
            return tree_sitter_typescript.language_tsx()
        return tree_sitter_typescript.language_typescript()
    if lang == "go":
        import tree_sitter_go

        return tree_sitter_go.language()
    if lang == "rust":
        import tree_sitter_rust

        return tree_sitter_rust.language()
    if lang == "java":
        import tree_sitter_java

        return tree_sitter_java.language()
    raise KeyError(lang)


_QUERIES: dict[str, str] = {
    "python": _PYTHON_QUERY,
    "javascript": _JS_QUERY,
    "typescript": _TS_QUERY,
    "tsx": _TS_QUERY,
    "go": _GO_QUERY,
    "rust": _RUST_QUERY,
    "java": _JAVA_QUERY,
}

LANGUAGES: frozenset[str] = frozenset(_QUERIES)

# Languages where every definition below the top level sits inside a top-level node whose text has
# one of these words: Go's nested definitions are type specs (``type``) and interface methods
# (``interface``); functions, methods, constants and variables are top-level only. For them the
# query walks only the first two levels of the tree, plus the whole of the top-level nodes that
# have such a word or a syntax error, and finds exactly what a walk of the whole tree finds. The
# query cursor's walk costs about as much per node as parsing does, and most nodes are in bodies.
_DEEP_TRIGGERS: dict[str, re.Pattern[bytes]] = {"go": re.compile(rb"\b(?:type|interface)\b")}


@dataclass(frozen=True)
class _LangSpec:
    language: ts.Language
    query: ts.Query
    # pattern index -> what extract() needs to know about the pattern (filled as patterns match)
    roles: dict[int, tuple[str, str, bool]] = field(default_factory=dict)


_SPECS: dict[str, _LangSpec] = {}
_SPECS_LOCK = threading.Lock()
_LOCAL = threading.local()


def _spec(lang: str) -> _LangSpec:
    """Language and compiled query, built once per process (queries are immutable and shareable)."""
    spec = _SPECS.get(lang)
    if spec is None:
        with _SPECS_LOCK:
            spec = _SPECS.get(lang)
            if spec is None:
                language = ts.Language(_grammar(lang))
                spec = _LangSpec(language, ts.Query(language, _QUERIES[lang]))
                _SPECS[lang] = spec
    return spec


def _parser(lang: str) -> ts.Parser:
    """A parser for ``lang`` owned by the calling thread: tree-sitter parsers are not thread-safe."""
    parsers: dict[str, ts.Parser] | None = getattr(_LOCAL, "parsers", None)
    if parsers is None:
        parsers = {}
        _LOCAL.parsers = parsers
    parser = parsers.get(lang)
    if parser is None:
        parser = ts.Parser(_spec(lang).language)
        parsers[lang] = parser
    return parser


def language(lang: str) -> ts.Language:
    """The cached tree-sitter Language for ``lang``, for callers compiling their own queries (Mimir)."""
    return _spec(lang).language


def parse(lang: str, content: bytes) -> ts.Tree:
    """Parse with this thread's cached parser, so several passes (e.g. Mimir's) can share one tree."""
    return _parser(lang).parse(content)


def supports(lang: str | None) -> bool:
    """Whether ``lang`` (a canonical id) has a tree-sitter grammar here."""
    return lang in LANGUAGES


@dataclass(frozen=True)
class Extraction:
    """Symbols plus chunking hints that are not definitions themselves."""

    symbols: list[Symbol]
    # Containers that are not definitions (Rust ``impl X`` blocks), kind "impl"; chunks group by them.
    scopes: list[Symbol] = field(default_factory=list)
    # Definition start line -> first line of its decorators (Python), so chunks can include them.
    leads: dict[int, int] = field(default_factory=dict)


class _Def(NamedTuple):  # a tuple: hundreds of thousands are made per large repository
    start_byte: int
    end_byte: int
    kind: str
    name: str
    container: str | None  # set when the syntax names it directly (Go receiver, JS prototype)
    start_line: int
    end_line: int
    line: int
    is_scope: bool = False


def _text(node: ts.Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", "replace")


def _end_line(node: ts.Node) -> int:
    """1-based last line; a node ending at column 0 ends on the previous line."""
    row, col = node.end_point
    if col == 0 and row > node.start_point[0]:
        return int(row)
    return int(row) + 1


def _type_name(node: ts.Node | None) -> str:
    """The bare type name in ``*T``, ``T[X]``, ``&'a mut T``, ``a::T<U>`` and similar."""
    for _ in range(8):
        if node is None:
            return ""
        kind = node.type
        if kind in ("type_identifier", "identifier", "primitive_type"):
            return _text(node)
        if kind in ("generic_type", "reference_type", "pointer_type", "parenthesized_type"):
            inner = node.child_by_field_name("type")
            node = inner if inner is not None else (node.named_children[-1] if node.named_children else None)
        elif kind == "scoped_type_identifier":
            node = node.child_by_field_name("name")
        else:
            return _text(node)
    return _text(node)


_GO_TYPE_KINDS = {"struct_type": "struct", "interface_type": "interface"}
_JS_FUNCTION_VALUES = frozenset({"arrow_function", "function_expression", "generator_function"})
_SIMPLE_OBJECT = re.compile(r"^[\w$]+(?:\.[\w$]+)*$")


def _classify(
    raw: str, caps: dict[str, list[ts.Node]], def_node: ts.Node
) -> tuple[str, str, str | None] | None:
    """Refine a raw capture kind into (kind, name, container hint), or None to drop the match."""
    name_node = caps["name"][0]
    if raw == "gotype":
        type_node = caps.get("type")
        kind = _GO_TYPE_KINDS.get(type_node[0].type, "type") if type_node else "type"
        return kind, _text(name_node), None
    if raw == "method" and "recv" in caps:  # Go method: the receiver type is the container
        params = caps["recv"][0].named_children
        recv = _type_name(params[0].child_by_field_name("type")) if params else ""
        return "method", _text(name_node), recv or None
    if raw == "jsvar":
        value = caps["value"][0]
        return ("class" if value.type == "class" else "function"), _text(name_node), None
    if raw == "jsconst":
        value = caps["value"][0]
        if value.type in _JS_FUNCTION_VALUES or value.type == "class":
            return None  # reported by the jsvar pattern
        if value.type == "call_expression" and _text(value.child_by_field_name("function")) == "require":
            return None  # an import, not a constant
        return "constant", _text(name_node), None
    if raw == "jsassign":
        if name_node.type == "identifier":
            return "function", _text(name_node), None
        prop = _text(name_node.child_by_field_name("property"))
        obj = _text(name_node.child_by_field_name("object"))
        if not prop or prop == "exports" or not _SIMPLE_OBJECT.match(obj):
            return None
        if obj in ("exports", "module.exports"):
            return "function", prop, None
        if obj == "this":
            return "method", prop, None
        if obj.endswith(".prototype"):
            obj = obj[: -len(".prototype")]
        return "method", prop, obj
    if raw == "javafield":
        mods = {c.type for c in caps["mods"][0].children}
        if "static" in mods and "final" in mods:
            return "constant", _text(name_node), None
        return None
    if raw == "rstatic":
        is_mut = any(c.type == "mutable_specifier" for c in def_node.children)
        return ("variable" if is_mut else "constant"), _text(name_node), None
    if raw == "impl":
        return "impl", _type_name(name_node), None
    name = _text(name_node)
    if name_node.type == "computed_property_name":
        return None
    if name_node.type == "string":  # TS ``declare module "foo"``
        name = name.strip("\"'`")
    return raw, name, None


def extract(lang: str, content: bytes, tree: ts.Tree | None = None) -> Extraction:
    """Definitions in ``content`` (source in ``lang``); tolerant of syntax errors like tree-sitter.

    ``tree`` is ``content`` already parsed with :func:`parse`, to avoid parsing twice.
    """
    spec = _spec(lang)
    if tree is None:
        tree = _parser(lang).parse(content)
    root = tree.root_node
    trigger = _DEEP_TRIGGERS.get(lang)
    if trigger is None:
        matches = ts.QueryCursor(spec.query).matches(root)
    else:
        cursor = ts.QueryCursor(spec.query)
        cursor.set_max_start_depth(1)
        matches = cursor.matches(root)
        for node in root.children:
            if node.has_error or trigger.search(content, node.start_byte, node.end_byte):
                matches.extend(ts.QueryCursor(spec.query).matches(node))  # duplicates are skipped below

    defs: list[_Def] = []
    leads: dict[int, int] = {}
    seen: set[tuple[int, int, str]] = set()
    roles = spec.roles
    for pattern, caps in matches:
        role = roles.get(pattern)
        if role is None:
            role = roles[pattern] = _role(caps)
        cap_name, raw, is_scope = role
        if cap_name == "lead":
            leads[caps["lead.def"][0].start_point[0] + 1] = caps["lead"][0].start_point[0] + 1
            continue
        if not cap_name or "name" not in caps:
            continue
        def_node = caps[cap_name][0]
        classified = _classify(raw, caps, def_node)
        if classified is None or not classified[1]:
            continue
        kind, name, container = classified
        name_node = caps["name"][0]
        start_byte = def_node.start_byte
        key = (start_byte, name_node.start_byte, kind)
        if key in seen:
            continue
        seen.add(key)
        start_row = def_node.start_point[0]
        end_row, end_col = def_node.end_point
        defs.append(
            _Def(
                start_byte,
                def_node.end_byte,
                kind,
                name,
                container,
                start_row + 1,
                end_row if end_col == 0 and end_row > start_row else end_row + 1,  # as _end_line()
                name_node.start_point[0] + 1,
                is_scope,
            )
        )

    return _nest(defs, leads)


def _role(caps: dict[str, list[ts.Node]]) -> tuple[str, str, bool]:
    """(capture of the definition node, raw kind, is a scope) for a pattern, from one of its matches.

    ``("lead", "", False)`` for a decorator lead, ``("", "", False)`` for a pattern without either.
    """
    if "lead" in caps:
        return "lead", "", False
    for cap_name in caps:
        if cap_name.startswith("def."):
            return cap_name, cap_name[4:], False
        if cap_name.startswith("scope."):
            return cap_name, cap_name[6:], True
    return "", "", False


def _nest(defs: list[_Def], leads: dict[int, int]) -> Extraction:
    """Resolve containers and method-ness from range nesting, in source order."""
    defs.sort(key=lambda d: (d.start_byte, -d.end_byte))
    stack: list[_Def] = []
    symbols: list[Symbol] = []
    scopes: list[Symbol] = []
    for d in defs:
        while stack:
            top = stack[-1]
            same = top.start_byte == d.start_byte and top.end_byte == d.end_byte
            if not same and top.start_byte <= d.start_byte and d.end_byte <= top.end_byte:
                break
            stack.pop()  # ended before d, or a sibling sharing d's node (``const a, b = ...``)
        parent = stack[-1] if stack else None
        container = d.container
        kind = d.kind
        if container is None and parent is not None:
            container = parent.name
            if kind == "function" and parent.kind in CLASS_LIKE_KINDS:
                kind = "method"
        sym = Symbol(d.name, kind, container, d.start_line, d.end_line, d.line)
        (scopes if d.is_scope else symbols).append(sym)
        stack.append(d)
    return Extraction(symbols=symbols, scopes=scopes, leads=leads)


def extract_symbols(lang: str, content: bytes) -> list[Symbol]:
    """Just the symbols of :func:`extract`."""
    return extract(lang, content).symbols
