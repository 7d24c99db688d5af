"""Embedding throughput of MiniLMEmbedder on realistic code chunks, and the quality cost of truncation.

Chunks are ~30-line windows of .py files (the size of a function chunk), so the numbers reflect indexing
a real repository rather than short sentences. Usage:

    PYTHONPATH=src python benchmarks/embed_throughput.py [DIR] [-n 2000] [--batch-sizes 16,32,64]
        [--threads 1,2] [--max-tokens 256,128] [--quality 1000]

``--quality N`` also measures code retrieval with each ``--max-tokens``: N functions with a docstring,
query = the docstring's first line, document = the function with its docstring removed; it reports
recall@1/@10 and MRR of finding each function among all N.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lens.index.embedder import MiniLMEmbedder

DJANGO = Path("/root/.cache/mimir-lens/corpora/django/src")
PROJECT_SRC = Path(__file__).resolve().parents[1] / "src"
WINDOW = 30


def python_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def code_chunks(root: Path, n: int) -> list[str]:
    """Non-overlapping 30-line windows with at least 10 non-blank lines, in a stable file order."""
    chunks: list[str] = []
    for path in python_files(root):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for start in range(0, len(lines), WINDOW):
            window = lines[start : start + WINDOW]
            if sum(1 for line in window if line.strip()) >= 10:
                chunks.append("\n".join(window))
                if len(chunks) == n:
                    return chunks
    return chunks


def docstring_pairs(root: Path, n: int) -> list[tuple[str, str]]:
    """(first docstring line, function source without its docstring) for functions of 5-60 lines."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in python_files(root):
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
                continue
            doc = ast.get_docstring(node)
            if not doc or not (5 <= node.end_lineno - node.lineno <= 60):
                continue
            query = doc.strip().splitlines()[0].strip()
            if len(query.split()) < 4 or query in seen:
                continue
            body0 = node.body[0]
            assert body0.end_lineno is not None
            kept = lines[node.lineno - 1 : body0.lineno - 1] + lines[body0.end_lineno : node.end_lineno]
            seen.add(query)
            pairs.append((query, "\n".join(kept)))
            if len(pairs) == n:
                return pairs
    return pairs


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def quality(directory: Path, n: int, max_tokens_list: list[int], probe: MiniLMEmbedder) -> None:
    """Docstring-to-code retrieval among n functions for each truncation length, on all functions and
    on the long ones (> 128 tokens), the only ones a 128-token limit can change."""
    pairs = docstring_pairs(directory, n)
    lengths = np.array([len(e.ids) for e in probe._tokenizer.encode_batch([d for _, d in pairs])])
    long = lengths > 128
    print(f"\nretrieval: {len(pairs)} functions; query = first docstring line, doc = code minus docstring")
    print(f"doc tokens: median {np.median(lengths):.0f}; > 128: {long.sum()}; > 256: {(lengths > 256).sum()}")
    columns = ["max_tok", "R@1", "R@10", "MRR", "R@1 long", "R@10 long", "MRR long", "cos to first"]
    print(" ".join(f"{c:>9}" for c in columns))
    base: np.ndarray | None = None
    for max_tokens in max_tokens_list:
        emb = MiniLMEmbedder(max_tokens=max_tokens)
        queries = emb.embed([q for q, _ in pairs])
        docs = emb.embed([d for _, d in pairs])
        scores = queries @ docs.T
        rank = (scores > scores.diagonal()[:, None]).sum(axis=1)  # 0 = the right function ranked first
        base = docs if base is None else base
        values: list[float] = []
        for sel in (np.ones_like(long), long):
            values += [np.mean(rank[sel] < 1), np.mean(rank[sel] < 10), np.mean(1.0 / (rank[sel] + 1))]
        values.append(float(np.mean(np.sum(docs * base, axis=1))))
        print(f"{max_tokens:>9}", " ".join(f"{v:>9.3f}" for v in values), flush=True)


def main() -> int:
    default_dir = DJANGO if DJANGO.is_dir() else PROJECT_SRC
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", nargs="?", type=Path, default=default_dir)
    ap.add_argument("-n", type=int, default=2000, help="number of chunks (default 2000)")
    ap.add_argument("--batch-sizes", type=csv_ints, default=[16, 32, 64])
    ap.add_argument("--threads", type=csv_ints, default=[os.cpu_count() or 1])
    ap.add_argument("--max-tokens", type=csv_ints, default=[256])
    ap.add_argument("--quality", type=int, default=0, metavar="N", help="also run the retrieval check")
    args = ap.parse_args()

    chunks = code_chunks(args.directory, args.n)
    if not chunks:
        print(f"no .py chunks under {args.directory}", file=sys.stderr)
        return 1
    probe = MiniLMEmbedder(max_tokens=512)
    probe.load()
    lengths = [len(e.ids) for e in probe._tokenizer.encode_batch(chunks)]
    print(f"corpus: {args.directory}  chunks: {len(chunks)}  window: {WINDOW} lines")
    print(
        f"tokens/chunk (untruncated, cap 512): median {statistics.median(lengths):.0f}, "
        f"mean {statistics.fmean(lengths):.0f}; "
        + ", ".join(f"> {m}: {sum(x > m for x in lengths) / len(lengths):.0%}" for m in (128, 256))
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on the cores skew the numbers)")
    header = ("max_tok", 7), ("threads", 7), ("batch", 5), ("chunks", 6), ("seconds", 8), ("chunks/s", 8)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'cpu_s':>7}")
    for max_tokens in args.max_tokens:
        for threads in args.threads:
            for batch in args.batch_sizes:
                emb = MiniLMEmbedder(intra_op_threads=threads, batch_size=batch, max_tokens=max_tokens)
                emb.load()
                emb.embed(chunks[: 2 * batch])  # warm-up: first runs allocate and tune kernels
                t0, c0 = time.perf_counter(), time.process_time()
                emb.embed(chunks)
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                row = (max_tokens, 7), (threads, 7), (batch, 5), (len(chunks), 6)
                print(
                    " ".join(f"{value:>{width}}" for value, width in row),
                    f"{dt:>8.2f} {len(chunks) / dt:>8.1f} {cpu:>7.1f}",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    if args.quality:
        quality(args.directory, args.quality, args.max_tokens, probe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
