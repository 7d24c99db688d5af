"""Mimir's indexing pipeline and research latency on a real corpus (default: django).

1. Full pipeline without embeddings: a fresh data directory, ``embed=False``, one run on a private
   clone of the corpus; seconds per stage (acquire, repomap, symbols, search_index, snippets, bundle),
   their sum, and the wall time from ``ensure_repo_index`` to the finished run (which also covers
   spawning the worker process and its imports).
2. Incremental re-index: append a function to one .py file of the clone, commit, index again. The new
   commit is a new index whose Lens shard is seeded from the previous one and whose analysis reuses the
   previous index's per-file results (``analysis_reuse`` in the manifest). ``--incremental-runs N``
   repeats edit + commit + index N times (each run builds on the one before) and reports the median.
3. Chunk counts from the manifest (embedding throughput is measured by ``embed_throughput.py``).
4. Latency through the MCP SDK's client: ``python -m mimir.serve.cli mcp`` over stdio on the same data
   directory, ``search_repo`` (30 queries, k=20, hybrid) and ``ask_index`` (10 questions, max_hops=3,
   no LLM), several rounds each, p50/p95 per tool. Without embeddings hybrid search lacks its semantic
   signal and says so (``degraded``, ``missing: semantic``); the tables count those answers.
   ``--with-embeddings`` also builds a fully embedded index (a second data directory, ``embed=True``;
   several minutes on django) and measures it the same way.

Usage:

    python benchmarks/pipeline.py [--corpus django] [--rounds 3] [--with-embeddings] [--json out.json]

Everything lives in a temporary directory that is removed at the end, as are the server processes.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from _machine import cpu_and_ram, lens_commit
from mimir.config import MimirSettings
from mimir.service import Mimir

PROJECT = Path(__file__).resolve().parents[1]
FETCH = Path("/work/shared/corpora/fetch.sh")
STAGE_ORDER = ("acquire", "repomap", "symbols", "search_index", "snippets", "bundle")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
# The file that the incremental step edits, when the corpus has it; otherwise its first .py file.
PREFERRED_EDIT = "django/utils/text.py"
PROBE = "mimir_benchmark_probe"

QUERIES = [
    "how are database migrations applied",
    "QuerySet filter",
    "csrf token check",
    "template variable resolution",
    "password hashing algorithm",
    "URL pattern matching and reverse",
    "session middleware saves the session cookie",
    "def get_object_or_404",
    "form field validation clean method",
    "ModelAdmin list_display",
    "send_mail",
    "cache backend get and set with timeout",
    "signal dispatch connect receiver",
    "class HttpResponseRedirect",
    "parse the Accept-Language header",
    "transaction.atomic savepoint rollback",
    "select_related join promotion",
    "static files storage manifest hashing",
    "how does the test client make requests",
    "ForeignKey on_delete CASCADE",
    "timezone aware datetime conversion",
    "management command argument parsing",
    "slugify unicode",
    "authentication backend authenticate user",
    "paginator page out of range",
    "content type framework generic foreign key",
    "SQL compiler as_sql",
    "WSGIHandler __call__",
    "render_to_string with context",
    "validate email address regex",
]

QUESTIONS = [
    "How are database migrations applied?",
    "How does the CSRF middleware check the token?",
    "How does the template engine resolve a variable?",
    "How are passwords hashed and checked?",
    "How does QuerySet.filter build the SQL WHERE clause?",
    "How does URL resolution find the view for a request path?",
    "How does the session middleware save the session?",
    "How does the ORM handle transaction.atomic?",
    "How does a management command parse its arguments?",
    "How are form fields validated and cleaned?",
]


# -- machine and formatting --------------------------------------------------------------------------
def machine_header(argv: Sequence[str]) -> list[str]:
    cpu, ram_kib = cpu_and_ram()
    commit = lens_commit()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc), {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average at start {load_average()}",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; Python {platform.python_version()};"
        f" project commit {commit}",
        f"command: {shlex.join(['python', *argv])}",
    ]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# -- corpus ------------------------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo.parent)}
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return done.stdout.strip()


def fetch_corpus(name: str) -> Path:
    done = subprocess.run(["bash", str(FETCH), name], check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def clone_corpus(source: Path, dest: Path) -> Path:
    env = {**os.environ, **GIT_ENV, "HOME": str(dest.parent)}
    subprocess.run(["git", "clone", "-q", str(source), str(dest)], check=True, env=env)
    return dest


def edit_and_commit(repo: Path) -> str:
    """Append a function to one Python file and commit; returns the edited path."""
    target = repo / PREFERRED_EDIT
    if not target.is_file():
        target = min(p for p in repo.rglob("*.py") if ".git" not in p.parts)
    rel = target.relative_to(repo).as_posix()
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(
            f"\n\ndef {PROBE}(value):\n"
            '    """Added by benchmarks/pipeline.py to measure incremental re-indexing."""\n'
            "    return str(value)[::-1]\n"
        )
    git(repo, "add", rel)
    git(repo, "commit", "-q", "-m", "benchmark: append a function")
    return rel


# -- indexing ----------------------------------------------------------------------------------------
@dataclass
class IndexRun:
    label: str
    index_id: str
    state: str
    wall_s: float
    stages: dict[str, float]
    cpu_s: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)
    error: Any = None

    @property
    def stage_sum(self) -> float:
        return sum(self.stages.values())


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished, reaped children (the index workers)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def index_once(mimir: Mimir, label: str, repo: Path, timeout: float) -> IndexRun:
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    started = mimir.ensure_repo_index(str(repo))
    run = started.get("run") or {}
    if started["status"] != "ready" or not started.get("reused"):
        record = mimir.manager.wait(run["run_id"], timeout)
        run = record.to_dict()
    wall = time.perf_counter() - t0
    stages = {s["stage"]: float(s.get("seconds") or 0.0) for s in run.get("stages") or []}
    manifest: dict[str, Any] = {}
    if run.get("state") == "succeeded":
        manifest = mimir.manifest(started["index_id"])
    cpu = children_cpu() - cpu0
    state = str(run.get("state"))
    return IndexRun(label, started["index_id"], state, wall, stages, cpu, manifest, run.get("error"))


def stage_table(runs: Sequence[IndexRun]) -> str:
    rows: list[list[object]] = []
    for stage in STAGE_ORDER:
        rows.append([stage, *(f"{r.stages.get(stage, float('nan')):.2f}" for r in runs)])
    rows.append(["sum of stages", *(f"{r.stage_sum:.2f}" for r in runs)])
    rows.append(["wall (ensure -> done)", *(f"{r.wall_s:.2f}" for r in runs)])
    rows.append(["worker CPU (user+sys)", *(f"{r.cpu_s:.2f}" for r in runs)])
    rows.append(["state", *(r.state for r in runs)])
    return table(["stage (seconds)", *(r.label for r in runs)], rows)


def analysis_table(runs: Sequence[IndexRun]) -> str:
    """The repomap stage's phases, as the analyzer timed them (wall seconds)."""
    phases: list[str] = []
    for r in runs:
        for k in r.manifest.get("analysis_seconds", {}):
            if k not in phases:
                phases.append(k)
    rows = [
        [k, *(f"{r.manifest.get('analysis_seconds', {}).get(k, float('nan')):.2f}" for r in runs)]
        for k in phases
    ]
    return table(["repomap phase (s)", *(r.label for r in runs)], rows)


def counts_table(runs: Sequence[IndexRun]) -> str:
    keys: list[str] = []
    for r in runs:
        for k in r.manifest.get("counts", {}):
            if k not in keys:
                keys.append(k)
    rows = [[k, *(r.manifest.get("counts", {}).get(k, "-") for r in runs)] for k in keys]
    return table(["count", *(r.label for r in runs)], rows)


def dominant(run: IndexRun) -> str:
    ordered = sorted(run.stages.items(), key=lambda kv: kv[1], reverse=True)
    total = run.stage_sum or 1.0
    return ", ".join(f"{k} {v:.2f}s ({100 * v / total:.0f}%)" for k, v in ordered[:3])


# -- MCP latency -------------------------------------------------------------------------------------
@dataclass
class ToolLatency:
    tool: str
    ms: list[float] = field(default_factory=list)
    first_round_ms: list[float] = field(default_factory=list)
    degraded: int = 0
    missing: set[str] = field(default_factory=set)
    errors: int = 0
    results: list[int] = field(default_factory=list)


def server_env(data_dir: Path, roots: Path, embed: bool) -> dict[str, str]:
    env = {
        "MIMIR_DATA_DIR": str(data_dir),
        "MIMIR_ALLOWED_ROOTS": str(roots),
        "MIMIR_EMBED": "1" if embed else "0",
        "HOME": str(roots),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "LANG", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


async def _measure_mcp(
    env: dict[str, str], index_id: str, rounds: int, k: int, max_hops: int
) -> tuple[float, list[ToolLatency]]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "mimir.serve.cli", "mcp"], env=env)
    search = ToolLatency("search_repo")
    ask = ToolLatency("ask_index")
    t0 = time.perf_counter()
    async with Client(params, mode="legacy", cache=None, read_timeout_seconds=300) as client:
        await client.list_tools()
        startup = time.perf_counter() - t0
        for rnd in range(rounds):
            calls: list[tuple[ToolLatency, dict[str, Any]]] = [
                (search, {"index_id": index_id, "query": q, "k": k, "mode": "hybrid"}) for q in QUERIES
            ] + [(ask, {"index_id": index_id, "question": q, "max_hops": max_hops}) for q in QUESTIONS]
            for lat, args in calls:
                t = time.perf_counter()
                result = await client.call_tool(lat.tool, args)
                ms = 1000 * (time.perf_counter() - t)
                lat.ms.append(ms)
                if rnd == 0:
                    lat.first_round_ms.append(ms)
                data = result.structured_content
                if result.is_error or not isinstance(data, dict):
                    lat.errors += 1
                    continue
                if data.get("degraded"):
                    lat.degraded += 1
                    lat.missing.update(data.get("missing") or [])
                lat.results.append(len(data.get("results") or data.get("findings") or []))
    return startup, [search, ask]


def measure_mcp(
    env: dict[str, str], index_id: str, rounds: int, k: int, max_hops: int
) -> tuple[float, list[ToolLatency]]:
    out: tuple[float, list[ToolLatency]] | None = None

    async def main() -> None:
        nonlocal out
        out = await _measure_mcp(env, index_id, rounds, k, max_hops)

    anyio.run(main)
    assert out is not None
    return out


def latency_table(labelled: Sequence[tuple[str, ToolLatency]]) -> str:
    rows = []
    for label, lat in labelled:
        rows.append(
            [
                f"{lat.tool} ({label})",
                len(lat.ms),
                f"{statistics.median(lat.ms):.0f}",
                f"{percentile(lat.ms, 95):.0f}",
                f"{max(lat.ms):.0f}",
                f"{statistics.median(lat.first_round_ms):.0f}",
                f"{statistics.mean(lat.results):.1f}" if lat.results else "-",
                f"{lat.degraded}/{len(lat.ms)}"
                + (f" ({', '.join(sorted(lat.missing))})" if lat.missing else ""),
                lat.errors,
            ]
        )
    return table(
        [
            "tool (index)",
            "calls",
            "p50 ms",
            "p95 ms",
            "max ms",
            "round-1 p50",
            "hits/answer",
            "degraded",
            "errors",
        ],
        rows,
    )


# -- main --------------------------------------------------------------------------------------------
def check(label: str, value: float, target: float, unit: str) -> str:
    verdict = "met" if value <= target else "MISSED"
    return f"  {label}: {value:.2f} {unit} (target <= {target:g} {unit}): {verdict}"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="django", help="corpus name for fetch.sh (default django)")
    ap.add_argument("--repo", type=Path, help="use this git repository instead of fetching a corpus")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the queries and questions (default 3)")
    ap.add_argument("-k", type=int, default=20, help="search_repo k (default 20)")
    ap.add_argument("--max-hops", type=int, default=3, help="ask_index max_hops (default 3)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one index run")
    ap.add_argument("--with-embeddings", action="store_true", help="also build and query an embedded index")
    ap.add_argument("--skip-mcp", action="store_true", help="indexing only, no MCP latency")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (prints its path)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    ap.add_argument(
        "--incremental-runs", type=int, default=1, help="one-file commits to re-index, one after another"
    )
    args = ap.parse_args(args_list)

    for line in machine_header(["benchmarks/pipeline.py", *args_list]):
        print(line)
    source = args.repo.resolve() if args.repo else fetch_corpus(args.corpus)
    tmp = Path(tempfile.mkdtemp(prefix="mimir-pipeline-")).resolve()
    report: dict[str, Any] = {"header": machine_header(["benchmarks/pipeline.py", *args_list])}
    mimirs: list[Mimir] = []
    try:
        repo = clone_corpus(source, tmp / (args.corpus if not args.repo else source.name))
        print(f"corpus: {source} cloned to {repo} at {git(repo, 'rev-parse', '--short', 'HEAD')}\n")

        # 1 + 2: full pipeline, then an incremental run, without embeddings
        settings = MimirSettings(
            data_dir=tmp / "data",
            allowed_roots=str(tmp),
            embed=False,
            lens_url=None,
            llm_provider=None,
        )
        mimir = Mimir(settings)
        mimirs.append(mimir)
        full = index_once(mimir, "full", repo, args.timeout)
        t = time.perf_counter()
        reused = mimir.ensure_repo_index(str(repo))
        reuse_ms = 1000 * (time.perf_counter() - t)
        edited = edit_and_commit(repo)
        incr = index_once(mimir, "incremental", repo, args.timeout)
        probe = mimir.find_symbol(incr.index_id, PROBE)["symbols"] if incr.state == "succeeded" else []
        runs = [full, incr]
        more = []
        for i in range(2, args.incremental_runs + 1):
            edit_and_commit(repo)
            more.append(index_once(mimir, f"incremental {i}", repo, args.timeout))
        runs.extend(more)

        print("== indexing without embeddings (embed=False) ==")
        print(stage_table(runs))
        print()
        print(analysis_table(runs))
        print()
        print(counts_table(runs))
        print(f"\nincremental edit: appended def {PROBE}() to {edited}; new index finds it: {bool(probe)}")
        for r in runs:
            print(f"analysis reuse ({r.label}): {r.manifest.get('analysis_reuse')}")
        if more:
            walls = [r.wall_s for r in (incr, *more)]
            print(
                f"incremental wall over {len(walls)} runs: median {statistics.median(walls):.2f} s "
                f"({', '.join(f'{w:.2f}' for w in walls)})"
            )
        print(f"same commit again: reused={reused['reused']} in {reuse_ms:.0f} ms")
        for r in runs:
            print(f"dominant stages ({r.label}): {dominant(r)}")
            if r.error:
                print(f"  error: {r.error}")
        print("targets:")
        print(check("full pipeline, wall", full.wall_s, 60, "s"))
        print(check("incremental re-index, wall", incr.wall_s, 5, "s"))
        print(check("incremental re-index, sum of stages", incr.stage_sum, 5, "s"))
        chunks = incr.manifest.get("counts", {}).get("chunks")
        print(
            f"chunks (manifest counts): {chunks}; embedding throughput: see benchmarks/embed_throughput.py\n"
        )
        report["indexing"] = [r.__dict__ for r in runs]
        report["reuse_ms"] = reuse_ms

        # 4: research latency over MCP stdio
        latency_sets: list[tuple[str, list[ToolLatency]]] = []
        if not args.skip_mcp and incr.state == "succeeded":
            env = server_env(settings.data_dir, tmp, embed=False)
            startup, lats = measure_mcp(env, incr.index_id, args.rounds, args.k, args.max_hops)
            print(
                f"MCP stdio server (embed=False) ready in {startup:.2f} s (spawn + initialize + list_tools)"
            )
            latency_sets.append(("no embeddings", lats))

        if args.with_embeddings:
            esettings = MimirSettings(
                data_dir=tmp / "data-embed",
                allowed_roots=str(tmp),
                embed=True,
                lens_url=None,
                llm_provider=None,
            )
            emimir = Mimir(esettings)
            mimirs.append(emimir)
            emb = index_once(emimir, "full+embed", repo, args.timeout)
            print("\n== indexing with embeddings (embed=True) ==")
            print(stage_table([emb]))
            print()
            print(counts_table([emb]))
            ch = emb.manifest.get("counts", {}).get("chunks") or 0
            sidx = emb.stages.get("search_index", 0.0)
            rate = ch / sidx if sidx else 0.0
            print(f"search_index (lexical + embedding) {sidx:.1f} s for {ch} chunks: {rate:.1f} chunks/s\n")
            report["indexing_embed"] = emb.__dict__
            if not args.skip_mcp and emb.state == "succeeded":
                env = server_env(esettings.data_dir, tmp, embed=True)
                startup, lats = measure_mcp(env, emb.index_id, args.rounds, args.k, args.max_hops)
                print(f"MCP stdio server (embed=True) ready in {startup:.2f} s")
                latency_sets.append(("embedded", lats))

        if latency_sets:
            print(
                f"\n== MCP stdio latency: {len(QUERIES)} search_repo queries (k={args.k}, hybrid) and "
                f"{len(QUESTIONS)} ask_index questions (max_hops={args.max_hops}, no LLM), "
                f"{args.rounds} rounds =="
            )
            print(latency_table([(label, lat) for label, lats in latency_sets for lat in lats]))
            print("targets:")
            for label, lats in latency_sets:
                for lat in lats:
                    target = 300 if lat.tool == "search_repo" else 2000
                    print(check(f"{lat.tool} p95 ({label})", percentile(lat.ms, 95), target, "ms"))
                    if lat.missing:
                        missing = ", ".join(sorted(lat.missing))
                        print(f"    note: {lat.degraded} answers degraded, missing {missing}")
            report["latency"] = {
                label: [
                    {
                        "tool": lat.tool,
                        "ms": lat.ms,
                        "p50": statistics.median(lat.ms),
                        "p95": percentile(lat.ms, 95),
                        "degraded": lat.degraded,
                        "missing": sorted(lat.missing),
                        "errors": lat.errors,
                    }
                    for lat in lats
                ]
                for label, lats in latency_sets
            }
        print(f"\nload average at end: {load_average()}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        return 0 if all(r.state == "succeeded" for r in runs) else 1
    finally:
        for m in mimirs:
            m.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
