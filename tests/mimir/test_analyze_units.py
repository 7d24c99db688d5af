"""Unit behaviour of Mimir's analysis pieces: tokens, PageRank, repo map budgets, refs and imports."""

from __future__ import annotations

from textwrap import dedent

import networkx as nx
import pytest

from lens.parse.treesitter import extract_symbols
from mimir.analyze import (
    PHASES,
    SourceFile,
    analyze_imports,
    analyze_repository,
    extract_imports,
    extract_references,
    rank_files,
    render_repo_map,
)
from mimir.analyze.model import Ranks, SymbolGraph
from mimir.analyze.rank import _pagerank_numpy, pagerank
from mimir.analyze.tokens import estimate_tokens


def src(path: str, text: str, lang: str | None = None) -> SourceFile:
    return SourceFile(path, lang, dedent(text).lstrip("\n"))


def pairs(files: list[SourceFile]) -> set[tuple[str, str]]:
    return {(e.src_path, e.dst_path) for e in analyze_imports(files).edges}


# -- tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_estimate_tokens_is_a_quarter_of_the_characters_rounded_up(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


# -- PageRank -------------------------------------------------------------------------------------


def _sample_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(["a", "b", "c", "d", "e"])  # e is isolated, c and d dangle
    g.add_edge("a", "c", weight=2.0)
    g.add_edge("b", "c", weight=1.0)
    g.add_edge("a", "b", weight=1.0)
    g.add_edge("b", "d", weight=3.0)
    return g


@pytest.mark.parametrize("personalization", [None, {"a": 1.0, "d": 3.0}])
def test_numpy_pagerank_matches_networkx(personalization: dict[str, float] | None) -> None:
    from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python

    g = _sample_graph()
    expected = _pagerank_python(g, alpha=0.85, personalization=personalization, tol=1e-10, max_iter=500)
    got = _pagerank_numpy(g, 0.85, personalization, max_iter=500, tol=1e-10)
    assert got == pytest.approx(expected, abs=1e-8)
    assert pagerank(g, personalization) == pytest.approx(expected, abs=1e-5)


def test_file_ranks_break_ties_by_path_and_honour_personalization() -> None:
    files = [
        src("pkg/z.py", "from pkg import core\n"),
        src("pkg/a.py", "from pkg import core\n"),
        src("pkg/core.py", "def f():\n    pass\n"),
        src("pkg/__init__.py", ""),
    ]
    graph = analyze_repository(files).graph
    ranks = rank_files(graph)
    assert list(ranks)[:1] == ["pkg/core.py"]
    assert list(ranks)[1:] == ["pkg/__init__.py", "pkg/a.py", "pkg/z.py"]  # equal scores: by path
    focused = rank_files(graph, {"pkg/z.py": 1.0, "nowhere.py": 5.0})
    assert focused["pkg/z.py"] > focused["pkg/a.py"]
    assert rank_files(SymbolGraph()) == {}


# -- repo map -------------------------------------------------------------------------------------


def _mapped_project() -> tuple[SymbolGraph, Ranks]:
    files = [
        src(
            "core.py",
            """
            class Engine:
                def start(self, speed):
                    return self._spin(speed)

                def _spin(self, speed):
                    def inner():
                        return speed
                    return inner()


            def build():
                return Engine()
            """,
        ),
        *(
            src(f"user{i}.py", f"from core import build\n\n\ndef use{i}():\n    return build().start({i})\n")
            for i in range(6)
        ),
    ]
    analysis = analyze_repository(files)
    return analysis.graph, analysis.ranks


@pytest.mark.parametrize("budget", [1, 5, 12, 20, 40, 80, 160, 10_000])
def test_repo_map_never_exceeds_its_budget_and_starts_with_the_top_file(budget: int) -> None:
    graph, ranks = _mapped_project()
    repo_map = render_repo_map(graph, ranks, budget)
    assert repo_map.tokens == estimate_tokens(repo_map.text) <= budget
    if repo_map.text:
        assert repo_map.text.startswith("core.py:\n")
        assert repo_map.files_included[0] == "core.py"
    full = render_repo_map(graph, ranks, 10_000)
    assert not full.truncated
    assert repo_map.truncated == (budget < full.tokens)


def test_repo_map_nests_members_hides_locals_and_lists_paths_when_nothing_else_fits() -> None:
    graph, ranks = _mapped_project()
    full = render_repo_map(graph, ranks, 10_000).text
    assert full.startswith(
        "core.py:\n"
        "  class Engine:\n"
        "    def start(self, speed):\n"
        "    def _spin(self, speed):\n"
        "  def build():\n"
    )
    assert "inner" not in full  # defined inside a method: not part of the interface
    tiny = render_repo_map(graph, ranks, 3)
    assert tiny.symbols_included == ()
    assert tiny.text == "core.py:\n"
    assert render_repo_map(graph, ranks, 0).text == ""


# -- references -----------------------------------------------------------------------------------


def test_references_skip_macros_parameters_and_definition_names() -> None:
    rust = src(
        "lib.rs",
        """
        fn helper(count: u32) -> u32 { count }
        fn run() { println!("{}", helper(1)); let v = Vec::new(); }
        """,
    )
    refs = extract_references(rust)
    assert [(r.name, r.kind, r.qualifier, r.enclosing) for r in refs if r.kind == "call"] == [
        ("helper", "call", None, "run"),
        ("new", "call", "Vec", "run"),
    ]
    assert not [r for r in refs if r.name == "println"]
    assert [(r.name, r.col) for r in refs if r.name == "count"] == [
        ("count", 32)
    ]  # the use, not the parameter
    assert not [r for r in refs if r.name == "helper" and r.line == 1]


def test_reference_columns_count_characters_and_known_names_filter_identifiers() -> None:
    py = src("m.py", 'x = "é"; y = compute(value)\n')
    refs = extract_references(py)
    call = next(r for r in refs if r.name == "compute")
    assert (call.line, call.col) == (1, 14)  # "é" is two bytes but one character
    assert next(r for r in refs if r.name == "value").col == 22
    assert [r.name for r in extract_references(py, known_names={"compute"})] == ["compute"]


def test_member_accesses_and_types_carry_their_qualifier() -> None:
    py = src(
        "m.py",
        """
        def f(a: mod.Thing) -> None:
            return a.b.c.attr + other().attr
        """,
    )
    refs = {(r.name, r.kind, r.qualifier) for r in extract_references(py)}
    assert ("Thing", "type", "mod") in refs
    assert ("attr", "ref", "a.b.c") in refs
    assert ("attr", "ref", "*") in refs
    assert ("other", "call", None) in refs


# -- imports --------------------------------------------------------------------------------------


def test_python_namespace_packages_and_shadowing_of_stdlib_names() -> None:
    files = [
        src("tools/json.py", "def dump():\n    pass\n"),
        src("app/__init__.py", "import json\nfrom ns.inner import mod\n"),
        src("lib/ns/inner/mod.py", ""),  # namespace packages: no __init__.py anywhere
        src("tools/run.py", "import json\n"),
    ]
    assert pairs(files) == {("app/__init__.py", "lib/ns/inner/mod.py"), ("tools/run.py", "tools/json.py")}


def test_go_import_paths_resolve_by_suffix_without_go_mod() -> None:
    files = [
        src("main.go", 'package main\n\nimport "github.com/acme/tool/internal/db"\n'),
        src("internal/db/db.go", "package db\n"),
        src("internal/db/db_test.go", "package db\n"),
    ]
    assert pairs(files) == {("main.go", "internal/db/db.go")}


def test_java_wildcard_and_static_imports() -> None:
    files = [
        src("src/a/b/One.java", "package a.b;\npublic class One { public static int f() { return 1; } }\n"),
        src("src/a/b/Two.java", "package a.b;\npublic class Two {}\n"),
        src("src/c/Use.java", "package c;\nimport a.b.*;\nimport static a.b.One.f;\nclass Use {}\n"),
    ]
    edges = {(e.dst_path, e.names) for e in analyze_imports(files).edges}
    assert edges == {("src/a/b/One.java", ("*",)), ("src/a/b/Two.java", ("*",)), ("src/a/b/One.java", ("f",))}


def test_js_dynamic_import_and_bare_specifiers() -> None:
    files = [
        src("web/main.mjs", "const m = await import('./lazy');\nimport x from 'lodash';\n"),
        src("web/lazy/index.jsx", "export default 1;\n"),
    ]
    result = analyze_imports(files)
    assert {(e.src_path, e.dst_path) for e in result.edges} == {("web/main.mjs", "web/lazy/index.jsx")}
    assert [(u.module, u.bound) for u in result.unresolved] == [("lodash", ("x",))]


def test_rust_use_lists_globs_and_aliases() -> None:
    lib = src("src/lib.rs", "mod a;\nuse crate::a::{Thing as T, helpers::*};\nuse serde::Serialize;\n")
    files = [lib, src("src/a/mod.rs", "pub mod helpers;\npub struct Thing;\n"), src("src/a/helpers.rs", "")]
    statements = [(s.module, s.names, s.binding) for s in extract_imports(lib).statements]
    assert statements == [
        ("a", (), "a"),
        ("crate::a::Thing", (), "T"),
        ("crate::a::helpers", ("*",), None),
        ("serde::Serialize", (), "Serialize"),
    ]
    edges = {
        (e.dst_path, e.names, e.aliases, e.binding)
        for e in analyze_imports(files).edges
        if e.src_path == lib.path
    }
    assert edges == {
        ("src/a/mod.rs", (), (), "a"),
        ("src/a/mod.rs", ("Thing",), ("T",), None),
        ("src/a/helpers.rs", ("*",), ("*",), None),
    }


# -- the whole analysis ---------------------------------------------------------------------------


def test_analyze_repository_reports_phases_skips_unknown_files_and_reuses_lens_definitions() -> None:
    code = "class A:\n    def m(self):\n        return 1\n"
    analysis = analyze_repository(
        [SourceFile("a.py", None, code), SourceFile("README.md", None, "# hi"), SourceFile("b", "python", "")]
    )
    assert analysis.definitions["a.py"] == extract_symbols("python", code.encode())
    assert analysis.skipped == ["README.md"]
    assert set(analysis.durations) == {*PHASES, "total"} == set(analysis.cpu_durations)
    assert all(v >= 0 for v in analysis.durations.values())
    assert analysis.graph.files() == ["a.py", "b"]
