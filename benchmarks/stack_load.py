"""The production stack under load: exact search through Mimir's REST API over 1 vs 2 Lens searchers.

Usage (from the project root, virtualenv active; PostgreSQL, Redis and NATS on loopback):

    python benchmarks/stack_load.py [--corpus go-std --corpus jdk] [--clients 32] [--duration 30] [--json F]

    # index once (outside the benchmark lock), then time as often as needed without re-indexing:
    python benchmarks/stack_load.py --work-dir /tmp/stackload --keep --setup-only
    flock /tmp/mimir-lens-bench.lock python benchmarks/stack_load.py --work-dir /tmp/stackload --keep
    flock /tmp/mimir-lens-bench.lock python benchmarks/stack_load.py --work-dir /tmp/stackload  # cleans up

Target (issue 4): with the production backends, exact search through Mimir's REST API on go-std + jdk has
p95 <= 100 ms at 32 concurrent clients across 2 searcher replicas, 0 errors, and at least 1.7x the
throughput of one replica.

What it does:

1. Production backends, as docs/OPERATIONS.md ("Running the whole stack locally") runs them, all in
   ``*_ENV=production`` with bearer tokens: a fresh PostgreSQL database (``MIMIR_DATABASE_URL``, migrated
   with ``mimir db upgrade``), the loopback Redis (``*_REDIS_URL``) and a fresh NATS namespace (work queue,
   shard objects and refs; also the Redis key prefix). Two ``lens serve --role searcher`` replicas, each
   with its own data directory. ``mimir serve`` and ``mimir worker`` processes share Mimir's data directory.
2. Setup: each corpus (``../shared/corpora/fetch.sh NAME``, a git repository) is indexed through Mimir:
   ``POST /api/index/repository``, the jobs run on ``--index-workers`` ``mimir worker`` processes, which
   build the Lens shards and publish them; the script waits until both searchers serve every shard.
   Embeddings are off (``MIMIR_EMBED``/``LENS_EMBED=false``). The workers and the setup API process are
   stopped before any timing. With ``--work-dir DIR --keep`` everything (database, namespace, data
   directories, tokens in ``DIR/state.json``) is kept, so the next run with the same ``--work-dir`` finds
   the indexes ready and skips indexing (``POST /api/index/repository`` answers ``reused``); a run without
   ``--keep`` removes it all.
3. Timed phases; each starts a fresh ``mimir serve --workers N`` (``--mimir-workers``, default 2) with a
   different ``LENS_URL`` and waits for ``/ready``:
   - A: ``LENS_URL`` = searcher 1 only (searcher 2 keeps running, idle);
   - B: ``LENS_URL`` = both searchers (Mimir sends each Lens call to the replica with fewer calls in
     flight);
   - C (``--cache-phase``): as B, with the result caches on (Redis, the default TTLs) in Mimir and the
     searchers, which are restarted for it.
   ``--phases`` picks a subset (e.g. ``--phases C``).
   In A and B the result caches are **off**: ``MIMIR_CACHE_TTL_S=0`` and ``LENS_CACHE_TTL_S=0`` (a TTL of 0
   switches a cache off; ``/ready`` then shows ``cache: disabled``). With a fixed query mix every request
   would otherwise be a Redis hit after the first round, and the phases would measure Redis, not search.
   Each phase: warm-up (every query once, then a burst at full concurrency), an optional single-client
   baseline (A only, ``--baseline-duration``), then ``--clients`` asyncio tasks sharing one
   ``httpx.AsyncClient`` (``max_connections`` = clients) loop over the mix for ``--duration`` seconds, each
   from its own offset. A request is ``POST /api/search {"index_id", "query", "mode": "exact", "k",
   "context_lines"}``. An error is an exception, a status other than 200, or an answer with ``degraded:
   true``.
4. Measures per phase: throughput, client-side latency percentiles (nearest rank), errors, the CPU used by
   every process group (Mimir API, each searcher, this load generator; PostgreSQL, Redis and NATS by process
   name; "other" = the rest of the machine, from /proc/stat), the Mimir server's own view from its
   Prometheus metrics (mean /api/search time, Lens calls per search and their mean latency by operation) and
   how the searchers shared the Lens calls. It checks that both phases return the same results for every
   query.
   ``--wait-quiet S`` first waits (up to S seconds) for the CPUs to be idle; ``--profile-dir DIR`` samples
   Mimir and the searchers with py-spy (if installed) during the loaded phases, which costs CPU: use such a
   run only to see where the time goes.
5. Prints the machine (``_machine.py``), a phase table, a per-query table and the verdict; ``--json`` writes
   the summary and every sample. Everything it started is stopped in ``finally``; without ``--keep`` the
   database is dropped, the namespace's NATS streams and Redis keys deleted and the work directory removed.

Queries: Mimir's ``/api/search`` takes plain text, never Lens syntax
(``mimir.research.search.lens_queries``): exact mode sends Lens the identifier-like words of the text (3+
characters, minus a few stop words such as "return"), quoted and ORed. Regexes therefore cannot be sent
through Mimir; the mix uses selective identifiers, common identifiers, and multi-word texts (an OR of
several literals, Mimir's most expensive exact query). Every search also reads the cited spans of its ``k``
results from Lens, all in one batched call (``read_spans``, ``POST /api/v1/repos/{name}/spans``), so one Mimir
exact search is 2 Lens calls whatever ``k`` is (it was 1 + up to k ``read_file`` calls before).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import fcntl
import functools
import json
import math
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from _machine import cpu_and_ram, lens_commit

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_FETCH = PROJECT.parent / "shared" / "corpora" / "fetch.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STATE_FILE = "state.json"
TARGET_P95_S = 0.100
TARGET_RATIO = 1.7
SEARCH_ROUTE = "/api/search"
T = TypeVar("T")

# Settings of the surrounding environment that must not leak into the stack's processes.
_FOREIGN = (
    "DATABASE_URL",
    "REDIS_URL",
    "NATS_URL",
    "NATS_NAMESPACE",
    "LENS_URL",
    "LENS_TOKEN",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

# (kind, corpus, plain-text query as a user would send it to Mimir). What Lens receives is the OR of the
# quoted words (see the module docstring), e.g. "if err != nil" -> ("err" OR "nil").
QUERIES: list[tuple[str, str, str]] = [
    ("selective", "go-std", "MaxBytesReader"),
    ("selective", "go-std", "appendQuotedWith"),
    ("selective", "go-std", "ErrBodyReadAfterClose"),
    ("selective", "jdk", "StampedLock"),
    ("selective", "jdk", "LinkedTransferQueue"),
    ("selective", "jdk", "AtomicReferenceFieldUpdater"),
    ("common", "go-std", "if err != nil"),
    ("common", "go-std", "String"),
    ("common", "jdk", "Override"),
    ("common", "jdk", "public static"),
    ("multi", "go-std", "ReadByte ReadRune ReadString"),
    ("multi", "go-std", "ctx context.Context"),
    ("multi", "jdk", "IllegalArgumentException IllegalStateException"),
    ("multi", "jdk", "synchronized volatile transient"),
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


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_jiffies() -> tuple[int, int]:
    """(all, busy) CPU time of the whole machine in clock ticks, from /proc/stat (busy: not idle/iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[:8]), sum(values[:8]) - values[3] - values[4]


def cpu_busy(window: float = 3.0) -> float:
    total0, busy0 = machine_jiffies()
    time.sleep(window)
    total1, busy1 = machine_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_quiet(max_seconds: float, max_busy: float) -> None:
    """Wait (up to ``max_seconds``) until the machine's CPUs are at most ``max_busy`` busy."""
    deadline = time.monotonic() + max_seconds
    while (busy := cpu_busy()) > max_busy:
        if time.monotonic() > deadline:
            log(f"warning: CPUs still {100 * busy:.0f}% busy after {max_seconds:.0f} s; measuring anyway")
            return
        log(f"waiting for a quiet machine: CPUs {100 * busy:.0f}% busy, load average {load_average()}")
        time.sleep(10)


def processes() -> list[tuple[int, str, int, float]]:
    """(pid, comm, process group, CPU seconds) of every live process, from /proc/<pid>/stat."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
        out.append((int(entry.name), comm, int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK))
    return out


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
        if argv and Path(argv[0].decode(errors="replace")).name in ("flock", "timeout"):
            continue  # a wrapper (e.g. waiting for the benchmark lock); its child is listed if it runs
        if "benchmarks/" in text and ".py" in text and "python" in text and "stack_load.py" not in text:
            found.append(f"{entry.name}: {text[:120]}")
    return found


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += float(sample.value)
    return total


def label_values(text: str, name: str, label: str) -> set[str]:
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and label in sample.labels:
                found.add(sample.labels[label])
    return found


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """One process group of the stack (started in its own session, so its uvicorn workers are included)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # uvicorn worker children share the group; make sure none outlives its parent
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class State:
    """What a kept work directory remembers between runs."""

    namespace: str
    database_url: str
    lens_token: str
    mimir_token: str
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)  # corpus -> index_id, commit, setup

    def save(self, work: Path) -> None:
        (work / STATE_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, work: Path) -> State | None:
        path = work / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


class Stack:
    def __init__(self, args: argparse.Namespace, work: Path, state: State, roots: list[Path]) -> None:
        self.args = args
        self.work = work
        self.state = state
        self.roots = roots
        self.services: list[Service] = []
        self.searchers: list[Service] = []

    def _clean_env(self) -> dict[str, str]:
        return {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MIMIR_", "LENS_", "PROMETHEUS_")) and k not in _FOREIGN
        }

    def _multiproc(self, name: str, workers: int) -> dict[str, str]:
        """A private multiprocess metrics directory (inside the work dir, so it is cleaned up with it)."""
        if workers <= 1:
            return {}
        path = self.work / "prometheus" / name
        path.mkdir(parents=True, exist_ok=True)
        return {"PROMETHEUS_MULTIPROC_DIR": str(path)}

    def lens_env(self, name: str, *, cache: bool) -> dict[str, str]:
        env = {
            **self._clean_env(),
            "LENS_ENV": "production",
            "LENS_DATA_DIR": str(self.work / f"{name}-data"),
            "LENS_ALLOWED_ROOTS": ",".join(str(r) for r in self.roots),
            "LENS_API_TOKENS": self.state.lens_token,
            "LENS_NATS_URL": self.args.nats_url,
            "LENS_NATS_NAMESPACE": self.state.namespace,
            "LENS_REDIS_URL": self.args.redis_url,
            "LENS_EMBED": "false",
            "LENS_SHUTDOWN_GRACE_S": "5",
            "LENS_LOG_LEVEL": self.args.log_level,
            **self._multiproc(name, self.args.searcher_workers),
        }
        if not cache:
            env["LENS_CACHE_TTL_S"] = "0"
        return env

    def mimir_env(
        self, lens_urls: list[str], *, cache: bool, name: str = "", workers: int = 1
    ) -> dict[str, str]:
        env = {
            **self._clean_env(),
            "MIMIR_ENV": "production",
            "MIMIR_DATA_DIR": str(self.work / "mimir-data"),
            "MIMIR_ALLOWED_ROOTS": ",".join(str(r) for r in self.roots),
            "MIMIR_API_TOKENS": self.state.mimir_token,
            "MIMIR_DATABASE_URL": self.state.database_url,
            "MIMIR_REDIS_URL": self.args.redis_url,
            "MIMIR_NATS_URL": self.args.nats_url,
            "MIMIR_NATS_NAMESPACE": self.state.namespace,
            "MIMIR_LENS_URL": ",".join(lens_urls),
            "MIMIR_LENS_TOKEN": self.state.lens_token,
            "MIMIR_EMBED": "false",
            "MIMIR_SHUTDOWN_GRACE_S": "5",
            "MIMIR_LOG_LEVEL": self.args.log_level,
            **(self._multiproc(name, workers) if name else {}),
        }
        if not cache:
            env["MIMIR_CACHE_TTL_S"] = "0"
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], port: int) -> Service:
        path = self.work / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, proc, port, path)
        self.services.append(service)
        return service

    def migrate(self) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "mimir.serve.cli", "db", "upgrade"],
            env=self.mimir_env([], cache=False),
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"mimir db upgrade failed:\n{out.stdout}\n{out.stderr}")

    def start_searchers(self, *, cache: bool) -> list[Service]:
        started = []
        for i in (1, 2):
            name = f"searcher-{i}"
            port = free_port()
            cmd = [sys.executable, "-m", "lens.serve.cli", "serve", "--role", "searcher", "--port", str(port)]
            cmd += ["--workers", str(self.args.searcher_workers)]
            started.append(self._spawn(name, cmd, self.lens_env(name, cache=cache), port))
        self.searchers = started
        for s in started:
            wait_for(f"{s.name} /ready", functools.partial(self._ready, s), 180, 0.2)
        return started

    def start_api(self, name: str, lens_urls: list[str], *, workers: int, cache: bool) -> Service:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "mimir.serve.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        api = self._spawn(name, cmd, self.mimir_env(lens_urls, cache=cache, name=name, workers=workers), port)
        wait_for(f"{name} /ready", lambda: self._ready(api), 120, 0.2)
        return api

    def start_worker(self, name: str) -> Service:
        port = free_port()
        cmd = [sys.executable, "-m", "mimir.serve.cli", "worker", "--metrics-port", str(port)]
        return self._spawn(name, cmd, self.mimir_env([s.url for s in self.searchers], cache=False), port)

    @staticmethod
    def _ready(service: Service) -> bool:
        service.check_alive()
        try:
            return httpx.get(service.url + "/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, services: Iterable[Service]) -> None:
        for s in list(services):
            s.stop()
            if s in self.services:
                self.services.remove(s)

    def close(self) -> None:
        self.stop(list(self.services))


# --------------------------------------------------------------------------- backends: create, drop


def create_database(admin_url: str) -> str:
    import psycopg
    from psycopg import sql

    name = f"mimir_stackload_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, url: str) -> None:
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def delete_namespace(nats_url: str, namespace: str) -> list[str]:
    """Every stream of the namespace: jobs, dead letters, shard objects and refs."""
    import nats
    from nats.js.errors import NotFoundError

    async def drop() -> list[str]:
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            names = [str(s.config.name) for s in await js.streams_info()]
            prefixes = (f"{namespace}_", f"KV_{namespace}-", f"OBJ_{namespace}-")
            gone = [n for n in names if n.startswith(prefixes)]
            for name in gone:
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
            return gone
        finally:
            await nc.close()

    return asyncio.run(drop())


def delete_redis_prefix(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def redis_keys(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


# --------------------------------------------------------------------------- setup: index through Mimir


def fetch_corpus(fetch: Path, name: str) -> Path:
    out = subprocess.run(["bash", str(fetch), name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"fetch.sh {name} failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1]).resolve()


def setup_indexes(stack: Stack, corpora: dict[str, Path]) -> list[str]:
    """Index every corpus through Mimir's REST API and wait until both searchers serve its shard."""
    args, state = stack.args, stack.state
    headers = {"Authorization": f"Bearer {state.mimir_token}"}
    lines = []
    api = stack.start_api("mimir-setup", [s.url for s in stack.searchers], workers=1, cache=False)
    workers: list[Service] = []
    try:
        started = time.perf_counter()
        jobs: dict[str, dict[str, Any]] = {}
        for corpus, path in corpora.items():
            resp = httpx.post(
                api.url + "/api/index/repository", json={"path": str(path)}, headers=headers, timeout=60
            )
            if resp.status_code != 202:
                raise RuntimeError(f"index {corpus}: {resp.status_code} {resp.text[:500]}")
            body = resp.json()
            info = state.indexes.get(corpus, {})
            info.update(index_id=body["index_id"], commit=body["commit"], path=str(path))
            state.indexes[corpus] = info
            if body.get("reused"):
                lines.append(f"{corpus}: index {body['index_id']} already ready (reused, not re-indexed)")
                log(lines[-1])
            else:
                jobs[corpus] = body["job"]
                log(f"{corpus}: job {body['job']['run_id']} queued for {body['index_id']}")
        state.save(stack.work)
        if jobs:
            workers = [stack.start_worker(f"mimir-worker-{i + 1}") for i in range(args.index_workers)]
            pending = dict(jobs)
            last_note = 0.0
            while pending:
                for w in workers:
                    w.check_alive()
                for corpus, job in list(pending.items()):
                    got = httpx.get(f"{api.url}/api/jobs/{job['run_id']}", headers=headers, timeout=30)
                    run = got.json()["job"]
                    if run["state"] in ("succeeded", "failed", "cancelled"):
                        if run["state"] != "succeeded":
                            raise RuntimeError(
                                f"index run of {corpus} ended {run['state']}: {run.get('error')}"
                            )
                        took = (run["finished_at"] or time.time()) - run["created_at"]
                        stages = {
                            s.get("stage") or s.get("name"): s.get("seconds") or s.get("duration_s")
                            for s in run.get("stages") or []
                        }
                        state.indexes[corpus]["setup"] = {"seconds": round(took, 1), "stages": stages}
                        lines.append(f"{corpus}: indexed through Mimir in {took:.0f} s (queue to done)")
                        log(lines[-1])
                        del pending[corpus]
                    elif time.monotonic() - last_note > 30:
                        log(
                            f"{corpus}: {run['state']} {run.get('stage')} {run.get('percent')}% "
                            f"{run.get('message')}"
                        )
                if pending and time.monotonic() - last_note > 30:
                    last_note = time.monotonic()
                if time.perf_counter() - started > args.index_timeout:
                    raise RuntimeError(f"indexing took over {args.index_timeout:.0f} s")
                time.sleep(1.0)
            state.save(stack.work)
        lens_headers = {"Authorization": f"Bearer {state.lens_token}"}

        def served(s: Service, repo: str) -> bool:
            s.check_alive()
            try:
                resp = httpx.get(f"{s.url}/api/v1/repos/{repo}", headers=lens_headers, timeout=10)
            except httpx.HTTPError:
                return False
            return resp.status_code == 200

        for corpus, info in state.indexes.items():
            if corpus not in corpora:
                continue
            for s in stack.searchers:
                wait_for(
                    f"{s.name} to serve {corpus}", functools.partial(served, s, info["index_id"]), 600, 0.5
                )
        if jobs:
            lines.append(
                f"setup: indexing + shipping to both searchers took {time.perf_counter() - started:.0f} s"
            )
    finally:
        stack.stop([*workers, api])
    return lines


# --------------------------------------------------------------------------- the load


@dataclass
class Sample:
    query: int
    latency: float  # seconds, client side: request sent to body read
    status: int  # 0 for an exception
    results: int = 0
    error: str | None = None


@dataclass
class Cpu:
    """CPU seconds over one phase, by component."""

    mimir: float = 0.0
    searchers: list[float] = field(default_factory=list)
    client: float = 0.0
    postgres: float = 0.0
    redis: float = 0.0
    nats: float = 0.0
    machine: float = 0.0  # busy CPU seconds of the whole machine

    @property
    def other(self) -> float:
        known = self.mimir + sum(self.searchers) + self.client + self.postgres + self.redis + self.nats
        return max(0.0, self.machine - known)


@dataclass
class ServerView:
    """Deltas of the servers' Prometheus series over one phase."""

    mimir_searches: float = 0.0
    mimir_search_seconds: float = 0.0
    lens_calls: dict[str, float] = field(default_factory=dict)  # Mimir's Lens calls by operation
    lens_call_seconds: dict[str, float] = field(default_factory=dict)
    searcher_requests: list[float] = field(default_factory=list)  # API requests each searcher answered


@dataclass
class Phase:
    name: str
    lens_urls: int
    cache: bool
    clients: int
    wall: float
    samples: list[Sample]
    cpu: Cpu
    view: ServerView

    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200 and s.error is None]

    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200 or s.error is not None]

    def throughput(self) -> float:
        return len(self.ok()) / self.wall if self.wall else math.nan

    def latency(self, pct: float) -> float:
        return percentile([s.latency for s in self.ok()], pct)


class CpuMeter:
    def __init__(self, api: Service, searchers: list[Service]) -> None:
        self.groups = {"mimir": api.proc.pid, **{f"s{i}": s.proc.pid for i, s in enumerate(searchers)}}
        self.n = len(searchers)
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        by: dict[str, float] = collections.defaultdict(float)
        by_group = {pgid: name for name, pgid in self.groups.items()}
        for _pid, comm, pgid, cpu in processes():
            if pgid in by_group:
                by[by_group[pgid]] += cpu
            elif comm.startswith("postgres"):
                by["postgres"] += cpu
            elif comm.startswith("redis-server"):
                by["redis"] += cpu
            elif comm.startswith("nats-server"):
                by["nats"] += cpu
        by["client"] = self_cpu_seconds()
        by["machine"] = machine_jiffies()[1] / CLK_TCK
        return dict(by)

    def stop(self) -> Cpu:
        end = self._read()

        def d(key: str) -> float:
            return max(0.0, end.get(key, 0.0) - self.start.get(key, 0.0))

        return Cpu(
            mimir=d("mimir"),
            searchers=[d(f"s{i}") for i in range(self.n)],
            client=d("client"),
            postgres=d("postgres"),
            redis=d("redis"),
            nats=d("nats"),
            machine=d("machine"),
        )


def scrape(service: Service) -> str:
    return httpx.get(service.url + "/metrics", timeout=10).text


def server_view(api: Service, searchers: list[Service], before: list[str], after: list[str]) -> ServerView:
    view = ServerView()
    m0, m1 = before[0], after[0]
    hist = "mimir_http_request_duration_seconds"
    view.mimir_searches = metric_sum(m1, hist + "_count", route=SEARCH_ROUTE) - metric_sum(
        m0, hist + "_count", route=SEARCH_ROUTE
    )
    view.mimir_search_seconds = metric_sum(m1, hist + "_sum", route=SEARCH_ROUTE) - metric_sum(
        m0, hist + "_sum", route=SEARCH_ROUTE
    )
    lens = "mimir_lens_request_duration_seconds"
    for op in sorted(label_values(m1, lens + "_count", "operation")):
        n = metric_sum(m1, lens + "_count", operation=op) - metric_sum(m0, lens + "_count", operation=op)
        if n > 0:
            view.lens_calls[op] = n
            view.lens_call_seconds[op] = metric_sum(m1, lens + "_sum", operation=op) - metric_sum(
                m0, lens + "_sum", operation=op
            )
    lhist = "lens_http_requests_total"
    for t0, t1 in zip(before[1:], after[1:], strict=True):
        total = 0.0
        for route in label_values(t1, lhist, "route"):
            if route.startswith("/api/"):
                total += metric_sum(t1, lhist, route=route) - metric_sum(t0, lhist, route=route)
        view.searcher_requests.append(total)
    return view


class Load:
    def __init__(self, args: argparse.Namespace, mix: list[dict[str, Any]], token: str) -> None:
        self.args = args
        self.mix = mix
        self.headers = {"Authorization": f"Bearer {token}"}

    def body(self, i: int) -> dict[str, Any]:
        q = self.mix[i]
        return {
            "index_id": q["index_id"],
            "query": q["query"],
            "mode": "exact",
            "k": self.args.k,
            "context_lines": self.args.context_lines,
        }

    async def one(self, client: httpx.AsyncClient, i: int) -> tuple[Sample, dict[str, Any] | None]:
        started = time.perf_counter()
        try:
            resp = await client.post(SEARCH_ROUTE, json=self.body(i))
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if cause is not None:
                error += f" ({type(cause).__name__}: {cause})"
            error = error[:200]
            return Sample(i, time.perf_counter() - started, 0, error=error), None
        latency = time.perf_counter() - started
        if resp.status_code != 200:
            return Sample(i, latency, resp.status_code, error=resp.text[:200]), None
        try:
            body = resp.json()
            results = len(body["results"])
        except (ValueError, KeyError, TypeError) as exc:
            return Sample(i, latency, 200, error=f"bad body: {exc}"), None
        if body.get("degraded"):
            return Sample(i, latency, 200, results, error=f"degraded: missing {body.get('missing')}"), body
        return Sample(i, latency, 200, results), body

    async def run(
        self, client: httpx.AsyncClient, concurrency: int, duration: float | None, requests: int | None
    ) -> tuple[float, list[Sample]]:
        samples: list[Sample] = []
        issued = 0
        started = time.perf_counter()
        deadline = started + duration if duration is not None else math.inf
        n = len(self.mix)

        async def worker(offset: int) -> None:
            nonlocal issued
            i = offset
            while time.perf_counter() < deadline and (requests is None or issued < requests):
                issued += 1  # one event loop: no race between the check and the increment
                sample, _ = await self.one(client, i % n)
                samples.append(sample)
                i += 1

        await asyncio.gather(*(worker(k * n // concurrency) for k in range(concurrency)))
        return time.perf_counter() - started, samples


def start_profilers(
    args: argparse.Namespace, label: str, api: Service, searchers: list[Service], duration: float
) -> list[subprocess.Popen[bytes]]:
    """``--profile-dir``: py-spy (if installed) samples Mimir and the searchers during the phase.

    Sampling costs CPU too, so a profiled run's numbers are for finding where time goes only.
    """
    if args.profile_dir is None:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("py-spy not found: no profiles")
        return []
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for svc in [api, *searchers]:
        out = args.profile_dir / f"{label.replace(' ', '_')}-{svc.name}.txt"
        cmd = [spy, "record", "--pid", str(svc.proc.pid), "--subprocesses", "--nonblocking", "--rate", "50"]
        cmd += ["--format", "raw", "--output", str(out), "--duration", str(max(1, int(duration)))]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def citations(body: dict[str, Any] | None) -> list[str]:
    return [r.get("citation", "") for r in (body or {}).get("results", [])]


async def drive_phase(
    args: argparse.Namespace,
    load: Load,
    api: Service,
    searchers: list[Service],
    name: str,
    n_urls: int,
    cache: bool,
    baseline: bool,
) -> tuple[list[Phase], list[list[str]]]:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(
        base_url=api.url, headers=load.headers, limits=limits, timeout=httpx.Timeout(args.timeout)
    ) as client:
        answers = []
        for i in range(len(load.mix)):  # warm-up 1: every query once, sequentially; keep the answers
            sample, body = await load.one(client, i)
            if sample.error:
                raise RuntimeError(
                    f"{name}: warm-up query {load.mix[i]['query']!r}: {sample.status} {sample.error}"
                )
            answers.append(citations(body))
        await load.run(client, args.clients, None, 3 * args.clients)  # warm-up 2: every thread and connection
        phases = []
        plans = (
            [(f"{name} c=1", 1, args.baseline_duration)] if baseline and args.baseline_duration > 0 else []
        )
        plans.append((name, args.clients, args.duration))
        for label, conc, duration in plans:
            log(f"{label}: {conc} client(s) for {duration:g} s ...")
            before = [scrape(api), *(scrape(s) for s in searchers)]
            profilers = start_profilers(args, label, api, searchers, duration) if conc > 1 else []
            meter = CpuMeter(api, searchers)
            wall, samples = await load.run(client, conc, duration, None)
            cpu = meter.stop()
            for proc in profilers:
                proc.wait(60)
            after = [scrape(api), *(scrape(s) for s in searchers)]
            view = server_view(api, searchers, before, after)
            phase = Phase(label, n_urls, cache, conc, wall, samples, cpu, view)
            log(
                f"{label}: {phase.throughput():.1f} req/s, p50 {fmt_ms(phase.latency(50))} ms, "
                f"p95 {fmt_ms(phase.latency(95))} ms, {len(phase.errors())} errors"
            )
            phases.append(phase)
    return phases, answers


def run_phase(
    stack: Stack, load: Load, name: str, urls: list[str], *, cache: bool, baseline: bool
) -> tuple[list[Phase], list[list[str]]]:
    api = stack.start_api(
        f"mimir-{name.split()[0].lower()}", urls, workers=stack.args.mimir_workers, cache=cache
    )
    try:
        return asyncio.run(
            drive_phase(stack.args, load, api, stack.searchers, name, len(urls), cache, baseline)
        )
    finally:
        stack.stop([api])


# --------------------------------------------------------------------------- report


def pct_core(seconds: float, wall: float) -> str:
    return f"{100 * seconds / wall:.0f}%" if wall else "-"


def phase_table(phases: list[Phase]) -> str:
    rows = []
    for p in phases:
        lat = [s.latency for s in p.ok()]
        c = p.cpu
        rows.append(
            [
                p.name,
                p.lens_urls,
                "on" if p.cache else "off",
                p.clients,
                len(p.samples),
                len(p.errors()),
                f"{p.throughput():.1f}",
                fmt_ms(percentile(lat, 50)),
                fmt_ms(percentile(lat, 95)),
                fmt_ms(percentile(lat, 99)),
                fmt_ms(max(lat) if lat else math.nan),
                pct_core(c.mimir, p.wall),
                " / ".join(pct_core(x, p.wall) for x in c.searchers),
                pct_core(c.client, p.wall),
                pct_core(c.postgres + c.redis + c.nats, p.wall),
                pct_core(c.other, p.wall),
                pct_core(c.machine, p.wall),
            ]
        )
    headers = ["phase", "searchers", "cache", "clients", "requests", "errors", "req/s", "p50", "p95", "p99"]
    headers += ["max", "Mimir CPU", "searcher 1 / 2 CPU", "client CPU", "PG+Redis+NATS", "other", "machine"]
    return table("POST /api/search mode=exact (latency in ms, client side)", headers, rows)


def cost_table(phases: list[Phase]) -> str:
    """Where the CPU goes, per request, and what the Mimir server saw."""
    rows = []
    for p in phases:
        n = len(p.ok()) or 1
        c, v = p.cpu, p.view
        lens_n = sum(v.lens_calls.values())
        per_op = ", ".join(
            f"{op} {v.lens_calls[op] / max(v.mimir_searches, 1):.1f}x"
            f"{fmt_ms(v.lens_call_seconds[op] / v.lens_calls[op])}"
            for op in sorted(v.lens_calls, key=lambda o: -v.lens_calls[o])
        )
        share = " / ".join(f"{x / max(sum(v.searcher_requests), 1):.0%}" for x in v.searcher_requests)
        rows.append(
            [
                p.name,
                f"{1000 * c.mimir / n:.1f}",
                f"{1000 * sum(c.searchers) / n:.1f}",
                f"{1000 * c.client / n:.1f}",
                f"{1000 * (c.postgres + c.redis + c.nats) / n:.1f}",
                f"{1000 * c.machine / n:.1f}",
                fmt_ms(v.mimir_search_seconds / v.mimir_searches if v.mimir_searches else math.nan),
                f"{lens_n / max(v.mimir_searches, 1):.1f}",
                per_op or "-",
                share,
            ]
        )
    headers = ["phase", "Mimir", "searchers", "client", "PG+Redis+NATS", "machine busy"]
    headers += [
        "srv mean ms",
        "Lens calls/search",
        "per op: calls x mean ms (Mimir's view)",
        "searcher share",
    ]
    return table("CPU ms per successful request, by component; Mimir's server-side view", headers, rows)


def query_table(phases: list[Phase], mix: list[dict[str, Any]]) -> str:
    headers = ["query", "kind", "corpus", "results"]
    for p in phases:
        headers += [f"{p.name} p50", f"{p.name} p95"]
    rows = []
    for i, q in enumerate(mix):
        first = next((s for p in phases for s in p.ok() if s.query == i), None)
        row: list[object] = [q["query"], q["kind"], q["corpus"], first.results if first else "-"]
        for p in phases:
            lat = [s.latency for s in p.ok() if s.query == i]
            row += [fmt_ms(percentile(lat, 50)), fmt_ms(percentile(lat, 95))]
        rows.append(row)
    return table("Per query (client latency, ms)", headers, rows, left=3)


def error_summary(phases: list[Phase]) -> list[str]:
    lines = []
    for p in phases:
        kinds = Counter(f"{s.status} {s.error or ''}".strip()[:120] for s in p.errors())
        lines += [f"{p.name}: {n} x {what}" for what, n in kinds.most_common(5)]
    return lines


def machine_header(command: list[str], busy: float) -> list[str]:
    cpu, ram_kib = cpu_and_ram()
    usable = len(os.sched_getaffinity(0))
    commit = lens_commit()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc {usable}), {cpu}, {ram_kib / 1024 / 1024:.1f} GiB RAM; "
        f"{platform.system()} {platform.release()}; load average before the phases {load_average()}; "
        f"CPUs {100 * busy:.0f}% busy just before",
        f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; Python {platform.python_version()}; "
        f"httpx {httpx.__version__}; commit {commit}",
        f"command: {shlex.join(['python', *command])}",
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--corpus", action="append", help="fetch.sh corpus (repeatable; default go-std and jdk)"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the timed phases (32)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per timed phase (30)")
    parser.add_argument(
        "--baseline-duration",
        type=float,
        default=10.0,
        help="single-client phase before A, seconds (0: skip)",
    )
    parser.add_argument("--k", type=int, default=20, help="k of each search (the API's default, 20)")
    parser.add_argument(
        "--context-lines", type=int, default=5, help="context_lines of each search (default 5)"
    )
    parser.add_argument(
        "--mimir-workers", type=int, default=2, help="mimir serve --workers in the phases (2)"
    )
    parser.add_argument(
        "--searcher-workers", type=int, default=1, help="lens serve --workers per searcher (1)"
    )
    parser.add_argument("--index-workers", type=int, default=2, help="mimir worker processes for setup (2)")
    parser.add_argument("--cache-phase", action="store_true", help="also phase C: 2 searchers, caches on")
    parser.add_argument(
        "--phases", default="AB", help="which phases to run, e.g. AB (default), ABC, C; --cache-phase adds C"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--index-timeout", type=float, default=3600.0, help="give up indexing after (s)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before the phases, wait up to this long for the CPUs to be at most --max-busy busy",
    )
    parser.add_argument("--max-busy", type=float, default=0.25, help="busy share that counts as quiet (0.25)")
    parser.add_argument("--log-level", default="WARNING", help="*_LOG_LEVEL of every process (WARNING)")
    parser.add_argument("--work-dir", type=Path, help="work directory (default: a fresh temporary one)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory, database, NATS namespace and Redis keys, so a later run with the same "
        "--work-dir skips indexing",
    )
    parser.add_argument("--setup-only", action="store_true", help="index (or check the indexes), then stop")
    parser.add_argument(
        "--lock",
        type=Path,
        help="flock this file around the timed phases only (instead of wrapping the whole command in flock)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("MIMIR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL allowed to CREATE/DROP DATABASE",
    )
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--nats-url", default=os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--fetch", type=Path, default=DEFAULT_FETCH, help="path of fetch.sh")
    parser.add_argument("--json", type=Path, help="write the summary and every sample here")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="py-spy raw profiles of Mimir and the searchers during each loaded phase (skews the numbers)",
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.k < 1:
        parser.error("--clients, --duration and --k must be positive")
    args.corpus = args.corpus or ["go-std", "jdk"]
    args.phases = args.phases.upper() + ("C" if args.cache_phase else "")
    if not args.phases or set(args.phases) - set("ABC"):
        parser.error("--phases takes letters out of A, B and C")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = sys.argv if argv is None else [sys.argv[0], *argv]
    corpora = {name: fetch_corpus(args.fetch, name) for name in args.corpus}

    created_work = args.work_dir is None
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="mimir-stack-load-"))).resolve()
    if not created_work:
        if work.exists() and any(work.iterdir()) and not (work / STATE_FILE).exists():
            sys.exit(
                f"--work-dir {work} is not empty and has no {STATE_FILE}: refusing to use (and remove) it"
            )
        work.mkdir(parents=True, exist_ok=True)
    state = State.load(work)
    fresh = state is None
    if state is None:
        state = State(
            namespace=f"stackload{uuid.uuid4().hex[:8]}",
            database_url=create_database(args.pg_admin_url),
            lens_token=f"lens-{secrets.token_hex(20)}",
            mimir_token=f"mimir-{secrets.token_hex(20)}",
        )
        state.save(work)
        log(f"fresh deployment: database {state.database_url.rsplit('/', 1)[1]}, namespace {state.namespace}")
    else:
        log(f"reusing {work}: database {state.database_url.rsplit('/', 1)[1]}, namespace {state.namespace}")

    stack = Stack(args, work, state, list(corpora.values()))
    phases: list[Phase] = []
    answers: dict[str, list[list[str]]] = {}
    setup_lines: list[str] = []
    header: list[str] = []
    repos: list[dict[str, Any]] = []
    lock_fd: int | None = None
    try:
        stack.migrate()
        stack.start_searchers(cache=False)
        setup_lines = setup_indexes(stack, corpora)
        lens_headers = {"Authorization": f"Bearer {state.lens_token}"}
        for corpus in corpora:
            info = httpx.get(
                f"{stack.searchers[0].url}/api/v1/repos/{state.indexes[corpus]['index_id']}",
                headers=lens_headers,
                timeout=10,
            ).json()["repo"]
            repos.append(
                {"corpus": corpus, **{k: info.get(k) for k in ("name", "files", "bytes", "generation")}}
            )
        if args.setup_only:
            print("\n".join(setup_lines))
            return
        stack.stop(stack.searchers)  # fresh searcher processes for the timed phases (no setup leftovers)
        mix = [
            {"kind": k, "corpus": c, "query": q, "index_id": state.indexes[c]["index_id"]}
            for k, c, q in QUERIES
            if c in corpora
        ]
        load = Load(args, mix, state.mimir_token)

        if args.lock:
            log(f"waiting for the lock {args.lock} ...")
            lock_fd = os.open(args.lock, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet, args.max_busy)
        others = other_benchmarks()
        for other in others:
            log(f"warning: another benchmark is running: {other}")
        searchers = stack.start_searchers(cache=False)
        urls = [s.url for s in searchers]
        busy = cpu_busy()
        header = machine_header(command, busy)
        if others:
            header.append(f"warning: other benchmarks were running: {'; '.join(others)}")

        if "A" in args.phases:
            got, answers["A"] = run_phase(stack, load, "A", urls[:1], cache=False, baseline=True)
            phases += got
        if "B" in args.phases:
            got, answers["B"] = run_phase(stack, load, "B", urls, cache=False, baseline=False)
            phases += got
        if "C" in args.phases:
            stack.stop(stack.searchers)
            urls = [s.url for s in stack.start_searchers(cache=True)]
            got, answers["C"] = run_phase(stack, load, "C", urls, cache=True, baseline=False)
            phases += got
            cached_keys = redis_keys(args.redis_url, f"{state.namespace}:")
            header.append(f"phase C: {cached_keys} Redis keys under {state.namespace}: after the phase")
    finally:
        stack.close()
        if lock_fd is not None:
            os.close(lock_fd)
        if args.keep:
            log(
                f"kept: {work} (database, NATS namespace {state.namespace}, Redis keys); "
                "rerun with --work-dir"
            )
        else:
            with contextlib.suppress(Exception):
                drop_database(args.pg_admin_url, state.database_url)
            with contextlib.suppress(Exception):
                delete_namespace(args.nats_url, state.namespace)
            with contextlib.suppress(Exception):
                delete_redis_prefix(args.redis_url, f"{state.namespace}:")
            shutil.rmtree(work, ignore_errors=True)
            log("cleaned up: database dropped, NATS streams and Redis keys deleted, work directory removed")

    report(args, header, setup_lines, repos, phases, answers, load.mix, fresh)


def report(
    args: argparse.Namespace,
    header: list[str],
    setup_lines: list[str],
    repos: list[dict[str, Any]],
    phases: list[Phase],
    answers: dict[str, list[list[str]]],
    mix: list[dict[str, Any]],
    fresh: bool,
) -> None:
    print("\n".join(header))
    print(
        f"stack: PostgreSQL + Redis + NATS JetStream on loopback; 2 x `lens serve --role searcher "
        f"--workers {args.searcher_workers}`; `mimir serve --workers {args.mimir_workers}` per phase; "
        f"*_ENV=production, bearer tokens, embeddings off, log level {args.log_level}"
    )
    print(
        f"load: {args.clients} clients (one httpx.AsyncClient), {args.duration:g} s per phase "
        "after a warm-up; "
        f"{len(mix)} queries in the mix, mode=exact, k={args.k}, context_lines={args.context_lines}; "
        "caches off in A and B (MIMIR_CACHE_TTL_S=0, LENS_CACHE_TTL_S=0)"
    )
    for r in repos:
        print(
            f"index {r['corpus']}: {r['name']}, {r.get('files')} files, "
            f"{(r.get('bytes') or 0) / 1e6:.0f} MB, "
            f"generation {r.get('generation')}"
        )
    print("\n".join(setup_lines) if fresh or setup_lines else "")
    print()
    print(phase_table(phases))
    print(
        "CPU: % of one core over the phase (the machine has "
        f"{len(os.sched_getaffinity(0))}); Mimir = all processes of `mimir serve`; "
        "PG+Redis+NATS by process name "
        "(shared servers: other users' work counts there too); other = the rest of the machine.\n"
    )
    print(cost_table(phases))
    print(query_table([p for p in phases if p.clients > 1], mix))
    errors = error_summary(phases)
    if errors:
        print("Errors:\n" + "\n".join(errors) + "\n")
    same = {}
    if "A" in answers:
        for other in ("B", "C"):
            if other in answers:
                diff = [
                    mix[i]["query"]
                    for i, (a, b) in enumerate(zip(answers["A"], answers[other], strict=True))
                    if a != b
                ]
                same[other] = diff
                print(
                    f"results A vs {other}: "
                    + ("identical for every query" if not diff else f"DIFFERENT for {', '.join(diff)}")
                )
    load_phases = {p.name: p for p in phases if p.clients == args.clients}
    verdict: dict[str, Any] = {}
    if "A" in load_phases and "B" in load_phases:
        a, b = load_phases["A"], load_phases["B"]
        ratio = b.throughput() / a.throughput() if a.throughput() else math.nan
        p95 = b.latency(95)
        errs = len(b.errors())
        verdict = {
            "throughput_a": a.throughput(),
            "throughput_b": b.throughput(),
            "ratio": ratio,
            "p95_a_s": a.latency(95),
            "p95_b_s": p95,
            "errors_a": len(a.errors()),
            "errors_b": errs,
            "p95_met": p95 <= TARGET_P95_S,
            "errors_met": errs == 0 and not a.errors(),
            "ratio_met": ratio >= TARGET_RATIO,
        }
        cpu_ms = 1000 * b.cpu.machine / max(len(b.ok()), 1)
        cores = len(os.sched_getaffinity(0))
        need = args.clients / TARGET_P95_S  # Little's law: mean latency = clients / throughput
        print()
        print(
            f"throughput B/A: {ratio:.2f}x (target >= {TARGET_RATIO}x): "
            f"{'met' if verdict['ratio_met'] else 'NOT met'}"
        )
        print(
            f"p95 at {args.clients} clients over 2 searchers: {fmt_ms(p95)} ms (target <= 100 ms): "
            f"{'met' if verdict['p95_met'] else 'NOT met'}"
        )
        print(
            f"errors: A {len(a.errors())}, B {errs} (target 0): "
            f"{'met' if verdict['errors_met'] else 'NOT met'}"
        )
        print(
            f"capacity: phase B used {cpu_ms:.1f} CPU ms per search over the whole machine, so {cores} cores "
            f"can answer at most ~{cores * 1000 / cpu_ms:.0f} searches/s; p95 <= 100 ms with {args.clients} "
            f"clients needs over {need:.0f}/s (Little's law), i.e. at most {cores * 1000 / need:.1f} CPU ms "
            "per search."
        )
    if args.json:
        out = {
            "header": header,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "repos": repos,
            "setup": setup_lines,
            "mix": mix,
            "same_results_as_A": same,
            "verdict": verdict,
            "phases": [
                {k: v for k, v in asdict(p).items() if k != "samples"}
                | {
                    "throughput": p.throughput(),
                    "p50_s": p.latency(50),
                    "p95_s": p.latency(95),
                    "p99_s": p.latency(99),
                    "errors": len(p.errors()),
                    "samples": [asdict(s) for s in p.samples],
                }
                for p in phases
            ],
        }
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
