"""Indexing: revisions, incremental updates, skip accounting, locking and crash safety.

Everything runs against real git repositories made in temporary directories. The
crash tests start ``lens index`` as a subprocess and SIGKILL it while it writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gitrepo import commit_all, git, write_files
from lens.config import LensSettings
from lens.engine import Lens
from lens.errors import BadRequest, Conflict, NotFound

# ------------------------------------------------------------------------------------------ helpers


def lines_of(lens: Lens, query: str, **kwargs: object) -> set[tuple[str, int]]:
    """(path, line) of every result of an exact search, walking all pages."""
    out: list[tuple[str, int]] = []
    cursor: str | None = None
    while True:
        res = lens.search(query, limit=1000, cursor=cursor, **kwargs)  # type: ignore[arg-type]
        out.extend((h.path, h.line_number) for h in res.results)
        if not res.next_cursor:
            break
        cursor = res.next_cursor
    assert len(out) == len(set(out)), "pages overlap"
    return set(out)


def paths_of(lens: Lens, query: str, **kwargs: object) -> set[str]:
    return {p for p, _ in lines_of(lens, query, **kwargs)}


def shard_conn(lens: Lens, name: str) -> sqlite3.Connection:
    shard = lens.catalog.require_shard(name)
    return sqlite3.connect(f"file:{shard}?mode=ro", uri=True)


# ------------------------------------------------------------------------------- revisions, worktree


def test_head_index_records_commit(make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]) -> None:
    repo = make_repo({"a.py": "def alpha():\n    return 1\n"})
    head = git(repo, "rev-parse", "HEAD")
    lens = lens_factory()
    report = lens.index(repo, name="r")
    assert report.kind == "git"
    assert report.commit == head
    info = lens.repo("r")
    assert info["commit"] == head
    assert info["rev"] == "HEAD"
    hits = lens.search("alpha").results
    assert hits and all(h.commit == head for h in hits)


def test_rev_indexes_exactly_that_tree(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    repo = make_repo({"a.py": "old_token = 1\n", "gone.py": "only_in_old = 2\n"})
    old = git(repo, "rev-parse", "HEAD")
    write_files(repo, {"a.py": "new_token = 1\n", "added.py": "only_in_new = 3\n"})
    (repo / "gone.py").unlink()
    new = commit_all(repo, "second")
    assert old != new

    lens = lens_factory()
    report = lens.index(repo, name="r", rev=old)
    assert report.commit == old
    assert lens.repo("r")["commit"] == old
    assert paths_of(lens, "old_token") == {"a.py"}
    assert paths_of(lens, "only_in_old") == {"gone.py"}
    assert lines_of(lens, "new_token") == set()
    assert lines_of(lens, "only_in_new") == set()
    assert lens.repo("r")["files"] == 2

    # Moving to HEAD afterwards sees the new tree.
    report = lens.index(repo, name="r")
    assert report.commit == new
    assert paths_of(lens, "new_token") == {"a.py"}
    assert lines_of(lens, "old_token") == set()
    assert lines_of(lens, "only_in_old") == set()


def test_worktree_edits_seen_only_with_worktree(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    repo = make_repo({"a.py": "committed_text = 1\n"})
    write_files(repo, {"a.py": "dirty_edit_text = 1\n", "new.py": "untracked_text = 2\n"})
    lens = lens_factory()

    lens.index(repo, name="plain")
    assert paths_of(lens, "committed_text", repos=["plain"]) == {"a.py"}
    assert lines_of(lens, "dirty_edit_text", repos=["plain"]) == set()
    assert lines_of(lens, "untracked_text", repos=["plain"]) == set()

    report = lens.index(repo, name="wt", worktree=True)
    assert report.kind == "worktree"
    assert paths_of(lens, "dirty_edit_text", repos=["wt"]) == {"a.py"}
    assert paths_of(lens, "untracked_text", repos=["wt"]) == {"new.py"}
    assert lines_of(lens, "committed_text", repos=["wt"]) == set()


# ----------------------------------------------------------------------------------------- incremental


def _base_files(n: int) -> dict[str, str | bytes]:
    return {
        f"src/mod{i}.py": f"def function_number_{i}(x):\n    return x * {i}  # marker{i}x\n" for i in range(n)
    }


def test_incremental_add_change_delete(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    files = _base_files(8)
    files["src/doomed.py"] = "def doomed_helper(v):\n    return zebraquux + v\n"
    repo = make_repo(files)
    lens = lens_factory()
    first = lens.index(repo, name="r")
    assert first.full_build
    assert first.files == 9
    assert {s["path"] for s in lens.symbols("r", "doomed_helper")} == {"src/doomed.py"}
    assert {h.path for h in lens.search("zebraquux", mode="ranked").results} == {"src/doomed.py"}

    write_files(
        repo,
        {
            "src/mod0.py": "def function_number_0(x):\n    return replaced_body_token + x\n",
            "src/fresh.py": "def brand_new_function():\n    return freshtoken\n",
        },
    )
    (repo / "src/doomed.py").unlink()
    commit_all(repo, "change")

    report = lens.index(repo, name="r")
    assert not report.full_build
    assert (report.added, report.changed, report.deleted, report.unchanged) == (1, 1, 1, 7)
    assert report.generation == first.generation + 1
    assert report.files == 9
    assert lens.repo("r")["generation"] == report.generation

    # Exact search reflects all three changes.
    assert paths_of(lens, "replaced_body_token") == {"src/mod0.py"}
    assert lines_of(lens, "marker0x") == set()
    assert paths_of(lens, "freshtoken") == {"src/fresh.py"}
    assert lines_of(lens, "zebraquux") == set()
    assert lines_of(lens, "doomed_helper") == set()
    assert paths_of(lens, "marker5x") == {"src/mod5.py"}

    # Symbols: the deleted file's definition is gone, the new one is there.
    assert lens.symbols("r", "doomed_helper") == []
    assert [s["path"] for s in lens.symbols("r", "brand_new_function")] == ["src/fresh.py"]

    # Ranked (BM25) no longer returns the deleted or the replaced chunk...
    assert lens.search("zebraquux", mode="ranked").results == []
    assert "src/mod0.py" not in {h.path for h in lens.search("marker0x", mode="ranked").results}
    assert {h.path for h in lens.search("freshtoken", mode="ranked").results} == {"src/fresh.py"}
    # ...because the contentless FTS index really forgot their tokens (the 'delete' bookkeeping),
    # and the trigram index still agrees with the files table.
    with shard_conn(lens, "r") as conn:
        for token in ("zebraquux", "doomed", "marker0x"):
            n = conn.execute(
                "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{token}"',)
            ).fetchone()
            assert n[0] == 0, token
        n_fts = conn.execute(
            "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"freshtoken\"'"
        ).fetchone()
        assert n_fts[0] == 1
    rw = sqlite3.connect(lens.catalog.require_shard("r"))
    try:
        rw.execute("INSERT INTO files_fts(files_fts, rank) VALUES('integrity-check', 1)")
    finally:
        rw.close()

    again = lens.index(repo, name="r")
    assert (again.added, again.changed, again.deleted, again.unchanged) == (0, 0, 0, 9)
    assert not again.full_build


def _shadow_rows(shard: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(f"file:{shard}?mode=ro", uri=True)
    try:
        names = [
            n
            for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            if n.startswith(("files_fts_", "chunks_fts_"))
        ]
        return {n: conn.execute(f"SELECT * FROM {n} ORDER BY 1, 2").fetchall() for n in names}
    finally:
        conn.close()


def test_parallel_full_build_matches_serial_build(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big full build fills its FTS tables on side threads and copies them in: same index, same rows."""
    from lens.index import builder

    files = _base_files(90)
    files["pkg/types.go"] = (
        "package pkg\n\nfunc Outer(r interface{ Read() }) {\n\tif true {\n\t\ttype local struct{}\n\t}\n}\n"
    )
    files["docs/unicode.py"] = "def grüße(wert):\n    return 'Größe' + wert  # ünïcödé\n"
    files["win/crlf.py"] = "def crlf_function():\r\n    return 1\r\n"
    repo = make_repo(files)
    assert len(files) >= builder._PARALLEL_MIN_FILES

    parallel = lens_factory()
    report = parallel.index(repo, name="r")
    assert report.full_build and report.files == len(files)
    generation_dir = parallel.catalog.require_shard("r").parent
    assert sorted(p.name for p in generation_dir.iterdir() if p.name.startswith("side-")) == []

    monkeypatch.setattr(builder, "_PARALLEL_MIN_FILES", 1 << 30)
    serial = lens_factory()
    serial.index(repo, name="r")

    shard = parallel.catalog.require_shard("r")
    assert _shadow_rows(shard) == _shadow_rows(serial.catalog.require_shard("r"))
    with shard_conn(parallel, "r") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for table in ("chunks", "symbols", "files"):
            other = shard_conn(serial, "r")
            try:
                assert (
                    conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                    == other.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                )
            finally:
                other.close()
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        wanted = {"symbols_name", "symbols_name_nocase", "symbols_file", "chunks_file", "chunks_hash"}
        assert wanted <= indexes
    assert {s["name"] for s in parallel.symbols("r", "local")} == {"local"}
    assert paths_of(parallel, "Größe") == {"docs/unicode.py"}
    assert {h.path for h in parallel.search("grüße", mode="ranked").results} == {"docs/unicode.py"}

    # Deleting rows later needs the very tokens the side threads inserted.
    (repo / "docs/unicode.py").unlink()
    (repo / "win/crlf.py").unlink()
    write_files(repo, {"src/mod1.py": "def replaced():\n    return 2\n"})
    commit_all(repo, "change")
    assert not parallel.index(repo, name="r").full_build
    rw = sqlite3.connect(parallel.catalog.require_shard("r"))
    try:
        for table in ("files_fts", "chunks_fts"):
            rw.execute(f"INSERT INTO {table}({table}, rank) VALUES('integrity-check', 1)")
        for token in ("größe", "crlf", "marker1x"):
            n = rw.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (f'"{token}"',))
            assert n.fetchone()[0] == 0, token
    finally:
        rw.close()


def test_change_is_searchable_as_soon_as_index_returns(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    """The reader already holds a connection to the shard; the next search must see the commit."""
    repo = make_repo(_base_files(6))
    lens = lens_factory()
    lens.index(repo, name="r")
    assert paths_of(lens, "marker3x") == {"src/mod3.py"}  # warm the reader's connection and caches

    # Incremental path (one file changed, transaction in the live generation).
    write_files(repo, {"src/mod3.py": "def function_number_3(x):\n    return hot_off_the_press\n"})
    commit_all(repo, "edit")
    report = lens.index(repo, name="r")
    assert not report.full_build
    assert paths_of(lens, "hot_off_the_press") == {"src/mod3.py"}
    assert lines_of(lens, "marker3x") == set()

    # Full-build path (a new generation directory published by rename).
    write_files(repo, {"src/mod3.py": "def function_number_3(x):\n    return second_edition\n"})
    commit_all(repo, "edit again")
    report = lens.index(repo, name="r", full=True)
    assert report.full_build
    assert paths_of(lens, "second_edition") == {"src/mod3.py"}
    assert lines_of(lens, "hot_off_the_press") == set()


FRUITS = ["apple_one", "banana_two", "cherry_three", "damson_four"]


def _fruit_files(order: list[str]) -> dict[str, str | bytes]:
    return {f"{c}.py": f"def {name}():\n    return 1\n" for c, name in zip("abcd", order, strict=True)}


def _semantic_top(lens: Lens, query: str) -> tuple[str, str]:
    hit = lens.search(query, mode="semantic").results[0]
    return hit.path, hit.line


def test_semantic_results_follow_a_full_rebuild(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    """A long-running process (the server) must not keep serving the previous generation's vectors."""
    repo = make_repo(_fruit_files(FRUITS))
    lens = lens_factory()
    lens.index(repo, name="r")
    lens.embed("r")
    assert _semantic_top(lens, "banana_two") == ("b.py", "def banana_two():")

    write_files(repo, _fruit_files(FRUITS[1:] + FRUITS[:1]))  # every file changes: full build
    commit_all(repo, "rotate")
    report = lens.index(repo, name="r")
    assert report.full_build
    lens.embed("r")
    assert lens.repo("r")["semantic"]["status"] == "ready"
    assert _semantic_top(lens, "banana_two") == ("a.py", "def banana_two():")


def test_semantic_search_is_per_data_dir(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    """Two Lens instances in one process, same repository name, different data: no crosstalk."""
    first, second = lens_factory(), lens_factory()
    assert first.settings.data_dir != second.settings.data_dir
    first.index(make_repo(_fruit_files(FRUITS)), name="r")
    first.embed("r")
    second.index(make_repo(_fruit_files(FRUITS[2:] + FRUITS[:2])), name="r")
    second.embed("r")
    assert _semantic_top(first, "banana_two") == ("b.py", "def banana_two():")
    assert _semantic_top(second, "banana_two") == ("d.py", "def banana_two():")


# ----------------------------------------------------------------------------------------------- skips


def test_skip_counts_by_reason(make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]) -> None:
    files: dict[str, str | bytes] = {
        "main.py": "print('hello')\n",
        "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        "big.txt": "x" * 5000 + "\n",
        "node_modules/lib/index.js": "module.exports = 1;\n",
        "static/app.min.js": "var a=1;\n",
        ".gitignore": "generated.log\n",
        ".lensignore": "secret_dir/\n",
        "secret_dir/notes.md": "not for the index\n",
    }
    repo = make_repo(files)
    # A file the .gitignore matches but that is committed anyway (git add -f).
    write_files(repo, {"generated.log": "build output\n"})
    git(repo, "add", "-f", "generated.log")
    commit_all(repo, "force-add ignored file")

    lens = lens_factory(max_file_bytes=1000)
    report = lens.index(repo, name="r")
    expected = {"binary": 1, "too_large": 1, "vendored": 1, "minified": 1, "ignored": 2}
    assert report.skipped == expected
    assert lens.repo("r")["skipped"] == expected
    indexed = {h.path for h in lens.search("type:file", limit=1000).results}
    assert indexed == {"main.py", ".gitignore", ".lensignore"}

    # Incremental run: the binary file is remembered (not re-read) and still counted once.
    write_files(repo, {"main.py": "print('hello again')\n"})
    commit_all(repo, "edit")
    again = lens.index(repo, name="r")
    assert not again.full_build
    assert again.changed == 1
    assert again.skipped == expected
    assert lens.repo("r")["skipped"] == expected
    # And a third run with nothing changed keeps the same counts.
    assert lens.index(repo, name="r").skipped == expected


# ------------------------------------------------------------------------------ lock, remove, read_file


def test_second_writer_gets_conflict(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    repo = make_repo({"a.py": "x = 1\n"})
    lens = lens_factory()
    lens.index(repo, name="r")
    with lens.catalog.lock("r"), pytest.raises(Conflict) as info:
        lens.index(repo, name="r")
    assert info.value.status == 409
    assert info.value.code == "conflict"
    # Once the lock is released, indexing works again.
    assert lens.index(repo, name="r").files == 1


def test_remove(make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]) -> None:
    repo = make_repo({"a.py": "removable_text = 1\n"})
    lens = lens_factory()
    lens.index(repo, name="r")
    assert [r["name"] for r in lens.repos()] == ["r"]
    lens.remove("r")
    assert lens.repos() == []
    assert not (lens.catalog.repos_dir / "r").exists()
    assert lens.search("removable_text").results == []
    with pytest.raises(NotFound):
        lens.repo("r")
    with pytest.raises(NotFound):
        lens.remove("r")
    with pytest.raises(NotFound):
        lens.remove("never-indexed")


def test_read_file_at_indexed_revision(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens]
) -> None:
    committed = "line one\nline two\nline three\nline four\n"
    repo = make_repo({"doc.txt": committed})
    head = git(repo, "rev-parse", "HEAD")
    write_files(repo, {"doc.txt": "working tree edit\n"})  # not committed: must not show up
    lens = lens_factory()
    lens.index(repo, name="r")

    whole = lens.read_file("r", "doc.txt")
    assert whole["lines"] == ["line one", "line two", "line three", "line four"]
    assert whole["sha256"] == hashlib.sha256(committed.encode()).hexdigest()
    assert whole["commit"] == head
    assert whole["total_lines"] == 4
    assert (whole["start"], whole["end"]) == (1, 4)

    part = lens.read_file("r", "doc.txt", 2, 3)
    assert part["lines"] == ["line two", "line three"]
    assert (part["start"], part["end"]) == (2, 3)
    assert lens.read_file("r", "doc.txt", 3, 99)["lines"] == ["line three", "line four"]

    for start, end in ((0, 2), (3, 2), (-1, None)):
        with pytest.raises(BadRequest):
            lens.read_file("r", "doc.txt", start, end)
    with pytest.raises(NotFound):
        lens.read_file("r", "missing.txt")
    with pytest.raises(NotFound):
        lens.read_file("nope", "doc.txt")


# ----------------------------------------------------------------------------------------- crash safety

# Enough code that a full build parses for about a second (time to kill it mid-run) in few
# files (file system work is slow). Each file has one marker line: a marker's hit count is a
# file count.
N_FILES = 200
FUNCS_PER_FILE = 36
N_INCREMENTAL = N_FILES * 2 // 5  # 40%: under the 50% full-rebuild threshold


def _write_version(repo: Path, labels: dict[int, str]) -> None:
    for i, label in labels.items():
        p = repo / f"pkg{i % 10:02d}" / f"mod{i:04d}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"def func_{i}_{j}(x):\n    return x + {j}\n\n" for j in range(FUNCS_PER_FILE))
        p.write_text(f'VERSION = "mark_{label}"\n' + body)


def _git_init(repo: Path) -> None:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")


def _cli(data: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "LENS_DATA_DIR": str(data), "LENS_EMBED": "0"}
    return [sys.executable, "-m", "lens.serve.cli"], env


def _index_subprocess(
    repo: Path, data: Path, *, retry_conflict_s: float = 0.0
) -> subprocess.CompletedProcess[str]:
    cmd, env = _cli(data)
    deadline = time.monotonic() + retry_conflict_s
    while True:
        proc = subprocess.run(
            [*cmd, "index", str(repo), "--name", "x", "--no-embed", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0 or '"conflict"' not in proc.stdout or time.monotonic() > deadline:
            return proc
        time.sleep(0.2)


def _start_indexer(repo: Path, data: Path) -> subprocess.Popen[bytes]:
    cmd, env = _cli(data)
    return subprocess.Popen(
        [*cmd, "index", str(repo), "--name", "x", "--no-embed"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so the test can always clean up after it
    )


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill whatever is left of the indexer's process group and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _wait_until(proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float) -> bool:
    """Wait for ``ready()`` then ``delay`` seconds; False when the process ended first."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    if delay:
        time.sleep(delay)
    return proc.poll() is None


def _kill_mid_run(repo: Path, data: Path, ready: Callable[[], bool], delay: float) -> bool:
    """Start ``lens index``, SIGKILL it with all its helper processes once ``ready()`` + ``delay``.

    That is what a power cut or a container OOM kill does. Returns False when the run finished
    before it could be killed.
    """
    proc = _start_indexer(repo, data)
    try:
        if not _wait_until(proc, ready, delay):
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        return True
    finally:
        _reap(proc)


def _tmp_dirs(data: Path) -> list[Path]:
    return sorted((data / "repos" / "x").glob("tmp-*"))


def _write_locked(shard: Path) -> bool:
    """True while some connection holds the write transaction of ``shard`` (never waits)."""
    if not shard.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{shard}?mode=rw", uri=True, timeout=0, isolation_level=None)
    except sqlite3.OperationalError:
        return False
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    else:
        conn.execute("ROLLBACK")
        return False
    finally:
        conn.close()


def _marker_counts(lens: Lens, labels: set[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for label in labels:
        found = lines_of(lens, f'"mark_{label}"')
        counts[label] = len(found)
        assert all(line == 1 for _p, line in found)
    return +counts


def _assert_state(lens: Lens, expected: dict[int, str], all_labels: set[str]) -> None:
    assert lens.repo("x")["files"] == N_FILES
    assert _marker_counts(lens, all_labels) == Counter(expected.values())


def _reader(data: Path) -> Lens:
    return Lens(LensSettings(data_dir=data, embed=False))


def _current(data: Path) -> str:
    return (data / "repos/x/CURRENT").read_text().strip()


@pytest.mark.slow
def test_kill_during_full_build_keeps_previous_generation(tmp_path: Path) -> None:
    repo, data = tmp_path / "big", tmp_path / "data"
    _git_init(repo)
    expected = dict.fromkeys(range(N_FILES), "a")
    _write_version(repo, expected)
    commit_all(repo, "version A")
    first = _index_subprocess(repo, data)
    assert first.returncode == 0, first.stderr
    reader = _reader(data)
    labels = {"a"}
    _assert_state(reader, expected, labels)
    generation = reader.repo("x")["generation"]
    current = _current(data)

    killed = False
    for attempt, delay in enumerate((0.1, 0.03, 0.0, 0.25)):
        label = f"b{attempt}"
        labels.add(label)
        new = dict.fromkeys(range(N_FILES), label)  # every file changes: a full build
        _write_version(repo, new)
        commit_all(repo, f"version {label}")
        if _kill_mid_run(repo, data, lambda: bool(_tmp_dirs(data)), delay):
            killed = True
            break
        expected = new  # it finished first: that is now the state to keep
        generation = reader.repo("x")["generation"]
        current = _current(data)
    if not killed:
        pytest.skip("the full build always finished before it could be killed (4 attempts)")

    # The half-built generation exists but is not live; the previous one answers completely.
    leftovers = _tmp_dirs(data)
    assert leftovers, "killed mid-run but no build directory was left behind"
    assert _current(data) == current
    assert reader.catalog.names() == ["x"]
    assert reader.catalog.current_generation_dir("x") == data / "repos/x" / current
    assert reader.repo("x")["generation"] == generation
    _assert_state(reader, expected, labels)
    _assert_state(_reader(data), expected, labels)  # a fresh reader agrees

    done = _index_subprocess(repo, data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"full_build": true' in done.stdout
    _assert_state(reader, new, labels)
    assert _current(data) != current
    assert not any(p.exists() for p in leftovers), "stale build directory was not cleaned up"
    assert _tmp_dirs(data) == []
    # The published generation counts up from the one it replaced.
    assert reader.repo("x")["generation"] == generation + 1


@pytest.mark.slow
def test_kill_during_incremental_update_keeps_previous_state(tmp_path: Path) -> None:
    repo, data = tmp_path / "big", tmp_path / "data"
    _git_init(repo)
    expected = dict.fromkeys(range(N_FILES), "a")
    _write_version(repo, expected)
    commit_all(repo, "version A")
    first = _index_subprocess(repo, data)
    assert first.returncode == 0, first.stderr
    reader = _reader(data)
    labels = {"a"}
    _assert_state(reader, expected, labels)
    generation = reader.repo("x")["generation"]
    live = reader.catalog.require_shard("x")

    killed = False
    for attempt, delay in enumerate((0.05, 0.01, 0.0, 0.15)):
        label = f"c{attempt}"
        labels.add(label)
        changed = {i: label for i in range(N_FILES) if (i + attempt) % 5 < 2}
        assert len(changed) == N_INCREMENTAL
        new = expected | changed
        _write_version(repo, changed)
        commit_all(repo, f"version {label}")
        # Ready once the indexer holds the live shard's write transaction.
        if _kill_mid_run(repo, data, lambda: _write_locked(live), delay):
            killed = True
            break
        expected = new
        generation = reader.repo("x")["generation"]
    if not killed:
        pytest.skip("the incremental update always finished before it could be killed (4 attempts)")

    assert reader.catalog.require_shard("x") == live
    assert _tmp_dirs(data) == []
    assert reader.repo("x")["generation"] == generation
    _assert_state(reader, expected, labels)
    _assert_state(_reader(data), expected, labels)

    done = _index_subprocess(repo, data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"full_build": false' in done.stdout
    assert f'"changed": {N_INCREMENTAL},' in done.stdout
    _assert_state(reader, new, labels)
    assert reader.repo("x")["generation"] == generation + 1


@pytest.mark.slow
def test_index_works_after_indexer_main_process_killed(tmp_path: Path) -> None:
    """``kill -9 <pid>`` of the indexer alone: the next run must not be locked out.

    Helper processes it started (parse workers, git) must not outlive it holding the
    repository's writer lock.
    """
    repo, data = tmp_path / "big", tmp_path / "data"
    _git_init(repo)
    n = N_FILES
    _write_version(repo, dict.fromkeys(range(n), "a"))
    commit_all(repo, "version A")

    proc = _start_indexer(repo, data)
    try:
        # Mid-parse: the build directory exists and the parse workers are running.
        if not _wait_until(proc, lambda: bool(_tmp_dirs(data)), 0.2):
            pytest.skip("the build finished before it could be killed")
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait(10)
        # Helpers that exit on their own get a few seconds; then the next run must succeed.
        again = _index_subprocess(repo, data, retry_conflict_s=5.0)
        assert again.returncode == 0, "re-index after kill -9 of the indexer failed: " + again.stdout
        assert f'"files": {n},' in again.stdout
    finally:
        _reap(proc)
