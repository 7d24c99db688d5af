"""Lexical index build speed: MB/s, index size and peak memory of a full ``lens index --no-embed``.

Usage (from the project root; wrap timing runs in ``flock /tmp/mimir-lens-bench.lock``):

    PYTHONPATH=src python benchmarks/build_speed.py --corpus go-std --corpus jdk \
        [--runs 3] [--keep DIR] [--profile OUT_PREFIX] [--json out.json]

Each build runs in a child process (one per corpus and run) into a fresh data directory, so its
peak RSS can be read with ``getrusage`` (the indexer itself, and its largest child: a parse worker,
git, ctags). MB/s is indexed file content (10^6 bytes) over the whole ``index_repository`` call
(discover, read, parse, write, commit, checkpoint). Index size is the shard plus its WAL on disk.
With ``--runs N`` each corpus is built N times and the median build is reported.
``--profile PREFIX`` writes a cProfile of the indexer process (not its workers) to PREFIX-NAME.prof.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _machine import cpu_and_ram, fetch_corpus, lens_commit
from lens.index.catalog import Catalog

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FETCH = PROJECT.parent / "shared" / "corpora" / "fetch.sh"
MB = 1_000_000


def header(argv: list[str]) -> list[str]:
    cpu, ram_kib = cpu_and_ram()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    commit = lens_commit()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc), {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average at start {load}",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; Python {platform.python_version()};"
        f" lens commit {commit}",
        f"command: {shlex.join(['python', *argv])}",
    ]


def shard_size(data_dir: Path, name: str) -> int:
    shard = Catalog(data_dir).require_shard(name)
    wal = shard.with_name(shard.name + "-wal")
    return shard.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


class CpuMeter:
    """CPU seconds of this process's descendants (parse workers, ctags), sampled from /proc.

    Each descendant counts its own user+system time (the largest value seen); processes none of
    whose children were seen also count their reaped children's time (a worker's ctags runs).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.own: dict[int, float] = {}
        self.reaped: dict[int, float] = {}
        self.parent: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = os.getpid()
        procs: dict[int, tuple[int, float, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            ppid = int(fields[1])
            own = (int(fields[11]) + int(fields[12])) / self.tick
            reaped = (int(fields[13]) + int(fields[14])) / self.tick
            procs[int(entry)] = (ppid, own, reaped)
        for pid, (ppid, own, reaped) in procs.items():
            up, hops = ppid, 0
            while up not in (me, 0, 1) and up in procs and hops < 10:
                up, hops = procs[up][0], hops + 1
            if up == me and pid != me:
                self.parent[pid] = ppid
                self.own[pid] = max(self.own.get(pid, 0.0), own)
                self.reaped[pid] = max(self.reaped.get(pid, 0.0), reaped)

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()

    def stop(self) -> float:
        self._sample()
        self._stop.set()
        self._thread.join()
        parents = set(self.parent.values())
        return sum(self.own.values()) + sum(v for pid, v in self.reaped.items() if pid not in parents)


def index_child(data_dir: Path, name: str, path: Path, profile: str | None) -> None:
    """Child-process entry: one full build, its report as JSON on stdout."""
    from lens.index.builder import index_repository

    meter = CpuMeter()

    def build() -> Any:
        return index_repository(Catalog(data_dir), name, path, full=True)

    if profile:
        import cProfile

        prof = cProfile.Profile()
        report = prof.runcall(build)
        prof.dump_stats(profile)
    else:
        report = build()
    helpers = meter.stop()
    out = report.to_dict()
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_seconds"] = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + helpers
    out["rss_self_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["rss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(out))


def build_once(data_dir: Path, name: str, path: Path, profile: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--index-child", str(data_dir), name, str(path)]
    if profile:
        cmd += ["--child-profile", profile]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"indexing {name} failed:\n{proc.stderr}")
    rep: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    rep["child_wall"] = wall
    rep["index_bytes"] = shard_size(data_dir, name)
    rep["load_after"] = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"  {name}: {rep['files']} files, {rep['bytes_indexed'] / MB:.1f} MB in {rep['seconds']:.1f} s "
        f"= {rep['bytes_indexed'] / MB / rep['seconds']:.2f} MB/s; index {rep['index_bytes'] / MB:.1f} MB; "
        f"RSS {rep['rss_self_kib'] / 1024:.0f}/{rep['rss_children_kib'] / 1024:.0f} MiB; "
        f"CPU {rep['cpu_seconds']:.1f} s; "
        f"timings {json.dumps({k: round(v, 1) for k, v in rep['timings'].items()})}; "
        f"load {rep['load_after']}",
        file=sys.stderr,
    )
    return rep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", action="append", help="corpus name for fetch.sh (repeatable)")
    parser.add_argument(
        "--corpus-path",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="index DIR as NAME instead of fetching it (repeatable)",
    )
    parser.add_argument("--runs", type=int, default=1, help="builds per corpus; the median is reported")
    parser.add_argument("--keep", type=Path, help="leave the last build's data directory here")
    parser.add_argument("--profile", help="cProfile the indexer process to PREFIX-NAME.prof")
    parser.add_argument("--fetch", type=Path, default=DEFAULT_FETCH, help="path of fetch.sh")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--index-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.index_child:
        data_dir, name, path = args.index_child
        index_child(Path(data_dir), name, Path(path), args.child_profile)
        return
    paths = dict(item.split("=", 1) for item in args.corpus_path)
    corpora: list[str] = (args.corpus or []) + list(paths) or ["go-std", "jdk"]
    head = header(sys.argv if argv is None else [sys.argv[0], *argv])
    print("\n".join(head), file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in corpora:
        path = Path(paths[name]) if name in paths else fetch_corpus(args.fetch, name)
        results[name] = []
        for run in range(args.runs):
            last = run == args.runs - 1
            data_dir = Path(tempfile.mkdtemp(prefix="lens-build-"))
            try:
                profile = f"{args.profile}-{name}.prof" if args.profile and last else None
                results[name].append(build_once(data_dir, name, path, profile))
            finally:
                if last and args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    for child in data_dir.iterdir():
                        target = args.keep / child.name
                        if target.exists():
                            shutil.rmtree(target)
                        shutil.move(str(child), str(target))
                shutil.rmtree(data_dir, ignore_errors=True)

    rows = []
    tot_bytes = tot_secs = tot_index = 0.0
    for name, reps in results.items():
        med = statistics.median(r["seconds"] for r in reps)
        rep = min(reps, key=lambda r: abs(r["seconds"] - med))
        tot_bytes += rep["bytes_indexed"]
        tot_secs += med
        tot_index += rep["index_bytes"]
        rows.append(
            f"| {name} | {rep['files']:,} | {sum(rep['skipped'].values()):,} "
            f"| {rep['bytes_indexed'] / MB:.1f} "
            f"| {med:.1f} | {rep['bytes_indexed'] / MB / med:.2f} | {rep['index_bytes'] / MB:.1f} "
            f"| {rep['index_bytes'] / rep['bytes_indexed']:.2f} "
            f"| {max(r['rss_self_kib'] for r in reps) / 1024:.0f} "
            f"/ {max(r['rss_children_kib'] for r in reps) / 1024:.0f} "
            f"| {statistics.median(r['cpu_seconds'] for r in reps):.1f} "
            f"| {', '.join(format(r['seconds'], '.1f') for r in reps)} |"
        )
    if len(results) > 1:
        rows.append(
            f"| total | | | {tot_bytes / MB:.1f} | {tot_secs:.1f} | **{tot_bytes / MB / tot_secs:.2f}** "
            f"| {tot_index / MB:.1f} | {tot_index / tot_bytes:.2f} | | | |"
        )
    print("\n".join(head))
    print()
    print(
        "| corpus | files | skipped | corpus MB | build s (median) | MB/s | index MB | index/corpus "
        "| peak RSS MiB (indexer / largest child) | CPU s | runs s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps({"header": head, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
