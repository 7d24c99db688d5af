"""Mimir's repository analysis on small realistic projects, one per language, with exact edges."""

from __future__ import annotations

import json

import pytest
from analyze_helpers import analyze, edge, import_pairs, node_id, resolution

from mimir.analyze import Analysis, render_repo_map
from mimir.analyze.model import SymbolGraph
from mimir.analyze.tokens import estimate_tokens

# -- Python ---------------------------------------------------------------------------------------

PYTHON_PROJECT = {
    "src/shop/__init__.py": """
        from .models import Product
        from .util import slugify
        """,
    "src/shop/util.py": """
        def slugify(text):
            return text.lower()


        def normalize(text):
            return slugify(text).strip()


        def join(*parts):
            return "/".join(parts)
        """,
    "src/shop/base.py": """
        from .util import normalize as norm


        class Base:
            def validate(self):
                return norm("x")

            def save(self):
                return True
        """,
    "src/shop/models.py": """
        from . import util
        from .base import Base


        class Product(Base):
            def __init__(self, name):
                self.name = name
                self.slug = util.slugify(name)

            def save(self):
                self.validate()
                return super().save()
        """,
    "src/plugins/one.py": """
        def register():
            return 1


        def load_all():
            return [register()]
        """,
    "src/plugins/two.py": """
        def register():
            return 2
        """,
    "src/main.py": """
        import os
        from os.path import join

        import shop.models
        from shop import Product
        from shop.util import slugify


        def run():
            p = Product("a")
            p.save()
            shop.models.Product("b")
            join("a", "b")
            register()
            return slugify(os.getcwd())


        def helper():
            return load_all()
        """,
}


@pytest.fixture(scope="module")
def python_analysis() -> Analysis:
    return analyze(PYTHON_PROJECT)


def test_python_imports_resolve_relative_absolute_and_submodules(python_analysis: Analysis) -> None:
    pairs = import_pairs(python_analysis)
    assert pairs == {
        ("src/shop/__init__.py", "src/shop/models.py"),
        ("src/shop/__init__.py", "src/shop/util.py"),
        ("src/shop/base.py", "src/shop/util.py"),
        ("src/shop/models.py", "src/shop/util.py"),
        ("src/shop/models.py", "src/shop/base.py"),
        ("src/main.py", "src/shop/models.py"),
        ("src/main.py", "src/shop/__init__.py"),
        ("src/main.py", "src/shop/util.py"),
    }
    by_pair = {(e.src_path, e.dst_path): e for e in python_analysis.imports.edges}
    assert by_pair[("src/shop/models.py", "src/shop/util.py")].binding == "util"  # from . import util
    assert by_pair[("src/shop/base.py", "src/shop/util.py")].bound_names() == {"norm": "normalize"}
    assert by_pair[("src/main.py", "src/shop/models.py")].binding == "shop"  # import shop.models
    external = {(u.path, u.module) for u in python_analysis.imports.unresolved}
    assert external == {("src/main.py", "os"), ("src/main.py", "os.path")}


def test_python_calls_resolve_with_the_right_rule(python_analysis: Analysis) -> None:
    g = python_analysis.graph
    util, models, base, main = "src/shop/util.py", "src/shop/models.py", "src/shop/base.py", "src/main.py"
    slugify = node_id(g, util, "slugify")
    assert resolution(g, "calls", node_id(g, util, "normalize"), slugify) == "local"
    # module attribute through ``from . import util``
    assert resolution(g, "calls", node_id(g, models, "Product.__init__"), slugify) == "import"
    # self.validate() is inherited from Base; super().save() skips Product.save
    product_save = node_id(g, models, "Product.save")
    assert resolution(g, "calls", product_save, node_id(g, base, "Base.validate")) == "import"
    assert resolution(g, "calls", product_save, node_id(g, base, "Base.save")) == "import"
    assert edge(g, "calls", product_save, product_save) is None
    # an alias: ``from .util import normalize as norm``
    assert (
        resolution(g, "calls", node_id(g, base, "Base.validate"), node_id(g, util, "normalize")) == "import"
    )
    run = node_id(g, main, "run")
    product = node_id(g, models, "Product")
    assert resolution(g, "calls", run, product) == "import"  # re-exported by shop/__init__.py
    assert resolution(g, "calls", run, slugify) == "import"
    # a name bound by an external import is never guessed, even though shop.util defines join
    assert edge(g, "calls", run, node_id(g, util, "join")) is None
    # two unrelated definitions: both kept, marked ambiguous
    ones = {node_id(g, "src/plugins/one.py", "register"), node_id(g, "src/plugins/two.py", "register")}
    assert {e.target: e.resolution for e in g.callees(run) if e.target in ones} == dict.fromkeys(
        ones, "ambiguous"
    )
    # not imported, defined once in the repo
    load_all = node_id(g, "src/plugins/one.py", "load_all")
    assert resolution(g, "calls", node_id(g, main, "helper"), load_all) == "unique_name"
    assert {e.target for e in g.callers(product)} == {run}


def test_python_inherits_and_contains(python_analysis: Analysis) -> None:
    g = python_analysis.graph
    product = node_id(g, "src/shop/models.py", "Product")
    base = node_id(g, "src/shop/base.py", "Base")
    assert resolution(g, "inherits", product, base) == "import"
    assert [e.target for e in g.edges("inherited_by", base)] == [product]
    members = {e.target for e in g.edges("contains", product)}
    assert members == {
        node_id(g, "src/shop/models.py", "Product.__init__"),
        node_id(g, "src/shop/models.py", "Product.save"),
    }
    assert edge(g, "contains", "src/shop/models.py", product) is not None
    assert g.nodes[product].signature == "class Product(Base):"


def test_python_references_and_queries(python_analysis: Analysis) -> None:
    g = python_analysis.graph
    assert [n.id for n in g.definitions("Product.save")] == [node_id(g, "src/shop/models.py", "Product.save")]
    assert len(g.definitions("save")) == 2
    uses = g.references("Product")
    # two calls; the names in ``from .models import Product`` / ``from shop import Product`` are not uses
    assert [(r.path, r.line, r.kind) for r in uses] == [
        ("src/main.py", 10, "call"),
        ("src/main.py", 12, "call"),
    ]
    call = next(r for r in uses if r.path == "src/main.py" and r.qualifier == "shop.models")
    assert (call.line, call.col, call.kind, call.enclosing) == (12, 17, "call", "run")
    neighbors = g.neighbors(node_id(g, "src/shop/models.py", "Product"), ["inherits", "contained_by"])
    assert [e.kind for e in neighbors] == ["contained_by", "inherits"]


def test_python_ranks_and_repo_map(python_analysis: Analysis) -> None:
    ranks = python_analysis.ranks
    files = list(ranks.files)
    assert files[0] == "src/shop/util.py"  # imported by every other file of the package
    assert ranks.files[files[0]] > ranks.files[files[1]]
    assert list(ranks.symbols.values()) == sorted(ranks.symbols.values(), reverse=True)
    repo_map = render_repo_map(python_analysis.graph, ranks, 60)
    assert repo_map.tokens == estimate_tokens(repo_map.text) <= 60
    assert repo_map.truncated
    assert repo_map.text.startswith("src/shop/util.py:\n  def slugify(text):\n")
    assert repo_map.files_included[0] == "src/shop/util.py"
    full = render_repo_map(python_analysis.graph, ranks, 10_000)
    assert not full.truncated
    assert set(full.files_included) == set(python_analysis.graph.files())
    assert "\n  class Product(Base):\n    def __init__(self, name):\n" in full.text


def test_graph_json_round_trip(python_analysis: Analysis) -> None:
    g = python_analysis.graph
    data = json.loads(json.dumps(g.to_dict()))
    restored = SymbolGraph.from_dict(data)
    assert restored == g
    product = node_id(g, "src/shop/models.py", "Product")
    assert restored.callers(product) == g.callers(product)
    assert restored.definitions("Product") == g.definitions("Product")
    with pytest.raises(ValueError):
        SymbolGraph.from_dict({**data, "version": 99})
