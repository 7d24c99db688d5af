"""Tests of the query-language parser: exact ASTs, every error with its position, a fuzz that the
parser only ever raises QuerySyntaxError, and round trips through ``format_query``."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lens.errors import QuerySyntaxError
from lens.query.ast import And, Filters, Node, Not, Or, Pattern, Query, Regex, Term, positive_terms
from lens.query.parser import MAX_NESTING, format_query, parse_query


def T(text: str, pos: int, quoted: bool = False) -> Term:
    return Term(text, pos, quoted)


def R(pattern: str, pos: int) -> Regex:
    return Regex(pattern, pos)


def A(*children: Node) -> And:
    return And(children)


def O(*children: Node) -> Or:  # noqa: E743
    return Or(children)


def N(child: Node) -> Not:
    return Not(child)


def sub(value: str) -> Pattern:
    return Pattern("substring", value)


# query -> (expr, filters); Query.source is checked separately.
CASES: list[tuple[str, Node | None, Filters]] = [
    # literals and implicit AND
    ("foo", T("foo", 0), Filters()),
    ("  foo  ", T("foo", 2), Filters()),
    ("foo bar", A(T("foo", 0), T("bar", 4)), Filters()),
    ("foo\tbar\nbaz", A(T("foo", 0), T("bar", 4), T("baz", 8)), Filters()),
    ("foo AND bar", A(T("foo", 0), T("bar", 8)), Filters()),
    # OR binds looser than AND; nested groups of the same operator are flattened
    ("a OR b", O(T("a", 0), T("b", 5)), Filters()),
    ("a b OR c", O(A(T("a", 0), T("b", 2)), T("c", 7)), Filters()),
    ("a OR b c", O(T("a", 0), A(T("b", 5), T("c", 7))), Filters()),
    ("(a OR b) c", A(O(T("a", 1), T("b", 6)), T("c", 9)), Filters()),
    ("a OR (b OR c)", O(T("a", 0), T("b", 6), T("c", 11)), Filters()),
    ("a (b c)", A(T("a", 0), T("b", 3), T("c", 5)), Filters()),
    ("((a))", T("a", 2), Filters()),
    ("a AND b OR c AND d", O(A(T("a", 0), T("b", 6)), A(T("c", 11), T("d", 17))), Filters()),
    # negation
    ("foo -bar", A(T("foo", 0), N(T("bar", 5))), Filters()),
    ("foo NOT bar", A(T("foo", 0), N(T("bar", 8))), Filters()),
    ("foo -(a OR b)", A(T("foo", 0), N(O(T("a", 6), T("b", 11)))), Filters()),
    ("foo -/ba+r/", A(T("foo", 0), N(R("ba+r", 5))), Filters()),
    ('foo -"a b"', A(T("foo", 0), N(T("a b", 5, True))), Filters()),
    ("NOT NOT foo", T("foo", 8), Filters()),
    ("foo NOT -bar", A(T("foo", 0), T("bar", 9)), Filters()),
    ("foo -OR", A(T("foo", 0), N(T("OR", 5))), Filters()),
    ("foo OR -bar", O(T("foo", 0), N(T("bar", 8))), Filters()),
    # '-' that is code, not negation
    ("foo-bar", T("foo-bar", 0), Filters()),
    ("- foo", A(T("-", 0), T("foo", 2)), Filters()),
    ("foo -", A(T("foo", 0), T("-", 4)), Filters()),
    ("--verbose", T("--verbose", 0), Filters()),
    ("x -1", A(T("x", 0), T("-1", 2)), Filters()),
    ("->next", T("->next", 0), Filters()),
    ("i -= 1", A(T("i", 0), T("-=", 2), T("1", 5)), Filters()),
    # keywords are uppercase and alone
    ("or not and", A(T("or", 0), T("not", 3), T("and", 7)), Filters()),
    ('"OR" "NOT"', A(T("OR", 0, True), T("NOT", 5, True)), Filters()),
    ("ORACLE NOTE", A(T("ORACLE", 0), T("NOTE", 7)), Filters()),
    # quoting
    ('"a b"', T("a b", 0, True), Filters()),
    (r'"say \"hi\""', T('say "hi"', 0, True), Filters()),
    (r'"a\\b"', T("a\\b", 0, True), Filters()),
    (r'"a\nb"', T("a\\nb", 0, True), Filters()),
    ('"foo"bar', A(T("foo", 0, True), T("bar", 5)), Filters()),
    ('foo"bar', T('foo"bar', 0), Filters()),
    ('"a:b"', T("a:b", 0, True), Filters()),
    ('"path:x"', T("path:x", 0, True), Filters()),
    # parentheses balanced inside a word are literal
    ("print(x)", T("print(x)", 0), Filters()),
    ("foo()", T("foo()", 0), Filters()),
    ("print(", T("print(", 0), Filters()),
    ("(foo() OR bar)", O(T("foo()", 1), T("bar", 10)), Filters()),
    # regex
    ("/foo.*bar/", R("foo.*bar", 0), Filters()),
    ("/a b/", R("a b", 0), Filters()),
    (r"/a\/b/", R("a/b", 0), Filters()),
    (r"/a\\/ x", A(R("a\\\\", 0), T("x", 6)), Filters()),
    (r"/[^\n]+/", R(r"[^\n]+", 0), Filters()),
    ("(/x/)", R("x", 1), Filters()),
    ("/usr/bin", T("/usr/bin", 0), Filters()),
    ("// TODO", A(T("//", 0), T("TODO", 3)), Filters()),
    ("/Foo/ OR bar", O(R("Foo", 0), T("bar", 9)), Filters()),
    # colons that are code, not filters
    ("std::vector", T("std::vector", 0), Filters()),
    ("http://example.com", T("http://example.com", 0), Filters()),
    ("else: x", A(T("else:", 0), T("x", 6)), Filters()),
    ("x path:", A(T("x", 0), T("path:", 2)), Filters()),
    ("a[1:2]", T("a[1:2]", 0), Filters()),
    ("x1:y", T("x1:y", 0), Filters()),
    # filters
    ("repo:lens foo", T("foo", 10), Filters(repos=(sub("lens"),))),
    ("foo path:src/", T("foo", 0), Filters(paths=(sub("src/"),))),
    ("foo file:src/", T("foo", 0), Filters(paths=(sub("src/"),))),
    ('path:"my dir/" foo', T("foo", 15), Filters(paths=(sub("my dir/"),))),
    ("path:*.py foo", T("foo", 10), Filters(paths=(Pattern("glob", "*.py"),))),
    ('path:"a b/*.py" foo', T("foo", 16), Filters(paths=(Pattern("glob", "a b/*.py"),))),
    (r"path:/\.py$/ foo", T("foo", 13), Filters(paths=(Pattern("regex", r"\.py$"),))),
    (r"path:/src\/lib/ foo", T("foo", 16), Filters(paths=(Pattern("regex", "src/lib"),))),
    ("path:/src/main foo", T("foo", 15), Filters(paths=(sub("/src/main"),))),
    ("path:/src foo", T("foo", 10), Filters(paths=(sub("/src"),))),
    ("path:(a) foo", T("foo", 9), Filters(paths=(sub("(a)"),))),
    ("-path:test foo", T("foo", 11), Filters(exclude_paths=(sub("test"),))),
    ("-file:*_test.go foo", T("foo", 16), Filters(exclude_paths=(Pattern("glob", "*_test.go"),))),
    ("lang:py foo", T("foo", 8), Filters(langs=("python",))),
    ("LANG:Python foo", T("foo", 12), Filters(langs=("python",))),
    ("language:golang foo", T("foo", 16), Filters(langs=("go",))),
    ('lang:"c++" foo', T("foo", 11), Filters(langs=("cpp",))),
    ("-lang:js foo", T("foo", 9), Filters(exclude_langs=("javascript",))),
    ("sym:main", None, Filters(syms=(Pattern("exact", "main"),))),
    ("symbol:get* foo", T("foo", 12), Filters(syms=(Pattern("glob", "get*"),))),
    ("sym:/^get_/", None, Filters(syms=(Pattern("regex", "^get_"),))),
    ("case:yes foo", T("foo", 9), Filters(case="yes")),
    ("foo case:NO", T("foo", 0), Filters(case="no")),
    ("foo case:auto", T("foo", 0), Filters(case="auto")),
    ("foo type:file", T("foo", 0), Filters(type="file")),
    ("foo type:path", T("foo", 0), Filters(type="file")),
    ("foo type:line", T("foo", 0), Filters(type="line")),
    ("foo case:yes case:yes type:file type:path", T("foo", 0), Filters(case="yes", type="file")),
    ("repo:https://github.com/a/b foo", T("foo", 28), Filters(repos=(sub("https://github.com/a/b"),))),
    # repeated filters accumulate (OR within a key), duplicates collapse
    (
        "lang:go lang:rust lang:golang path:a path:b path:a foo",
        T("foo", 51),
        Filters(langs=("go", "rust"), paths=(sub("a"), sub("b"))),
    ),
    # filters are global: anywhere at the top level, between terms, with OR elsewhere
    ("a path:x b", A(T("a", 0), T("b", 9)), Filters(paths=(sub("x"),))),
    ("repo:r a OR b", O(T("a", 7), T("b", 12)), Filters(repos=(sub("r"),))),
    ("a OR b repo:r", O(T("a", 0), T("b", 5)), Filters(repos=(sub("r"),))),
    ("(a OR b) -path:vendor", O(T("a", 1), T("b", 6)), Filters(exclude_paths=(sub("vendor"),))),
    # queries without positive terms that are still meaningful
    ("type:file path:foo", None, Filters(paths=(sub("foo"),), type="file")),
    ("type:file", None, Filters(type="file")),
    ("type:file lang:go", None, Filters(langs=("go",), type="file")),
    ("path:foo", None, Filters(paths=(sub("foo"),), type="file")),  # only filters: lists files
    (
        "path:foo -path:bar lang:go",
        None,
        Filters(paths=(sub("foo"),), exclude_paths=(sub("bar"),), langs=("go",), type="file"),
    ),
    ("sym:foo -bar", N(T("bar", 9)), Filters(syms=(Pattern("exact", "foo"),))),
    ("type:file -TODO", N(T("TODO", 11)), Filters(type="file")),
]


@pytest.mark.parametrize(("text", "expr", "filters"), CASES, ids=[c[0] for c in CASES])
def test_parse(text: str, expr: Node | None, filters: Filters) -> None:
    assert parse_query(text) == Query(expr=expr, filters=filters, source=text)


# query -> (position, a fragment of the message)
ERRORS: list[tuple[str, int, str]] = [
    ("", 0, "at least one search term"),
    ("   \t\n", 0, "at least one search term"),
    ("lang:go", 0, "at least one search term"),
    ("repo:x case:yes", 0, "at least one search term"),
    ("-foo", 1, "at least one positive term"),
    ("NOT foo", 4, "at least one positive term"),
    ("-foo -bar lang:go", 1, "at least one positive term"),
    ("-(a OR b)", 2, "at least one positive term"),
    ("path:x -foo", 8, "at least one positive term"),
    ("type:line path:x", 0, "at least one search term"),
    ("-path:x", 0, "at least one search term"),
    ("(a", 0, "unbalanced '('"),
    ("a (b (c)", 2, "unbalanced '('"),
    ("a)", 1, "unbalanced ')'"),
    ("(a))", 3, "unbalanced ')'"),
    (") a", 0, "unbalanced ')'"),
    ("()", 0, "empty parentheses"),
    ("a ( ) b", 2, "empty parentheses"),
    ("-()", 1, "empty parentheses"),
    ('"abc', 0, "unterminated quoted string"),
    ('a "b\\"', 2, "unterminated quoted string"),
    ('path:"abc', 5, "unterminated quoted string"),
    ("/abc", 0, "unterminated regex"),
    ("foo /a\\/b", 4, "unterminated regex"),
    ("foo OR", 4, "dangling operator 'OR'"),
    ("OR foo", 0, "dangling operator 'OR'"),
    ("a OR OR b", 2, "dangling operator 'OR'"),
    ("(a OR) b", 3, "dangling operator 'OR'"),
    ("(OR a)", 1, "dangling operator 'OR'"),
    ("NOT", 0, "dangling operator 'NOT'"),
    ("a NOT", 2, "dangling operator 'NOT'"),
    ("a NOT OR b", 2, "dangling operator 'NOT'"),
    ("(a NOT)", 3, "dangling operator 'NOT'"),
    ("foo AND", 4, "dangling operator 'AND'"),
    ("AND foo", 0, "dangling operator 'AND'"),
    ("a AND OR b", 2, "dangling operator 'AND'"),
    ("-)", 1, "unbalanced ')'"),
    ('""', 0, "empty quoted string"),
    ('a "x\ny"', 2, "line break"),
    ("/a(/", 0, "invalid regex /a(/: missing )"),
    ("foo /x{2,1}/", 4, "invalid regex"),
    (r"/a\1/", 0, "invalid regex"),
    ("/(?=x)/", 0, "invalid regex"),
    ("/* comment */", 0, "invalid regex"),
    (r"/a\nb/", 0, "matching is per line"),
    (r"/a\x0ab/", 0, "matching is per line"),
    (r"/a\x{A}/", 0, "matching is per line"),
    (r"/a\012/", 0, "matching is per line"),
    (r"/[\n]/", 0, "matching is per line"),
    ("/a\nb/", 0, "matching is per line"),
    (r"path:/a(/ x", 5, "invalid regex"),
    ("foo:bar", 0, "unknown filter 'foo:'"),
    ("x Foo:bar", 2, "unknown filter 'Foo:'"),
    ("x -foo:bar", 2, "unknown filter 'foo:'"),
    ("x mode:exact", 2, "unknown filter 'mode:'"),
    ("x -repo:a", 2, "'-repo:' is not supported"),
    ("x -sym:a", 2, "'-sym:' is not supported"),
    ("x -case:yes", 2, "'-case:' is not supported"),
    ("x lang:klingon", 7, "unknown language 'klingon'"),
    ("x lang:pyhton", 7, "did you mean python"),
    ("x lang:/py/", 7, "not a regex"),
    ("x case:maybe", 7, "case: must be yes, no or auto"),
    ("x type:dir", 7, "type: must be line or file"),
    ("x case:yes case:no", 11, "conflicting case: filters"),
    ("x type:file type:line", 12, "conflicting type: filters"),
    ('x path:""', 2, "needs a value"),
    ("(path:x a)", 1, "filters cannot be inside parentheses or OR"),
    ("(a path:x)", 3, "filters cannot be inside parentheses or OR"),
    ("path:x OR a", 0, "filters cannot be inside parentheses or OR"),
    ("a OR lang:go", 5, "filters cannot be inside parentheses or OR"),
    ("lang:go OR lang:rust a", 0, "filters cannot be inside parentheses or OR"),
    ("a NOT path:x", 6, "filters cannot be inside parentheses or OR"),
    ("a NOT -path:x", 6, "filters cannot be inside parentheses or OR"),
    ("a AND path:x", 6, "filters cannot be inside parentheses or OR"),
    ("-(path:x) a", 2, "filters cannot be inside parentheses or OR"),
    ("x" * 4097, 4096, "too long"),
    ("a\ud800b", 1, "invalid character"),
    ("(" * (MAX_NESTING + 1) + "a" + ")" * (MAX_NESTING + 1), MAX_NESTING, "nested too deeply"),
]


@pytest.mark.parametrize(("text", "position", "fragment"), ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_errors(text: str, position: int, fragment: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(text)
    err = info.value
    assert err.position == position
    assert err.details["position"] == position
    assert fragment in err.message
    assert err.to_dict()["code"] == "bad_query"


def test_max_length_is_configurable() -> None:
    assert parse_query("x" * 10, max_length=10).expr == T("x" * 10, 0)
    with pytest.raises(QuerySyntaxError) as info:
        parse_query("x" * 11, max_length=10)
    assert info.value.position == 10


def test_nesting_at_limit_is_fine() -> None:
    text = "(" * MAX_NESTING + "a" + ")" * MAX_NESTING
    assert parse_query(text).expr == T("a", MAX_NESTING)


def test_long_flat_queries_are_fine() -> None:
    words = " ".join(f"w{i}" for i in range(500))
    assert isinstance(parse_query(words).expr, And)
    ors = " OR ".join(f"w{i}" for i in range(300))
    assert isinstance(parse_query(ors).expr, Or)
    nots = "a " + "NOT " * 900 + "b"
    assert parse_query(nots).expr == A(T("a", 0), T("b", 2 + 4 * 900))


# ----------------------------------------------------------------------------- fuzz

_QUERY_ALPHABET = st.sampled_from(
    [*'ab AZ()"/\\-:*?\n\t', "OR", "AND", "NOT", "path:", "-path:", "lang:", "sym:", "case:", "type:", "//"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.lists(_QUERY_ALPHABET, max_size=40).map("".join)))
def test_fuzz_only_query_syntax_errors(text: str) -> None:
    try:
        query = parse_query(text)
    except QuerySyntaxError as err:
        assert 0 <= err.position <= max(len(text), 4096)
        return
    assert query.source == text
    assert positive_terms(query.expr) or query.filters.syms or query.filters.type == "file"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.text(min_size=3000, max_size=6000))
def test_fuzz_huge_inputs(text: str) -> None:
    with contextlib.suppress(QuerySyntaxError):
        parse_query(text)


# ----------------------------------------------------------------------------- round trips


def _strip(node: Node | None) -> Node | None:
    """The tree without positions (and quoting), which formatting cannot preserve."""
    if node is None:
        return None
    if isinstance(node, Term):
        return Term(node.text, 0)
    if isinstance(node, Regex):
        return Regex(node.pattern, 0)
    if isinstance(node, Not):
        return Not(_strip(node.child))  # type: ignore[arg-type]
    return type(node)(tuple(_strip(c) for c in node.children))  # type: ignore[misc]


@pytest.mark.parametrize("text", [c[0] for c in CASES])
def test_format_round_trip(text: str) -> None:
    query = parse_query(text)
    again = parse_query(format_query(query))
    assert again.filters == query.filters
    assert _strip(again.expr) == _strip(query.expr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_QUERY_ALPHABET, max_size=30).map("".join))
def test_format_round_trip_fuzz(text: str) -> None:
    try:
        query = parse_query(text)
    except QuerySyntaxError:
        return
    again = parse_query(format_query(query))
    assert again.filters == query.filters
    assert _strip(again.expr) == _strip(query.expr)


_VALUE_CHARS = st.characters(codec="utf-8", exclude_characters="\n")
_plain_values = st.text(_VALUE_CHARS, min_size=1, max_size=12).filter(lambda v: "*" not in v and "?" not in v)
_glob_values = st.tuples(_plain_values, st.sampled_from(["*", "?", "**/"]), _plain_values).map("".join)
_regex_values = st.sampled_from([r"\.py$", "^src/", "a|b", "[0-9]+", "x/y/z", r"\w+_test"])


def _patterns(default_kind: str) -> st.SearchStrategy[Pattern]:
    return st.one_of(
        _plain_values.map(lambda v: Pattern(default_kind, v)),  # type: ignore[arg-type]
        _glob_values.map(lambda v: Pattern("glob", v)),
        _regex_values.map(lambda v: Pattern("regex", v)),
    )


def _unique(strategy: st.SearchStrategy[Pattern]) -> st.SearchStrategy[tuple[Pattern, ...]]:
    return st.lists(strategy, max_size=3, unique=True).map(tuple)


_LANGS = ["python", "go", "rust", "cpp", "csharp", "javascript", "markdown"]

_filters = st.builds(
    Filters,
    repos=_unique(_patterns("substring")),
    paths=_unique(_patterns("substring")),
    exclude_paths=_unique(_patterns("substring")),
    langs=st.lists(st.sampled_from(_LANGS), max_size=3, unique=True).map(tuple),
    exclude_langs=st.lists(st.sampled_from(_LANGS), max_size=3, unique=True).map(tuple),
    syms=_unique(_patterns("exact")),
    case=st.sampled_from(["yes", "no", "auto"]),
    type=st.sampled_from(["line", "file"]),
)


@settings(max_examples=200, deadline=None)
@given(_filters)
def test_filters_round_trip(filters: Filters) -> None:
    query = Query(expr=Term("needle", 0), filters=filters)
    text = format_query(query)
    parsed = parse_query(text)
    assert parsed.filters == filters, text
    assert _strip(parsed.expr) == Term("needle", 0)


def test_filters_round_trip_examples() -> None:
    filters = Filters(
        repos=(sub("lens"), Pattern("regex", "^gh/")),
        paths=(sub("my dir/"), Pattern("glob", "src/**/*.py"), sub('say "x"')),
        exclude_paths=(sub("vendor"),),
        langs=("python", "go"),
        exclude_langs=("markdown",),
        syms=(Pattern("exact", "main"), Pattern("glob", "get*")),
        case="yes",
        type="file",
    )
    query = Query(expr=None, filters=filters)
    text = format_query(query)
    assert parse_query(text) == dataclasses.replace(query, source=text)
