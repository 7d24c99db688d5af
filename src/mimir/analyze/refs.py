"""References: calls, inheritance, type uses and identifier uses, from one tree-sitter query per file.

One query per language captures every interesting node in a single pass in C; Python then only
looks at the few fields of each capture.  Calls and inherits are kept as found.  Type, member and
identifier uses are far more numerous and mostly irrelevant (locals, builtins), so they are kept as
compact byte positions first and turned into :class:`Reference` objects only when their name is a
definition somewhere in the repository (:meth:`ReferenceScan.finish`), which needs every file's
definitions and hence a second step.  Macro invocations (Rust ``foo!()``) are not calls, but
``name(...)`` inside a macro's arguments is (tree-sitter leaves those as unparsed token trees).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import tree_sitter as ts

from lens.parse import treesitter
from lens.parse.model import Symbol
from mimir.analyze import _syntax
from mimir.analyze._syntax import Scopes, build_scopes, qualified_name
from mimir.analyze.model import Reference, RefKind, SourceFile

# Capture names: @call/@new callee expressions, @inherit base types, @impl Rust impl blocks,
# @type type names, @member ``a.b`` accesses, @ref plain identifiers, @skip subtrees whose
# identifiers are not uses (imports, macro names), @skipid identifiers that declare (parameters).
_PYTHON = """
(call function: (_) @call)
(class_definition superclasses: (argument_list [(identifier) (attribute)] @inherit))
(type [(identifier) (attribute)] @type)
(generic_type (identifier) @type)
(attribute) @member
(identifier) @ref
(import_statement) @skip
(import_from_statement) @skip
(future_import_statement) @skip
(keyword_argument name: (identifier) @skipid)
(parameters (identifier) @skipid)
(lambda_parameters (identifier) @skipid)
(default_parameter name: (identifier) @skipid)
(typed_parameter (identifier) @skipid)
(typed_default_parameter name: (identifier) @skipid)
"""

_JS_COMMON = """
(call_expression function: (_) @call)
(new_expression constructor: (_) @new)
(member_expression) @member
(identifier) @ref
(shorthand_property_identifier) @ref
(import_statement) @skip
(export_statement source: (_)) @skip
"""

_JAVASCRIPT = (
    _JS_COMMON
    + """
(class_heritage (_) @inherit)
(formal_parameters (identifier) @skipid)
"""
)

_TYPESCRIPT = (
    _JS_COMMON
    + """
(extends_clause value: (_) @inherit)
(implements_clause (_) @inherit)
(extends_type_clause type: (_) @inherit)
(type_identifier) @type
(required_parameter pattern: (identifier) @skipid)
(optional_parameter pattern: (identifier) @skipid)
"""
)

_GO = """
(call_expression function: (_) @call)
(field_declaration !name type: (_) @inherit)
(interface_type (type_elem . (_) @inherit .))
(type_identifier) @type
(selector_expression) @member
(identifier) @ref
(import_declaration) @skip
(package_clause) @skip
(parameter_declaration name: (identifier) @skipid)
"""

_RUST = """
(call_expression function: (_) @call)
(impl_item trait: (_)) @impl
(trait_item bounds: (trait_bounds (_) @inherit))
(type_identifier) @type
(field_expression) @member
(identifier) @ref
(use_declaration) @skip
(macro_invocation macro: (_) @skip)
(token_tree (identifier) @tcall . (token_tree))
(parameter pattern: (identifier) @skipid)
"""

_JAVA = """
(method_invocation) @call
(object_creation_expression type: (_) @new)
(superclass (_) @inherit)
(super_interfaces (type_list (_) @inherit))
(extends_interfaces (type_list (_) @inherit))
(type_identifier) @type
(field_access) @member
(identifier) @ref
(import_declaration) @skip
(package_declaration) @skip
(formal_parameter name: (identifier) @skipid)
"""

_QUERIES = {
    "python": _PYTHON,
    "javascript": _JAVASCRIPT,
    "typescript": _TYPESCRIPT,
    "tsx": _TYPESCRIPT,
    "go": _GO,
    "rust": _RUST,
    "java": _JAVA,
}

# Leaf node types that are names themselves.
_NAME_TYPES = frozenset(
    {
        "identifier",
        "type_identifier",
        "property_identifier",
        "private_property_identifier",
        "field_identifier",
        "shorthand_property_identifier",
    }
)
# Node type -> (name field, receiver fields) for ``receiver.name``-shaped nodes of every grammar.
_QUALIFIED: dict[str, tuple[str, tuple[str, ...]]] = {
    "attribute": ("attribute", ("object",)),
    "member_expression": ("property", ("object",)),
    "selector_expression": ("field", ("operand",)),
    "field_expression": ("field", ("value",)),
    "field_access": ("field", ("object",)),
    "method_invocation": ("name", ("object",)),
    "scoped_identifier": ("name", ("path", "scope")),
    "scoped_type_identifier": ("name", ("path",)),
    "nested_type_identifier": ("name", ("module",)),
    "qualified_type": ("name", ("package",)),
}
_WRAPPERS = frozenset({"generic_type", "generic_function", "pointer_type", "reference_type", "type"})
_SIMPLE_RECEIVER = re.compile(r"[\w$]+(?:(?:\.|::)[\w$]+)*")

_PENDING_KINDS: tuple[RefKind, ...] = ("ref", "type", "ref")  # codes 0, 1, 2 (2 = member access)
_NO_QUALIFIER = -1
_STRIDE = 7  # pending record: name start, name end, row, byte column, kind code, receiver start, end


def _callee(node: ts.Node | None) -> tuple[ts.Node, ts.Node | None] | None:
    """(name node, receiver node or None) of a callee/base/type expression, or None if it has no name."""
    for _ in range(4):
        if node is None:
            return None
        kind = node.type
        if kind in _NAME_TYPES:
            return node, None
        shape = _QUALIFIED.get(kind)
        if shape is not None:
            name = node.child_by_field_name(shape[0])
            if name is None and kind == "scoped_type_identifier":  # Java: children only
                name = node.named_children[-1] if node.named_children else None
            if name is None:
                return None
            receiver = None
            for fld in shape[1]:
                receiver = node.child_by_field_name(fld)
                if receiver is not None:
                    break
            if receiver is None and kind == "scoped_type_identifier" and len(node.named_children) > 1:
                receiver = node.named_children[0]
            return name, receiver
        if kind in _WRAPPERS:
            inner = node.child_by_field_name("function") or node.child_by_field_name("type")
            if inner is None:
                inner = node.child_by_field_name("name")
            if inner is None:
                inner = node.named_children[0] if node.named_children else None
            node = inner
            continue
        return None
    return None


def _qualifier(content: bytes, receiver: ts.Node | None) -> str | None:
    """Receiver text when it is a plain dotted name, "super" for ``super()``, else "*"."""
    if receiver is None:
        return None
    raw = content[receiver.start_byte : receiver.end_byte].decode("utf-8", "replace")
    if len(raw) <= 100 and _SIMPLE_RECEIVER.fullmatch(raw):
        return raw
    if raw.startswith("super("):
        return "super"
    return "*"


@dataclass
class ReferenceScan:
    """One file's references as found by :func:`scan_references`, before the name filter."""

    path: str
    content: bytes
    ascii: bool
    scopes: Scopes
    found: list[Reference]  # calls and inherits, final
    pending: array[int]  # identifier/type/member candidates, _STRIDE ints each
    def_positions: set[tuple[int, str]]  # (line, name) of definitions: their names are not uses

    def finish(self, known_names: AbstractSet[str] | None = None) -> list[Reference]:
        """All references, keeping identifier/type/member uses only for names in ``known_names``.

        ``known_names`` None keeps every use (handy for a single file); the repository analysis
        passes every definition name it found.
        """
        out = list(self.found)
        content, pending, scopes, path = self.content, self.pending, self.scopes, self.path
        symbols = scopes.symbols
        for i in range(0, len(pending), _STRIDE):
            start, end, row, byte_col, code, q_start, q_end = pending[i : i + _STRIDE]
            name = content[start:end].decode("utf-8", "replace")
            if known_names is not None and name not in known_names:
                continue
            line = row + 1
            if (line, name) in self.def_positions:
                continue
            qualifier = None
            if q_start >= 0:
                raw = content[q_start:q_end].decode("utf-8", "replace")
                qualifier = raw if len(raw) <= 100 and _SIMPLE_RECEIVER.fullmatch(raw) else "*"
            idx = scopes.at(line)
            enclosing = qualified_name(symbols[idx]) if idx >= 0 else None
            out.append(
                Reference(
                    path,
                    line,
                    byte_col + 1 if self.ascii else _char_col(content, start, byte_col),
                    name,
                    _PENDING_KINDS[code],
                    enclosing,
                    qualifier,
                )
            )
        out.sort(key=lambda r: (r.line, r.col, r.kind))
        return out


def scan_references(
    source: SourceFile,
    definitions: Sequence[Symbol],
    tree: ts.Tree | None = None,
    lang: str | None = None,
) -> ReferenceScan | None:
    """Run the reference query over one file (None for unsupported languages).

    ``definitions`` are the file's Lens symbols (for enclosing names); ``tree``/``lang`` let the
    caller share one parse with the other passes.
    """
    lang = lang or _syntax.file_language(source)
    if lang is None:
        return None
    content = source.text.encode("utf-8")
    if tree is None:
        tree = _syntax.parse(lang, content)
    caps = ts.QueryCursor(_syntax.query(lang, "refs", _QUERIES[lang])).captures(tree.root_node)
    scopes = build_scopes(definitions, source.text.count("\n") + 1)
    symbols = scopes.symbols
    path = source.path
    found: list[Reference] = []
    consumed: set[int] = set()
    is_ascii = content.isascii()

    def add(name_node: ts.Node, qualifier: str | None, kind: RefKind, owner: str | None = None) -> None:
        """Record a call/inherit; ``owner`` overrides the enclosing definition (Rust impl blocks)."""
        start = name_node.start_byte
        consumed.add(start)
        row, byte_col = name_node.start_point
        line = row + 1
        enclosing = owner
        if owner is None:
            idx = scopes.type_at(line) if kind == "inherit" else -1
            if idx < 0:
                idx = scopes.at(line)
            enclosing = qualified_name(symbols[idx]) if idx >= 0 else None
        col = byte_col + 1 if is_ascii else _char_col(content, start, byte_col)
        name = content[start : name_node.end_byte].decode("utf-8", "replace")
        found.append(Reference(path, line, col, name, kind, enclosing, qualifier))

    roles: tuple[tuple[str, RefKind], ...] = (("call", "call"), ("new", "call"), ("inherit", "inherit"))
    for cap, kind in roles:
        for node in caps.get(cap, ()):
            parts = _callee(node)
            if parts is not None and parts[0].start_byte not in consumed:
                add(parts[0], _qualifier(content, parts[1]), kind)
    for node in caps.get("tcall", ()):  # ``helper(x)`` inside a Rust macro's token tree
        end = node.end_byte
        if content[end : end + 1] == b"(":
            before = content[node.start_byte - 1 : node.start_byte]
            add(node, "*" if before in (b".", b":") else None, "call")
    for node in caps.get("impl", ()):  # Rust ``impl Trait for Type``: Type inherits Trait
        trait = _callee(node.child_by_field_name("trait"))
        typ = _callee(node.child_by_field_name("type"))
        if trait is not None:
            owner = content[typ[0].start_byte : typ[0].end_byte].decode("utf-8", "replace") if typ else None
            add(trait[0], _qualifier(content, trait[1]), "inherit", owner)

    skips = sorted((n.start_byte, n.end_byte) for n in caps.get("skip", ()))
    skip_starts = [s for s, _ in skips]
    skip_ends = [e for _, e in skips]

    def skipped(start: int) -> bool:
        i = bisect_right(skip_starts, start) - 1
        return i >= 0 and start < skip_ends[i]

    pending: array[int] = array("q")
    for node in caps.get("type", ()):
        parts = _callee(node)
        if parts is None or parts[0].start_byte in consumed or skipped(parts[0].start_byte):
            continue
        name_node, receiver = parts
        consumed.add(name_node.start_byte)
        row, col = name_node.start_point
        qs, qe = (receiver.start_byte, receiver.end_byte) if receiver is not None else (_NO_QUALIFIER, 0)
        pending.extend((name_node.start_byte, name_node.end_byte, row, col, 1, qs, qe))
    for node in caps.get("member", ()):
        member = node.child_by_field_name(_QUALIFIED[node.type][0])
        if member is None or member.start_byte in consumed or skipped(member.start_byte):
            continue
        receiver = node.child_by_field_name(_QUALIFIED[node.type][1][0])
        consumed.add(member.start_byte)
        row, col = member.start_point
        qs, qe = (receiver.start_byte, receiver.end_byte) if receiver is not None else (_NO_QUALIFIER, 0)
        pending.extend((member.start_byte, member.end_byte, row, col, 2, qs, qe))
    skip_ids = {n.start_byte for n in caps.get("skipid", ())}
    for node in caps.get("ref", ()):
        start = node.start_byte
        if start in consumed or start in skip_ids or skipped(start):
            continue
        row, col = node.start_point
        pending.extend((start, node.end_byte, row, col, 0, _NO_QUALIFIER, 0))

    def_positions = {(s.line, s.name) for s in definitions}
    return ReferenceScan(path, content, is_ascii, scopes, found, pending, def_positions)


def _char_col(content: bytes, start: int, byte_col: int) -> int:
    """1-based character column of byte offset ``start`` that is ``byte_col`` bytes into its line."""
    return len(content[start - byte_col : start].decode("utf-8", "replace")) + 1


def extract_references(
    source: SourceFile,
    definitions: Sequence[Symbol] | None = None,
    known_names: AbstractSet[str] | None = None,
    tree: ts.Tree | None = None,
) -> list[Reference]:
    """References of one file: :func:`scan_references` then :meth:`ReferenceScan.finish`.

    ``definitions`` default to Lens's for the file; ``known_names`` None keeps every identifier use.
    """
    lang = _syntax.file_language(source)
    if lang is None:
        return []
    if definitions is None:
        content = source.text.encode("utf-8")
        if tree is None:
            tree = _syntax.parse(lang, content)
        definitions = treesitter.extract(lang, content, tree).symbols
    scan = scan_references(source, definitions, tree, lang)
    return scan.finish(known_names) if scan is not None else []
