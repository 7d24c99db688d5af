"""Shard shipping latency: how long after an indexer publishes a large shard do searcher replicas serve it?

Usage (from the project root, virtualenv active; NATS JetStream on loopback):

    python benchmarks/shard_shipping.py [--corpus go-std] [--runs 3] [--nats-url nats://127.0.0.1:4222]

What it does:

1. Fetches the corpus with ``../shared/corpora/fetch.sh`` and clones it (``git clone --shared``) into a
   temporary directory, so it can commit there. Indexes the clone in-process (``LENS_EMBED`` off) into
   an "indexer" data directory.
2. Starts two ``lens serve --role searcher`` processes (own data directories, a fresh NATS namespace) and
   waits until they are ready (caught up on an empty store).
3. Each run: commits a one-line change, re-indexes (incremental: a new generation), snapshots the live
   shard (SQLite backup API) and uploads it to the JetStream Object Store + KV ref (``ShardPublisher``'s
   two steps, timed apart). Then polls both searchers (every 20 ms) until ``/api/v1/repos/<repo>``
   reports the new generation, and records the time from publication (the ref's ``published_at``) to
   that moment. Each searcher's own download + verify + install time comes from its
   ``lens_shard_sync_seconds`` histogram (sum and count before and after the run). The first run installs
   onto empty searchers, the later ones replace a live generation; both download the whole shard.
4. Starts a third searcher after the runs and times process start -> ``/ready`` 200 (catch-up on start).
5. Prints the machine, a table per run and the medians; the searchers' peak RSS (VmHWM) shows the
   shard is streamed, not held in memory. Target: installed on both searchers within 10 s of publication.

Everything (processes, temporary directories, the namespace's buckets) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from _machine import cpu_and_ram
from infra.shardstore import NatsShardStore
from lens.config import LensSettings
from lens.engine import Lens
from lens.ship.publisher import snapshot_shard

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FETCH = PROJECT.parent / "shared" / "corpora" / "fetch.sh"
TARGET_S = 10.0
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
_FOREIGN = ("REDIS_URL", "NATS_URL", "NATS_NAMESPACE", "LENS_URL", "LENS_ROLE", "PROMETHEUS_MULTIPROC_DIR")


@dataclass
class Searcher:
    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def generation(self, repo: str) -> int | None:
        try:
            resp = httpx.get(f"{self.url}/api/v1/repos/{repo}", timeout=5)
        except httpx.HTTPError:
            return None
        return int(resp.json()["repo"]["generation"]) if resp.status_code == 200 else None

    def sync_seconds(self) -> tuple[float, float]:
        """(sum, count) of lens_shard_sync_seconds."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        values = {"sum": 0.0, "count": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for key in values:
                    if sample.name == f"lens_shard_sync_seconds_{key}":
                        values[key] = float(sample.value)
        return values["sum"], values["count"]

    def rss_mb(self, field: str = "VmHWM") -> float:
        """Peak (VmHWM) or current (VmRSS) resident memory of the process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@dataclass
class Run:
    generation: int
    size: int
    index_s: float
    snapshot_s: float
    upload_s: float
    installed_after_s: list[float]
    sync_s: list[float]


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout.strip()


def fetch_corpus(fetch: Path, name: str) -> Path:
    out = subprocess.run(["bash", str(fetch), name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"fetch.sh {name} failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: object, seconds: float, what: str, poll: float = 0.02) -> float:
    """Poll ``check()`` until true; returns the wall-clock time it became true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return time.time()
        time.sleep(poll)
    raise SystemExit(f"timed out after {seconds:.0f}s waiting for {what}")


def start_searcher(name: str, work: Path, nats_url: str, namespace: str) -> Searcher:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN} | {
        "LENS_DATA_DIR": str(work / f"{name}-data"),
        "LENS_EMBED": "0",
        "LENS_NATS_URL": nats_url,
        "LENS_NATS_NAMESPACE": namespace,
        "LENS_CACHE_TTL_S": "0",
        "LENS_LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port), "--role", "searcher"]
    with open(work / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Searcher(name, f"http://127.0.0.1:{port}", proc)


def ready(s: Searcher) -> bool:
    if s.proc.poll() is not None:
        raise SystemExit(f"{s.name} exited with {s.proc.returncode}")
    try:
        return httpx.get(f"{s.url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(searchers: Sequence[Searcher]) -> None:
    for s in searchers:
        if s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGTERM)
    for s in searchers:
        try:
            s.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait()


async def drop_namespace(url: str, namespace: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for stream in (f"KV_{namespace}-generations", f"OBJ_{namespace}-shards"):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
    finally:
        await nc.close()


@contextlib.contextmanager
def searchers_running(work: Path, nats_url: str, namespace: str, n: int) -> Iterator[list[Searcher]]:
    started = [start_searcher(f"searcher-{i + 1}", work, nats_url, namespace) for i in range(n)]
    try:
        for s in started:
            wait_for(lambda s=s: ready(s), 60, f"{s.name} to be ready", poll=0.1)
        yield started
    finally:
        stop(started)


def one_run(
    lens: Lens, clone: Path, repo: str, store: NatsShardStore, searchers: list[Searcher], work: Path, i: int
) -> Run:
    probe = clone / "SHIPPING_BENCHMARK"
    probe.write_text(f"run {i} {uuid.uuid4().hex}\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", f"shipping benchmark run {i}")
    t0 = time.perf_counter()
    report = lens.index(clone, name=repo)
    index_s = time.perf_counter() - t0
    before = [s.sync_seconds() for s in searchers]
    copy = work / "outgoing.sqlite"
    t0 = time.perf_counter()
    generation = snapshot_shard(lens.catalog.require_shard(repo), copy)
    snapshot_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = store.publish(repo, copy, generation)
    upload_s = time.perf_counter() - t0
    copy.unlink()
    assert generation == report.generation
    after_s = [
        wait_for(lambda s=s: s.generation(repo) == generation, 120, f"{s.name} to install g{generation}")
        - ref.published_at
        for s in searchers
    ]
    sync_s = []
    for s, (sum0, n0) in zip(searchers, before, strict=True):
        wait_for(lambda s=s, n0=n0: s.sync_seconds()[1] > n0, 10, "the sync histogram", poll=0.05)
        sum1, n1 = s.sync_seconds()
        sync_s.append((sum1 - sum0) / (n1 - n0))
    return Run(generation, ref.size, index_s, snapshot_s, upload_s, after_s, sync_s)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", default="go-std", help="fetch.sh corpus (default go-std)")
    parser.add_argument("--runs", type=int, default=3, help="publications to time (default 3)")
    parser.add_argument("--nats-url", default=os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--fetch", type=Path, default=DEFAULT_FETCH, help="path of fetch.sh")
    args = parser.parse_args(argv)
    command = sys.argv if argv is None else [sys.argv[0], *argv]

    source = fetch_corpus(args.fetch, args.corpus)
    work = Path(tempfile.mkdtemp(prefix="lens-shipping-"))
    namespace = f"bench{uuid.uuid4().hex[:10]}"
    repo = args.corpus
    runs: list[Run] = []
    try:
        clone = work / "clone"
        subprocess.run(["git", "clone", "-q", "--shared", str(source), str(clone)], check=True)
        lens = Lens(LensSettings(data_dir=work / "indexer-data", embed=False))
        print(f"indexing {args.corpus} (embed off) ...", file=sys.stderr)
        t0 = time.perf_counter()
        first = lens.index(clone, name=repo)
        full_index_s = time.perf_counter() - t0
        store = NatsShardStore(args.nats_url, namespace)
        try:
            with searchers_running(work, args.nats_url, namespace, 2) as searchers:
                idle_rss = [s.rss_mb("VmRSS") for s in searchers]
                for i in range(args.runs):
                    print(f"run {i + 1}/{args.runs} ...", file=sys.stderr)
                    runs.append(one_run(lens, clone, repo, store, searchers, work, i))
                rss = [s.rss_mb() for s in searchers]
                t_start = time.time()
                late = start_searcher("searcher-late", work, args.nats_url, namespace)
                try:
                    late_ready_s = (
                        wait_for(lambda: ready(late), 120, "the late searcher", poll=0.05) - t_start
                    )
                    late_ok = late.generation(repo) == runs[-1].generation
                finally:
                    stop([late])
        finally:
            store.close()
    finally:
        asyncio.run(drop_namespace(args.nats_url, namespace))
        shutil.rmtree(work, ignore_errors=True)

    cpu, ram_kib = cpu_and_ram()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average at the end {load}"
    )
    print(f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; Python {platform.python_version()}")
    print(f"command: {shlex.join(['python', *command])}")
    print(
        f"corpus {args.corpus}: {first.files} files, {first.bytes_indexed / 1e6:.0f} MB of text; "
        f"full index {full_index_s:.1f} s; NATS JetStream on loopback (file storage), 2 searchers"
    )
    print()
    rows = [
        [
            str(i + 1),
            str(r.generation),
            f"{r.size / 1e6:.0f}",
            f"{r.index_s:.1f}",
            f"{r.snapshot_s:.2f}",
            f"{r.upload_s:.2f}",
            *(f"{x:.2f}" for x in r.installed_after_s),
            *(f"{x:.2f}" for x in r.sync_s),
        ]
        for i, r in enumerate(runs)
    ]
    med = [statistics.median(col) for col in zip(*(_numbers(r) for r in runs), strict=True)]
    rows.append(["median", "", f"{med[0] / 1e6:.0f}", *(f"{x:.2f}" for x in med[1:])])
    headers = ["run", "gen", "shard MB", "reindex s", "snapshot s", "upload s"]
    headers += ["installed s1", "installed s2", "sync s1", "sync s2"]
    print(table(headers, rows))
    print()
    print("installed sN: seconds from publication (ref written) until searcher N serves the new generation")
    print("sync sN: searcher N's own download + sha256 verify + import (lens_shard_sync_seconds)")
    worst = max(x for r in runs for x in r.installed_after_s)
    verdict = "met" if worst <= TARGET_S else "NOT met"
    print(f"target: both searchers serve it within {TARGET_S:.0f} s: {verdict} (worst {worst:.2f} s)")
    idle = ", ".join(f"{x:.0f} MB" for x in idle_rss)
    peak = ", ".join(f"{x:.0f} MB" for x in rss)
    print(f"searcher RSS: idle after start {idle}; peak over the runs (VmHWM) {peak}")
    state = "serving the latest generation" if late_ok else "NOT serving the latest generation"
    print(f"late searcher: process start -> /ready in {late_ready_s:.2f} s, {state}")


def _numbers(r: Run) -> list[float]:
    return [float(r.size), r.index_s, r.snapshot_s, r.upload_s, *r.installed_after_s, *r.sync_s]


if __name__ == "__main__":
    main()
