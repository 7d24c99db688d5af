"""Embedding throughput of MiniLMEmbedder on realistic code chunks, per runtime, and the quality cost of
truncation.

Chunks are ~30-line windows of .py files (the size of a function chunk), so the numbers reflect indexing
a real repository rather than short sentences. Usage:

    PYTHONPATH=src python benchmarks/embed_throughput.py [DIR] [-n 2000] [--batch-sizes 32]
        [--threads 2] [--max-tokens 128] [--backends onnxruntime,openvino] [--repeats 3]
        [--quality 1000] [--pipeline 3000]

Every configuration runs on every ``--backends`` entry (``auto``, ``openvino``, ``onnxruntime``; the
first is the reference) and prints one table: median chunks/s over ``--repeats`` timed runs, CPU seconds
per run, and the cosine between each chunk's vector and the reference backend's (min and mean).

``--quality N`` also measures code retrieval with each ``--max-tokens`` and backend: N functions with a
docstring, query = the docstring's first line, document = the function with its docstring removed; it
reports recall@1/@10 and MRR of finding each function among all N.

``--pipeline N`` measures Lens's embedding stage itself: DIR is indexed lexically (``embed=False``) into
a temporary data directory, then ``embed_pending`` (SQL reads, chunk texts, the model, float16 vectors,
committed batches) embeds the first N chunks (0 = all) with each backend, from an empty vectors table.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lens.index.embedder import BACKEND_CHOICES, MiniLMEmbedder

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


def csv_backends(text: str) -> list[str]:
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    for name in names:
        if name not in BACKEND_CHOICES:
            raise argparse.ArgumentTypeError(f"unknown backend {name!r}; choose from {BACKEND_CHOICES}")
    return names


def loaded(backend: str, **kwargs: int) -> MiniLMEmbedder:
    emb = MiniLMEmbedder(backend=backend, **kwargs)
    emb.load()
    return emb


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(min, mean) of the row-wise cosines of two arrays of unit rows."""
    c = np.sum(a * b, axis=1)
    return float(c.min()), float(c.mean())


def throughput(chunks: list[str], args: argparse.Namespace) -> None:
    header = [("backend", 14), ("max_tok", 7), ("threads", 7), ("batch", 5), ("chunks", 6)]
    header += [("med_s", 7), ("chunks/s", 8), ("cpu_s", 6), ("cos_min", 8), ("cos_mean", 8)]
    print(" ".join(f"{name:>{width}}" for name, width in header))
    for max_tokens in args.max_tokens:
        for threads in args.threads:
            for batch in args.batch_sizes:
                reference: np.ndarray | None = None
                for backend in args.backends:
                    emb = loaded(backend, intra_op_threads=threads, batch_size=batch, max_tokens=max_tokens)
                    emb.embed(chunks[: 2 * batch])  # warm-up: first runs allocate and tune kernels
                    walls, cpus = [], []
                    vectors = np.empty(0)
                    for _ in range(args.repeats):
                        t0, c0 = time.perf_counter(), time.process_time()
                        vectors = emb.embed(chunks)
                        walls.append(time.perf_counter() - t0)
                        cpus.append(time.process_time() - c0)
                    reference = vectors if reference is None else reference
                    wall = statistics.median(walls)
                    row = [(emb.backend_label(), 14), (max_tokens, 7), (threads, 7), (batch, 5)]
                    row += [(len(chunks), 6), (f"{wall:.2f}", 7), (f"{len(chunks) / wall:.1f}", 8)]
                    row += [(f"{statistics.median(cpus):.1f}", 6)]
                    row += [(f"{c:.5f}", 8) for c in cosines(vectors, reference)]
                    print(" ".join(f"{value:>{width}}" for value, width in row), flush=True)
                    if len(walls) > 1:
                        print(
                            f"{'':>14} runs (chunks/s): {', '.join(f'{len(chunks) / w:.1f}' for w in walls)}"
                        )


def quality(directory: Path, n: int, args: argparse.Namespace, probe: MiniLMEmbedder) -> None:
    """Docstring-to-code retrieval among n functions for each truncation length and backend, on all
    functions and on the long ones (> 128 tokens), the only ones a 128-token limit can change."""
    pairs = docstring_pairs(directory, n)
    lengths = np.array([len(e.ids) for e in probe._tokenizer.encode_batch([d for _, d in pairs])])
    long = lengths > 128
    print(f"\nretrieval: {len(pairs)} functions; query = first docstring line, doc = code minus docstring")
    print(f"doc tokens: median {np.median(lengths):.0f}; > 128: {long.sum()}; > 256: {(lengths > 256).sum()}")
    columns = ["R@1", "R@10", "MRR", "R@1 long", "R@10 long", "MRR long", "cos min", "cos mean"]
    print(f"{'backend':>14} {'max_tok':>7}", " ".join(f"{c:>9}" for c in columns))
    base: np.ndarray | None = None
    for max_tokens in args.max_tokens:
        for backend in args.backends:
            emb = loaded(backend, max_tokens=max_tokens)
            queries = emb.embed([q for q, _ in pairs])
            docs = emb.embed([d for _, d in pairs])
            scores = queries @ docs.T
            rank = (scores > scores.diagonal()[:, None]).sum(axis=1)  # 0 = the right function ranked first
            base = docs if base is None else base
            values: list[float] = []
            for sel in (np.ones_like(long), long):
                values += [np.mean(rank[sel] < 1), np.mean(rank[sel] < 10), np.mean(1.0 / (rank[sel] + 1))]
            values += list(cosines(docs, base))
            label = emb.backend_label()
            print(f"{label:>14} {max_tokens:>7}", " ".join(f"{v:>9.3f}" for v in values[:6]), end=" ")
            print(" ".join(f"{v:>9.5f}" for v in values[6:]), flush=True)


class EmbedCounter:
    """embed_pending's progress and stop callbacks: stop once ``target`` chunks have vectors."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.done = 0

    def progress(self, done: int, _total: int) -> None:
        self.done = done

    def reached(self) -> bool:
        return self.done >= self.target


def pipeline(directory: Path, limit: int, args: argparse.Namespace) -> None:
    """Lens's embedding pass (``embed_pending``) on a lexically indexed copy of ``directory``."""
    from lens.config import LensSettings
    from lens.engine import Lens
    from lens.index.embedding import embed_pending

    tmp = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    try:
        lens = Lens(LensSettings(data_dir=tmp / "data", embed=False))
        t0 = time.perf_counter()
        report = lens.index(directory, name="bench")
        shard = lens.catalog.require_shard("bench")
        conn = sqlite3.connect(shard)
        total = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        print(
            f"\npipeline: {directory} indexed lexically in {time.perf_counter() - t0:.1f} s; {total} chunks"
        )
        del report
        target = total if limit <= 0 else min(limit, total)
        columns = [("backend", 14), ("chunks", 6), ("seconds", 8), ("chunks/s", 8), ("cpu_s", 7)]
        print(" ".join(f"{name:>{width}}" for name, width in columns))
        for backend in args.backends:
            threads = args.threads[0]
            emb = loaded(backend, intra_op_threads=threads, batch_size=args.batch_sizes[0], max_tokens=128)
            emb.embed(["warm-up chunk"] * 32)
            conn.execute("DELETE FROM vectors")
            conn.commit()
            counter = EmbedCounter(target)
            t0, c0 = time.perf_counter(), time.process_time()
            embedded = embed_pending(shard, emb, progress=counter.progress, should_stop=counter.reached)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            row = [(emb.backend_label(), 14), (embedded, 6), (f"{dt:.1f}", 8)]
            row += [(f"{embedded / dt:.1f}", 8), (f"{cpu:.1f}", 7)]
            print(" ".join(f"{value:>{width}}" for value, width in row), flush=True)
        conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    default_dir = DJANGO if DJANGO.is_dir() else PROJECT_SRC
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", nargs="?", type=Path, default=default_dir)
    ap.add_argument("-n", type=int, default=2000, help="number of chunks (default 2000)")
    ap.add_argument("--batch-sizes", type=csv_ints, default=[32])
    ap.add_argument("--threads", type=csv_ints, default=[len(os.sched_getaffinity(0))])
    ap.add_argument("--max-tokens", type=csv_ints, default=[128])
    ap.add_argument(
        "--backends",
        type=csv_backends,
        default=["onnxruntime", "openvino"],
        help="comma-separated; the first is the reference for the cosine columns",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    ap.add_argument("--quality", type=int, default=0, metavar="N", help="also run the retrieval check")
    ap.add_argument("--pipeline", type=int, default=-1, metavar="N", help="also time embed_pending (0 = all)")
    ap.add_argument("--skip-throughput", action="store_true", help="only --quality / --pipeline")
    args = ap.parse_args()

    chunks = code_chunks(args.directory, args.n)
    if not chunks:
        print(f"no .py chunks under {args.directory}", file=sys.stderr)
        return 1
    probe = MiniLMEmbedder(max_tokens=512, backend="onnxruntime")
    probe.load()
    lengths = [len(e.ids) for e in probe._tokenizer.encode_batch(chunks)]
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?"
    )
    print(f"machine: {len(os.sched_getaffinity(0))} cores, {cpu}")
    print(f"corpus: {args.directory}  chunks: {len(chunks)}  window: {WINDOW} lines")
    print(
        f"tokens/chunk (untruncated, cap 512): median {statistics.median(lengths):.0f}, "
        f"mean {statistics.fmean(lengths):.0f}; "
        + ", ".join(f"> {m}: {sum(x > m for x in lengths) / len(lengths):.0%}" for m in (128, 256))
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on the cores skew the numbers)")
    if not args.skip_throughput:
        throughput(chunks, args)
    if args.quality:
        quality(args.directory, args.quality, args, probe)
    if args.pipeline >= 0:
        pipeline(args.directory, args.pipeline, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
