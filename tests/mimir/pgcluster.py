"""PostgreSQL fixtures (a pytest plugin: ``pytest_plugins = ["pgcluster"]``).

* ``pg_url``: a fresh database (uuid name) on the shared server at 127.0.0.1:5432, dropped after
  the test; migrated by whoever uses it.
* ``pg_cluster``: a throwaway cluster of our own (initdb in /tmp, ``ops/postgres/tuning.conf``
  included, a free loopback port), started once per session, so tests may stop and restart it.
* ``cluster_db``: a fresh database on that cluster set up by ``ops/postgres/init.sql``, migrated
  as ``mimir_app``; yields the ``mimir_app`` URL.

PostgreSQL refuses to run as root, so as root the server binaries run as the postgres user.
(PYTEST_DONT_REWRITE: test modules import helpers from here before pytest loads it as a plugin.)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mimir.store.migrate import connect, upgrade
from support import free_port

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops" / "postgres"
BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
ADMIN_URL = os.environ.get("MIMIR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
APP_PASSWORD = "app-secret"
READONLY_PASSWORD = "readonly-secret"


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload, no-any-return]


@dataclass
class TempCluster:
    base: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def admin_url(self, dbname: str = "postgres") -> str:
        """The superuser, over the Unix socket (trusted there; TCP needs a password)."""
        return f"postgresql://postgres@/{dbname}?host={self.base}&port={self.port}"

    def url(self, user: str, dbname: str, password: str) -> str:
        """A login role over TCP, authenticated with scram-sha-256 like in production."""
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"

    def pg_ctl(self, *args: str) -> None:
        cmd = [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args]
        try:
            _run(_as_postgres(cmd))
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {exc.stderr}\n{tail}") from exc

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")

    def psql(self, *args: str, dbname: str = "postgres") -> subprocess.CompletedProcess[str]:
        return _run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.admin_url(dbname), *args])


def create_cluster() -> TempCluster:
    """initdb a cluster under /tmp that includes ops/postgres/tuning.conf, and start it."""
    if not (BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL server binaries not found in {BIN} (set PG_BIN)")
    base = Path(tempfile.mkdtemp(prefix="mimir-pgcluster-", dir="/tmp"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    cluster = TempCluster(base, free_port())
    initdb = [str(BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256"]
    _run(_as_postgres([*initdb, "-E", "UTF8", "--locale=C", "--no-sync"]))
    tuning = cluster.data / "tuning.conf"  # a copy inside the data dir: the server user must read it
    shutil.copy(OPS / "tuning.conf", tuning)
    if os.geteuid() == 0:
        shutil.chown(tuning, "postgres", "postgres")
    with (cluster.data / "postgresql.conf").open("a") as conf:
        # As in production: the tuning file comes last so it wins over initdb's defaults; then
        # only what a throwaway cluster must differ in.
        conf.write(f"\ninclude 'tuning.conf'\nport = {cluster.port}\nlisten_addresses = '127.0.0.1'\n")
        conf.write(f"unix_socket_directories = '{base}'\nlogging_collector = off\n")
    cluster.start()
    return cluster


_shared: list[TempCluster] = []


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[TempCluster]:
    if not _shared:
        _shared.append(create_cluster())
    cluster = _shared[0]
    yield cluster
    _shared.clear()
    with contextlib.suppress(RuntimeError):  # already stopped by a test that failed half-way
        cluster.stop()
    shutil.rmtree(cluster.base, ignore_errors=True)


def _drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the shared server (as a superuser), dropped afterwards."""
    name = f"mimir_test_{uuid.uuid4().hex}"
    problem = None
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        problem = str(exc).strip()
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({problem}). Start it (scripts/services.sh, "
            "which scripts/test.sh runs) or point MIMIR_TEST_PG_ADMIN_URL at a server.",
            pytrace=False,
        )
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    _drop(ADMIN_URL, name)


def init_database(cluster: TempCluster, dbname: str) -> None:
    """Apply ops/postgres/init.sql for ``dbname`` with psql, exactly as the docs say."""
    cluster.psql(
        "-v",
        f"dbname={dbname}",
        "-v",
        f"app_password={APP_PASSWORD}",
        "-v",
        f"readonly_password={READONLY_PASSWORD}",
        "-f",
        str(OPS / "init.sql"),
    )


@pytest.fixture
def cluster_db(pg_cluster: TempCluster) -> Iterator[str]:
    """init.sql + migrations (as mimir_app) on a fresh database of the temp cluster: mimir_app's URL."""
    name = f"mimir_{uuid.uuid4().hex}"
    init_database(pg_cluster, name)
    url = pg_cluster.url("mimir_app", name, APP_PASSWORD)
    with connect(url) as conn:
        upgrade(conn)
    yield url
    _drop(pg_cluster.admin_url(), name)
