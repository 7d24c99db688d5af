"""Lens exact search against ripgrep on real corpora: index build, latency, and agreement of results.

Usage (from the project root):

    PYTHONPATH=src python benchmarks/search_vs_ripgrep.py --corpus go-std --corpus jdk \
        [--data-dir DIR] [--reuse-index] [--runs 7] [--json out.json]
    PYTHONPATH=src python benchmarks/search_vs_ripgrep.py --corpus linux --queries linux \
        --corpus-path linux=$(bash benchmarks/prepare_linux.sh)   # see prepare_linux.sh for why

What it does:

1. Fetches each corpus with ``../shared/corpora/fetch.sh`` and indexes it as its own repository, in a
   child process per corpus so the indexer's peak RSS can be read (``getrusage``). Without
   ``--data-dir`` the index goes to a temporary directory that is removed at the end; with
   ``--data-dir DIR --reuse-index`` an existing index is searched as it is.
2. Runs fixed query sets (selective literals, common literals, regexes, case-insensitive) with Lens
   exact mode in-process (default limit 100) and with ripgrep over the same trees, after one untimed
   warm-up run of each. Lens is single-threaded; ripgrep gets ``-j2`` (``--rg-threads``).
3. Checks results, as sets of (repo, path, line): "lines vs rg" compares every line Lens's exact engine
   matches (collected without a page limit) with ripgrep's output, ripgrep being run with flags that
   mirror Lens's skip policy (.gitignore, vendored directory names, minified suffixes, files over 1 MiB,
   binaries; hidden files included); each difference is classified with the shard's file tables.
   "paging" compares the pages of ``Searcher.search`` (limit 1000, following the cursor) with those
   lines, for queries with at most ``--verify-max`` lines.
4. Times ranked mode (and semantic mode when the shards already hold vectors).

Latency: p50 is the median, p95 the nearest-rank 95th percentile (with 7 runs: the slowest run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _machine import cpu_and_ram, fetch_corpus, lens_commit
from lens.discover.filters import MINIFIED_SUFFIXES, VENDORED_DIRS
from lens.index.catalog import Catalog
from lens.query.ast import Regex, Term, case_sensitive
from lens.query.exact import Deadline, ExactPlan, ExactState, search_snapshot
from lens.query.parser import parse_query
from lens.query.searcher import MAX_LIMIT, MAX_TIMEOUT_MS, Searcher

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FETCH = PROJECT.parent / "shared" / "corpora" / "fetch.sh"
MAX_FILE_BYTES = 1 << 20  # Lens's default; ripgrep gets --max-filesize 1M (same bytes)
MB = 1_000_000

# Each query is one term (literal or /regex/), optionally with case:; ripgrep gets the same pattern with
# -F for literals and -s/-i by Lens's case rule (smart case: lowercase-only terms are case-insensitive).
QUERY_SETS: dict[str, list[str]] = {
    "selective": [
        "MaxBytesReader",
        "ErrBodyReadAfterClose",
        "appendQuotedWith",
        "parseFloatPrefix",
        "mapaccess2_faststr",
        "sigprofNonGo",
        "LinkedTransferQueue",
        "AtomicReferenceFieldUpdater",
        "StampedLock",
        "ForkJoinWorkerThreadFactory",
    ],
    "common": [
        "return",
        "err",
        "String",
        "nil",
        "final",
        "Override",
        '"public static"',
        '"if err != nil"',
        '"import java.util."',
    ],
    "regex": [
        r"/func \(\w+ \*\w+\) Close\(/",
        r"/[A-Z]{3,}_[A-Z]+/",
        r"/import java\.util\.concurrent\.\w+;/",
        r"/throw new (IllegalArgumentException|IllegalStateException)\(/",
        r"/func (Read|Write)(Byte|Rune|String)\(/",
        r"/^package \w+_test$/",
        r"/0x[0-9a-fA-F]{16}/",
        r"/synchronized\s*\(this\)/",
        r"/@since\s+1\.[0-2]$/",
    ],
    "nocase": [
        "case:no maxbytesreader",
        'case:no "content-type"',
        "case:no concurrentmodificationexception",
        "case:no LINKEDTRANSFERQUEUE",
        "case:no /utf-?16le/",
        "case:no /func\\s+parse(int|uint|float)\\(/",
        "case:no deadlock",
        "case:no hashmap",
    ],
}

# The same four sets for the linux corpus (C): kernel identifiers, idioms and patterns.
LINUX_QUERY_SETS: dict[str, list[str]] = {
    "selective": [
        "ieee80211_rx_napi",
        "blk_mq_alloc_tag_set",
        "tcp_v4_syn_recv_sock",
        "ext4_xattr_ibody_get",
        "usb_serial_generic_open",
        "kvm_mmu_page_fault",
        "drm_atomic_helper_commit_tail",
        "xfs_bmapi_write",
        "netif_napi_add_weight",
        "of_property_read_u32_array",
    ],
    "common": [
        "return",
        "struct",
        "NULL",
        "static",
        "int",
        '"#include <linux/"',
        '"if (!"',
        '"unsigned long"',
        "EXPORT_SYMBOL_GPL",
    ],
    "regex": [
        r"/static int \w+_probe\(/",
        r"/EXPORT_SYMBOL_GPL\(\w+_init\w*\)/",
        r"/0x[0-9a-fA-F]{8}\b/",
        r"/^#define \w+_MASK\s/",
        r"/kmalloc\(sizeof\(\*\w+\), GFP_KERNEL\)/",
        r"/spin_lock_irqsave\(&\w+->lock/",
        r"/goto (out|err)\w*;/",
        r"/MODULE_AUTHOR\(.*Intel/",
        r"/^\s*case 0x[0-9a-f]+:$/",
    ],
    "nocase": [
        "case:no mutex_lock_interruptible",
        'case:no "device tree"',
        "case:no /copyright \\(c\\) 20[01]\\d/",
        "case:no TODO",
        "case:no deadlock",
        "case:no /use[- ]after[- ]free/",
        "case:no kasan",
        "case:no /race condition/",
    ],
}
QUERY_SET_CHOICES = {"default": QUERY_SETS, "linux": LINUX_QUERY_SETS}

RANKED_QUERIES = [
    "parse http request headers",
    "read whole file into byte slice",
    "concurrent hash map resize table",
    "decode utf8 rune from bytes",
    "thread pool executor shutdown",
    "tls handshake verify certificate chain",
    "json marshal struct field tags",
    "sort slice with comparator",
    "gzip compress output stream",
    "compile regular expression pattern",
    "garbage collector write barrier",
]


# --------------------------------------------------------------------------- small helpers


def p50(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p95(xs: Sequence[float]) -> float:
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table(title: str, headers: list[str], rows: Iterable[Sequence[object]], right: str = "") -> str:
    """A plain-text table; columns whose index is in ``right`` (as digits) are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(values):
            out.append(v.rjust(widths[i]) if str(i) in right.split(",") else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in cells)]) + "\n"


def machine_header(argv: list[str]) -> list[str]:
    cpu, ram_kib = cpu_and_ram()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])  # other work on the machine skews times
    rg = subprocess.run(["rg", "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    commit = lens_commit()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc), {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average at start {load}",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; Python {platform.python_version()};"
        f" {rg}; lens commit {commit}",
        f"command: {shlex.join(['python', *argv])}",
    ]


# --------------------------------------------------------------------------- indexing


@dataclass
class IndexStats:
    corpus: str
    path: str
    files: int
    bytes_indexed: int
    skipped: dict[str, int]
    build_seconds: float | None  # None when an existing index was reused
    index_bytes: int
    peak_rss_indexer_kib: int | None = None  # the indexing process itself
    peak_rss_workers_kib: int | None = None  # its largest child (parse worker, git)
    timings: dict[str, float] = field(default_factory=dict)


def shard_size(catalog: Catalog, name: str) -> int:
    shard = catalog.require_shard(name)
    wal = shard.with_name(shard.name + "-wal")
    return shard.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def index_child(data_dir: Path, name: str, path: Path) -> None:
    """Child-process entry: build one index and print its report as JSON on stdout."""
    from lens.index.builder import index_repository

    report = index_repository(Catalog(data_dir), name, path, full=True, max_file_bytes=MAX_FILE_BYTES)
    out = report.to_dict()
    out["rss_self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["rss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(out))


def build_index(data_dir: Path, name: str, path: Path) -> IndexStats:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--index-child", str(data_dir), name, str(path)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"indexing {name} failed:\n{proc.stderr}")
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  indexed {name}: {rep['files']} files in {rep['seconds']:.1f} s (child wall {wall:.1f} s)",
        file=sys.stderr,
    )
    return IndexStats(
        corpus=name,
        path=str(path),
        files=rep["files"],
        bytes_indexed=rep["bytes_indexed"],
        skipped=rep["skipped"],
        build_seconds=rep["seconds"],
        index_bytes=shard_size(Catalog(data_dir), name),
        peak_rss_indexer_kib=rep["rss_self_kib"],
        peak_rss_workers_kib=rep["rss_children_kib"],
        timings=rep["timings"],
    )


def reused_index(catalog: Catalog, name: str, path: Path) -> IndexStats:
    shard = catalog.require_shard(name)
    conn = sqlite3.connect(f"file:{shard}?mode=ro", uri=True)
    try:
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    finally:
        conn.close()
    return IndexStats(
        corpus=name,
        path=str(path),
        files=int(meta.get("files", 0)),
        bytes_indexed=int(meta.get("bytes", 0)),
        skipped=dict(meta.get("skipped", {})),
        build_seconds=None,
        index_bytes=shard_size(catalog, name),
    )


# --------------------------------------------------------------------------- ripgrep


def rg_policy_args(threads: int) -> list[str]:
    """ripgrep flags that mirror Lens's file policy (lens/discover/filters.py) as closely as rg can."""
    vendored = ",".join(sorted(VENDORED_DIRS))
    minified = ",".join(MINIFIED_SUFFIXES)
    return [
        "--no-config",
        "--no-heading",
        "-n",
        "--null",  # path\0line:text, robust to ':' in paths
        f"-j{threads}",
        "--hidden",  # Lens indexes dotfiles
        "--no-ignore-dot",  # Lens reads .gitignore and .lensignore, not .ignore/.rgignore
        "--no-ignore-exclude",
        "--no-ignore-global",
        "--no-ignore-parent",
        "--max-filesize",
        "1M",
        "--encoding",
        "none",  # no BOM sniffing: UTF-16 files are binary to Lens
        "-g",
        f"!{{{vendored}}}/",
        "--iglob",
        f"!*{{{minified}}}",
    ]


def rg_query_args(text: str) -> list[str]:
    """The ripgrep pattern flags equivalent to a one-term Lens query."""
    query = parse_query(text)
    f = query.filters
    if f.paths or f.exclude_paths or f.langs or f.exclude_langs or f.syms or f.repos or f.type != "line":
        raise ValueError(f"benchmark query {text!r} may only use case:")
    case = ["-s"] if case_sensitive(query) else ["-i"]
    if isinstance(query.expr, Term):
        return [*case, "-F", "-e", query.expr.text]
    if isinstance(query.expr, Regex):
        return [*case, "-e", query.expr.pattern]
    raise ValueError(f"benchmark query {text!r} must be a single literal or regex")


def run_rg(cmd: list[str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    took = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        print(f"  warning: rg exited {proc.returncode}: {proc.stderr[:300]!r}", file=sys.stderr)
    return took, proc.stdout


def parse_rg(out: bytes, roots: dict[str, str]) -> dict[tuple[str, str, int], str]:
    """(repo, repo-relative path, line) -> line text, from ``rg -n --null --no-heading`` output."""
    found: dict[tuple[str, str, int], str] = {}
    prefixes = [(root.rstrip("/") + "/", repo) for repo, root in roots.items()]
    for raw in out.split(b"\n"):
        if not raw:
            continue
        path_b, _, rest = raw.partition(b"\0")
        number, _, text = rest.partition(b":")
        path = path_b.decode("utf-8", "surrogateescape")
        for prefix, repo in prefixes:
            if path.startswith(prefix):
                key = (repo, path[len(prefix) :], int(number))
                found[key] = text.decode("utf-8", "replace").rstrip("\r")
                break
    return found


# --------------------------------------------------------------------------- Lens


def time_lens(searcher: Searcher, text: str, runs: int, mode: str = "exact") -> tuple[list[float], Any]:
    searcher.search(text, mode=mode)  # warm-up: page cache, per-shard file tables, compiled regexes
    times = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = searcher.search(text, mode=mode)
        times.append(time.perf_counter() - started)
    return times, result


def lens_every_line(searcher: Searcher, text: str) -> dict[tuple[str, str, int], str] | None:
    """Every hit line of a query, straight from the exact engine (no page limit); None on time-out.

    This is what ``Searcher.search`` collects for a page, without its limit, so it checks matching and
    file policy independently of paging (checked separately by :func:`paging_check`).
    """
    plan = ExactPlan(parse_query(text), 0)
    state = ExactState(want=sys.maxsize)
    deadline = Deadline(600_000)
    for view in searcher.shards.views():
        with view.snapshot() as snap:
            search_snapshot(snap, plan, state, deadline)
    if state.timed_out:
        return None
    return {(ln.hit.repo, ln.hit.path, ln.hit.line_number): ln.hit.line for ln in state.lines}


def paging_check(
    searcher: Searcher, text: str, expected: set[tuple[str, str, int]]
) -> tuple[str, dict[str, Any]]:
    """Page through ``Searcher.search`` (limit 1000, cursor); compare the pages' union with ``expected``."""
    seen: set[tuple[str, str, int]] = set()
    duplicates = pages = 0
    cursor: str | None = None
    max_pages = len(expected) // MAX_LIMIT + 2
    while pages < max_pages:
        res = searcher.search(text, limit=MAX_LIMIT, cursor=cursor, timeout_ms=MAX_TIMEOUT_MS)
        pages += 1
        for h in res.results:
            key = (h.repo, h.path, h.line_number)
            duplicates += key in seen
            seen.add(key)
        if res.timed_out:
            return "timed out", {"pages": pages}
        if not res.truncated:
            break
        cursor = res.next_cursor
    missing, extra = len(expected - seen), len(seen - expected)
    detail = {"pages": pages, "duplicates": duplicates, "missing": missing, "extra": extra}
    if not (duplicates or missing or extra):
        return f"ok ({pages} pages)", detail
    return f"BROKEN ({pages} pages: {duplicates} dup, {missing} missing, {extra} extra)", detail


class ShardFacts:
    """What a shard knows about a path: indexed, skipped after reading (with reason), or never read."""

    def __init__(self, catalog: Catalog, repos: list[str]) -> None:
        self.indexed: set[tuple[str, str]] = set()
        self.skipped: dict[tuple[str, str], str] = {}
        for repo in repos:
            conn = sqlite3.connect(f"file:{catalog.require_shard(repo)}?mode=ro", uri=True)
            try:
                self.indexed.update((repo, p) for (p,) in conn.execute("SELECT path FROM files"))
                self.skipped.update(
                    ((repo, p), r) for p, r in conn.execute("SELECT path, reason FROM skipped")
                )
            finally:
                conn.close()

    def why_missing(self, repo: str, path: str) -> str:
        if (repo, path) in self.indexed:
            return "file indexed, line not found by Lens"
        reason = self.skipped.get((repo, path))
        if reason is not None:
            return f"file skipped by Lens as {reason}"
        return "file not in index (path rule: ignored/vendored/too large)"


def has_vectors(catalog: Catalog, repos: list[str]) -> bool:
    for repo in repos:
        conn = sqlite3.connect(f"file:{catalog.require_shard(repo)}?mode=ro", uri=True)
        try:
            if conn.execute("SELECT count(*) FROM vectors").fetchone()[0] == 0:
                return False
        finally:
            conn.close()
    return True


# --------------------------------------------------------------------------- the benchmark


@dataclass
class QueryResult:
    group: str
    query: str
    rg_args: list[str]
    lens_seconds: list[float]
    lens_total: int
    lens_total_is_estimate: bool
    lens_timed_out: bool
    rg_seconds: list[float]
    rg_lines: int
    check: str
    paging: str
    check_detail: dict[str, Any]


def check_query(
    searcher: Searcher,
    facts: ShardFacts,
    text: str,
    rg_found: dict[tuple[str, str, int], str],
    verify_max: int,
) -> tuple[str, str, dict[str, Any], list[str]]:
    """Compare Lens's lines with ripgrep's, then Lens's paging with Lens's lines.

    Returns (match verdict, paging verdict, details, notes on differences).
    """
    started = time.perf_counter()
    got = lens_every_line(searcher, text)
    detail: dict[str, Any] = {"engine_seconds": time.perf_counter() - started}
    if got is None:
        return "timed out (skipped)", "-", detail, []
    detail["lens_lines"] = len(got)
    if len(got) <= verify_max:
        paging, detail["paging"] = paging_check(searcher, text, set(got))
    else:
        paging = f"skipped (> {verify_max})"
    missing = sorted(set(rg_found) - set(got))
    extra = sorted(set(got) - set(rg_found))
    detail.update(missing=len(missing), extra=len(extra))
    if not missing and not extra:
        return "same", paging, detail, []
    reasons: dict[str, int] = {}
    for repo, path, _ in missing:
        why = facts.why_missing(repo, path)
        reasons[why] = reasons.get(why, 0) + 1
    detail["missing_reasons"] = reasons
    detail["missing_examples"] = [list(k) for k in missing[:20]]
    detail["extra_examples"] = [list(k) for k in extra[:20]]
    notes = [f"    only rg, {n} lines: {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    notes += [f"      rg   {k[0]}:{k[1]}:{k[2]}: {rg_found[k].strip()[:100]}" for k in missing[:3]]
    if extra:
        notes.append(f"    only Lens, {len(extra)} lines")
        notes += [f"      lens {k[0]}:{k[1]}:{k[2]}: {got[k].strip()[:100]}" for k in extra[:3]]
    return f"DIFF ({len(missing)} missing, {len(extra)} extra)", paging, detail, notes


def run_queries(
    searcher: Searcher, facts: ShardFacts, roots: dict[str, str], args: argparse.Namespace
) -> tuple[list[QueryResult], list[str]]:
    policy = rg_policy_args(args.rg_threads)
    rg_runs = max(3, args.runs)
    results: list[QueryResult] = []
    notes: list[str] = []
    for group, queries in QUERY_SET_CHOICES[args.queries].items():
        for text in queries:
            qargs = rg_query_args(text)
            cmd = ["rg", *policy, *qargs, "--", *roots.values()]
            lens_times, res = time_lens(searcher, text, args.runs)
            run_rg(cmd)  # warm-up
            rg_times: list[float] = []
            out = b""
            for _ in range(rg_runs):
                took, out = run_rg(cmd)
                rg_times.append(took)
            rg_found = parse_rg(out, roots)
            verdict, paging, detail, lines = check_query(searcher, facts, text, rg_found, args.verify_max)
            if lines:
                notes.append(f"  {text}  ->  {verdict}")
                notes.extend(lines)
            print(
                f"  {group:9} {text[:50]:50} lens {ms(p50(lens_times)):>7} ms  rg {ms(p50(rg_times)):>7} ms"
                f"  {verdict}; paging {paging}",
                file=sys.stderr,
            )
            results.append(
                QueryResult(
                    group=group,
                    query=text,
                    rg_args=qargs,
                    lens_seconds=lens_times,
                    lens_total=res.total,
                    lens_total_is_estimate=res.total_is_estimate,
                    lens_timed_out=res.timed_out,
                    rg_seconds=rg_times,
                    rg_lines=len(rg_found),
                    check=verdict,
                    paging=paging,
                    check_detail=detail,
                )
            )
    return results, notes


def scored_latency(searcher: Searcher, mode: str, runs: int) -> list[dict[str, Any]]:
    out = []
    for text in RANKED_QUERIES:
        times, res = time_lens(searcher, text, runs, mode=mode)
        out.append({"query": text, "seconds": times, "hits": len(res.results)})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", action="append", help="corpus name for fetch.sh (repeatable)")
    parser.add_argument("--data-dir", type=Path, help="Lens data directory (default: a temporary one)")
    parser.add_argument(
        "--corpus-path",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="search DIR as corpus NAME instead of fetching it (linux=$(bash benchmarks/prepare_linux.sh))",
    )
    parser.add_argument(
        "--queries",
        choices=sorted(QUERY_SET_CHOICES),
        default="default",
        help="query sets: default (go-std + jdk) or linux (C)",
    )
    parser.add_argument("--reuse-index", action="store_true", help="search the index already in --data-dir")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query (rg: at least 3)")
    parser.add_argument("--rg-threads", type=int, default=2, help="ripgrep -j")
    parser.add_argument(
        "--verify-max",
        type=int,
        default=20_000,
        help="page Lens results up to this many lines for the correctness check",
    )
    parser.add_argument("--fetch", type=Path, default=DEFAULT_FETCH, help="path of fetch.sh")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before timing, wait up to this long while other benchmarks/*.py processes run or the CPUs "
        "are busier than --max-busy (as benchmarks/http_load.py does)",
    )
    parser.add_argument(
        "--max-busy", type=float, default=0.25, help="CPU busy share that counts as quiet (default 0.25)"
    )
    parser.add_argument(
        "--index-child", nargs=3, metavar=("DATA_DIR", "NAME", "PATH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.index_child:
        child_dir, name, path = args.index_child
        index_child(Path(child_dir), name, Path(path))
        return
    corpora: list[str] = args.corpus or ["go-std", "jdk"]
    if args.reuse_index and args.data_dir is None:
        parser.error("--reuse-index needs --data-dir")
    if shutil.which("rg") is None:
        parser.error("ripgrep (rg) is not installed")
    started = time.perf_counter()
    header = machine_header(sys.argv if argv is None else [sys.argv[0], *argv])
    temp_dir = None if args.data_dir else tempfile.mkdtemp(prefix="lens-bench-")
    data_dir: Path = args.data_dir or Path(temp_dir or "")
    try:
        report = run(args, corpora, data_dir, header)
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    report["wall_seconds"] = time.perf_counter() - started
    print(f"(whole run: {report['wall_seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def run(args: argparse.Namespace, corpora: list[str], data_dir: Path, header: list[str]) -> dict[str, Any]:
    catalog = Catalog(data_dir)
    roots: dict[str, str] = {}
    stats: list[IndexStats] = []
    given = dict(item.split("=", 1) for item in args.corpus_path)
    for name in corpora:
        path = Path(given[name]) if name in given else fetch_corpus(args.fetch, name)
        roots[name] = str(path)
        if args.reuse_index:
            stats.append(reused_index(catalog, name, path))
        else:
            print(f"indexing {name} ({path}) ...", file=sys.stderr)
            stats.append(build_index(data_dir, name, path))
    overall_children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

    searcher = Searcher(catalog)
    facts = ShardFacts(catalog, corpora)
    if args.wait_quiet > 0:
        from http_load import wait_for_quiet

        busy = wait_for_quiet(args.wait_quiet, args.max_busy)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        header.append(f"just before the queries: CPUs {100 * busy:.0f}% busy, load average {load}")
    print("running queries ...", file=sys.stderr)
    results, notes = run_queries(searcher, facts, roots, args)
    ranked = scored_latency(searcher, "ranked", args.runs)
    semantic: list[dict[str, Any]] | None = None
    if has_vectors(catalog, corpora):
        from lens.index.embedder import default_embedder

        semantic = scored_latency(Searcher(catalog, embedder_factory=default_embedder), "semantic", args.runs)

    print("\n".join(header))
    print()
    print(index_table(stats, args.reuse_index, overall_children_rss))
    print(query_table(results, args))
    if notes:
        print("Differences (rg = ripgrep only, lens = Lens only):")
        print("\n".join(notes))
        print()
    print(scored_table("Ranked mode (limit 100)", ranked))
    if semantic is None:
        print("Semantic mode: skipped: no vectors\n")
    else:
        print(scored_table("Semantic mode (limit 100)", semantic))
    return {
        "header": header,
        "index": [asdict(s) for s in stats],
        "indexer_peak_rss_kib_all_children": overall_children_rss,
        "queries": [asdict(r) for r in results],
        "ranked": ranked,
        "semantic": semantic,
    }


def index_table(stats: list[IndexStats], reused: bool, children_rss: int) -> str:
    rows = []
    for s in stats:
        corpus_mb = s.bytes_indexed / MB
        build = f"{s.build_seconds:.1f}" if s.build_seconds is not None else "reused"
        rate = f"{corpus_mb / s.build_seconds:.2f}" if s.build_seconds else "-"
        rss = (
            f"{(s.peak_rss_indexer_kib or 0) / 1024:.0f} / {(s.peak_rss_workers_kib or 0) / 1024:.0f}"
            if s.peak_rss_indexer_kib
            else "-"
        )
        skipped = sum(s.skipped.values())
        rows.append(
            [
                s.corpus,
                s.files,
                skipped,
                f"{corpus_mb:.1f}",
                build,
                rate,
                f"{s.index_bytes / MB:.1f}",
                f"{s.index_bytes / max(s.bytes_indexed, 1):.2f}",
                rss,
            ]
        )
    if len(stats) > 1:
        total_b = sum(s.bytes_indexed for s in stats)
        total_i = sum(s.index_bytes for s in stats)
        secs = sum(s.build_seconds or 0 for s in stats)
        rows.append(
            [
                "total",
                sum(s.files for s in stats),
                sum(sum(s.skipped.values()) for s in stats),
                f"{total_b / MB:.1f}",
                f"{secs:.1f}" if not reused else "reused",
                f"{total_b / MB / secs:.2f}" if secs else "-",
                f"{total_i / MB:.1f}",
                f"{total_i / max(total_b, 1):.2f}",
                f"max {children_rss / 1024:.0f} (any child)" if not reused else "-",
            ]
        )
    title = (
        "Index build (MB = 10^6 bytes of indexed file content; index = shard + WAL on disk; "
        "peak RSS = indexer process / largest parse worker, MiB)"
    )
    headers = [
        "corpus",
        "files",
        "skipped",
        "corpus MB",
        "build s",
        "MB/s",
        "index MB",
        "index/corpus",
        "peak RSS MiB",
    ]
    out = table(title, headers, rows, right="1,2,3,4,5,6,7")
    skips = "; ".join(
        f"{s.corpus}: " + (", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items())) or "none")
        for s in stats
    )
    return out + f"skipped files by reason: {skips}\n"


def query_table(results: list[QueryResult], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        lp50, rp50 = p50(r.lens_seconds), p50(r.rg_seconds)
        total = f"~{r.lens_total}" if r.lens_total_is_estimate else str(r.lens_total)
        if r.lens_timed_out:
            total += " (timed out)"
        rows.append(
            [
                r.group,
                r.query,
                ms(lp50),
                ms(p95(r.lens_seconds)),
                ms(rp50),
                f"{rp50 / lp50:.0f}x",
                total,
                r.rg_lines,
                r.check,
                r.paging,
            ]
        )
    title = (
        f"Exact mode, limit 100: Lens in-process (1 thread) vs rg -j{args.rg_threads}, ms; {args.runs}"
        f" timed runs each (rg: {max(3, args.runs)}) after one warm-up. speed-up = rg p50 / Lens p50;"
        " lens total: ~ = Lens's estimate.\n"
        "lines vs rg: every line the exact engine matches (no limit) vs rg's lines, as (repo, path, line)."
        " paging: Searcher.search pages (limit 1000, cursor) vs those lines,"
        f" for results <= {args.verify_max}."
    )
    headers = [
        "set",
        "query",
        "lens p50",
        "lens p95",
        "rg p50",
        "speed-up",
        "lens total",
        "rg lines",
        "lines vs rg",
        "paging",
    ]
    out = table(title, headers, rows, right="2,3,4,5,6,7")
    by_group: dict[str, list[float]] = {}
    for r in results:
        by_group.setdefault(r.group, []).append(p50(r.rg_seconds) / p50(r.lens_seconds))
    summary = ", ".join(f"{g} {statistics.geometric_mean(v):.0f}x" for g, v in by_group.items())
    return out + f"geometric-mean speed-up by set: {summary}\n"


def scored_table(title: str, rows: list[dict[str, Any]]) -> str:
    body = [[r["query"], ms(p50(r["seconds"])), ms(p95(r["seconds"])), r["hits"]] for r in rows]
    all_p50 = [p50(r["seconds"]) for r in rows]
    body.append(["(median of the queries' p50)", ms(statistics.median(all_p50)), "", ""])
    return table(title + ", ms", ["query", "p50", "p95", "hits"], body, right="1,2,3")


if __name__ == "__main__":
    main()
