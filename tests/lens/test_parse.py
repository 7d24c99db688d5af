"""Tests for the parse stage: tree-sitter symbols, ctags fallback, chunking and BM25 tokens."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import pytest

from lens.parse import parse_batch, parse_file
from lens.parse.chunks import build_chunks, window_chunks
from lens.parse.ctags import ctags_symbols, find_ctags
from lens.parse.model import Chunk, Symbol
from lens.parse.tokens import query_tokens, tokenize
from lens.parse.treesitter import extract_symbols

Row = tuple[str, str, str | None, int, int]


def rows(lang: str, src: str) -> set[Row]:
    return {
        (s.name, s.kind, s.container, s.start_line, s.end_line)
        for s in extract_symbols(lang, textwrap.dedent(src).encode())
    }


# --- tree-sitter symbols ---------------------------------------------------------------------------

PYTHON_SRC = '''\
"""Module."""
import os

MAX_RETRIES = 3
_DEFAULT_TIMEOUT: float = 2.5
lowercase = 1


@dataclass
class Client(Base):
    LIMIT = 10

    def __init__(self, url):
        self.url = url

    @property
    def host(self):
        def strip(s):
            return s.strip()
        return strip(self.url)


def main():
    return Client("x")
'''


def test_python_symbols() -> None:
    assert rows("python", PYTHON_SRC) == {
        ("MAX_RETRIES", "constant", None, 4, 4),
        ("_DEFAULT_TIMEOUT", "constant", None, 5, 5),
        ("Client", "class", None, 10, 20),
        ("__init__", "method", "Client", 13, 14),
        ("host", "method", "Client", 17, 20),
        ("strip", "function", "host", 18, 19),
        ("main", "function", None, 23, 24),
    }


def test_python_name_line_and_decorator_chunk() -> None:
    result = parse_file("pkg/client.py", "python", PYTHON_SRC.encode())
    assert result.parser == "tree-sitter"
    client = next(s for s in result.symbols if s.name == "Client")
    assert client.line == 10 and client.start_line == 10  # the class line, not the decorator
    chunk = next(c for c in result.chunks if c.name == "Client")
    assert (chunk.start_line, chunk.end_line) == (9, 20)  # the chunk includes the decorator
    assert chunk.text.splitlines()[0] == "# pkg/client.py :: class Client"
    assert chunk.text.splitlines()[1] == "@dataclass"


JS_SRC = """\
const path = require("path");
export const DEFAULT_PORT = 8080;
let counter = 0;

export function serve(port) {
  return port;
}

const handler = async (req) => {
  return req;
};

class Server extends Base {
  constructor(opts) {
    super(opts);
  }

  listen() {
    return 1;
  }

  onClose = () => {};
}

Server.prototype.legacy = function () {};
module.exports.helper = function () {};
"""


def test_javascript_symbols() -> None:
    assert rows("javascript", JS_SRC) == {
        ("DEFAULT_PORT", "constant", None, 2, 2),
        ("serve", "function", None, 5, 7),
        ("handler", "function", None, 9, 11),
        ("Server", "class", None, 13, 23),
        ("constructor", "method", "Server", 14, 16),
        ("listen", "method", "Server", 18, 20),
        ("onClose", "method", "Server", 22, 22),
        ("legacy", "method", "Server", 25, 25),
        ("helper", "function", None, 26, 26),
    }


TS_SRC = """\
export interface Shape {
  area(): number;
  name: string;
}

export enum Color {
  Red,
  Green,
}

export type Id = string | number;

export const MAX_SIZE = 100;

export abstract class Base implements Shape {
  abstract area(): number;
  get name(): string {
    return "base";
  }
}

namespace Geometry {
  export function distance(a: number, b: number): number {
    return Math.abs(a - b);
  }
}

export const square = (x: number): number => x * x;
"""


def test_typescript_symbols() -> None:
    assert rows("typescript", TS_SRC) == {
        ("Shape", "interface", None, 1, 4),
        ("area", "method", "Shape", 2, 2),
        ("Color", "enum", None, 6, 9),
        ("Id", "type", None, 11, 11),
        ("MAX_SIZE", "constant", None, 13, 13),
        ("Base", "class", None, 15, 20),
        ("area", "method", "Base", 16, 16),
        ("name", "method", "Base", 17, 19),
        ("Geometry", "module", None, 22, 26),
        ("distance", "function", "Geometry", 23, 25),
        ("square", "function", None, 28, 28),
    }


def test_tsx_symbols() -> None:
    src = """\
    type Props = { title: string };

    export function Header({ title }: Props) {
      return <h1 className="header">{title}</h1>;
    }

    export const Footer = () => <footer />;
    """
    assert rows("tsx", src) == {
        ("Props", "type", None, 1, 1),
        ("Header", "function", None, 3, 5),
        ("Footer", "function", None, 7, 7),
    }


GO_SRC = """\
package store

import "sync"

const DefaultSize = 16

const (
	ModeRead = iota
	ModeWrite
)

var ErrClosed = errors.New("closed")

type Store struct {
	mu   sync.Mutex
	data map[string]string
}

type Getter interface {
	Get(key string) (string, bool)
}

type Key = string

func New() *Store {
	return &Store{data: map[string]string{}}
}

func (s *Store) Get(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	return v, ok
}

func (l List[T]) Len() int { return len(l) }
"""


def test_go_symbols() -> None:
    assert rows("go", GO_SRC) == {
        ("DefaultSize", "constant", None, 5, 5),
        ("ModeRead", "constant", None, 8, 8),
        ("ModeWrite", "constant", None, 9, 9),
        ("ErrClosed", "variable", None, 12, 12),
        ("Store", "struct", None, 14, 17),
        ("Getter", "interface", None, 19, 21),
        ("Get", "method", "Getter", 20, 20),
        ("Key", "type", None, 23, 23),
        ("New", "function", None, 25, 27),
        ("Get", "method", "Store", 29, 34),
        ("Len", "method", "List", 36, 36),
    }


RUST_SRC = """\
use std::fmt;

pub const MAX: usize = 8;
static mut COUNTER: u32 = 0;

/// A 2-D point.
#[derive(Debug)]
pub struct Point {
    x: i32,
    y: i32,
}

pub enum Shape {
    Circle(f64),
}

pub type Pair = (Point, Point);

pub trait Area {
    fn area(&self) -> f64;
    fn describe(&self) -> String {
        String::new()
    }
}

impl<T> fmt::Display for Wrapper<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "w")
    }
}

impl Point {
    pub fn new(x: i32, y: i32) -> Self {
        Point { x, y }
    }
}

fn helper() {}

mod tests {
    fn it_works() {}
}

macro_rules! square {
    ($x:expr) => {
        $x * $x
    };
}
"""


def test_rust_symbols() -> None:
    assert rows("rust", RUST_SRC) == {
        ("MAX", "constant", None, 3, 3),
        ("COUNTER", "variable", None, 4, 4),
        ("Point", "struct", None, 8, 11),
        ("Shape", "enum", None, 13, 15),
        ("Pair", "type", None, 17, 17),
        ("Area", "trait", None, 19, 24),
        ("area", "method", "Area", 20, 20),
        ("describe", "method", "Area", 21, 23),
        ("fmt", "method", "Wrapper", 27, 29),
        ("new", "method", "Point", 33, 35),
        ("helper", "function", None, 38, 38),
        ("tests", "module", None, 40, 42),
        ("it_works", "function", "tests", 41, 41),
        ("square", "macro", None, 44, 48),
    }


JAVA_SRC = """\
package com.example;

import java.util.List;

@Service
public class UserService implements Service {
    public static final int MAX_USERS = 100;
    private final List<String> names;

    public UserService(List<String> names) {
        this.names = names;
    }

    @Override
    public String find(int id) {
        return names.get(id);
    }

    interface Listener {
        int PRIORITY = 1;
        void onUser(String name);
    }

    enum Status { ACTIVE, DISABLED }

    record Pair(String a, String b) {}
}
"""


def test_java_symbols() -> None:
    assert rows("java", JAVA_SRC) == {
        ("UserService", "class", None, 5, 27),
        ("MAX_USERS", "constant", "UserService", 7, 7),
        ("UserService", "method", "UserService", 10, 12),
        ("find", "method", "UserService", 14, 17),
        ("Listener", "interface", "UserService", 19, 22),
        ("PRIORITY", "constant", "Listener", 20, 20),
        ("onUser", "method", "Listener", 21, 21),
        ("Status", "enum", "UserService", 24, 24),
        ("Pair", "class", "UserService", 26, 26),
    }


@pytest.mark.parametrize(
    ("lang", "src"),
    [
        ("python", b"def f(:\n  class \x00\xff\n\tdef g(self) return\n"),
        ("javascript", b"function (((( { class { m() { ]]]"),
        ("typescript", b"interface X { a(: ; } enum {"),
        ("tsx", b"const A = () => <div><span></div>;"),
        ("go", b"package p\nfunc (s *) X( {\ntype struct {"),
        ("rust", b"impl<T for { fn x( -> { } mod"),
        ("java", b"class { void m( { } static final int = ;"),
        ("python", b""),
        ("go", b"\xff\xfe\x00\x00" * 100),
    ],
)
def test_malformed_source_does_not_raise(lang: str, src: bytes) -> None:
    result = parse_file("bad.src", lang, src)
    assert result.parser == "tree-sitter"
    for chunk in result.chunks:
        assert 1 <= chunk.start_line <= chunk.end_line


def test_unsupported_language_gets_windows() -> None:
    result = parse_file("notes.txt", "text", b"hello world\n" * 5)
    assert result.parser == "none"
    assert result.symbols == []
    assert [(c.start_line, c.end_line, c.kind) for c in result.chunks] == [(1, 5, "window")]
    result = parse_file("x.unknown", None, b"")
    assert result.chunks == [] and result.parser == "none"


# --- ctags -------------------------------------------------------------------------------------------

C_SRC = b"""\
#include <stdio.h>

#define BUF_SIZE 64

typedef unsigned int uint;

struct point {
    int x;
    int y;
};

enum color { RED, GREEN };

static int counter = 0;

int add(int a, int b);

int add(int a, int b)
{
    return a + b;
}
"""

needs_ctags = pytest.mark.skipif(
    find_ctags() is None, reason="universal-ctags with JSON output is not installed (/usr/bin/ctags)"
)


@needs_ctags
def test_ctags_c_symbols() -> None:
    syms = ctags_symbols([("src/math.c", C_SRC)])
    assert {(s.name, s.kind, s.container, s.start_line, s.end_line) for s in syms["src/math.c"]} == {
        ("BUF_SIZE", "constant", None, 3, 3),
        ("uint", "type", None, 5, 5),
        ("point", "struct", None, 7, 10),
        ("color", "enum", None, 12, 12),
        ("counter", "variable", None, 14, 14),
        ("add", "function", None, 18, 21),
    }


@needs_ctags
def test_ctags_batch_keeps_paths_and_cpp_scopes() -> None:
    cpp = (
        b"namespace ns {\nclass Foo {\n public:\n  void bar();\n};\n}\nvoid ns::Foo::bar() {\n  return;\n}\n"
    )
    ruby = b"class Greeter\n  def hello\n    puts 'hi'\n  end\nend\n"
    out = ctags_symbols([("a/x.cpp", cpp), ("b/x.rb", ruby), ("c/README", b"just text\n")])
    assert set(out) == {"a/x.cpp", "b/x.rb", "c/README"}
    assert ("bar", "method", "Foo", 7, 9) in {
        (s.name, s.kind, s.container, s.start_line, s.end_line) for s in out["a/x.cpp"]
    }
    assert {(s.name, s.kind, s.container) for s in out["b/x.rb"]} == {
        ("Greeter", "class", None),
        ("hello", "method", "Greeter"),
    }
    assert out["c/README"] == []


@needs_ctags
def test_parse_batch_mixes_tree_sitter_and_ctags() -> None:
    results = parse_batch(
        [
            ("m.py", "python", b"def f():\n    return 1\n"),
            ("math.c", "c", C_SRC),
            ("notes.md", "markdown", b"# Title\n\ntext\n"),
        ]
    )
    assert [r.parser for r in results] == ["tree-sitter", "ctags", "none"]
    add_chunk = next(c for c in results[1].chunks if c.name == "add")
    assert (add_chunk.start_line, add_chunk.end_line, add_chunk.kind) == (18, 21, "function")


@needs_ctags
def test_ctags_crash_only_loses_the_bad_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import lens.parse.ctags as ctags_mod

    real_run = ctags_mod._run

    def flaky(exe: str, files: Sequence[tuple[str, bytes]], timeout: float) -> dict[str, list[Symbol]]:
        if any(path == "bad.c" for path, _ in files):
            raise ctags_mod._CtagsCrashed("simulated crash")
        return real_run(exe, files, timeout)

    monkeypatch.setattr(ctags_mod, "_run", flaky)
    good = [(f"ok{i}.c", b"int f%d(void)\n{\n  return 0;\n}\n" % i) for i in range(5)]
    out = ctags_mod.ctags_symbols([*good[:2], ("bad.c", b"int x;\n"), *good[2:]])
    assert sorted(out) == [f"ok{i}.c" for i in range(5)]
    assert [s.name for s in out["ok3.c"]] == ["f3"]


def test_ctags_missing_returns_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    import lens.parse.ctags as ctags_mod

    monkeypatch.setattr(ctags_mod, "find_ctags", lambda: None)
    assert ctags_mod.ctags_symbols([("a.c", b"int x;\n")]) == {}
    results = parse_batch([("a.c", "c", b"int main(void)\n{\n  return 0;\n}\n")])
    assert results[0].parser == "none"
    assert [(c.start_line, c.end_line) for c in results[0].chunks] == [(1, 4)]


# --- chunks ------------------------------------------------------------------------------------------


def sym(name: str, kind: str, start: int, end: int, container: str | None = None) -> Symbol:
    return Symbol(name, kind, container, start, end, start)


def spans(chunks: Sequence[Chunk]) -> list[tuple[int, int, str, str | None]]:
    return [(c.start_line, c.end_line, c.kind, c.name) for c in chunks]


def test_function_chunk_equals_its_span() -> None:
    src = "import os\n\n\ndef f(x):\n    y = x + 1\n    return y\n\n\nprint(f(1))\n"
    result = parse_file("a.py", "python", src.encode())
    assert spans(result.chunks) == [
        (1, 1, "window", None),
        (4, 6, "function", "f"),
        (9, 9, "window", None),
    ]
    f_chunk = result.chunks[1]
    assert f_chunk.text == "# a.py :: def f\ndef f(x):\n    y = x + 1\n    return y"


def test_leading_comments_join_the_chunk() -> None:
    src = "package p\n\n// Add adds.\n// It is pure.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n"
    result = parse_file("p.go", "go", src.encode())
    add = next(c for c in result.chunks if c.name == "Add")
    assert (add.start_line, add.end_line) == (3, 7)
    assert next(s for s in result.symbols if s.name == "Add").start_line == 5


def test_long_function_split_into_overlapping_windows() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(118))
    src = f"def big():\n{body}    return 0\n"  # lines 1..120
    result = parse_file("big.py", "python", src.encode())
    assert spans(result.chunks) == [
        (1, 60, "function", "big"),
        (51, 110, "function", "big"),
        (101, 120, "function", "big"),
    ]
    assert all(c.text.startswith("# big.py :: def big\n") for c in result.chunks)


def test_small_class_is_one_chunk_large_class_splits_per_method() -> None:
    small = "class A:\n    def a(self):\n        return 1\n\n    def b(self):\n        return 2\n"
    assert spans(parse_file("s.py", "python", small.encode()).chunks) == [(1, 6, "class", "A")]

    methods = "".join(
        f"    def m{i}(self):\n" + "".join(f"        v = {j}\n" for j in range(8)) + "\n" for i in range(7)
    )  # 7 methods x 10 lines
    big = f"class Big:\n    '''Doc.'''\n\n{methods}"
    chunks = parse_file("b.py", "python", big.encode()).chunks
    assert spans(chunks)[0] == (1, 2, "window", None)
    assert chunks[0].text.splitlines()[0] == "# b.py :: class Big"
    assert spans(chunks)[1:] == [(4 + 10 * i, 12 + 10 * i, "method", f"m{i}") for i in range(7)]
    assert chunks[1].text.splitlines()[0] == "# b.py :: class Big :: def m0"


def test_window_fallback_and_whitespace_skipped() -> None:
    text = "".join(f"line {i}\n" for i in range(1, 101))
    assert spans(window_chunks("f.txt", text)) == [
        (1, 40, "window", None),
        (31, 70, "window", None),
        (61, 100, "window", None),
    ]
    # A blank stretch yields no window and blank edge lines are trimmed.
    gappy = "a = 1\n" + "\n" * 50 + "   \n" * 30 + "b = 2\n"
    assert spans(window_chunks("g.py", gappy)) == [(1, 1, "window", None), (82, 82, "window", None)]
    assert window_chunks("e.py", "\n\n   \n") == []


def test_chunks_from_ctags_style_symbols() -> None:
    text = "".join(f"l{i}\n" for i in range(1, 31))
    chunks = build_chunks(
        "x.rb", text, [sym("go", "method", 5, 9, "Car"), sym("K", "constant", 2, 2)], "ruby"
    )
    assert spans(chunks) == [(1, 4, "window", None), (5, 9, "method", "go"), (10, 30, "window", None)]
    assert chunks[1].text.splitlines()[0] == "# x.rb :: Car :: method go"


def test_rust_impl_groups_methods() -> None:
    result = parse_file("lib.rs", "rust", RUST_SRC.encode())
    impl_chunks = [c for c in result.chunks if c.kind == "impl"]
    assert [(c.start_line, c.end_line, c.name) for c in impl_chunks] == [
        (26, 30, "Wrapper"),
        (32, 36, "Point"),
    ]
    point = next(c for c in result.chunks if c.name == "Point" and c.kind == "struct")
    assert (point.start_line, point.end_line) == (6, 11)  # doc comment and attribute included


# --- tokens ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("getUserName", ["get", "user", "name", "getusername"]),
        ("get_user_name", ["get", "user", "name", "getusername"]),
        ("GetUserName", ["get", "user", "name", "getusername"]),
        ("getHTTPResponse", ["get", "http", "response", "gethttpresponse"]),
        ("XMLHttpRequest", ["xml", "http", "request", "xmlhttprequest"]),
        ("MAX_RETRY_COUNT", ["max", "retry", "count", "maxretrycount"]),
        ("utf8Decode", ["utf8", "decode", "utf8decode"]),
        ("int64", ["int64"]),
        ("HTTP2Server", ["http2", "server", "http2server"]),
        ("x = y + 1", []),
        ("status 404 0x1F", ["status", "404", "0x1f"]),
        ("__init__", ["init"]),
        ("getX", ["get", "getx"]),
        ("foo.bar(baz)", ["foo", "bar", "baz"]),
        ("größeÄnderung", ["größe", "änderung", "größeänderung"]),
        ("naïve_café", ["naïve", "café", "naïvecafé"]),
        ("日本語 変数", ["日本語", "変数"]),
    ],
)
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected
    assert query_tokens(text) == expected


def test_tokenize_spellings_share_terms_and_keeps_frequency() -> None:
    assert set(tokenize("getUserName")) == set(tokenize("get_user_name"))
    assert tokenize("foo foo") == ["foo", "foo"]
    assert tokenize("a" * 500) == []


def test_corpus_smoke_if_available() -> None:
    root = "/root/.cache/mimir-lens/corpora/django/src"
    if not os.path.isdir(root):
        pytest.skip("django corpus not present")
    seen = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py") and seen < 50:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as fh:
                    result = parse_file(path, "python", fh.read())
                assert result.parser == "tree-sitter"
                seen += 1
    assert seen > 0
