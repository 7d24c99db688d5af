"""Mimir's analysis on small TypeScript, Go, Rust and Java projects: imports, calls, inherits."""

from __future__ import annotations

import pytest
from analyze_helpers import analyze, edge, import_pairs, node_id, resolution

from mimir.analyze import Analysis

# -- TypeScript / TSX / JavaScript ----------------------------------------------------------------

TS_PROJECT = {
    "src/index.ts": """
        export * from './shapes';
        export { area as computeArea } from './geometry';
        """,
    "src/geometry.ts": """
        export interface Point { x: number; y: number; }

        export function area(s: { area(): number }): number {
          return s.area();
        }

        export function distance(a: Point, b: Point): number {
          return Math.hypot(a.x - b.x, a.y - b.y);
        }
        """,
    "src/shapes.ts": """
        import { Point } from './geometry';

        export interface Shape {
          area(): number;
        }

        export abstract class Base {
          describe(): string { return `shape ${this.area()}`; }
          abstract area(): number;
        }

        export class Circle extends Base implements Shape {
          constructor(public center: Point, public r: number) { super(); }
          area(): number { return Math.PI * this.r * this.r; }
        }
        """,
    "src/app.tsx": """
        import React from 'react';
        import { Circle, computeArea } from './index';
        import * as geo from './geometry.js';

        export function App() {
          const c = new Circle({ x: 0, y: 0 }, 1);
          return <div>{computeArea(c)} {geo.distance(c.center, c.center)}</div>;
        }
        """,
    "lib/near.js": """
        const { distance } = require('../src/geometry');

        function near(a, b) {
          return distance(a, b) < 1;
        }

        module.exports = { near };
        """,
}


@pytest.fixture(scope="module")
def ts_analysis() -> Analysis:
    return analyze(TS_PROJECT)


def test_ts_imports_resolve_extensions_index_and_require(ts_analysis: Analysis) -> None:
    assert import_pairs(ts_analysis) == {
        ("src/index.ts", "src/shapes.ts"),
        ("src/index.ts", "src/geometry.ts"),
        ("src/shapes.ts", "src/geometry.ts"),
        ("src/app.tsx", "src/index.ts"),
        ("src/app.tsx", "src/geometry.ts"),  # './geometry.js' is the compiled name of geometry.ts
        ("lib/near.js", "src/geometry.ts"),
    }
    by_pair = {(e.src_path, e.dst_path): e for e in ts_analysis.imports.edges}
    assert by_pair[("src/index.ts", "src/shapes.ts")].names == ("*",)
    assert by_pair[("src/index.ts", "src/geometry.ts")].bound_names() == {"computeArea": "area"}
    assert by_pair[("src/app.tsx", "src/geometry.ts")].binding == "geo"
    assert [(u.path, u.module, u.bound) for u in ts_analysis.imports.unresolved] == [
        ("src/app.tsx", "react", ("React",))
    ]


def test_ts_calls_follow_re_exports_and_namespaces(ts_analysis: Analysis) -> None:
    g = ts_analysis.graph
    app = node_id(g, "src/app.tsx", "App")
    circle = node_id(g, "src/shapes.ts", "Circle")
    assert resolution(g, "calls", app, circle) == "import"  # new Circle() via index.ts's export *
    assert resolution(g, "calls", app, node_id(g, "src/geometry.ts", "area")) == "import"  # computeArea alias
    distance = node_id(g, "src/geometry.ts", "distance")
    assert resolution(g, "calls", app, distance) == "import"  # geo.distance
    assert resolution(g, "calls", node_id(g, "lib/near.js", "near"), distance) == "import"  # require
    # this.area() in Base resolves within the class
    base_area = node_id(g, "src/shapes.ts", "Base.area")
    assert resolution(g, "calls", node_id(g, "src/shapes.ts", "Base.describe"), base_area) == "local"


def test_ts_inherits_extends_and_implements(ts_analysis: Analysis) -> None:
    g = ts_analysis.graph
    circle = node_id(g, "src/shapes.ts", "Circle")
    assert resolution(g, "inherits", circle, node_id(g, "src/shapes.ts", "Base")) == "local"
    assert resolution(g, "inherits", circle, node_id(g, "src/shapes.ts", "Shape")) == "local"
    assert {e.target for e in g.edges("contains", circle)} == {
        node_id(g, "src/shapes.ts", "Circle.constructor"),
        node_id(g, "src/shapes.ts", "Circle.area"),
    }
    point = node_id(g, "src/geometry.ts", "Point")
    assert resolution(g, "references", node_id(g, "src/geometry.ts", "distance"), point) == "local"


def test_ts_index_reexporter_ranks_above_its_importer(ts_analysis: Analysis) -> None:
    ranks = list(ts_analysis.ranks.files)
    assert ranks[0] == "src/geometry.ts"  # imported by every other file
    assert ranks.index("src/index.ts") < ranks.index("src/app.tsx")


# -- Go -------------------------------------------------------------------------------------------

GO_PROJECT = {
    "go.mod": """
        module example.com/shop

        go 1.22
        """,
    "cmd/server/main.go": """
        package main

        import (
            "fmt"

            "example.com/shop/internal/store"
            u "example.com/shop/pkg/util"
        )

        func main() {
            s := store.New()
            fmt.Println(s.Get("a"), u.Clean(" x "))
        }
        """,
    "internal/store/store.go": """
        package store

        import "example.com/shop/pkg/util"

        type Base struct{}

        func (b *Base) Close() error { return nil }

        type Store struct {
            Base
            items map[string]string
        }

        func New() *Store { return &Store{items: map[string]string{}} }

        func (s *Store) Get(k string) string { return util.Clean(s.items[k]) + helper() }
        """,
    "internal/store/helpers.go": """
        package store

        func helper() string { return "" }

        // Size is declared apart from its receiver type, as Go allows within a package.
        func (s *Store) Size() int { return len(s.items) }
        """,
    "internal/store/store_test.go": """
        package store

        import "testing"

        func TestGet(t *testing.T) { New().Get("k") }
        """,
    "pkg/util/util.go": """
        package util

        import "strings"

        func Clean(s string) string { return strings.TrimSpace(s) }
        """,
}


@pytest.fixture(scope="module")
def go_analysis() -> Analysis:
    return analyze(GO_PROJECT)


def test_go_imports_resolve_packages_via_go_mod(go_analysis: Analysis) -> None:
    assert import_pairs(go_analysis) == {
        ("cmd/server/main.go", "internal/store/store.go"),
        ("cmd/server/main.go", "internal/store/helpers.go"),  # the whole package, tests excluded
        ("cmd/server/main.go", "pkg/util/util.go"),
        ("internal/store/store.go", "pkg/util/util.go"),
    }
    bindings = {(e.src_path, e.dst_path): e.binding for e in go_analysis.imports.edges}
    assert bindings[("cmd/server/main.go", "pkg/util/util.go")] == "u"
    assert bindings[("cmd/server/main.go", "internal/store/store.go")] == "store"
    assert {u.module for u in go_analysis.imports.unresolved} == {"fmt", "strings", "testing"}
    assert go_analysis.imports.packages["internal/store/helpers.go"] == "store"
    assert "go.mod" in go_analysis.skipped


def test_go_calls_embedding_and_methods(go_analysis: Analysis) -> None:
    g = go_analysis.graph
    main = node_id(g, "cmd/server/main.go", "main")
    clean = node_id(g, "pkg/util/util.go", "Clean")
    get = node_id(g, "internal/store/store.go", "Store.Get")
    assert resolution(g, "calls", main, node_id(g, "internal/store/store.go", "New")) == "import"
    assert resolution(g, "calls", main, clean) == "import"  # u.Clean through the alias
    assert resolution(g, "calls", main, get) == "import"  # s.Get: the only Get, in an imported file
    assert resolution(g, "calls", get, clean) == "import"
    assert (
        resolution(g, "calls", get, node_id(g, "internal/store/helpers.go", "helper")) == "import"
    )  # package
    test = node_id(g, "internal/store/store_test.go", "TestGet")
    assert resolution(g, "calls", test, node_id(g, "internal/store/store.go", "New")) == "import"
    store = node_id(g, "internal/store/store.go", "Store")
    assert resolution(g, "inherits", store, node_id(g, "internal/store/store.go", "Base")) == "local"
    # receiver methods belong to their type, even when declared in another file of the package
    size = node_id(g, "internal/store/helpers.go", "Store.Size")
    assert {get, size} <= {e.target for e in g.edges("contains", store)}
    assert next(iter(go_analysis.ranks.files)) == "pkg/util/util.go"


# -- Rust -----------------------------------------------------------------------------------------

RUST_PROJECT = {
    "src/lib.rs": """
        pub mod shapes;
        mod util;

        pub use shapes::Circle;

        pub fn total(items: &[Circle]) -> f64 {
            let unit = Circle::new(1.0);
            items.iter().map(|c| c.area()).sum::<f64>() + unit.r
        }
        """,
    "src/shapes/mod.rs": """
        pub mod circle;

        pub use self::circle::Circle;

        pub trait Shape {
            fn area(&self) -> f64;
        }
        """,
    "src/shapes/circle.rs": """
        use super::Shape;
        use crate::util::square;
        use std::f64::consts::PI;

        pub struct Circle {
            pub r: f64,
        }

        impl Circle {
            pub fn new(r: f64) -> Self {
                Circle { r }
            }
        }

        impl Shape for Circle {
            fn area(&self) -> f64 {
                println!("area");
                PI * square(self.r)
            }
        }
        """,
    "src/util.rs": """
        pub fn square(x: f64) -> f64 {
            x * x
        }
        """,
}


@pytest.fixture(scope="module")
def rust_analysis() -> Analysis:
    return analyze(RUST_PROJECT)


def test_rust_mod_and_use_paths_resolve(rust_analysis: Analysis) -> None:
    edges = {(e.src_path, e.dst_path, e.names, e.binding) for e in rust_analysis.imports.edges}
    assert edges == {
        ("src/lib.rs", "src/shapes/mod.rs", (), "shapes"),  # pub mod shapes;
        ("src/lib.rs", "src/util.rs", (), "util"),  # mod util;
        ("src/lib.rs", "src/shapes/mod.rs", ("Circle",), None),  # use shapes::Circle (2018 paths)
        ("src/shapes/mod.rs", "src/shapes/circle.rs", (), "circle"),
        ("src/shapes/mod.rs", "src/shapes/circle.rs", ("Circle",), None),  # self::circle::Circle
        ("src/shapes/circle.rs", "src/shapes/mod.rs", ("Shape",), None),  # super::Shape
        ("src/shapes/circle.rs", "src/util.rs", ("square",), None),  # crate::util::square
    }
    assert [u.module for u in rust_analysis.imports.unresolved] == ["std::f64::consts::PI"]


def test_rust_calls_impls_and_traits(rust_analysis: Analysis) -> None:
    g = rust_analysis.graph
    circle_rs = "src/shapes/circle.rs"
    circle = node_id(g, circle_rs, "Circle")
    area = node_id(g, circle_rs, "Circle.area")
    assert resolution(g, "inherits", circle, node_id(g, "src/shapes/mod.rs", "Shape")) == "import"
    assert resolution(g, "calls", area, node_id(g, "src/util.rs", "square")) == "import"
    assert not [e for e in g.callees(area) if g.nodes[e.target].name == "println"]  # macros are not calls
    total = node_id(g, "src/lib.rs", "total")
    assert resolution(g, "calls", total, node_id(g, circle_rs, "Circle.new")) == "import"  # Circle::new
    assert {e.target for e in g.edges("contains", circle)} == {node_id(g, circle_rs, "Circle.new"), area}
    assert list(rust_analysis.ranks.files)[-1] == "src/lib.rs"  # the crate root is imported by nobody


# -- Java -----------------------------------------------------------------------------------------

JAVA_ROOT = "src/main/java/com/acme"
JAVA_PROJECT = {
    f"{JAVA_ROOT}/model/Animal.java": """
        package com.acme.model;

        public abstract class Animal {
            public abstract String sound();

            public String describe() {
                return name() + ": " + sound();
            }

            protected String name() {
                return "animal";
            }
        }
        """,
    f"{JAVA_ROOT}/model/Pet.java": """
        package com.acme.model;

        public interface Pet {
            default String greet() {
                return "hi";
            }
        }
        """,
    f"{JAVA_ROOT}/model/Dog.java": """
        package com.acme.model;

        public class Dog extends Animal implements Pet {
            @Override
            public String sound() {
                return "woof";
            }
        }
        """,
    f"{JAVA_ROOT}/util/Strings.java": """
        package com.acme.util;

        public final class Strings {
            public static String shout(String s) {
                return s.toUpperCase();
            }
        }
        """,
    f"{JAVA_ROOT}/App.java": """
        package com.acme;

        import com.acme.model.Dog;
        import com.acme.util.Strings;
        import java.util.List;

        public class App {
            public static void main(String[] args) {
                Dog d = new Dog();
                System.out.println(Strings.shout(d.describe()));
            }
        }
        """,
}


@pytest.fixture(scope="module")
def java_analysis() -> Analysis:
    return analyze(JAVA_PROJECT)


def test_java_imports_and_packages(java_analysis: Analysis) -> None:
    assert {(e.src_path, e.dst_path, e.names) for e in java_analysis.imports.edges} == {
        (f"{JAVA_ROOT}/App.java", f"{JAVA_ROOT}/model/Dog.java", ("Dog",)),
        (f"{JAVA_ROOT}/App.java", f"{JAVA_ROOT}/util/Strings.java", ("Strings",)),
    }
    assert [u.module for u in java_analysis.imports.unresolved] == ["java.util.List"]
    assert java_analysis.imports.packages[f"{JAVA_ROOT}/model/Dog.java"] == "com.acme.model"


def test_java_calls_inherits_and_package_visibility(java_analysis: Analysis) -> None:
    g = java_analysis.graph
    app, dog_java, animal_java = (
        f"{JAVA_ROOT}/App.java",
        f"{JAVA_ROOT}/model/Dog.java",
        f"{JAVA_ROOT}/model/Animal.java",
    )
    main = node_id(g, app, "App.main")
    dog = node_id(g, dog_java, "Dog")
    assert resolution(g, "calls", main, dog) == "import"  # new Dog()
    assert (
        resolution(g, "calls", main, node_id(g, f"{JAVA_ROOT}/util/Strings.java", "Strings.shout"))
        == "import"
    )
    assert resolution(g, "inherits", dog, node_id(g, animal_java, "Animal")) == "import"  # same package
    assert resolution(g, "inherits", dog, node_id(g, f"{JAVA_ROOT}/model/Pet.java", "Pet")) == "import"
    describe = node_id(g, animal_java, "Animal.describe")
    assert (
        resolution(g, "calls", describe, node_id(g, animal_java, "Animal.name")) == "local"
    )  # implicit this
    assert resolution(g, "calls", describe, node_id(g, animal_java, "Animal.sound")) == "local"
    assert edge(g, "calls", main, node_id(g, dog_java, "Dog.sound")) is None
    assert g.nodes[node_id(g, dog_java, "Dog.sound")].signature == "public String sound() {"
