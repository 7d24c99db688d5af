"""Latency of Lens's ranked (BM25) and semantic (MiniLM cosine) modes over one or more shards.

Usage (from the project root; wrap every timing run in the shared benchmark lock):

    flock /tmp/mimir-lens-bench.lock env PYTHONPATH=src python benchmarks/ranked_semantic.py \
        --corpus go-std --corpus jdk --data-dir DIR [--reuse-index] [--fill-vectors 1000] \
        [--embed-all [--embed-budget-s 150]] [--modes ranked,semantic] [--runs 20] [--json out.json]

What it does:

1. Fetches each corpus with ``../shared/corpora/fetch.sh`` and indexes it as its own repository (in
   ``--data-dir``, or a temporary directory removed at the end). ``--reuse-index`` keeps an existing one.
2. Gives the shards vectors, one of two ways:

   * ``--embed-all``: the real embedding pass (``Lens.embed``, MiniLM, every chunk). With
     ``--embed-budget-s S`` it stops after about S seconds and exits, so the pass can be run in slices
     (each under the lock) and resumes where it stopped. Real vectors, real semantic results.
   * ``--fill-vectors N``: for corpora too big to embed here (go-std + jdk have ~345k chunks; at ~50
     chunks/s that is ~2 hours). N random chunks per shard (seed 7) are embedded with the real
     embedder, exactly as the embedding pass would (same text, same float16 storage). Every other chunk
     then gets a copy of a random sampled vector plus Gaussian noise (per-dimension sigma 0.5/sqrt(384),
     cosine about 0.9 to its source), renormalized. The shard then holds one float16 vector per chunk,
     the real count and dimension, so the per-query work (matrix-vector product over every chunk, top-k
     selection, reading the hit chunks' files) is the real one; **which** chunks come first is not
     meaningful. Use it for latency only, never for quality. The shard's meta records
     ``bench_synthetic_vectors`` so a filled shard is never mistaken for a real one.
3. Times ``Searcher.search`` in-process, limit 100, for each mode: one untimed warm-up pass over the
   queries (loads the vector matrices and the model), then ``--runs`` rounds, each running every query
   once. In semantic and hybrid mode the query-embedding cache is cleared before every timed search, so
   every figure includes embedding the query (``--warm-query-cache`` keeps the cache instead).
   It also times the query embedding alone, and each shard's bare matrix-vector product.

Latency: p50 is the median, p95 the nearest-rank 95th percentile (with 20 runs: the 19th slowest).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _machine import cpu_and_ram, fetch_corpus, lens_commit
from lens.config import LensSettings
from lens.engine import Lens
from lens.index import shard as shardlib
from lens.index.builder import index_repository
from lens.index.catalog import Catalog
from lens.index.embedder import MiniLMEmbedder, default_embedder
from lens.index.embedding import embed_text, pending_counts
from lens.query.semantic import vector_table
from search_vs_ripgrep import RANKED_QUERIES

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FETCH = PROJECT.parent / "shared" / "corpora" / "fetch.sh"
MAX_FILE_BYTES = 1 << 20

# The ranked queries of benchmarks/search_vs_ripgrep.py, so ranked figures compare with earlier runs.
SYSTEMS_QUERIES = RANKED_QUERIES
DJANGO_QUERIES = [
    "validate email address format",
    "parse http request headers",
    "add a column in a database migration",
    "render template with context",
    "check csrf token on post request",
    "cache key with timeout",
    "hash and verify a password",
    "resolve url to view function",
    "paginate a queryset",
    "send email over smtp",
    "convert naive datetime to aware in current timezone",
]
QUERIES = {"django": DJANGO_QUERIES}
TARGET_MS = {"ranked": 20.0, "semantic": 50.0}


# --------------------------------------------------------------------------- helpers


def p95(xs: Sequence[float]) -> float:
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def table(title: str, headers: list[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(values))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in cells)]) + "\n"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_header(argv: list[str]) -> list[str]:
    cpu, ram_kib = cpu_and_ram()
    commit = lens_commit()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc), {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average at start {loadavg()}",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; Python {platform.python_version()};"
        f" numpy {np.__version__}; lens commit {commit}",
        f"command: {shlex.join(['python', *argv])}",
    ]


# --------------------------------------------------------------------------- vectors


def fill_vectors(shard: Path, embedder: MiniLMEmbedder, sample: int, seed: int = 7) -> dict[str, Any]:
    """Real vectors for ``sample`` random chunks, noisy copies of them for every other chunk (see above)."""
    conn = shardlib.connect(shard)
    try:
        meta = shardlib.get_meta(conn)
        embedded, total = pending_counts(conn)
        if embedded == total and meta.get("embed_model") == embedder.model_id:
            return dict(
                meta.get("bench_synthetic_vectors") or {"sampled": total, "filled": 0, "reused": True}
            )
        rng = random.Random(seed)
        rows = conn.execute(
            "SELECT c.id, c.hash, f.path, c.kind, c.name, c.start_line, c.end_line, c.file_id"
            " FROM chunks c JOIN files f ON f.id = c.file_id ORDER BY c.id"
        ).fetchall()
        picked = sorted(rng.sample(range(len(rows)), min(sample, len(rows))))
        texts = []
        for i in picked:
            _cid, _h, path, kind, name, start, end, file_id = rows[i]
            content = conn.execute("SELECT content FROM files WHERE id = ?", (file_id,)).fetchone()[0]
            texts.append(embed_text(path, kind, name, "\n".join(content.split("\n")[start - 1 : end])))
        t0 = time.perf_counter()
        base = embedder.embed(texts)
        embed_s = time.perf_counter() - t0
        np_rng = np.random.default_rng(seed)
        sampled_hashes = {rows[i][1] for i in picked}
        vectors: dict[str, bytes] = {
            rows[i][1]: base[j].astype(np.float16).tobytes() for j, i in enumerate(picked)
        }
        others = sorted({r[1] for r in rows} - sampled_hashes)
        for start in range(0, len(others), 50_000):
            block = others[start : start + 50_000]
            src = base[np_rng.integers(0, len(base), len(block))]
            noisy = src + np_rng.standard_normal(src.shape).astype(np.float32) * (
                0.5 / math.sqrt(src.shape[1])
            )
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            half = noisy.astype(np.float16)
            vectors.update((h, half[k].tobytes()) for k, h in enumerate(block))
        info = {"sampled": len(picked), "filled": len(others), "seed": seed, "embed_s": round(embed_s, 1)}
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM vectors")
        conn.executemany("INSERT INTO vectors(hash, vec) VALUES(?, ?)", vectors.items())
        version = int(meta.get("vectors_version", 0)) + 1
        shardlib.set_meta(
            conn,
            embed_model=embedder.model_id,
            embed_dim=embedder.dim,
            vectors_version=version,
            bench_synthetic_vectors=info,
        )
        conn.execute("COMMIT")
        return info
    finally:
        conn.close()


# --------------------------------------------------------------------------- timing


def make_probe() -> Callable[[], float]:
    """A fixed workload (float32 matrix-vector product, 100k x 384, ~7 ms on a calm host) timed before
    each round. The benchmark machine has phases, invisible in the load average, where both-core work
    takes about twice as long; the probe's spread shows whether a run fell into one."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((100_000, 384), dtype=np.float32)
    vector = rng.standard_normal(384, dtype=np.float32)

    def probe() -> float:
        t0 = time.perf_counter()
        matrix @ vector
        return time.perf_counter() - t0

    return probe


def time_mode(
    lens: Lens, mode: str, queries: list[str], runs: int, cold_query: bool, probe: Callable[[], float]
) -> dict[str, Any]:
    embedder = lens.searcher.embedder()
    clear = getattr(embedder, "clear_query_cache", None) if cold_query else None
    for q in queries:  # warm-up: vector matrices, model, SQLite pages
        lens.search(q, mode=mode, limit=100)
    times: dict[str, list[float]] = {q: [] for q in queries}
    hits: dict[str, int] = {}
    probes = []
    for _ in range(runs):
        probes.append(probe())
        for q in queries:
            if clear is not None:
                clear()
            t0 = time.perf_counter()
            res = lens.search(q, mode=mode, limit=100)
            times[q].append(time.perf_counter() - t0)
            hits[q] = len(res.results)
    rows = [{"query": q, "seconds": times[q], "hits": hits[q]} for q in queries]
    return {"rows": rows, "probe_seconds": probes}


def time_query_embedding(embedder: MiniLMEmbedder, queries: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        for q in queries:
            embedder.clear_query_cache()
            t0 = time.perf_counter()
            embedder.embed_query(q)
            out.append(time.perf_counter() - t0)
    return out


def time_scoring(lens: Lens, names: list[str], runs: int) -> dict[str, list[float]]:
    """The bare matrix-vector product per shard (the floor of semantic mode), in this process."""
    embedder = lens.searcher.embedder()
    assert embedder is not None
    query = embedder.embed_query(SYSTEMS_QUERIES[0])
    out: dict[str, list[float]] = {}
    for name in names:
        with lens.searcher.shards.view(name).snapshot() as snap:
            matrix = vector_table(snap, embedder.dim).matrix
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            matrix @ query
            times.append(time.perf_counter() - t0)
        out[name] = times
    return out


@dataclass
class Summary:
    rounds: int
    p50_by_query_ms: list[float]
    p95_by_query_ms: list[float]
    all_p95_ms: float  # nearest-rank p95 of every search in the rounds

    @property
    def median_p50_ms(self) -> float:
        return statistics.median(self.p50_by_query_ms)

    @property
    def median_p95_ms(self) -> float:
        return statistics.median(self.p95_by_query_ms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"median_p50_ms": self.median_p50_ms, "median_p95_ms": self.median_p95_ms}


def summarize(rows: list[dict[str, Any]], keep: list[bool]) -> Summary:
    """Per-query p50/p95 over the rounds in ``keep``."""
    kept = [[s for s, k in zip(r["seconds"], keep, strict=True) if k] for r in rows]
    return Summary(
        rounds=sum(keep),
        p50_by_query_ms=[statistics.median(x) * 1000 for x in kept],
        p95_by_query_ms=[p95(x) * 1000 for x in kept],
        all_p95_ms=p95([s * 1000 for x in kept for s in x]),
    )


def mode_table(mode: str, rows: list[dict[str, Any]]) -> tuple[str, Summary]:
    sm = summarize(rows, [True] * len(rows[0]["seconds"]))
    body: list[list[object]] = [
        [r["query"], r["hits"], f"{sm.p50_by_query_ms[i]:.1f}", f"{sm.p95_by_query_ms[i]:.1f}"]
        for i, r in enumerate(rows)
    ]
    for label, pick in (("median over queries", statistics.median), ("max over queries", max)):
        body.append([label, "", f"{pick(sm.p50_by_query_ms):.1f}", f"{pick(sm.p95_by_query_ms):.1f}"])
    return table(f"{mode} mode, limit 100 (ms)", ["query", "hits", "p50", "p95"], body), sm


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--corpus", action="append", required=True, help="corpus name for fetch.sh (repeatable)")
    ap.add_argument("--data-dir", type=Path, help="Lens data directory (default: a temporary one)")
    ap.add_argument("--reuse-index", action="store_true", help="use the index already in --data-dir")
    vec = ap.add_mutually_exclusive_group()
    vec.add_argument("--embed-all", action="store_true", help="real embedding pass over every chunk")
    vec.add_argument(
        "--fill-vectors", type=int, metavar="N", help="N real vectors per shard, noisy copies elsewhere"
    )
    ap.add_argument(
        "--embed-budget-s", type=float, help="with --embed-all: stop after about this long, then exit"
    )
    ap.add_argument("--modes", default="ranked,semantic", help="comma-separated: ranked, semantic, hybrid")
    ap.add_argument("--runs", type=int, default=20, help="timed rounds over the queries")
    ap.add_argument("--warm-query-cache", action="store_true", help="keep the query-embedding cache")
    ap.add_argument("--fetch", type=Path, default=DEFAULT_FETCH, help="path of fetch.sh")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    args = ap.parse_args(argv)

    header = machine_header(["benchmarks/ranked_semantic.py", *argv])
    if args.reuse_index and args.data_dir is None:
        sys.exit("--reuse-index needs --data-dir")
    temp_dir = None if args.data_dir else tempfile.mkdtemp(prefix="lens-bench-")
    data_dir: Path = args.data_dir or Path(temp_dir or "")
    try:
        report = run(args, data_dir, header)
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    if report is not None and args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _stopper(budget_s: float | None) -> Callable[[], bool]:
    started = time.monotonic()
    return lambda: budget_s is not None and time.monotonic() - started > budget_s


def run(args: argparse.Namespace, data_dir: Path, header: list[str]) -> dict[str, Any] | None:
    catalog = Catalog(data_dir)
    names: list[str] = args.corpus
    for name in names:
        if args.reuse_index and name in catalog.names():
            continue
        path = fetch_corpus(args.fetch, name)
        t0 = time.perf_counter()
        index_repository(catalog, name, path, full=True, max_file_bytes=MAX_FILE_BYTES)
        print(f"indexed {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    lens = Lens(LensSettings(data_dir=data_dir, embed=True), embedder_factory=default_embedder)
    embedder = lens.searcher.embedder()
    assert isinstance(embedder, MiniLMEmbedder)
    vectors: dict[str, Any] = {}
    for name in names:
        shard = catalog.require_shard(name)
        if args.embed_all:
            lens.embed(name, should_stop=_stopper(args.embed_budget_s))
        elif args.fill_vectors:
            vectors[name] = fill_vectors(shard, embedder, args.fill_vectors)
        with lens.searcher.shards.view(name).snapshot() as snap:
            embedded, total = pending_counts(snap.conn)
            synthetic = snap.meta.get("bench_synthetic_vectors")
        vectors[name] = {"embedded": embedded, "chunks": total, "synthetic": synthetic}
        print(
            f"{name}: {embedded} of {total} chunks have vectors; synthetic fill: {synthetic}", file=sys.stderr
        )
        if args.embed_all and embedded < total:
            print("embedding budget used up; run again to continue", file=sys.stderr)
            return None

    queries = list(dict.fromkeys(q for n in names for q in QUERIES.get(n, SYSTEMS_QUERIES)))
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, list[dict[str, Any]]] = {}
    summaries: dict[str, Summary] = {}
    probes: dict[str, list[float]] = {}
    probe = make_probe()
    for mode in modes:
        timed = time_mode(lens, mode, queries, args.runs, not args.warm_query_cache, probe)
        results[mode], probes[mode] = timed["rows"], timed["probe_seconds"]
    tables = []
    for mode in modes:
        text, summaries[mode] = mode_table(mode, results[mode])
        tables.append(text)
    embed_times = time_query_embedding(embedder, queries, max(3, args.runs // 4))
    scoring = time_scoring(lens, names, max(5, args.runs)) if any(m != "ranked" for m in modes) else {}
    end_load = loadavg()

    print("\n".join(header))
    for name in names:
        v = vectors[name]
        kind = (
            f"synthetic fill ({v['synthetic']['sampled']} real, {v['synthetic']['filled']} noisy copies)"
            if v["synthetic"]
            else "real MiniLM vectors"
        )
        print(f"{name}: {v['chunks']} chunks, {v['embedded']} with vectors; {kind}")
    print(
        f"queries: {len(queries)}; {args.runs} timed rounds after one warm-up round; limit 100;"
        f" query-embedding cache {'kept' if args.warm_query_cache else 'cleared before each search'}"
    )
    print(f"load average at end {end_load}\n")
    for text in tables:
        print(text)
    print(
        f"query embedding alone (MiniLM, {len(embed_times)} calls):"
        f" p50 {statistics.median(embed_times) * 1000:.1f} ms, p95 {p95(embed_times) * 1000:.1f} ms"
    )
    for name, times in scoring.items():
        print(
            f"matrix-vector product alone, {name} ({vectors[name]['embedded']} x {embedder.dim} float32):"
            f" p50 {statistics.median(times) * 1000:.1f} ms, p95 {p95(times) * 1000:.1f} ms"
        )
    print()
    every_probe = sorted(p * 1000 for ps in probes.values() for p in ps)
    if every_probe:
        print(
            f"probe before each round (100k x 384 float32 product; ~7 ms on a calm host):"
            f" min {every_probe[0]:.1f}, median {statistics.median(every_probe):.1f},"
            f" max {every_probe[-1]:.1f} ms"
        )
    for mode, sm in summaries.items():
        verdict = ""
        target = TARGET_MS.get(mode)
        if target is not None:
            within = sum(1 for x in sm.p95_by_query_ms if x <= target)
            met = "met" if max(sm.p95_by_query_ms) <= target else "NOT met"
            verdict = (
                f"; target p95 <= {target:.0f} ms: {met} ({within} of {len(results[mode])} queries within)"
            )
        print(
            f"{mode}: median p50 {sm.median_p50_ms:.1f} ms, median p95 {sm.median_p95_ms:.1f} ms,"
            f" max p95 {max(sm.p95_by_query_ms):.1f} ms, p95 of all searches {sm.all_p95_ms:.1f} ms{verdict}"
        )
    return {
        "header": header,
        "vectors": vectors,
        "queries": queries,
        "results": results,
        "summaries": {m: sm.to_dict() for m, sm in summaries.items()},
        "query_embedding_seconds": embed_times,
        "matrix_product_seconds": scoring,
        "probe_seconds": probes,
        "load_end": end_load,
    }


if __name__ == "__main__":
    main()
