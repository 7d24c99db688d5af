"""PostgreSQL in production shape: ops/postgres applied to a real cluster, migrations, the
``mimir db`` commands, and what happens when the database restarts under load.

The throwaway cluster (pgcluster.py) includes ops/postgres/tuning.conf, databases are set up by
ops/postgres/init.sql, and Mimir connects as the least-privileged ``mimir_app`` role.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pgcluster import OPS, READONLY_PASSWORD, TempCluster, init_database
from psycopg import errors
from test_store_conformance import CHECKS, Check, index
from typer.testing import CliRunner

from mimir.config import MimirSettings
from mimir.errors import StoreUnavailable
from mimir.serve.api import create_app
from mimir.serve.cli import app as cli_app
from mimir.service import Mimir
from mimir.store import PostgresStore
from mimir.store.migrate import Migration, MigrationError, connect, load_migrations, status, upgrade
from support import free_port

pytest_plugins = ["pgcluster"]


def _tuning_settings() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (OPS / "tuning.conf").read_text().splitlines():
        m = re.match(r"^\s*([a-z_.]+)\s*=\s*(.+?)\s*(#.*)?$", line)
        if m:
            out[m.group(1)] = m.group(2).strip("'")
    return out


def _db_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- ops/postgres ---------------------------------------------------------------------------------
def test_tuning_conf_is_in_effect(pg_cluster: TempCluster) -> None:
    """Every setting of tuning.conf is valid and is the one in effect (nothing later overrides it)."""
    wanted = _tuning_settings()
    assert len(wanted) > 40
    with psycopg.connect(pg_cluster.admin_url()) as conn:
        rows = conn.execute(
            "SELECT lower(name), sourcefile, pending_restart FROM pg_settings WHERE lower(name) = ANY(%s)",
            (list(wanted),),
        ).fetchall()
        found = {name: (src, pending) for name, src, pending in rows}
        assert set(found) == set(wanted), set(wanted) - set(found)
        for name, (src, pending) in found.items():
            assert src and src.endswith("tuning.conf") and not pending, (name, src)
        shown = {n: conn.execute(f"SHOW {n}").fetchone() for n in ("shared_buffers", "synchronous_commit")}
        assert shown == {"shared_buffers": ("2GB",), "synchronous_commit": ("on",)}
        assert "pg_stat_statements" in str(conn.execute("SHOW shared_preload_libraries").fetchone())


def test_init_sql_sets_up_least_privilege_roles(pg_cluster: TempCluster, cluster_db: str) -> None:
    dbname = _db_of(cluster_db)
    init_database(pg_cluster, dbname)  # a second run converges instead of failing
    with psycopg.connect(cluster_db, autocommit=True) as app:
        assert app.execute("SHOW search_path").fetchone() == ("mimir",)
        role = app.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False, False, False, False)
        owners = app.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'mimir'"
        ).fetchall()
        assert owners == [("mimir_app",)]
        exts = {r[0] for r in app.execute("SELECT extname FROM pg_extension")}
        assert {"pg_stat_statements", "pg_trgm"} <= exts
        assert app.execute("SELECT public.similarity('checkout', 'check_out') > 0.3").fetchone() == (True,)
        with pytest.raises(errors.InsufficientPrivilege):
            app.execute("CREATE TABLE public.intruder(x int)")
        with pytest.raises(errors.InsufficientPrivilege):
            app.execute("CREATE DATABASE other")
        with pytest.raises(errors.InsufficientPrivilege):
            app.execute("CREATE ROLE other")
        app.execute("INSERT INTO audit_log(at, action, principal) VALUES (now(), 'admin', 'ops-test')")
    ro_url = pg_cluster.url("mimir_readonly", dbname, READONLY_PASSWORD)
    with psycopg.connect(ro_url, autocommit=True) as ro:
        assert ro.execute("SELECT action FROM audit_log").fetchall() == [("admin",)]
        with pytest.raises(errors.ReadOnlySqlTransaction):
            ro.execute("DELETE FROM audit_log")
        ro.execute("SET default_transaction_read_only = off")
        with pytest.raises(errors.InsufficientPrivilege):
            ro.execute("DELETE FROM audit_log")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.url("mimir_app", dbname, "wrong"))
    with psycopg.connect(pg_cluster.admin_url(), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS outsider")
        admin.execute("CREATE ROLE outsider LOGIN PASSWORD 'pw'")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(pg_cluster.url("outsider", dbname, "pw"))


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_conformance_on_the_ops_cluster(cluster_db: str, check: Check) -> None:
    """The store conformance checks, as mimir_app on a database made by init.sql."""
    store = PostgresStore(cluster_db, migrate=True, max_size=4)
    try:
        check(store)
    finally:
        store.close()


# -- migrations -------------------------------------------------------------------------------------
def test_packaged_migrations_are_numbered_from_one() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_bad_migration_file_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_initial.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="bad migration file name"):
        load_migrations(tmp_path)


def test_concurrent_upgrades_apply_each_version_once(pg_url: str) -> None:
    """Replicas starting together: the advisory lock makes one apply, the others find it done."""
    slow = Migration(2, "slow", "SELECT pg_sleep(0.3); CREATE TABLE slow_one(x int);")
    todo = [*load_migrations(), slow]
    results: list[list[int]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with connect(pg_url) as conn:
                results.append([m.version for m in upgrade(conn, migrations=todo)])
        except BaseException as exc:  # re-raised below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert sorted(results) == [[], [], [], [1, 2]]
    with connect(pg_url) as conn:
        assert [(s.version, s.checksum_ok) for s in status(conn, migrations=todo)] == [(1, True), (2, True)]
        assert conn.execute("SELECT count(*) FROM mimir.schema_migrations").fetchone() == (2,)


def test_failed_migration_leaves_nothing_behind(pg_url: str) -> None:
    broken = Migration(2, "broken", "CREATE TABLE half_done(x int); SELECT * FROM no_such_table;")
    with connect(pg_url) as conn:
        with pytest.raises(errors.UndefinedTable):
            upgrade(conn, migrations=[*load_migrations(), broken])
        states = status(conn, migrations=[*load_migrations(), broken])
        assert [(s.version, s.applied_at is not None) for s in states] == [(1, True), (2, False)]
        assert conn.execute("SELECT to_regclass('mimir.half_done')").fetchone() == (None,)
        # The lock was released: the next runner goes straight on.
        fixed = Migration(2, "fixed", "CREATE TABLE done_right(x int);")
        assert [
            m.version for m in upgrade(conn, migrations=[*load_migrations(), fixed], lock_timeout_s=2)
        ] == [2]


def test_edited_migration_is_refused(pg_url: str) -> None:
    with connect(pg_url) as conn:
        upgrade(conn)
        first = load_migrations()[0]
        edited = Migration(first.version, first.name, first.sql + "\nCREATE TABLE sneaky(x int);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            upgrade(conn, migrations=[edited])
        assert [s.checksum_ok for s in status(conn, migrations=[edited])] == [False]
        assert conn.execute("SELECT to_regclass('mimir.sneaky')").fetchone() == (None,)


def test_status_reads_without_creating_and_reports_unknown_versions(pg_url: str) -> None:
    with connect(pg_url) as conn:
        assert [(s.version, s.applied_at) for s in status(conn)] == [(1, None)]
        assert conn.execute("SELECT to_regnamespace('mimir')").fetchone() == (None,)
        upgrade(conn, migrations=[*load_migrations(), Migration(2, "newer", "SELECT 1;")])
        states = status(conn)  # this "build" only knows version 1
        assert [(s.version, s.known) for s in states] == [(1, True), (2, False)]
        assert upgrade(conn) == []  # an older build starting next to a newer schema is fine


# -- mimir db -------------------------------------------------------------------------------------------
def test_db_commands(pg_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": pg_url, "MIMIR_DATA_DIR": str(tmp_path)}
    first = runner.invoke(cli_app, ["db", "upgrade"], env=env)
    assert first.exit_code == 0, first.output
    assert "applied 0001_initial" in first.output
    again = runner.invoke(cli_app, ["db", "upgrade"], env=env)
    assert (again.exit_code, again.output.strip()) == (0, "up to date")
    shown = runner.invoke(cli_app, ["db", "status", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    states = json.loads(shown.output)["migrations"]
    assert [(s["version"], s["name"], s["checksum_ok"]) for s in states] == [(1, "initial", True)]
    assert states[0]["applied_at"] > time.time() - 60
    table = runner.invoke(cli_app, ["db", "status"], env=env)
    assert table.exit_code == 0 and "0001" in table.output and "applied" in table.output


def test_db_commands_without_postgres(tmp_path: Path) -> None:
    runner = CliRunner()
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = runner.invoke(cli_app, ["db", "upgrade"], env={"DATABASE_URL": down, "MIMIR_DB_TIMEOUT_S": "2"})
    assert result.exit_code == 1
    assert "unreachable" in result.output
    sqlite = runner.invoke(
        cli_app, ["db", "status"], env={"DATABASE_URL": "", "MIMIR_DATA_DIR": str(tmp_path)}
    )
    assert sqlite.exit_code == 0
    assert "SQLite" in sqlite.output


# -- restarts ------------------------------------------------------------------------------------------------
@pytest.fixture
def cluster_restored(pg_cluster: TempCluster) -> Iterator[TempCluster]:
    """The cluster, running again after the test whatever the test did to it."""
    yield pg_cluster
    with contextlib.suppress(RuntimeError):  # already running
        pg_cluster.start()


def _until(fn: Callable[[], Any], timeout: float) -> float:
    """Seconds until ``fn()`` stops raising StoreUnavailable (fails the test after ``timeout``)."""
    started = time.monotonic()
    while True:
        try:
            fn()
            return time.monotonic() - started
        except StoreUnavailable:
            assert time.monotonic() - started < timeout, f"not recovered within {timeout}s"
            time.sleep(0.05)


def test_restart_under_load_loses_nothing_acknowledged(
    cluster_restored: TempCluster, cluster_db: str
) -> None:
    store = PostgresStore(cluster_db, max_size=4, timeout_s=2)
    store.upsert_index(index("base"))
    stop = threading.Event()
    acked: dict[int, list[str]] = {t: [] for t in range(6)}  # upserts that returned
    audits: list[str] = []  # audit entries that returned
    progress: dict[str, float] = {}
    failures: list[BaseException] = []
    calls = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def worker(t: int) -> None:
        run_id = f"run-{t}"
        store.create_run(run_id, "base")
        i = 0
        while not stop.is_set():
            i += 1
            iid = f"w{t}-{i}"
            try:
                store.upsert_index(index(iid, root=f"/src/w{t}", commit=iid))
                acked[t].append(iid)
                store.update_run(run_id, percent=float(i))
                progress[run_id] = float(i)
                store.audit("index", f"worker-{t}", iid)
                audits.append(iid)
                store.get_index(iid)
                with lock:
                    calls["ok"] += 4
            except StoreUnavailable as exc:
                assert (exc.status, exc.code) == (503, "database_unavailable")
                with lock:
                    calls["failed"] += 1
            except BaseException as exc:  # anything else is a bug: re-raised below
                failures.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.7)
        before = calls["ok"]
        cluster_restored.restart()
        recovered = _until(lambda: store.get_index("base"), timeout=10)
        time.sleep(0.7)
        after = calls["ok"]
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    try:
        assert not failures, failures
        assert before > 0 and after > before, calls
        assert recovered < 5, f"pool took {recovered:.1f}s to recover"
        known = {r.index_id for r in store.list_indexes()}
        missing = [iid for ids in acked.values() for iid in ids if iid not in known]
        assert not missing, f"acknowledged writes lost: {missing[:5]}"
        audited = [e.target for e in store.audit_entries(limit=100_000)]
        assert set(audits) <= set(audited)
        assert len(audited) == len(set(audited))  # appends are never retried into duplicates
        for t in acked:
            assert store.get_run(f"run-{t}").percent >= progress.get(f"run-{t}", 0.0)
        print(  # the report reads these numbers (pytest -s)
            f"\nrestart under load: {calls['ok']} calls ok, {calls['failed']} failed with 503,"
            f" recovered {recovered:.2f}s after pg_ctl restart returned"
        )
    finally:
        store.close()


def test_api_answers_503_while_the_database_is_down(
    cluster_restored: TempCluster, cluster_db: str, tmp_path: Path
) -> None:
    settings = MimirSettings(data_dir=tmp_path / "data", database_url=cluster_db, db_timeout_s=1, embed=False)
    service = Mimir(settings)
    try:
        with TestClient(create_app(service)) as client:
            assert client.get("/api/indexes").status_code == 200
            cluster_restored.stop()
            t0 = time.monotonic()
            resp = client.get("/api/indexes")
            assert time.monotonic() - t0 < 5  # fails fast, no hanging request
            assert resp.status_code == 503, resp.text
            body = resp.json()
            assert set(body) == {"error"} and body["error"]["code"] == "database_unavailable"
            assert body["error"]["message"].startswith("PostgreSQL is unavailable")
            ready = client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"]["state"] == "down"
            cluster_restored.start()
            deadline = time.monotonic() + 10
            while (resp := client.get("/api/indexes")).status_code != 200:
                assert time.monotonic() < deadline, resp.text
                time.sleep(0.1)
            assert resp.json() == {"indexes": []}
            assert client.get("/ready").json()["checks"]["database"]["state"] == "ok"
    finally:
        service.close()


# -- the pipeline and the API write metadata ----------------------------------------------------------------
@pytest.mark.slow
def test_index_run_fills_postgres(cluster_db: str, tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    """A real run (worker subprocess) records files and symbols; the API audits and logs queries."""
    repo = make_repo(
        {
            "shop/cart.py": "class Cart:\n    def total(self) -> int:\n        return 1\n\n\n"
            "def checkout():\n    return Cart().total()\n",
            "cmd/main.go": "package main\n\nfunc main() {}\n",
        }
    )
    settings = MimirSettings(
        data_dir=tmp_path / "data", allowed_roots=str(tmp_path), database_url=cluster_db, embed=False
    )
    service = Mimir(settings)
    try:
        with TestClient(create_app(service)) as client:
            resp = client.post("/api/index/repository", json={"path": str(repo)})
            assert resp.status_code == 202, resp.text
            index_id, run_id = resp.json()["index_id"], resp.json()["job"]["run_id"]
            deadline = time.monotonic() + 180
            while (job := client.get(f"/api/jobs/{run_id}").json()["job"])["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            assert job["state"] == "succeeded", job
            assert [s["stage"] for s in job["stages"]][:2] == ["acquire", "repomap"]
            search = client.post("/api/search", json={"index_id": index_id, "query": "checkout"})
            assert search.status_code == 200, search.text
            assert client.post(f"/api/indexes/{index_id}/cancel").status_code == 200
            denied = client.post("/api/index/repository", json={"path": "/etc"})
            assert denied.status_code == 403
        files = service.store.files(index_id)
        assert [(f.path, f.language) for f in files] == [("cmd/main.go", "go"), ("shop/cart.py", "python")]
        assert all(len(f.sha256) == 64 and f.oid and len(f.oid) == 40 for f in files)
        assert files[1].bytes == len((repo / "shop/cart.py").read_bytes())
        summary = {(s.kind, s.language): s.count for s in service.store.symbol_summary(index_id)}
        assert summary[("class", "python")] == 1 and summary[("function", "python")] >= 1
        queries = service.store.recent_queries(index_id=index_id)
        assert [(q.kind, q.query, q.principal) for q in queries] == [("search", "checkout", "anonymous")]
        assert queries[0].results == len(search.json()["results"]) and queries[0].took_ms > 0
        audit = [(e.action, e.target, (e.detail or {}).get("outcome")) for e in service.store.audit_entries()]
        assert audit == [
            ("index", "/etc", "path_not_allowed"),
            ("cancel", index_id, "ok"),
            ("index", str(repo), "ok"),
        ]
    finally:
        # The manager's reaper thread reads the run once the worker has exited; closing the
        # store's pool under it would fail that read, so let it finish first.
        deadline = time.monotonic() + 30
        while service.manager._procs and time.monotonic() < deadline:
            time.sleep(0.05)
        service.close()
