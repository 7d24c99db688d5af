"""The whole production runtime as real processes, for tests/test_stack.py.

One :class:`Stack` is one deployment: a fresh PostgreSQL database on the shared server, a fresh
NATS namespace (which is also the Redis key prefix), ``lens serve --role searcher`` replicas with
their own data directories, ``mimir serve`` API processes and ``mimir worker`` processes sharing
Mimir's data directory (docs/OPERATIONS.md), all in ``MIMIR_ENV``/``LENS_ENV=production``.
Every process is started exactly as docs/OPERATIONS.md ("Running the whole stack locally") says.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.rows import dict_row

from support import free_port

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "infra"))
from nats_server import SHARED_URL as NATS_URL  # noqa: E402
from nats_server import delete_namespace  # noqa: E402
from redis_server import delete_prefix, shared_redis_url  # noqa: E402

PG_ADMIN_URL = os.environ.get("MIMIR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
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
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; that value, or AssertionError at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def token_principal(token: str) -> str:
    """The principal id a static bearer token authenticates as (docs/CONFIGURATION.md)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += float(sample.value)
    return total


# -- processes --------------------------------------------------------------------------------
@dataclass
class Service:
    """One child process of the stack, in its own session (so its whole group can be stopped)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=self.headers, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=30)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a lost host would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def serving(self) -> bool:
        """/health answers (AssertionError with the log when the process died instead)."""
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> dict[str, Any] | None:
        """The /ready document when it says ready, else None."""
        try:
            resp = httpx.get(self.url + "/ready", timeout=5)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = resp.json()
        return body if resp.status_code == 200 else None


@dataclass
class Searcher(Service):
    """``lens serve --role searcher``."""

    data: Path = Path()

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(self.url + "/api/v1/search", json=body, headers=self.headers, timeout=30)
        assert resp.status_code == 200, f"{self.name}: {resp.status_code} {resp.text}"
        out: dict[str, Any] = resp.json()
        return out

    def generation(self, repo: str) -> int | None:
        resp = self.get(f"/api/v1/repos/{repo}")
        return int(resp.json()["repo"]["generation"]) if resp.status_code == 200 else None

    def shard_sync(self) -> dict[str, Any]:
        check: dict[str, Any] = httpx.get(self.url + "/ready", timeout=5).json()["checks"]["shard_sync"]
        return check


@dataclass
class Worker(Service):
    """``mimir worker --metrics-port``: ``port`` is its metrics port."""

    def serving(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(self.url + "/metrics", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


# -- the deployment ---------------------------------------------------------------------------
@dataclass
class Stack:
    base: Path
    namespace: str
    database_url: str
    redis_url: str
    mimir_tokens: tuple[str, ...]
    lens_token: str
    ack_wait_s: float
    pause_s: float
    shutdown_grace_s: int
    lens_url: str = ""  # the searchers Mimir reads from, comma-separated
    searchers: list[Searcher] = field(default_factory=list)
    apis: list[Service] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    @property
    def repos(self) -> Path:
        return self.base / "repos"

    @property
    def mimir_data(self) -> Path:
        return self.base / "mimir-data"

    @property
    def services(self) -> list[Service]:
        return [*self.searchers, *self.apis, *self.workers]

    def _clean_env(self) -> dict[str, str]:
        return {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MIMIR_", "LENS_", "PROMETHEUS_")) and k not in _FOREIGN
        }

    def lens_env(self, data: Path) -> dict[str, str]:
        return {
            **self._clean_env(),
            "LENS_ENV": "production",
            "LENS_DATA_DIR": str(data),
            "LENS_ALLOWED_ROOTS": str(self.repos),
            "LENS_API_TOKENS": self.lens_token,
            "LENS_NATS_URL": NATS_URL,
            "LENS_NATS_NAMESPACE": self.namespace,
            "LENS_REDIS_URL": self.redis_url,
            "LENS_EMBED": "true",
            "LENS_SHUTDOWN_GRACE_S": str(self.shutdown_grace_s),
            "LENS_LOG_LEVEL": "INFO",
        }

    def mimir_env(self) -> dict[str, str]:
        """One environment for every Mimir process of the deployment, API and workers alike."""
        return {
            **self._clean_env(),
            "MIMIR_ENV": "production",
            "MIMIR_DATA_DIR": str(self.mimir_data),
            "MIMIR_ALLOWED_ROOTS": str(self.repos),
            "MIMIR_API_TOKENS": ",".join(self.mimir_tokens),
            "MIMIR_DATABASE_URL": self.database_url,
            "MIMIR_REDIS_URL": self.redis_url,
            "MIMIR_NATS_URL": NATS_URL,
            "MIMIR_NATS_NAMESPACE": self.namespace,
            "MIMIR_QUEUE_ACK_WAIT_S": str(self.ack_wait_s),
            "MIMIR_LENS_URL": self.lens_url,
            "MIMIR_LENS_TOKEN": self.lens_token,
            "MIMIR_EMBED": "true",
            "MIMIR_SHUTDOWN_GRACE_S": str(self.shutdown_grace_s),
            "MIMIR_LOG_LEVEL": "INFO",
        }

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.base / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, log

    def migrate(self) -> str:
        """``mimir db upgrade``: the documented step before any Mimir process starts."""
        out = subprocess.run(
            [sys.executable, "-m", "mimir.serve.cli", "db", "upgrade"],
            env=self.mimir_env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def start_searcher(self, name: str, *, port: int | None = None) -> Searcher:
        """``lens serve --role searcher`` on its own data directory (reused when ``name`` is)."""
        port = port or free_port()
        data = self.base / f"{name}-data"
        cmd = [sys.executable, "-m", "lens.serve.cli", "serve", "--role", "searcher", "--port", str(port)]
        proc, log = self._spawn(name, cmd, self.lens_env(data))
        searcher = Searcher(name, proc, port, log, {"Authorization": f"Bearer {self.lens_token}"}, data)
        self.searchers = [s for s in self.searchers if s.name != name] + [searcher]
        return searcher

    def start_api(self, name: str, token: str) -> Service:
        """``mimir serve``; its requests carry ``token``."""
        port = free_port()
        cmd = [sys.executable, "-m", "mimir.serve.cli", "serve", "--port", str(port)]
        proc, log = self._spawn(name, cmd, self.mimir_env())
        api = Service(name, proc, port, log, {"Authorization": f"Bearer {token}"})
        self.apis.append(api)
        return api

    def start_worker(self, name: str) -> Worker:
        """``mimir worker`` with the test-only stage pause (so it can be killed mid-run)."""
        port = free_port()
        cmd = [sys.executable, "-m", "mimir.serve.cli", "worker", "--metrics-port", str(port)]
        env = {**self.mimir_env(), "MIMIR_TEST_STAGE_DELAY_S": str(self.pause_s)}
        proc, log = self._spawn(name, cmd, env)
        worker = Worker(name, proc, port, log)
        self.workers.append(worker)
        return worker

    def wait_serving(self, services: list[Service], timeout: float = 60) -> None:
        for s in services:
            wait_for(f"{s.name} to serve (log: {s.log})", s.serving, timeout)

    # -- PostgreSQL, read directly ------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=5) as conn:
            return list(conn.execute(query, params))

    def close(self) -> None:
        for s in self.services:
            if s.alive():
                s.stop(10)


def create_database() -> str:
    """A fresh, empty database on the shared server (dropped by :func:`drop_database`)."""
    name = f"mimir_stack_{uuid.uuid4().hex}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def teardown_namespace(namespace: str, redis_url: str) -> None:
    """Every NATS stream (jobs, dead letters, shard objects and refs) and Redis key of the namespace."""
    delete_namespace(NATS_URL, namespace)
    delete_prefix(redis_url, f"{namespace}:")


__all__ = [
    "NATS_URL",
    "Searcher",
    "Service",
    "Stack",
    "Worker",
    "create_database",
    "drop_database",
    "metric",
    "shared_redis_url",
    "teardown_namespace",
    "token_principal",
    "wait_for",
]
