"""Lens's HTTP API under concurrent load: throughput and latency of ``GET /api/v1/search``.

Usage (from the project root, virtualenv active):

    python benchmarks/http_load.py --index go-std --index jdk --concurrency 16 --duration 20 [--workers 2]
    python benchmarks/http_load.py --data-dir DIR [--requests 2000] [--json out.json]

What it does:

1. With ``--data-dir DIR`` it serves an existing Lens data directory as it is. With ``--index NAME``
   (repeatable) it fetches each corpus with ``../shared/corpora/fetch.sh NAME`` and indexes it with
   ``lens index PATH --name NAME --no-embed`` into a fresh temporary data directory, removed at the end
   (unless ``--keep-data``).
2. Starts ``lens serve --host 127.0.0.1 --port P --workers N`` as a child process (``LENS_DATA_DIR``,
   ``LENS_EMBED=0``, no API tokens) and waits for ``/health``. With ``--workers 1`` (the default) one uvicorn
   process serves every request; with N > 1 uvicorn's supervisor forks N worker processes that share the
   listening socket (and prometheus_client's multiprocess mode merges their metrics). In each process a
   search runs on AnyIO's thread pool, at most ``LENS_SEARCH_CONCURRENCY`` (default: the CPU count) at a
   time. The server's search cache is switched off (``LENS_CACHE_TTL_S=0``), since the fixed query mix
   would otherwise be answered from it after the warm-up; ``--cache`` keeps the server's default cache.
3. Warms up (every query once, then a burst at the target concurrency so the thread pools and their
   per-thread SQLite connections exist in every server process), then runs two timed phases over the same
   fixed mix of queries (selective literals, common literals, regexes that match go-std and jdk):
   "baseline" (one request at a time) and "load" (``--concurrency`` asyncio tasks, each a closed-loop
   client with no think time, looping over the mix from its own offset). Each task has its own keep-alive
   HTTP/1.1 connection (``--client raw``, the default: plain asyncio streams) or they share one
   ``httpx.AsyncClient`` with ``max_connections=concurrency`` (``--client httpx``; it costs about ten
   times the CPU per request, which the server then lacks, since both run on the same cores). A phase
   lasts ``--duration`` seconds (requests in flight at the deadline are finished and counted) or
   ``--requests N`` requests. An error is a non-200 status or an exception.
4. Prints per phase: requests, errors, throughput, client-side latency percentiles, the server's own view
   (mean request time from its Prometheus histogram, mean engine time ``took_ms`` from the responses),
   and the CPU used by the server (all its processes) and by this load generator (they share the
   machine's cores), then a per-query table. The server is always terminated in ``finally``.

Percentiles are nearest-rank over all requests of a phase (p50 is the median).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from _machine import cpu_and_ram, fetch_corpus, lens_commit

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FETCH = PROJECT.parent / "shared" / "corpora" / "fetch.sh"
SEARCH_PATH = "/api/v1/search"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (kind, query in Lens syntax). Regexes are /.../ terms; a quoted term is a literal with spaces.
QUERIES: list[tuple[str, str]] = [
    ("selective", "MaxBytesReader"),
    ("selective", "appendQuotedWith"),
    ("selective", "StampedLock"),
    ("selective", "LinkedTransferQueue"),
    ("selective", "ErrBodyReadAfterClose"),
    ("selective", "AtomicReferenceFieldUpdater"),
    ("common", '"if err != nil"'),
    ("common", "return"),
    ("common", "String"),
    ("regex", r"/func \(\w+ \*\w+\) Close\(/"),
    ("regex", r"/throw new (IllegalArgumentException|IllegalStateException)\(/"),
    ("regex", r"/func \w+\(ctx context\.Context/"),
]


# --------------------------------------------------------------------------- small helpers


def percentile(xs: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); p50 is the median instead."""
    if not xs:
        return math.nan
    if pct == 50:
        return statistics.median(xs)
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    value = seconds * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table(title: str, headers: list[str], rows: Iterable[Sequence[object]], left: int = 1) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(widths[i]) if i < left else v.rjust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in cells)]) + "\n"


def machine_header(argv: list[str]) -> list[str]:
    cpu, ram_kib = cpu_and_ram()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])  # other work on the machine skews times
    usable = len(os.sched_getaffinity(0))
    commit = lens_commit()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc {usable}), {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average at start {load}",
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; Python {platform.python_version()};"
        f" httpx {httpx.__version__}; lens commit {commit}",
        f"command: {shlex.join(['python', *argv])}",
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lens_command() -> list[str]:
    script = Path(sys.executable).parent / "lens"
    if script.exists():
        return [str(script)]
    found = shutil.which("lens")
    return [found] if found else [sys.executable, "-m", "lens.serve.cli"]


def lens_env(data_dir: Path, *, cache: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LENS_DATA_DIR=str(data_dir), LENS_EMBED="0", LENS_API_TOKENS="", LENS_HOST="127.0.0.1")
    if not cache:
        env["LENS_CACHE_TTL_S"] = "0"
    return env


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (uvicorn's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        out.append(cur)
        todo.extend(children.get(cur, []))
    return out


def proc_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of live processes (all their threads), from /proc."""
    total = 0
    for member in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat_fields(member)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def proc_threads(pids: list[int]) -> int:
    """Threads of live processes."""
    total = 0
    for member in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(_stat_fields(member)[17])
    return total


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_benchmarks() -> list[str]:
    """Command lines of other running ``benchmarks/*.py`` processes (they would skew the numbers)."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if argv[0].endswith(b"flock"):
            continue  # waiting for the benchmark lock (maybe the one this run holds), not running
        if re.search(r"benchmarks/\w+\.py", text) and "python" in text and "timeout " not in text:
            found.append(f"{entry.name}: {text[:120]}")
    return found


def machine_jiffies() -> tuple[int, int]:
    """(all, busy) CPU time of the whole machine in clock ticks, from /proc/stat (busy: not idle/iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[:8]), sum(values[:8]) - values[3] - values[4]  # guest time is already in user


def cpu_busy(window: float = 3.0) -> float:
    """Share of all CPUs' time spent busy over ``window`` seconds."""
    total0, busy0 = machine_jiffies()
    time.sleep(window)
    total1, busy1 = machine_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_for_quiet(max_seconds: float, max_busy: float, poll: float = 30.0) -> float:
    """Wait while other benchmarks run or the CPUs are over ``max_busy`` busy; return the last busy share."""
    deadline = time.monotonic() + max_seconds
    while True:
        others = other_benchmarks()
        busy = cpu_busy()
        if not others and busy <= max_busy:
            return busy
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        why = others[0] if others else f"CPUs {100 * busy:.0f}% busy"
        if time.monotonic() >= deadline:
            print(
                f"warning: machine not quiet after {max_seconds:.0f} s, measuring anyway: {why}",
                file=sys.stderr,
            )
            return busy
        print(f"waiting for a quiet machine (load {load}): {why}", file=sys.stderr)
        time.sleep(poll)


# --------------------------------------------------------------------------- indexing


def index_corpora(fetch: Path, names: list[str], data_dir: Path) -> list[str]:
    lines = []
    for name in names:
        path = fetch_corpus(fetch, name)
        cmd = [*lens_command(), "index", str(path), "--name", name, "--no-embed", "--json"]
        print(f"indexing {name}: {shlex.join(cmd)}", file=sys.stderr)
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=lens_env(data_dir), check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"lens index {name} failed:\n{proc.stdout}\n{proc.stderr}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        lines.append(
            f"indexed {name}: {report.get('files')} files, {report.get('bytes_indexed', 0) / 1e6:.0f} MB "
            f"in {seconds:.1f} s"
        )
    return lines


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    port: int

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def lens_server(
    data_dir: Path,
    port: int,
    log_dir: Path,
    *,
    workers: int = 1,
    cache: bool = False,
    startup_timeout: float = 120.0,
) -> Iterator[Server]:
    """Run ``lens serve`` for the duration of the block; it is terminated (then killed) in ``finally``."""
    log_path = log_dir / "lens-serve.log"
    cmd = [*lens_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    print(f"starting: {shlex.join(cmd)}", file=sys.stderr)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=lens_env(data_dir, cache=cache), stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log_path, port)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lens serve exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(server.base_url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"lens serve not healthy after {startup_timeout:.0f} s:\n{server.log_tail()}"
                )
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


# --------------------------------------------------------------------------- the server's metrics

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for raw in text.splitlines():
        m = _SAMPLE.match(raw)
        if not m or raw.startswith("#"):
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        with contextlib.suppress(ValueError):
            out[(m.group(1), labels)] = float(m.group(3))
    return out


@dataclass
class ServerView:
    """Deltas of the server's Prometheus series over one phase."""

    http_count: float = 0.0
    http_sum: float = 0.0
    http_p95_bucket: float = math.nan  # upper bound of the histogram bucket holding the 95th percentile
    engine_count: float = 0.0
    engine_sum: float = 0.0


def server_view(
    before: dict[tuple[str, frozenset[tuple[str, str]]], float],
    after: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> ServerView:
    def delta(name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == name and want <= k[1])

    view = ServerView()
    http = "lens_http_request_duration_seconds"
    view.http_count = delta(http + "_count", route=SEARCH_PATH, method="GET")
    view.http_sum = delta(http + "_sum", route=SEARCH_PATH, method="GET")
    view.engine_count = delta("lens_search_duration_seconds_count", mode="exact")
    view.engine_sum = delta("lens_search_duration_seconds_sum", mode="exact")
    buckets = sorted(
        (
            float(dict(k[1])["le"]),
            delta(http + "_bucket", route=SEARCH_PATH, method="GET", le=dict(k[1])["le"]),
        )
        for k in after
        if k[0] == http + "_bucket" and ("route", SEARCH_PATH) in k[1] and ("method", "GET") in k[1]
    )
    for le, cumulative in buckets:
        if view.http_count and cumulative >= 0.95 * view.http_count:
            view.http_p95_bucket = le
            break
    return view


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = await client.get("/metrics")
    resp.raise_for_status()
    return parse_metrics(resp.text)


# --------------------------------------------------------------------------- the load generator


@dataclass
class Sample:
    query: int
    latency: float  # seconds, client side: request sent to body read
    status: int  # 0 for an exception
    took_ms: float | None = None  # the engine's own time, from the response
    results: int = 0
    total: int = 0
    error: str | None = None


@dataclass
class Phase:
    name: str
    concurrency: int
    wall: float
    samples: list[Sample]
    server_cpu: float  # seconds
    client_cpu: float  # seconds
    machine_cpu: float  # busy CPU seconds of the whole machine (the rest is other processes)
    peak_threads: int
    view: ServerView = field(default_factory=ServerView)
    process_cpu: list[float] = field(default_factory=list)  # seconds per server process, busiest first

    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200 and s.error is None]

    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200 or s.error is not None]


class Requester(Protocol):
    """Sends GET requests for one of the load generator's concurrent clients (``worker``)."""

    async def get(self, worker: int, target: str) -> tuple[int, bytes]: ...


class HttpxRequester:
    """httpx.AsyncClient with a pool of ``concurrency`` keep-alive connections."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, worker: int, target: str) -> tuple[int, bytes]:
        resp = await self.client.get(target)
        return resp.status_code, resp.content


class RawRequester:
    """One keep-alive HTTP/1.1 connection per concurrent client, over asyncio streams.

    The load generator shares the machine's cores with the server, so its own CPU per request
    matters: httpx's AsyncClient spends about 2.5 ms per search request, this about a tenth.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def get(self, worker: int, target: str) -> tuple[int, bytes]:
        if worker in self._conns:
            try:
                return await self._get(worker, target)
            except (OSError, asyncio.IncompleteReadError):
                # The server closes keep-alive connections idle for 5 s (uvicorn's default, e.g. the
                # load phase's connections during the baseline): retry once on a new connection, as
                # httpx does. GET is idempotent.
                pass
        return await self._get(worker, target)

    async def _get(self, worker: int, target: str) -> tuple[int, bytes]:
        conn = self._conns.get(worker)
        if conn is None:
            conn = self._conns[worker] = await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                headers = {}
                for raw in head.split(b"\r\n")[1:]:
                    key, _, value = raw.partition(b":")
                    headers[key.strip().lower()] = value.strip().lower()
                if headers.get(b"transfer-encoding") == b"chunked":
                    parts = []
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        parts.append((await reader.readexactly(size + 2))[:-2])
                    await reader.readuntil(b"\r\n")  # no trailers
                    body = b"".join(parts)
                else:
                    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            if headers.get(b"connection") == b"close":
                self._drop(worker)
            return status, body
        except BaseException:
            self._drop(worker)
            raise

    def _drop(self, worker: int) -> None:
        conn = self._conns.pop(worker, None)
        if conn is not None:
            conn[1].close()

    def close(self) -> None:
        for worker in list(self._conns):
            self._drop(worker)


async def one_request(requester: Requester, worker: int, index: int, query: str, limit: int) -> Sample:
    target = SEARCH_PATH + "?" + urllib.parse.urlencode({"q": query, "limit": limit})
    started = time.perf_counter()
    try:
        status, content = await requester.get(worker, target)
    except (
        httpx.HTTPError,
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ValueError,
    ) as exc:
        return Sample(index, time.perf_counter() - started, 0, error=type(exc).__name__)
    latency = time.perf_counter() - started
    if status != 200:
        return Sample(index, latency, status, error=content[:200].decode(errors="replace"))
    try:
        body = json.loads(content)
        return Sample(
            index, latency, 200, float(body["took_ms"]), len(body["results"]), int(body.get("total") or 0)
        )
    except (ValueError, KeyError, TypeError) as exc:
        return Sample(index, latency, 200, error=f"bad body: {exc}")


async def run_phase(
    client: httpx.AsyncClient,
    requester: Requester,
    server: Server,
    name: str,
    queries: list[str],
    concurrency: int,
    duration: float | None,
    requests: int | None,
    limit: int,
) -> Phase:
    samples: list[Sample] = []
    issued = 0
    peak_threads = 0
    stop = asyncio.Event()
    metrics_before = await scrape(client)
    pids = proc_tree(server.proc.pid)  # the server and its worker processes
    cpu0_server, cpu0_client = proc_cpu_seconds(pids), self_cpu_seconds()
    cpu0_each = [proc_cpu_seconds([pid]) for pid in pids]
    cpu0_machine = machine_jiffies()[1]
    started = time.perf_counter()
    deadline = started + duration if duration is not None else math.inf

    async def worker(k: int, offset: int) -> None:
        nonlocal issued
        i = offset
        while time.perf_counter() < deadline and (requests is None or issued < requests):
            issued += 1  # one event loop: no race between the check and the increment
            q = i % len(queries)
            i += 1
            samples.append(await one_request(requester, k, q, queries[q], limit))

    async def sampler() -> None:
        nonlocal peak_threads
        while not stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                peak_threads = max(peak_threads, proc_threads(pids))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    watch = asyncio.create_task(sampler())
    try:
        await asyncio.gather(*(worker(k, k * len(queries) // concurrency) for k in range(concurrency)))
    finally:
        stop.set()
        await watch
    wall = time.perf_counter() - started
    cpu_server = proc_cpu_seconds(pids) - cpu0_server
    each = sorted(
        (proc_cpu_seconds([pid]) - c0 for pid, c0 in zip(pids, cpu0_each, strict=True)), reverse=True
    )
    cpu_client = self_cpu_seconds() - cpu0_client
    cpu_machine = (machine_jiffies()[1] - cpu0_machine) / CLK_TCK
    view = server_view(metrics_before, await scrape(client))
    return Phase(
        name, concurrency, wall, samples, cpu_server, cpu_client, cpu_machine, peak_threads, view, each
    )


async def drive(server: Server, args: argparse.Namespace, queries: list[str]) -> tuple[list[Phase], Any]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    timeout = httpx.Timeout(args.timeout)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=timeout) as client:
        raw = RawRequester("127.0.0.1", server.port, args.timeout) if args.client == "raw" else None
        requester: Requester = raw if raw is not None else HttpxRequester(client)
        try:
            repos = (await client.get("/api/v1/repos")).json().get("repos", [])
            # warm-up: every query once (caches, file tables), then a burst at the target concurrency so
            # the worker threads (each with its own SQLite connection per shard) exist before timing starts;
            # with several server processes, enough requests that every process has run every query
            for i, q in enumerate(queries):
                sample = await one_request(requester, 0, i, q, args.limit)
                if sample.error:
                    raise RuntimeError(f"warm-up query {q!r} failed: {sample.status} {sample.error}")
            warm = max(2 * args.concurrency, 4 * args.workers * len(queries))
            await run_phase(
                client, requester, server, "warm-up", queries, args.concurrency, None, warm, args.limit
            )
            phases = []
            if not args.no_baseline:
                print("baseline (concurrency 1) ...", file=sys.stderr)
                phases.append(
                    await run_phase(
                        client,
                        requester,
                        server,
                        "baseline",
                        queries,
                        1,
                        args.duration,
                        args.requests,
                        args.limit,
                    )
                )
            print(f"load (concurrency {args.concurrency}) ...", file=sys.stderr)
            phases.append(
                await run_phase(
                    client,
                    requester,
                    server,
                    "load",
                    queries,
                    args.concurrency,
                    args.duration,
                    args.requests,
                    args.limit,
                )
            )
        finally:
            if raw is not None:
                raw.close()
    return phases, repos


# --------------------------------------------------------------------------- report


def phase_table(phases: list[Phase], nproc: int, limit: int) -> str:
    rows = []
    for p in phases:
        lat = [s.latency for s in p.ok()]
        took = [s.took_ms / 1000 for s in p.ok() if s.took_ms is not None]
        v = p.view
        rows.append(
            [
                p.name,
                p.concurrency,
                len(p.samples),
                len(p.errors()),
                f"{len(p.ok()) / p.wall:.1f}" if p.wall else "-",
                fmt_ms(percentile(lat, 50)),
                fmt_ms(percentile(lat, 95)),
                fmt_ms(percentile(lat, 99)),
                fmt_ms(max(lat) if lat else math.nan),
                fmt_ms(v.http_sum / v.http_count if v.http_count else math.nan),
                "-" if math.isnan(v.http_p95_bucket) else f"<={v.http_p95_bucket * 1000:g}",
                fmt_ms(statistics.fmean(took) if took else math.nan),
                fmt_ms(percentile(took, 95)),
                f"{100 * p.server_cpu / p.wall:.0f}%",
                f"{100 * p.client_cpu / p.wall:.0f}%",
                f"{100 * max(0.0, p.machine_cpu - p.server_cpu - p.client_cpu) / p.wall:.0f}%",
                p.peak_threads,
            ]
        )
    headers = [
        "phase",
        "conc",
        "requests",
        "errors",
        "req/s",
        "p50",
        "p95",
        "p99",
        "max",
        "srv mean",
        "srv p95",
        "engine mean",
        "engine p95",
        "srv CPU",
        "client CPU",
        "other CPU",
        "srv thr",
    ]
    legend = (
        "p50..max: client-side latency (request sent to body read). Server's view: 'srv mean' from its "
        "request histogram,\n'srv p95' the upper bound of the histogram bucket holding its p95; 'engine' = "
        "took_ms in the responses (Lens.search only).\nCPU: % of one core over the phase (server: all its "
        f"processes; the machine has {nproc}); 'other' = the rest of the machine. 'srv thr' = peak "
        "threads of the server's processes.\n"
    )
    return table(f"GET {SEARCH_PATH}?q=...&limit={limit} (times in ms)", headers, rows) + legend


def query_table(phases: list[Phase], kinds: list[str], queries: list[str]) -> str:
    headers = ["query", "kind", "results", "total"]
    for p in phases:
        headers += [f"{p.name} n", f"{p.name} p50", f"{p.name} p95", f"{p.name} engine p50"]
    rows = []
    for i, q in enumerate(queries):
        first = next((s for p in phases for s in p.ok() if s.query == i), None)
        row: list[object] = [q, kinds[i], first.results if first else "-", first.total if first else "-"]
        for p in phases:
            mine = [s for s in p.ok() if s.query == i]
            lat = [s.latency for s in mine]
            took = [s.took_ms / 1000 for s in mine if s.took_ms is not None]
            row += [len(mine), fmt_ms(percentile(lat, 50)), fmt_ms(percentile(lat, 95))]
            row.append(fmt_ms(percentile(took, 50)))
        rows.append(row)
    return table("Per query (ms; client latency and engine took_ms)", headers, rows, left=2)


def error_summary(phases: list[Phase]) -> list[str]:
    lines = []
    for p in phases:
        kinds = Counter(f"{s.status} {s.error or ''}".strip()[:100] for s in p.errors())
        lines += [f"{p.name}: {n} x {what}" for what, n in kinds.most_common(5)]
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir", type=Path, help="existing Lens data directory with indexed repositories"
    )
    source.add_argument(
        "--index",
        action="append",
        metavar="CORPUS",
        help="fetch.sh corpus to index into a fresh temporary data directory (repeatable)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent requests in the load phase")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    bound.add_argument("--requests", type=int, help="requests per phase, instead of --duration")
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (lens serve --workers; default 1)"
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="keep the server's search cache on (default off: LENS_CACHE_TTL_S=0, so every request searches)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator: raw asyncio HTTP/1.1 keep-alive connections (default; cheap on CPU) or httpx",
    )
    parser.add_argument("--limit", type=int, default=100, help="limit= of each search (default 100)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--query", action="append", help="replace the built-in query mix (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the sequential baseline phase")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before measuring, wait up to this long (polling every 30 s) while other benchmarks/*.py "
        "processes run or the CPUs are busier than --max-busy",
    )
    parser.add_argument(
        "--max-busy", type=float, default=0.25, help="CPU busy share that counts as quiet (default 0.25)"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--fetch", type=Path, default=DEFAULT_FETCH, help="path of fetch.sh")
    parser.add_argument("--json", type=Path, help="write the summary and every sample here")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.concurrency < 1 or (args.requests is not None and args.requests < 1) or args.duration <= 0:
        parser.error("--concurrency, --requests and --duration must be positive")
    if args.requests is not None:
        args.duration = None
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.query:
        kinds, queries = ["given"] * len(args.query), list(args.query)
    else:
        kinds, queries = [k for k, _ in QUERIES], [q for _, q in QUERIES]

    command = sys.argv if argv is None else [sys.argv[0], *argv]
    work = Path(tempfile.mkdtemp(prefix="lens-http-load-"))
    try:
        lines: list[str] = []
        data_dir: Path = args.data_dir or work / "data"
        if args.index:
            if args.wait_quiet > 0:  # indexing is heavy: do not slow down (or get slowed by) other work
                wait_for_quiet(args.wait_quiet, args.max_busy)
            lines = index_corpora(args.fetch, args.index, data_dir)
        busy = wait_for_quiet(args.wait_quiet, args.max_busy) if args.wait_quiet > 0 else cpu_busy()
        header = machine_header(command)  # load average taken just before measuring
        header[0] += f"; CPUs {100 * busy:.0f}% busy just before"
        port = args.port or free_port()
        with lens_server(data_dir, port, work, workers=args.workers, cache=args.cache) as server:
            phases, repos = asyncio.run(drive(server, args, queries))
    finally:
        if args.keep_data and args.index:
            print(f"data directory kept: {work / 'data'}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    nproc = len(os.sched_getaffinity(0))
    print("\n".join(header))
    print(
        f"server: `lens serve --workers {args.workers}`"
        + (" (one process)" if args.workers == 1 else f" (supervisor + {args.workers} worker processes)")
        + "; searches on AnyIO's thread pool, at most LENS_SEARCH_CONCURRENCY per process; LENS_EMBED=0; "
        + ("search cache on (server default)" if args.cache else "search cache off (LENS_CACHE_TTL_S=0)")
    )
    print(f"client: --client {args.client}, {args.concurrency} closed-loop clients in the load phase")
    bound_text = f"{args.duration:g} s" if args.duration is not None else f"{args.requests} requests"
    print(
        f"phases: {bound_text} each, after a warm-up; {len(queries)} queries in the mix, limit={args.limit}"
    )
    for r in repos:
        print(f"repo {r['name']}: {r.get('files')} files, {(r.get('bytes') or 0) / 1e6:.0f} MB")
    print("\n".join(lines))
    print()
    print(phase_table(phases, nproc, args.limit))
    if args.workers > 1:
        for p in phases:
            shares = " / ".join(f"{100 * c / p.wall:.0f}%" for c in p.process_cpu if c > 0.005 * p.wall)
            print(f"{p.name}: CPU per server process (busiest first; the supervisor is idle): {shares}")
        print()
    print(query_table(phases, kinds, queries))
    errors = error_summary(phases)
    if errors:
        print("Errors:\n" + "\n".join(errors) + "\n")
    if len(phases) == 2 and phases[0].wall and phases[1].wall:
        base = len(phases[0].ok()) / phases[0].wall
        load = len(phases[1].ok()) / phases[1].wall
        if base:
            print(f"scaling: {load / base:.2f}x the baseline throughput at concurrency {args.concurrency}")
    if args.json:
        report = {
            "header": header,
            "workers": args.workers,
            "cache": args.cache,
            "client": args.client,
            "repos": repos,
            "queries": [{"kind": k, "query": q} for k, q in zip(kinds, queries, strict=True)],
            "phases": [
                {k: v for k, v in asdict(p).items() if k != "samples"}
                | {"samples": [asdict(s) for s in p.samples]}
                for p in phases
            ],
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
