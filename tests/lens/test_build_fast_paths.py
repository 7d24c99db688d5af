"""The full build's fast paths give exactly what their plain definitions give.

- ``_chunk_rows`` (ASCII files): each chunk's hash and BM25 tokens come from byte slices and from
  the file's lines tokenized once; they must equal ``text_hash(embed_text(...))`` and
  ``chunk_tokens(...)`` of the chunk's text, which is what deletes and the embedder recompute.
- ``_parsed_stream``: the process pool returns what a serial parse returns, in input order.
"""

from __future__ import annotations

import hashlib

import pytest

from lens.discover.model import LoadedFile
from lens.index import builder
from lens.index.builder import _chunk_rows, _parse_jobs, _parsed_stream, chunk_body, chunk_tokens
from lens.index.embedding import embed_text, text_hash
from lens.parse import parse_file
from lens.parse.model import Chunk

JAVA = b"""package demo;

/** A documented class. */
public class Demo {
    // a field
    static final int LIMIT_VALUE = 10;

    public Demo() {}

    /**
     * Reads things.
     */
    public int readAll(java.io.InputStream in) throws Exception {
        int total = 0;
        while (in.read() >= 0) { total++; }
        return total;
    }
}
"""

GO = (
    b'package main\n\nimport "fmt"\n\n// Greet says hello.\nfunc Greet(name string) {\n'
    b'\tfmt.Println("hi", name)\n}\n\ntype HTTPServer struct{ addr string }\n\n'
    b"func (s *HTTPServer) ServeHTTP() {}\n"
)


def _definition_rows(path: str, content: bytes, chunks: list[Chunk]) -> list[builder.ChunkRow]:
    """The rows by definition: each chunk's text is its lines of the file joined by newlines."""
    lines = content.decode("utf-8").split("\n")
    out: list[builder.ChunkRow] = []
    for c in chunks:
        text = chunk_body(lines, c.start_line, c.end_line)
        digest = text_hash(embed_text(path, c.kind, c.name, text))
        out.append((c.start_line, c.end_line, c.kind, c.name, digest, chunk_tokens(path, c.name, text)))
    return out


@pytest.mark.parametrize(
    ("path", "lang", "content"),
    [
        ("src/Demo.java", "java", JAVA),
        ("cmd/greet/main.go", "go", GO),
        ("win/crlf.py", "python", b"def crlf_function():\r\n    return 1\r\n\r\nclass K:\r\n    pass\r\n"),
        ("no_newline.py", "python", b"import os\n\ndef last():\n    return os.sep"),
        ("docs/notes.txt", "text", b"\n\n  leading blank lines\nsnake_case and camelCase words 404 0x1f\n\n"),
        ("d\u00e9j\u00e0/vu_path.py", "python", b"def ascii_body_in_unicode_dir():\n    return 2\n"),
        ("empty.py", "python", b""),
        (
            "unicode.py",
            "python",
            "def gr\u00fc\u00dfe(wert):\n    return 'Gr\u00f6\u00dfe' + wert\n".encode(),
        ),
    ],
)
def test_chunk_rows_equal_their_definition(path: str, lang: str, content: bytes) -> None:
    chunks = parse_file(path, lang, content, chunk_text=False).chunks
    assert _chunk_rows(path, content, chunks) == _definition_rows(path, content, chunks)


def test_chunk_rows_for_hand_made_spans() -> None:
    """Unnamed, empty-named and repeated chunks, a one-line file and spans reaching the last line."""
    content = b"alpha_beta = 1\n\nGammaDelta()\nlast line without newline"
    chunks = [
        Chunk(1, 1, "window", None, ""),
        Chunk(1, 4, "function", "", ""),
        Chunk(3, 4, "method", "GammaDelta", ""),
        Chunk(3, 4, "method", "GammaDelta", ""),
        Chunk(2, 2, "window", None, ""),
        Chunk(4, 4, "class", "x", ""),
    ]
    assert _chunk_rows("pkg/file.py", content, chunks) == _definition_rows("pkg/file.py", content, chunks)
    one = b"justOneLine"
    one_chunks = [Chunk(1, 1, "window", None, "")]
    assert _chunk_rows("a.txt", one, one_chunks) == _definition_rows("a.txt", one, one_chunks)
    assert _chunk_rows("a.txt", one, []) == []


def test_chunk_hash_is_the_embedder_hash() -> None:
    content = b"def f():\n    return 1\n"
    (row,) = _chunk_rows("m.py", content, [Chunk(1, 2, "function", "f", "")])
    assert row[4] == hashlib.sha256(b"m.py\nfunction f\ndef f():\n    return 1").hexdigest()


def _loaded(n: int) -> list[LoadedFile]:
    files = []
    for i in range(n):
        if i % 3 == 0:
            path, lang, content = f"pkg{i}/m{i}.go", "go", GO.replace(b"Greet", f"Greet{i}".encode())
        elif i % 3 == 1:
            path, lang, content = f"src/Demo{i}.java", "java", JAVA.replace(b"Demo", f"Demo{i}".encode())
        else:
            path, lang = f"lib/mod{i}.py", "python"
            content = f"def function_number_{i}(x):\n    return x * {i}\n".encode()
        files.append(LoadedFile(path, f"{i:040x}", content, hashlib.sha256(content).hexdigest(), lang))
    return files


def test_parallel_stream_equals_serial_parse() -> None:
    files = _loaded(300)
    expected = _parse_jobs([(f.path, f.lang, f.content) for f in files])
    got_files: list[LoadedFile] = []
    got: list[builder.Parsed] = []
    for batch, parsed in _parsed_stream(iter(files), len(files)):
        got_files.extend(batch)
        got.extend(parsed)
    assert got_files == files
    assert got == expected
