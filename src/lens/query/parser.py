"""Parse the Lens query language into a :class:`lens.query.ast.Query`.

A hand-written lexer feeds a recursive-descent parser, so every error can name
the exact 0-based position of the problem and no parser-generator dependency is
needed. Grammar (after filters are lifted out, see below)::

    query    := or_expr
    or_expr  := and_expr ("OR" and_expr)*
    and_expr := unary (["AND"] unary)*          # juxtaposition is AND
    unary    := ("NOT" | "-")* primary
    primary  := WORD | "quoted" | /regex/ | "(" or_expr ")"

Filters (``key:value``) are lexed as single tokens. They are global: at the top
level they are removed from the token stream and collected into
:class:`~lens.query.ast.Filters`; inside parentheses, or directly next to
``OR``/``AND``/``NOT``, they are an error because their meaning would be
ambiguous. ``docs/query-syntax.md`` is the user-facing description; the
lexing rules that keep ordinary code searchable (``foo-bar``, ``--flag``,
``print(x)``, ``std::vector``, ``http://x``, ``/usr/bin``) are documented on
the helpers below.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Literal as TypingLiteral
from typing import TypeVar

import re2

from lens.discover.language import LANGUAGE_ALIASES, normalize_language
from lens.errors import QuerySyntaxError
from lens.query.ast import (
    And,
    CaseMode,
    Filters,
    Node,
    Not,
    Or,
    Pattern,
    PatternKind,
    Query,
    Regex,
    ResultType,
    Term,
    positive_terms,
)

__all__ = ["MAX_NESTING", "format_pattern", "format_query", "parse_query"]

_T = TypeVar("_T")

#: Deepest allowed parenthesis nesting; bounds recursion so no input can overflow the stack.
MAX_NESTING = 64

_TokenKind = TypingLiteral["word", "quoted", "regex", "lparen", "rparen", "or", "and", "not", "neg", "filter"]
_KEYWORDS: dict[str, _TokenKind] = {"OR": "or", "AND": "and", "NOT": "not"}

# Canonical filter key for every accepted spelling (keys are case-insensitive).
_FILTER_KEYS = {
    "repo": "repo",
    "path": "path",
    "file": "path",
    "lang": "lang",
    "language": "lang",
    "sym": "sym",
    "symbol": "sym",
    "case": "case",
    "type": "type",
}
_NEGATABLE_KEYS = frozenset({"path", "lang"})
_KNOWN_KEYS_TEXT = "repo:, path:, file:, lang:, sym:, case:, type:"
_FILTER_KEY_RE = re.compile(r"[A-Za-z]+:")
_CASE_VALUES: dict[str, CaseMode] = {"yes": "yes", "no": "no", "auto": "auto"}
_TYPE_VALUES: dict[str, ResultType] = {"line": "line", "file": "file", "path": "file"}
# A '-' followed by one of these is literal text, not negation: `--flag`, `->x`, `-=`, `-1`, `-)`.
_NOT_NEGATION_FOLLOWERS = frozenset("-)>=0123456789")
_DEFAULT_KIND: dict[str, PatternKind] = {"repo": "substring", "path": "substring", "sym": "exact"}


@dataclass(frozen=True)
class _FilterValue:
    """One lexed ``key:value``; ``form`` says how the value was written."""

    key: str  # canonical key
    spelled: str  # the key as typed, for messages
    negated: bool
    text: str
    form: TypingLiteral["bare", "quoted", "regex"]
    value_pos: int


@dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    pos: int
    text: str = ""
    filter: _FilterValue | None = None


def _err(message: str, position: int) -> QuerySyntaxError:
    return QuerySyntaxError(message, position)


# --------------------------------------------------------------------------- regex validation

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported to the user, not to stderr


def _validate_regex(pattern: str, pos: int, *, per_line: bool) -> None:
    """Compile with RE2 (linear time, no backtracking) so a bad regex fails at parse time, not mid-search."""
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except Exception as exc:  # re2.error, or encoding errors for odd input
        raw = exc.args[0] if exc.args else exc
        detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise _err(f"invalid regex /{pattern}/: {detail}", pos) from None
    if per_line and _matches_newline_literally(pattern):
        raise _err(
            f"regex /{pattern}/ contains a line break (\\n), but matching is per line "
            "so it could never match; search for the lines separately",
            pos,
        )


def _matches_newline_literally(pattern: str) -> bool:
    r"""True if the (already valid) RE2 pattern spells a newline: ``\n``, ``\x0a``, ``\x{a}``, ``\012``.

    Classes such as ``\s``, ``.`` or ``[^a]`` can match a newline but only by accident, so they
    are allowed; so is ``\n`` inside a negated class (``[^\n]``), a common "rest of line" idiom.
    """
    n = len(pattern)
    i = 0
    in_class = negated_class = False
    while i < n:
        c = pattern[i]
        if c == "\n":
            return True
        if c == "\\" and i + 1 < n:
            d = pattern[i + 1]
            if d == "Q":  # \Q...\E is literal text; a raw newline inside was caught above
                end = pattern.find("\\E", i + 2)
                if end < 0:
                    return "\n" in pattern[i + 2 :]
                i = end + 2
                continue
            value, length = _escape_value(pattern, i)
            if value == 10 and not (in_class and negated_class):
                return True
            i += length
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                i = end + 2 if end >= 0 else n
                continue
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            i += 1
            negated_class = i < n and pattern[i] == "^"
            if negated_class:
                i += 1
            if i < n and pattern[i] == "]":  # a leading ']' is literal
                i += 1
            continue
        i += 1
    return False


def _escape_value(pattern: str, i: int) -> tuple[int | None, int]:
    """The code point an escape at ``pattern[i]`` (a backslash) denotes, if it is a character escape."""
    d = pattern[i + 1]
    if d == "n":
        return 10, 2
    if d == "x":
        if pattern.startswith("{", i + 2):
            end = pattern.find("}", i + 3)
            if end < 0:
                return None, 2
            digits = pattern[i + 3 : end]
            length = end + 1 - i
        else:
            digits = pattern[i + 2 : i + 4]
            length = 2 + len(digits)
        try:
            return int(digits, 16), length
        except ValueError:
            return None, length
    if d in "01234567":
        j = i + 1
        while j < len(pattern) and j < i + 4 and pattern[j] in "01234567":
            j += 1
        return int(pattern[i + 1 : j], 8), j - i
    return None, 2


# --------------------------------------------------------------------------- lexer


class _Lexer:
    """Splits the query into tokens; decides what is an operator and what is literal code."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.tokens: list[_Token] = []

    def run(self) -> list[_Token]:
        text, n = self.text, self.n
        i = 0
        after_neg = False
        while i < n:
            c = text[i]
            if c.isspace():
                i += 1
                after_neg = False
                continue
            if c == "(":
                self.tokens.append(_Token("lparen", i))
                i += 1
            elif c == ")":
                self.tokens.append(_Token("rparen", i))
                i += 1
            elif c == '"':
                start = i
                value, i = self._quoted(i)
                self.tokens.append(_Token("quoted", start, value))
            elif c == "/":
                i = self._slash_term(i)
            elif c == "-" and self._negates(i):
                filter_end = self._filter(i + 1, negated=True, start=i)
                if filter_end is None:
                    self.tokens.append(_Token("neg", i))
                    i += 1
                    after_neg = True
                    continue
                i = filter_end
            else:
                filter_end = self._filter(i, negated=False, start=i)
                if filter_end is not None:
                    i = filter_end
                else:
                    end = self._word_end(i)
                    word = text[i:end]
                    keyword = None if after_neg else _KEYWORDS.get(word)
                    self.tokens.append(_Token(keyword, i) if keyword else _Token("word", i, word))
                    i = end
            after_neg = False
        return self.tokens

    def _negates(self, i: int) -> bool:
        """``-x`` negates only when the ``-`` starts a token and is followed by something negatable."""
        j = i + 1
        return j < self.n and not self.text[j].isspace() and self.text[j] not in _NOT_NEGATION_FOLLOWERS

    def _word_end(self, i: int) -> int:
        """End of a bare word: the next whitespace, or a ``)`` that has no ``(`` earlier in the word.

        Parentheses balanced inside a word are literal, so ``print(x)`` and ``foo()`` are
        searchable without quotes while ``(a b)`` still groups.
        """
        text, n = self.text, self.n
        depth = 0
        j = i
        while j < n:
            c = text[j]
            if c.isspace():
                break
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            j += 1
        return j

    def _quoted(self, i: int) -> tuple[str, int]:
        r"""A ``"..."`` string at ``i``; only ``\"`` and ``\\`` are escapes, other backslashes stay."""
        text, n = self.text, self.n
        out: list[str] = []
        j = i + 1
        while j < n:
            c = text[j]
            if c == "\\" and j + 1 < n and text[j + 1] in '"\\':
                out.append(text[j + 1])
                j += 2
            elif c == '"':
                return "".join(out), j + 1
            else:
                out.append(c)
                j += 1
        raise _err('unterminated quoted string: add the closing "', i)

    def _closing_slash(self, i: int) -> int:
        """Index of the first unescaped ``/`` after ``i``, or -1."""
        text, n = self.text, self.n
        j = i + 1
        while j < n:
            c = text[j]
            if c == "\\":
                j += 2
                continue
            if c == "/":
                return j
            j += 1
        return -1

    def _at_boundary(self, j: int) -> bool:
        return j >= self.n or self.text[j].isspace() or self.text[j] == ")"

    def _slash_term(self, i: int) -> int:
        """``/re/`` is a regex when the closing ``/`` ends the token; ``/usr/bin`` and ``//`` are literal."""
        close = self._closing_slash(i)
        if close < 0:
            raise _err(
                "unterminated regex: add the closing / (or quote the text to search for a literal /)", i
            )
        if close == i + 1 or not self._at_boundary(close + 1):
            end = self._word_end(i)
            self.tokens.append(_Token("word", i, self.text[i:end]))
            return end
        pattern = _unescape_slashes(self.text[i + 1 : close])
        _validate_regex(pattern, i, per_line=True)
        self.tokens.append(_Token("regex", i, pattern))
        return close + 1

    def _filter(self, i: int, *, negated: bool, start: int) -> int | None:
        """Lex ``key:value`` at ``i``; None when the text is not a filter and so stays literal.

        It is a filter only if the key is ASCII letters and the value is non-empty and does
        not start with ``:`` or ``//``: so ``else:``, ``std::vector`` and ``http://x`` are
        literal text, while an unknown ``foo:bar`` is an error (quote it to search for it).
        """
        text, n = self.text, self.n
        m = _FILTER_KEY_RE.match(text, i)
        if m is None:
            return None
        v = m.end()
        if v >= n or text[v].isspace() or text[v] in ":)" or text.startswith("//", v):
            return None
        spelled = m.group()[:-1]
        key = _FILTER_KEYS.get(spelled.lower())
        if key is None:
            word = text[start : self._word_end(v)].lstrip("-")
            example = _quote(word) if len(word) <= 60 and '"' not in word else '"..."'
            raise _err(
                f"unknown filter '{spelled}:' (known: {_KNOWN_KEYS_TEXT}); "
                f"to search for the text itself, quote it: {example}",
                start,
            )
        if negated and key not in _NEGATABLE_KEYS:
            raise _err(f"'-{spelled}:' is not supported: only path:, file: and lang: can be negated", start)
        form: TypingLiteral["bare", "quoted", "regex"]
        if text[v] == '"':
            value, end = self._quoted(v)
            form = "quoted"
        else:
            close = self._closing_slash(v) if text[v] == "/" else -1
            if close > v + 1 and self._at_boundary(close + 1):
                value, end, form = _unescape_slashes(text[v + 1 : close]), close + 1, "regex"
            else:  # `path:/src/main` or `path:/src`: a leading slash, not a regex
                end = self._word_end(v)
                value, form = text[v:end], "bare"
        fv = _FilterValue(key, spelled, negated, value, form, v)
        self.tokens.append(_Token("filter", start, filter=fv))
        return end


def _unescape_slashes(raw: str) -> str:
    r"""``\/`` -> ``/``: same meaning in RE2, and engines extracting literals see a plain slash."""
    return raw.replace("\\/", "/")


# --------------------------------------------------------------------------- filters


class _FilterCollector:
    """Accumulates filters: repeated repo/path/lang/sym values are OR-ed; case/type must agree."""

    def __init__(self) -> None:
        self.lists: dict[str, list[Pattern]] = {"repos": [], "paths": [], "exclude_paths": [], "syms": []}
        self.langs: list[str] = []
        self.exclude_langs: list[str] = []
        self.case: tuple[CaseMode, int] | None = None
        self.type: tuple[ResultType, int] | None = None

    def add(self, tok: _Token) -> None:
        f = tok.filter
        assert f is not None
        if not f.text:
            raise _err(f"filter '{f.spelled}:' needs a value", tok.pos)
        if f.key in ("repo", "path", "sym"):
            pattern = self._pattern(f)
            name = {"repo": "repos", "path": "exclude_paths" if f.negated else "paths", "sym": "syms"}[f.key]
            _append_unique(self.lists[name], pattern)
        elif f.key == "lang":
            lang = self._language(f)
            _append_unique(self.exclude_langs if f.negated else self.langs, lang)
        elif f.key == "case":
            case = _CASE_VALUES.get(self._plain(f).lower())
            if case is None:
                raise _err(f"case: must be yes, no or auto, not '{f.text}'", f.value_pos)
            self.case = self._single("case", self.case, case, tok.pos)
        else:
            rtype = _TYPE_VALUES.get(self._plain(f).lower())
            if rtype is None:
                raise _err(f"type: must be line or file (or path), not '{f.text}'", f.value_pos)
            self.type = self._single("type", self.type, rtype, tok.pos)

    @staticmethod
    def _pattern(f: _FilterValue) -> Pattern:
        if f.form == "regex":
            _validate_regex(f.text, f.value_pos, per_line=False)
            return Pattern("regex", f.text)
        if "*" in f.text or "?" in f.text:
            return Pattern("glob", f.text)
        return Pattern(_DEFAULT_KIND[f.key], f.text)

    @staticmethod
    def _plain(f: _FilterValue) -> str:
        if f.form == "regex":
            raise _err(f"'{f.spelled}:' takes a plain value, not a regex", f.value_pos)
        return f.text

    def _language(self, f: _FilterValue) -> str:
        value = self._plain(f)
        lang = normalize_language(value)
        if lang is None:
            names = list(LANGUAGE_ALIASES)
            aliases = [a for canon, al in LANGUAGE_ALIASES.items() for a in (canon, *al)]
            close = difflib.get_close_matches(value.lower(), aliases, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise _err(
                f"unknown language '{value}' for lang: ({hint}known: {', '.join(names[:12])}, ...)",
                f.value_pos,
            )
        return lang

    @staticmethod
    def _single(key: str, current: tuple[_T, int] | None, value: _T, pos: int) -> tuple[_T, int]:
        if current is not None and current[0] != value:
            raise _err(f"conflicting {key}: filters ('{current[0]}' and '{value}')", pos)
        return (value, pos) if current is None else current

    def build(self) -> Filters:
        return Filters(
            repos=tuple(self.lists["repos"]),
            paths=tuple(self.lists["paths"]),
            exclude_paths=tuple(self.lists["exclude_paths"]),
            langs=tuple(self.langs),
            exclude_langs=tuple(self.exclude_langs),
            syms=tuple(self.lists["syms"]),
            case=self.case[0] if self.case else "auto",
            type=self.type[0] if self.type else "line",
        )


def _append_unique(items: list[_T], item: _T) -> None:
    if item not in items:
        items.append(item)


def _lift_filters(tokens: list[_Token]) -> tuple[list[_Token], _FilterCollector]:
    """Remove top-level filters from the token stream; reject those whose scope would be ambiguous."""
    collector = _FilterCollector()
    kept: list[_Token] = []
    depth = 0
    for idx, tok in enumerate(tokens):
        if tok.kind == "lparen":
            depth += 1
            if depth > MAX_NESTING:
                raise _err(f"parentheses nested too deeply (at most {MAX_NESTING} levels)", tok.pos)
        elif tok.kind == "rparen":
            if depth == 0:
                raise _err("unbalanced ')': no matching '('", tok.pos)
            depth -= 1
        elif tok.kind == "filter":
            prev = tokens[idx - 1].kind if idx > 0 else None
            nxt = tokens[idx + 1].kind if idx + 1 < len(tokens) else None
            if depth > 0 or prev in ("or", "and", "not", "neg") or nxt in ("or", "and"):
                raise _err(
                    "filters cannot be inside parentheses or OR/AND/NOT: they apply to the whole "
                    "query (repeat a filter to OR its values, e.g. lang:go lang:rust)",
                    tok.pos,
                )
            collector.add(tok)
            continue
        kept.append(tok)
    return kept, collector


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the filter-free token list; nesting is bounded by MAX_NESTING."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.k = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.k] if self.k < len(self.tokens) else None

    def _next(self) -> _Token:
        tok = self.tokens[self.k]
        self.k += 1
        return tok

    def parse(self) -> Node | None:
        if not self.tokens:
            return None
        node = self._or_expr()
        extra = self._peek()
        if extra is not None:  # only an unmatched ')' can stop the top level early
            raise _err("unbalanced ')': no matching '('", extra.pos)
        return node

    def _or_expr(self) -> Node:
        children = [self._and_expr()]
        while (tok := self._peek()) is not None and tok.kind == "or":
            self._next()
            nxt = self._peek()
            if nxt is None or nxt.kind in ("or", "and", "rparen"):
                raise _dangling(tok)
            children.append(self._and_expr())
        return _combine(Or, children)

    def _and_expr(self) -> Node:
        first = self._peek()
        if first is not None and first.kind in ("or", "and"):
            raise _dangling(first)
        children = [self._unary()]
        while (tok := self._peek()) is not None and tok.kind not in ("or", "rparen"):
            if tok.kind == "and":
                self._next()
                nxt = self._peek()
                if nxt is None or nxt.kind in ("or", "and", "rparen"):
                    raise _dangling(tok)
            children.append(self._unary())
        return _combine(And, children)

    def _unary(self) -> Node:
        negations = 0
        tok = self._next()
        while tok.kind in ("not", "neg"):
            nxt = self._peek()
            if nxt is None or nxt.kind in ("or", "and", "rparen"):
                raise _dangling(tok)
            negations += 1
            tok = self._next()
        node = self._primary(tok)
        if negations % 2:  # NOT NOT x is x
            return node.child if isinstance(node, Not) else Not(node)
        return node

    def _primary(self, tok: _Token) -> Node:
        if tok.kind == "word":
            return Term(tok.text, tok.pos)
        if tok.kind == "quoted":
            if not tok.text:
                raise _err('empty quoted string ""', tok.pos)
            if "\n" in tok.text:
                raise _err("a quoted term cannot contain a line break: matching is per line", tok.pos)
            return Term(tok.text, tok.pos, quoted=True)
        if tok.kind == "regex":
            return Regex(tok.text, tok.pos)
        if tok.kind == "lparen":
            nxt = self._peek()
            if nxt is None:
                raise _err("unbalanced '(': missing ')'", tok.pos)
            if nxt.kind == "rparen":
                raise _err("empty parentheses ()", tok.pos)
            inner = self._or_expr()
            close = self._peek()
            if close is None or close.kind != "rparen":
                raise _err("unbalanced '(': missing ')'", tok.pos)
            self._next()
            return inner
        if tok.kind == "rparen":
            raise _err("unbalanced ')': no matching '('", tok.pos)
        raise _dangling(tok)


def _dangling(tok: _Token) -> QuerySyntaxError:
    if tok.kind in ("not", "neg"):
        name = "NOT" if tok.kind == "not" else "-"
        return _err(f"dangling operator '{name}': it must be followed by a term", tok.pos)
    name = tok.kind.upper()
    return _err(f"dangling operator '{name}': it needs a term on each side", tok.pos)


def _combine(kind: type[And] | type[Or], children: list[Node]) -> Node:
    """One child stays bare; nested And/And (Or/Or) are flattened so equal queries compare equal."""
    if len(children) == 1:
        return children[0]
    flat: list[Node] = []
    for child in children:
        if isinstance(child, kind):
            flat.extend(child.children)
        else:
            flat.append(child)
    return kind(tuple(flat))


# --------------------------------------------------------------------------- entry point


def parse_query(text: str, *, max_length: int = 4096) -> Query:
    """Parse ``text``; raises only :class:`~lens.errors.QuerySyntaxError` (with a 0-based position).

    Every accepted query can produce results: it has a positive term, or a ``sym:``
    filter (definition lines), or ``type:file`` (terms match paths; none lists files).
    A query made only of filters including ``path:`` gets ``type="file"``: listing the
    matching files is the only useful reading, and it spares the engines a special case.
    """
    if len(text) > max_length:
        raise _err(f"query is too long ({len(text)} characters, at most {max_length})", max_length)
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            raise _err("query contains an invalid character (an unpaired surrogate)", i)
    if not text.strip():
        raise _err("a query needs at least one search term", 0)
    tokens, collector = _lift_filters(_Lexer(text).run())
    expr = _Parser(tokens).parse()
    filters = collector.build()
    if filters.syms or filters.type == "file" or (expr is not None and positive_terms(expr)):
        return Query(expr=expr, filters=filters, source=text)
    if expr is None and filters.paths and collector.type is None:
        return Query(expr=None, filters=dataclasses.replace(filters, type="file"), source=text)
    if expr is None:
        raise _err("a query needs at least one search term (or type:file to list files)", 0)
    raise _err("a query needs at least one positive term (not only negations)", _first_pos(expr))


def _first_pos(node: Node) -> int:
    while not isinstance(node, Term | Regex):
        node = node.child if isinstance(node, Not) else node.children[0]
    return node.pos


# --------------------------------------------------------------------------- formatting


def _escape_slashes(pattern: str) -> str:
    return pattern.replace("/", "\\/")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare_ok(text: str) -> bool:
    """Whether ``text`` re-lexes, alone, as one literal word equal to itself."""
    if not text or text in _KEYWORDS or text[0] in '"()/':
        return False
    lexer = _Lexer(text)
    if text[0] == "-" and lexer._negates(0):
        return False
    try:
        if lexer._filter(0, negated=False, start=0) is not None:
            return False
    except QuerySyntaxError:
        return False
    return lexer._word_end(0) == len(text)


def format_pattern(key: str, pattern: Pattern) -> str:
    """``key:value`` text that parses back to ``pattern`` (regex values need no ``\\/`` in them)."""
    if pattern.kind == "regex":
        return f"{key}:/{_escape_slashes(pattern.value)}/"
    value = pattern.value
    bare = value[:1] not in ("", '"', ":", ")", "/") and _Lexer(value)._word_end(0) == len(value)
    return f"{key}:{value if bare else _quote(value)}"


def _format_node(node: Node) -> str:
    if isinstance(node, Term):
        return node.text if not node.quoted and _bare_ok(node.text) else _quote(node.text)
    if isinstance(node, Regex):
        return f"/{_escape_slashes(node.pattern)}/"
    if isinstance(node, Not):
        inner = _format_node(node.child)
        return f"NOT ({inner})" if isinstance(node.child, And | Or) else f"NOT {inner}"
    if isinstance(node, And):
        return " ".join(
            f"({_format_node(c)})" if isinstance(c, Or) else _format_node(c) for c in node.children
        )
    return " OR ".join(_format_node(c) for c in node.children)


def format_query(query: Query) -> str:
    """Canonical text for ``query`` (filters first): ``parse_query`` of it yields the same filters and tree.

    Positions differ, and an unquoted term that would not re-lex as itself is quoted.
    """
    f = query.filters
    parts = [format_pattern("repo", p) for p in f.repos]
    parts += [format_pattern("path", p) for p in f.paths]
    parts += [format_pattern("-path", p) for p in f.exclude_paths]
    parts += [f"lang:{lang}" for lang in f.langs]
    parts += [f"-lang:{lang}" for lang in f.exclude_langs]
    parts += [format_pattern("sym", p) for p in f.syms]
    if f.case != "auto":
        parts.append(f"case:{f.case}")
    if f.type != "line":
        parts.append(f"type:{f.type}")
    if query.expr is not None:
        parts.append(_format_node(query.expr))
    return " ".join(parts)
