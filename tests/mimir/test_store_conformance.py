"""One behaviour for every metadata store: the same checks run against SQLite and PostgreSQL.

PostgreSQL runs on the shared server at 127.0.0.1:5432, in a fresh database per test. The
``CHECKS`` also run on the throwaway cluster set up by ops/postgres (test_postgres_ops.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mimir.config import MimirSettings
from mimir.errors import UnknownIndex, UnknownJob
from mimir.store import (
    FileRow,
    IndexRecord,
    MetadataStore,
    PostgresStore,
    SqliteStore,
    SymbolCount,
    store_for,
)
from mimir.store.base import MAX_LOGGED_QUERY

pytest_plugins = ["pgcluster"]
Check = Callable[[MetadataStore], None]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "mimir.sqlite")
    else:
        s = PostgresStore(request.getfixturevalue("pg_url"), migrate=True, max_size=8)
    try:
        yield s
    finally:
        s.close()


def index(index_id: str, root: str = "/src/app", commit: str | None = "c0ffee", **kw: object) -> IndexRecord:
    now = time.time()
    fields: dict[str, object] = {
        "index_id": index_id,
        "repo": Path(root).name,
        "root": root,
        "rev": "HEAD",
        "commit": commit,
        "lens_repo": index_id,
        "status": "queued",
        "latest_run": None,
        "created_at": now,
        "updated_at": now,
        **kw,
    }
    return IndexRecord(**fields)  # type: ignore[arg-type]


# -- the checks -------------------------------------------------------------------------------
def check_indexes(s: MetadataStore) -> None:
    rec = index("app-1", created_at=1_700_000_000.25, updated_at=1_700_000_000.25)
    s.upsert_index(rec)
    got = s.get_index("app-1")
    assert got == rec
    assert s.find_index("/src/app", "c0ffee") == rec
    assert s.find_index("/src/app", "other") is None
    assert s.indexes_for_commit("c0ffee") == [rec]
    with pytest.raises(UnknownIndex):
        s.get_index("nope")
    # Upsert again: status, run, rev and updated_at change; identity and created_at stay.
    s.upsert_index(index("app-1", rev="main", status="ready", latest_run="r9", updated_at=1_800_000_000.5))
    again = s.get_index("app-1")
    assert (again.status, again.latest_run, again.rev) == ("ready", "r9", "main")
    assert again.created_at == pytest.approx(rec.created_at, abs=1e-5)
    assert again.updated_at == pytest.approx(1_800_000_000.5, abs=1e-5)
    s.upsert_index(index("app-2", commit=None, updated_at=1_900_000_000.0))
    assert [r.index_id for r in s.list_indexes()] == ["app-2", "app-1"]
    assert s.get_index("app-2").commit is None


def check_status_and_manifest(s: MetadataStore) -> None:
    s.upsert_index(index("a", commit="c1", updated_at=1.0))
    s.upsert_index(index("b", commit="c2", updated_at=2.0))
    assert s.latest_ready_for_root("/src/app") is None
    s.set_index_status("a", "ready", {"counts": {"files": 3}, "tool": "mimir"})
    time.sleep(0.01)
    s.set_index_status("b", "ready", {"counts": {"files": 4}})
    latest = s.latest_ready_for_root("/src/app")
    assert latest is not None and latest.index_id == "b"
    assert latest.updated_at == pytest.approx(time.time(), abs=5)
    s.set_index_status("a", "indexing")  # no manifest: the previous one stays
    a = s.get_index("a")
    assert (a.status, a.manifest) == ("indexing", {"counts": {"files": 3}, "tool": "mimir"})
    s.set_index_status("missing", "ready")  # updating nothing is not an error


def check_repositories(s: MetadataStore) -> None:
    assert s.list_repositories() == []
    s.upsert_index(index("app-1", root="/src/app", commit="c1", updated_at=10.0))
    s.upsert_index(index("app-2", root="/src/app", commit="c2", status="ready", updated_at=20.0))
    s.upsert_index(index("lib-1", root="/src/lib", commit="c3", updated_at=30.0))
    repos = s.list_repositories()
    assert [(r.root, r.name, r.indexes, r.ready) for r in repos] == [
        ("/src/lib", "lib", 1, 0),
        ("/src/app", "app", 2, 1),
    ]
    assert repos[0].last_updated == pytest.approx(30.0)


def check_runs(s: MetadataStore) -> None:
    s.upsert_index(index("app-1"))
    run = s.create_run("r1", "app-1")
    assert (run.run_id, run.index_id, run.state, run.stage, run.percent, run.message) == (
        "r1",
        "app-1",
        "queued",
        "queued",
        0.0,
        "queued",
    )
    assert (run.error, run.pid, run.finished_at, run.stages) == (None, None, None, [])
    assert s.get_index("app-1").latest_run == "r1"
    s.update_run("r1", state="running", stage="acquire", percent=12.5, message="go", pid=4242)
    s.update_run("r1", state="failed", error={"code": "boom", "message": "x"}, finished_at=1_750_000_000.0)
    got = s.get_run("r1")
    assert (got.state, got.stage, got.percent, got.message, got.pid) == (
        "failed",
        "acquire",
        12.5,
        "go",
        4242,
    )
    assert got.error == {"code": "boom", "message": "x"}
    assert got.finished_at == pytest.approx(1_750_000_000.0)
    assert got.updated_at >= got.created_at
    s.update_run("r1", error=None)
    assert s.get_run("r1").error is None
    with pytest.raises(ValueError, match="unknown run fields"):
        s.update_run("r1", state="running", bogus=1)
    with pytest.raises(UnknownJob):
        s.get_run("nope")
    with pytest.raises(UnknownIndex):
        s.create_run("r2", "no-such-index")


def check_stages(s: MetadataStore) -> None:
    s.upsert_index(index("app-1"))
    s.create_run("r1", "app-1")
    s.stage_started("r1", "acquire")
    s.stage_finished("r1", "acquire", 0.5, "succeeded", {"counts": {"files": 2}})
    time.sleep(0.01)
    s.stage_started("r1", "repomap")
    stages = s.get_run("r1").stages
    assert [(x["stage"], x["status"], x["seconds"], x["detail"]) for x in stages] == [
        ("acquire", "succeeded", 0.5, {"counts": {"files": 2}}),
        ("repomap", "running", None, None),
    ]
    assert stages[0]["started_at"] <= stages[1]["started_at"]
    s.stage_started("r1", "acquire")  # a restarted stage starts over
    assert {x["stage"]: x["status"] for x in s.get_run("r1").stages}["acquire"] == "running"


def check_files(s: MetadataStore) -> None:
    s.upsert_index(index("app-1"))
    rows = [
        FileRow("src/b.py", "python", 120, "b" * 64, "1" * 40),
        FileRow("src/a.py", "python", 0, "a" * 64, "2" * 40),
        FileRow("docs/naïve café.md", None, 7, "c" * 64, "3:1700000000"),
    ]
    assert s.put_files("app-1", iter(rows)) == 3
    assert s.files("app-1") == sorted(rows, key=lambda r: r.path)
    assert s.files("app-1", limit=1) == [rows[2]]
    # A second put replaces the list as a whole.
    assert s.put_files("app-1", [FileRow("main.go", "go", 9, "d" * 64)]) == 1
    assert s.files("app-1") == [FileRow("main.go", "go", 9, "d" * 64, None)]
    assert s.put_files("app-1", []) == 0
    assert s.files("app-1") == []
    assert s.files("other") == []
    with pytest.raises(UnknownIndex):
        s.put_files("no-such-index", rows)


def check_symbol_summary(s: MetadataStore) -> None:
    s.upsert_index(index("app-1"))
    s.put_symbol_summary(
        "app-1",
        [
            SymbolCount("function", "python", 3),
            SymbolCount("class", "python", 1),
            SymbolCount("function", "python", 2),  # duplicates add up
            SymbolCount("function", "go", 4),
        ],
    )
    assert s.symbol_summary("app-1") == [
        SymbolCount("class", "python", 1),
        SymbolCount("function", "go", 4),
        SymbolCount("function", "python", 5),
    ]
    s.put_symbol_summary("app-1", [SymbolCount("method", "java", 7)])
    assert s.symbol_summary("app-1") == [SymbolCount("method", "java", 7)]
    assert s.symbol_summary("other") == []
    with pytest.raises(UnknownIndex):
        s.put_symbol_summary("no-such-index", [])


def check_query_log(s: MetadataStore) -> None:
    before = time.time()
    s.log_query("search", "app-1", "total price", 20, 12.5, 7, "token:abc")
    s.log_query("ask", "app-2", "who calls checkout?", None, 80.0, 2, "anonymous")
    s.log_query("search", "app-1", "x" * (MAX_LOGGED_QUERY + 50), 5, 1.0, 0, "jwt:alice")
    recent = s.recent_queries()
    assert [(q.kind, q.index_id, q.k, q.results, q.principal) for q in recent] == [
        ("search", "app-1", 5, 0, "jwt:alice"),
        ("ask", "app-2", None, 2, "anonymous"),
        ("search", "app-1", 20, 7, "token:abc"),
    ]
    assert len(recent[0].query) == MAX_LOGGED_QUERY
    assert recent[2].query == "total price" and recent[2].took_ms == 12.5
    assert recent[0].id > recent[1].id > recent[2].id
    assert before - 1 <= recent[2].at <= time.time() + 1
    assert [q.query for q in s.recent_queries(index_id="app-2")] == ["who calls checkout?"]
    assert len(s.recent_queries(limit=1)) == 1
    assert recent[0].to_dict()["principal"] == "jwt:alice"


def check_audit(s: MetadataStore) -> None:
    s.audit("index", "token:abc", "/src/app", {"rev": "HEAD", "outcome": "ok"})
    s.audit("cancel", "anonymous", "app-1")
    s.audit("index", "jwt:bob", None, {"outcome": "path_not_allowed"})
    entries = s.audit_entries()
    assert [(e.action, e.principal, e.target, e.detail) for e in entries] == [
        ("index", "jwt:bob", None, {"outcome": "path_not_allowed"}),
        ("cancel", "anonymous", "app-1", None),
        ("index", "token:abc", "/src/app", {"rev": "HEAD", "outcome": "ok"}),
    ]
    assert [e.principal for e in s.audit_entries(action="index")] == ["jwt:bob", "token:abc"]
    assert len(s.audit_entries(limit=2)) == 2
    assert entries[0].at == pytest.approx(time.time(), abs=5)


def check_probe(s: MetadataStore) -> None:
    state = s.probe()
    assert state.state == "ok", state
    assert state.detail["backend"] in ("sqlite", "postgres")


CHECKS: list[Check] = [
    check_indexes,
    check_status_and_manifest,
    check_repositories,
    check_runs,
    check_stages,
    check_files,
    check_symbol_summary,
    check_query_log,
    check_audit,
    check_probe,
]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_conformance(store: MetadataStore, check: Check) -> None:
    check(store)


# -- concurrency --------------------------------------------------------------------------------
def test_concurrent_writers_lose_nothing(store: MetadataStore) -> None:
    """8 threads write runs, stages, files and logs at once; every write is there afterwards."""
    threads, rounds = 8, 15
    failures: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(rounds):
                iid = f"idx-{t}-{i}"
                store.upsert_index(index(iid, root=f"/src/r{t}", commit=f"c{t}-{i}"))
                store.create_run(f"run-{t}-{i}", iid)
                store.stage_started(f"run-{t}-{i}", "acquire")
                store.put_files(iid, [FileRow(f"f{n}.py", "python", n, "0" * 64) for n in range(20)])
                store.update_run(f"run-{t}-{i}", state="succeeded", percent=100.0)
                store.set_index_status(iid, "ready", {"n": i})
                store.log_query("search", iid, f"q{t}-{i}", 10, 1.0, 1, f"t{t}")
                store.audit("index", f"t{t}", iid)
        except BaseException as exc:  # collected and re-raised in the main thread
            failures.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(120)
    assert not failures, failures
    total = threads * rounds
    assert len(store.list_indexes()) == total
    assert len(store.list_repositories()) == threads
    assert len(store.audit_entries(limit=10 * total)) == total
    assert len(store.recent_queries(limit=10 * total)) == total
    for t in range(threads):
        for i in range(rounds):
            run = store.get_run(f"run-{t}-{i}")
            assert (run.state, run.percent, len(run.stages)) == ("succeeded", 100.0, 1)
            assert store.get_index(f"idx-{t}-{i}").status == "ready"
    assert len(store.files("idx-3-7")) == 20


_CHILD = """
import sys, time
from pathlib import Path
from mimir.store import SqliteStore, IndexRecord, FileRow
s = SqliteStore(Path(sys.argv[1]))
w = sys.argv[2]
for i in range(40):
    iid = f"p{w}-{i}"
    now = time.time()
    s.upsert_index(IndexRecord(iid, "r", "/src/r" + w, None, f"c{w}{i}", iid, "queued", None, now, now))
    s.create_run("run-" + iid, iid)
    s.update_run("run-" + iid, state="running", percent=float(i))
    s.put_files(iid, [FileRow("a.py", "python", 1, "0" * 64)])
    s.audit("index", "proc" + w, iid)
"""


def test_sqlite_shared_by_processes(tmp_path: Path) -> None:
    """The API process and pipeline workers share one SQLite file: concurrent processes all land."""
    path = tmp_path / "mimir.sqlite"
    SqliteStore(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(w)], stderr=subprocess.PIPE)
        for w in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    s = SqliteStore(path)
    try:
        assert len(s.list_indexes()) == 160
        assert len(s.audit_entries(limit=1000)) == 160
        assert s.get_run("run-p2-39").percent == 39.0
        assert [r.ready for r in s.list_repositories()] == [0, 0, 0, 0]
    finally:
        s.close()


def test_postgres_replicas_share_one_database(pg_url: str) -> None:
    """Two stores on one database (two replicas): each sees the other's writes at once."""
    a = PostgresStore(pg_url, migrate=True, max_size=2)
    b = PostgresStore(pg_url, migrate=True, max_size=2)
    try:
        a.upsert_index(index("app-1"))
        b.create_run("r1", "app-1")
        a.update_run("r1", state="running")
        assert b.get_run("r1").state == "running"
        assert a.get_index("app-1").latest_run == "r1"
    finally:
        a.close()
        b.close()


# -- selection and upgrades ------------------------------------------------------------------------
def test_store_for_picks_the_backend(tmp_path: Path, pg_url: str) -> None:
    sqlite_store = store_for(MimirSettings(data_dir=tmp_path))
    assert isinstance(sqlite_store, SqliteStore)
    assert sqlite_store.path == tmp_path / "mimir.sqlite"
    sqlite_store.close()
    pg = store_for(MimirSettings(data_dir=tmp_path, database_url=pg_url, db_pool_max=3))
    try:
        assert isinstance(pg, PostgresStore)
        assert pg.probe().state == "ok"  # migrated on start (db_migrate_on_start defaults to true)
        assert pg.list_indexes() == []
    finally:
        pg.close()


def test_sqlite_file_from_before_step3_gains_the_new_tables(tmp_path: Path) -> None:
    path = tmp_path / "mimir.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE indexes(index_id TEXT PRIMARY KEY, repo TEXT NOT NULL, root TEXT NOT NULL, rev TEXT,"
        " commit_id TEXT, lens_repo TEXT NOT NULL, status TEXT NOT NULL, latest_run TEXT,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL, manifest TEXT);"
        "INSERT INTO indexes VALUES('old', 'app', '/src/app', NULL, 'c1', 'old', 'ready', NULL, 1, 1, NULL);"
    )
    old.close()
    s = SqliteStore(path)
    try:
        assert s.get_index("old").status == "ready"
        assert s.put_files("old", [FileRow("a.py", "python", 1, "0" * 64)]) == 1
        s.audit("index", "anonymous", "old")
        assert len(s.audit_entries()) == 1
    finally:
        s.close()
