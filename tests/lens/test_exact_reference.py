"""The exact-mode engine equals a brute-force reference on generated corpora and queries.

The reference reads every line of every file with Python's own ``re`` (a different
regex engine from RE2) and no index; the engine uses the trigram prefilter, RE2
and whole-file scans. Any disagreement on the (path, line) set is a bug.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lens.discover.language import detect_language
from lens.errors import QuerySyntaxError
from lens.index.builder import index_repository
from lens.index.catalog import Catalog
from lens.query.ast import And, Node, Not, Or, Query, Regex, Term, case_sensitive, positive_terms
from lens.query.matchers import compile_pattern
from lens.query.parser import parse_query
from lens.query.searcher import Searcher

PATHS = ["src/app.py", "src/util.go", "lib/Model.java", "tests/test_app.py", "README.txt", "web/x.ts"]
ALPHABET = "abcAB_ (.é"
word = st.text(alphabet="abcAB_(.é", min_size=1, max_size=4)
line = st.text(alphabet=ALPHABET, max_size=20)
content = st.lists(line, max_size=12).map(lambda ls: "\n".join(ls)) | st.lists(line, max_size=12).map(
    lambda ls: "".join(x + "\n" for x in ls)
)
corpus = st.dictionaries(st.sampled_from(PATHS), content, min_size=1, max_size=len(PATHS))

atom = st.sampled_from(["a", "b", "A", "c", "_", r"\(", r"\.", ".", "[ab]", "[^a]", r"\w", " ", "é"])
quant = st.sampled_from(["", "", "", "*", "+", "?", "{2}"])
piece = st.tuples(atom, quant).map("".join)
seq = st.lists(piece, min_size=1, max_size=4).map("".join)
regex_body = st.one_of(
    seq,
    st.tuples(seq, seq).map(lambda t: f"({t[0]}|{t[1]})"),
    seq.map(lambda s: "^" + s),
    seq.map(lambda s: s + "$"),
)


@st.composite
def query_text(draw: st.DrawFn) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["term", "term", "regex", "neg"]))
        if kind == "term":
            parts.append('"' + draw(word) + '"')
        elif kind == "regex":
            parts.append("/" + draw(regex_body) + "/")
        else:
            parts.append('-"' + draw(word) + '"')
    if len(parts) >= 2 and draw(st.booleans()):
        parts.insert(1, "OR")
    if draw(st.booleans()):
        parts.append("case:" + draw(st.sampled_from(["yes", "no", "auto"])))
    if draw(st.integers(0, 4)) == 0:
        parts.append("path:" + draw(st.sampled_from(["src", "app", "Model", "tests/", "*.py"])))
    if draw(st.integers(0, 4)) == 0:
        parts.append("-path:" + draw(st.sampled_from(["tests", "lib"])))
    if draw(st.integers(0, 5)) == 0:
        parts.append("lang:" + draw(st.sampled_from(["python", "go", "text"])))
    return " ".join(parts)


def _lines(text: str) -> list[str]:
    if text == "":
        return []
    parts = text.split("\n")
    return parts[:-1] if text.endswith("\n") else parts


def _line_matcher(node: Term | Regex, cs: bool) -> re.Pattern[str]:
    flags = 0 if cs else re.IGNORECASE
    if isinstance(node, Term):
        return re.compile(re.escape(node.text), flags)
    # RE2's \w is ASCII-only (Python's is Unicode): spell it out so both engines mean the same.
    return re.compile(node.pattern.replace(r"\w", "[0-9A-Za-z_]"), flags)


def reference(files: dict[str, str], query: Query) -> set[tuple[str, int]]:
    cs = case_sensitive(query)
    f = query.filters
    includes = [compile_pattern(p, f.case, path_like=True) for p in f.paths]
    excludes = [compile_pattern(p, f.case, path_like=True) for p in f.exclude_paths]
    out: set[tuple[str, int]] = set()
    assert query.expr is not None
    for path, text in files.items():
        lang = detect_language(path, text.encode()[:256])
        if f.langs and lang not in f.langs:
            continue
        if includes and not any(m(path) for m in includes):
            continue
        if any(m(path) for m in excludes):
            continue
        lines = _lines(text)

        def present(node: Node, lines: list[str] = lines) -> bool:
            if isinstance(node, Term | Regex):
                rx = _line_matcher(node, cs)
                return any(rx.search(ln) for ln in lines)
            if isinstance(node, And):
                return all(present(c) for c in node.children)
            if isinstance(node, Or):
                return any(present(c) for c in node.children)
            assert isinstance(node, Not)
            return not present(node.child)

        if not present(query.expr):
            continue
        matchers = [_line_matcher(t, cs) for t in positive_terms(query.expr)]
        for i, ln in enumerate(lines, start=1):
            if any(m.search(ln) for m in matchers):
                out.add((path, i))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=corpus, queries=st.lists(query_text(), min_size=1, max_size=4))
def test_exact_engine_equals_brute_force(files: dict[str, str], queries: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lens-ref-"))
    try:
        src = tmp / "src-tree"
        for path, text in files.items():
            p = src / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(text.encode())
        catalog = Catalog(tmp / "data")
        index_repository(catalog, "r", src)
        searcher = Searcher(catalog)
        checked = 0
        for text in queries:
            try:
                query = parse_query(text)
            except QuerySyntaxError:
                continue
            if query.expr is None or query.filters.type != "line":
                continue
            result = searcher.search(text, limit=1000)
            assert not result.truncated
            assert not result.timed_out
            got = {(h.path, h.line_number) for h in result.results}
            assert got == reference(files, query), text
            assert result.total == len(got) and not result.total_is_estimate
            for h in result.results:
                for s, e in h.ranges:
                    assert 0 <= s <= e <= len(h.line)
            checked += 1
        assume(checked > 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_pages_are_a_partition(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02}.py").write_text("".join(f"value_{j} = {j}\n" for j in range(7)))
    catalog = Catalog(tmp_path / "data")
    index_repository(catalog, "r", src)
    searcher = Searcher(catalog)
    everything = searcher.search("value_", limit=1000)
    assert everything.total == 210 and not everything.truncated
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        page = searcher.search("value_", limit=25, cursor=cursor)
        seen.extend((h.path, h.line_number) for h in page.results)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 210
    assert seen == [(h.path, h.line_number) for h in everything.results]


def test_pages_partition_a_truncated_result_with_mixed_categories(tmp_path: Path) -> None:
    """Pages computed from growing windows must neither repeat nor skip lines (regression)."""
    src = tmp_path / "tree"
    (src / "tests").mkdir(parents=True)
    for i in range(40):
        word = "foo bar" if i % 3 == 0 else "foo_bar"  # whole-word and partial matches interleaved
        folder = src / "tests" if i % 5 == 0 else src
        (folder / f"m{i:02}.py").write_text("".join(f"x = '{word}' # {j}\n" for j in range(9)))
    (src / "defs.py").write_text("def foo():\n    return 1\n")
    catalog = Catalog(tmp_path / "data")
    index_repository(catalog, "r", src)
    searcher = Searcher(catalog)
    expected = 40 * 9 + 1
    seen: list[tuple[str, int]] = []
    cursor = None
    first = True
    while True:
        page = searcher.search("foo", limit=7, cursor=cursor)
        if first:
            assert page.truncated and page.total_is_estimate
            assert page.results[0].path == "defs.py" and "symbol" in page.results[0].why
            first = False
        seen.extend((h.path, h.line_number) for h in page.results)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == expected
