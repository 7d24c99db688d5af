"""Discovery: listing a repository at a revision, its work tree or a plain directory, and filtering."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lens.discover.filters import content_reason, discover, load
from lens.discover.model import FileEntry, LoadedFile, SkipCounts
from lens.discover.source import DirSource, GitSource, RepoSource, WorktreeSource, open_source
from lens.errors import SourceError

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

_GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z",
}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
        cwd=repo,
        env=_GIT_ENV,
        check=True,
        capture_output=True,
    )
    return proc.stdout.decode().strip()


def write(root: Path, rel: str, data: str | bytes = "x\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def new_repo(tmp_path: Path, name: str = "repo") -> Path:
    repo = tmp_path / name
    repo.mkdir()
    git(repo, "init", "-q")
    return repo


def commit_all(repo: Path, message: str = "c") -> str:
    git(repo, "add", "-A", "-f")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def run(source: RepoSource, max_file_bytes: int = 1 << 20) -> tuple[dict[str, LoadedFile], dict[str, int]]:
    """Discover and load everything; the loaded files by path and the skip counts."""
    skips = SkipCounts()
    entries = discover(source, max_file_bytes=max_file_bytes, skips=skips)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    loaded = {f.path: f for f in load(source, entries, skips=skips)}
    return loaded, skips.as_dict()


def listed(source: RepoSource, max_file_bytes: int = 1 << 20) -> tuple[set[str], dict[str, int]]:
    skips = SkipCounts()
    return {e.path for e in discover(source, max_file_bytes=max_file_bytes, skips=skips)}, skips.as_dict()


SourceFactory = Callable[[Path], RepoSource]
ALL_KINDS: list[tuple[str, SourceFactory]] = [
    ("git", lambda p: GitSource(p)),
    ("worktree", lambda p: WorktreeSource(p)),
    ("dir", lambda p: DirSource(p)),
]


# ------------------------------------------------------------------------------------- sources


def test_git_source_reads_exactly_the_committed_tree(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, "a.py", "v1\n")
    write(repo, "b.py", "only in v1\n")
    first = commit_all(repo, "one")
    write(repo, "a.py", "v2\n")
    (repo / "b.py").unlink()
    write(repo, "c.py", "added in v2\n")
    second = commit_all(repo, "two")
    write(repo, "a.py", "dirty working copy\n")
    write(repo, "untracked.py", "not committed\n")

    with GitSource(repo) as head:
        assert (head.kind, head.rev, head.commit, head.root) == ("git", "HEAD", second, repo.resolve())
        files, skips = run(head)
    assert set(files) == {"a.py", "c.py"}
    assert files["a.py"].content == b"v2\n"
    assert skips == {}

    for rev in ("HEAD~1", first, first[:10]):
        with GitSource(repo, rev) as old:
            assert old.commit == first
            files, _ = run(old)
        assert set(files) == {"a.py", "b.py"}
        assert files["a.py"].content == b"v1\n"
        assert files["a.py"].oid == git(repo, "rev-parse", f"{first}:a.py")


def test_worktree_source_sees_uncommitted_edits_and_untracked_files(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, "a.py", "committed\n")
    head = commit_all(repo)
    write(repo, "a.py", "edited\n")
    write(repo, "new/b.py", "untracked\n")

    with open_source(repo, worktree=True) as src:
        assert isinstance(src, WorktreeSource)
        assert (src.kind, src.commit, src.root) == ("worktree", head, repo.resolve())
        files, skips = run(src)
    assert set(files) == {"a.py", "new/b.py"}
    assert files["a.py"].content == b"edited\n"
    st = (repo / "a.py").stat()
    assert files["a.py"].oid == f"{st.st_size}:{st.st_mtime_ns}"
    assert skips == {}


def test_worktree_of_unborn_branch_has_no_commit(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, "a.py")
    with WorktreeSource(repo) as src:
        assert src.commit is None
        assert listed(src)[0] == {"a.py"}


def test_open_source_picks_the_kind(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, "sub/a.py")
    commit_all(repo)
    plain = tmp_path / "plain"
    write(plain, "a.py")
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True, env=_GIT_ENV)

    with open_source(repo) as s:
        assert isinstance(s, GitSource)
    with open_source(repo, rev="HEAD") as s:
        assert isinstance(s, GitSource)
    with open_source(repo, worktree=True) as s:
        assert isinstance(s, WorktreeSource)
    with open_source(plain) as s:
        assert isinstance(s, DirSource) and s.commit is None and s.kind == "dir"
        assert listed(s)[0] == {"a.py"}
    with open_source(bare) as s:
        assert isinstance(s, GitSource) and s.root == bare.resolve()
        assert listed(s)[0] == {"sub/a.py"}
    # A folder inside a work tree is read as a plain folder.
    with open_source(repo / "sub") as s:
        assert isinstance(s, DirSource)
        assert listed(s)[0] == {"a.py"}
    with pytest.raises(SourceError, match="bare"):
        open_source(bare, worktree=True)
    with pytest.raises(SourceError, match="not the top"):
        open_source(repo / "sub", rev="HEAD")


def test_unknown_revision_and_non_repositories_are_source_errors(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, "a.py")
    commit_all(repo)
    plain = tmp_path / "plain"
    write(plain, "a.py")

    with pytest.raises(SourceError, match="unknown revision"):
        GitSource(repo, "no-such-branch")
    with pytest.raises(SourceError, match="unknown revision"):
        open_source(repo, rev="0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(SourceError, match="invalid revision"):
        GitSource(repo, "--output=/tmp/x")
    with pytest.raises(SourceError, match="not a git repository"):
        GitSource(plain)
    with pytest.raises(SourceError, match="not a git work tree"):
        WorktreeSource(plain)
    with pytest.raises(SourceError):
        open_source(plain, rev="HEAD")
    with pytest.raises(SourceError):
        open_source(plain, worktree=True)
    with pytest.raises(SourceError, match="no such directory"):
        open_source(tmp_path / "missing")
    with pytest.raises(SourceError, match="not a directory"):
        open_source(plain / "a.py")
    empty = new_repo(tmp_path, "empty")
    with pytest.raises(SourceError, match="unknown revision"):
        open_source(empty)


def test_odd_file_names(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    names = [
        "with space.py",
        "ünïcødé/файл.py",
        "new\nline.py",
        "tab\tname.txt",
        "quote\"d'.txt",
        "-dash.txt",
    ]
    for i, name in enumerate(names):
        write(repo, name, f"content {i}\n")
    commit_all(repo)
    for _, make in ALL_KINDS:
        with make(repo) as src:
            files, skips = run(src)
        assert set(files) == set(names), src.kind
        assert all(files[n].content == f"content {i}\n".encode() for i, n in enumerate(names))
        assert skips == {}


def test_non_utf8_file_name_is_undecodable(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    try:
        with open(os.path.join(os.fsencode(root), b"bad\xff.txt"), "wb") as f:
            f.write(b"text\n")
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    write(root, "good.txt")
    with DirSource(root) as src:
        assert listed(src) == ({"good.txt"}, {"undecodable": 1})


def test_large_blob_is_read_exactly_through_cat_file(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    big = "".join(f"line {i:07d} {'x' * 50}\n" for i in range(60_000)).encode()  # ~3.6 MiB
    assert len(big) > 3 << 20
    write(repo, "big.txt", big)
    small = {f"s/{i:03d}.py": f"print({i})\n".encode() for i in range(150)}
    for name, data in small.items():
        write(repo, name, data)
    commit_all(repo)

    with GitSource(repo) as src:
        files, skips = run(src, max_file_bytes=8 << 20)
        assert skips == {}
        assert files["big.txt"].content == big
        assert files["big.txt"].sha256 == hashlib.sha256(big).hexdigest()
        assert all(files[n].content == d for n, d in small.items())

        # Stopping a read half-way keeps the shared cat-file process in step for the next reads.
        entries = discover(src, max_file_bytes=8 << 20, skips=SkipCounts())
        reader = src.read_many(entries)
        first = [next(reader) for _ in range(40)]
        reader.close()
        assert [e.path for e, _ in first] == [e.path for e in entries[:40]]
        again = dict((e.path, d) for e, d in src.read_many(reversed(entries)))
        assert again["big.txt"] == big and again["s/149.py"] == small["s/149.py"]

    with GitSource(repo) as src:
        assert listed(src, max_file_bytes=1 << 20) == (set(small), {"too_large": 1})


def test_git_read_of_a_missing_object_fails_cleanly(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, "a.py", "a\n")
    commit_all(repo)
    with GitSource(repo) as src:
        (entry,) = discover(src, skips=SkipCounts())
        with pytest.raises(SourceError, match="missing"):
            list(src.read_many([entry, FileEntry("ghost.py", 1, "0" * 40)]))
        with pytest.raises(SourceError, match="not a git object id"):
            list(src.read_many([FileEntry("x", 1, "HEAD:a.py")]))
        assert [d for _, d in src.read_many([entry])] == [b"a\n"]


# ------------------------------------------------------------------------------------- ignores


def _ignore_fixture(root: Path) -> None:
    write(root, ".gitignore", "*.log\n!keep.log\nout/\n/top-only.txt\n")
    write(root, "a.log")
    write(root, "keep.log")
    write(root, "top-only.txt")
    write(root, "sub/top-only.txt")
    write(root, "sub/.gitignore", "*.tmp\n!important.tmp\n")
    write(root, "sub/x.tmp")
    write(root, "sub/important.tmp")
    write(root, "sub/deeper/y.tmp")
    write(root, "sub/deeper/z.log")
    write(root, "out/x.txt")
    write(root, "out/.gitignore", "!*\n")  # inside an excluded directory: never read
    write(root, "other/out")  # a file: "out/" only matches directories
    write(root, "src/main.py")


_IGNORE_KEPT = {
    ".gitignore",
    "keep.log",
    "sub/top-only.txt",
    "sub/.gitignore",
    "sub/important.tmp",
    "other/out",
    "src/main.py",
}


@pytest.mark.parametrize(("kind", "make"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_gitignore_nested_negation_and_directories(tmp_path: Path, kind: str, make: SourceFactory) -> None:
    repo = new_repo(tmp_path)
    _ignore_fixture(repo)
    commit_all(repo)  # with -f: tracked-but-ignored files are skipped by the git source too
    with make(repo) as src:
        assert listed(src) == (_IGNORE_KEPT, {"ignored": 7})


def test_gitignore_in_the_tree_comes_from_the_indexed_revision(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    write(repo, ".gitignore", "*.gen\n")
    write(repo, "a.gen")
    write(repo, "b.txt")
    commit_all(repo)
    write(repo, ".gitignore", "*.txt\n")  # uncommitted: the git source must not see it
    with GitSource(repo) as src:
        assert listed(src)[0] == {".gitignore", "b.txt"}
    with WorktreeSource(repo) as src:
        assert listed(src)[0] == {".gitignore", "a.gen"}


_GIT_IDIOMS = [
    "*\n!*/\n!*.txt\n",
    "/logs/**\n!/logs/keep.txt\n",
    "logs/**\n!logs/sub/\n",
    "logs/*\n!logs/keep.txt\n",
    "a/**/b\n!a/x/b\n",
    "**/deep\n!**/deep/keep.txt\n",
    "[a-c]*\n![!b]*.md\n\\!bang\n\\#hash\n",
    "*[[:digit:]]*\nsp ace  \nx?.md\n",
    "a/\n!a/\n*/f.txt\n",
    "/*\n!/a\n/a/*\n!/a/sub\n",
]


@pytest.mark.parametrize("rules", _GIT_IDIOMS)
def test_ignore_rules_agree_with_git(tmp_path: Path, rules: str) -> None:
    repo = new_repo(tmp_path)
    for rel in [
        "f.txt", "f.md", "b.md", "c.md", "x1.md", "!bang", "#hash", "sp ace", "a1.txt", "keep.txt",
        "a/f.txt", "a/b", "a/x/b", "a/x/y/b", "a/sub/f.txt", "a/sub/g.md",
        "logs/keep.txt", "logs/x.log", "logs/sub/f.txt", "logs/sub/keep.txt",
        "d/deep/keep.txt", "d/deep/other.md", "deep/f.md", "e/a/f.txt", "e/b.md",
    ]:  # fmt: skip
        write(repo, rel)
    write(repo, ".gitignore", rules)
    write(repo, "e/.gitignore", "!*.md\nf.txt\n")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--others", "--exclude-standard"],
        cwd=repo,
        env=_GIT_ENV,
        check=True,
        capture_output=True,
    ).stdout
    expected = {p.decode() for p in out.split(b"\0") if p}
    with WorktreeSource(repo) as src:
        assert listed(src)[0] == expected


@pytest.mark.parametrize(("kind", "make"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_lensignore_applies_to_every_kind(tmp_path: Path, kind: str, make: SourceFactory) -> None:
    repo = new_repo(tmp_path)
    write(repo, ".lensignore", "docs/\n*.gen.go\n!vendor/\n!wanted.log\n")
    write(repo, ".gitignore", "*.log\n")
    write(repo, "docs/a.md")
    write(repo, "docs/b.md")
    write(repo, "api.gen.go")
    write(repo, "api.go")
    write(repo, "vendor/lib.go")  # vendored, but .lensignore re-includes it
    write(repo, "wanted.log")  # gitignored, but .lensignore re-includes it
    write(repo, "other.log")
    commit_all(repo)
    with make(repo) as src:
        assert listed(src) == (
            {".lensignore", ".gitignore", "api.go", "vendor/lib.go", "wanted.log"},
            {"ignored": 4},
        )


# ------------------------------------------------------------------------------ path filters


@pytest.mark.parametrize(("kind", "make"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_vendored_and_minified_names(tmp_path: Path, kind: str, make: SourceFactory) -> None:
    repo = new_repo(tmp_path)
    vendored = [
        "node_modules/x/index.js", "a/vendor/y.go", "dist/app.js", "build/out.c", "target/t.rs",
        "pkg/__pycache__/m.py", ".venv/lib.py", "venv/lib.py", ".tox/t.py", ".mypy_cache/c.json",
        "web/bower_components/b.js",
    ]  # fmt: skip
    minified = ["app.min.js", "style.min.css", "lib-min.js", "app.bundle.js", "app.js.map", "UP.MIN.JS"]
    kept = ["src/build", "src/vendor.go", "distribution/x.py", "app.js"]
    for rel in vendored + minified + kept:
        write(repo, rel)
    commit_all(repo)
    with make(repo) as src:
        assert listed(src) == (set(kept), {"vendored": len(vendored), "minified": len(minified)})


def test_too_large_uses_max_file_bytes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write(root, "small.txt", "x" * 100)
    write(root, "big.txt", "x" * 101)
    with DirSource(root) as src:
        assert listed(src, max_file_bytes=100) == ({"small.txt"}, {"too_large": 1})


# --------------------------------------------------------------------------- content filters


def test_content_checks() -> None:
    text = "function f() { return 1; }\n" * 10
    assert content_reason("a.js", text.encode()) is None
    assert content_reason("a.bin", b"abc\0def") == "binary"
    assert content_reason("late.txt", b"a" * 9000 + b"\0") is None  # NUL after the first 8 KiB
    assert content_reason("latin1.txt", "café".encode("latin-1")) == "undecodable"
    assert content_reason("bundle.js", ("var a=1;" * 1000).encode()) == "minified"
    assert content_reason("s.css", (("a{b:c}" * 1000) + "\n").encode()) == "minified"
    few_lines = "x" * 5001 + "\n" + ("y" * 49 + "\n") * 19  # average under 300, one huge line
    assert content_reason("few.js", few_lines.encode()) == "minified"
    assert content_reason("long.py", ("x = 1;" * 1000).encode()) is None  # heuristic is .js/.css only
    many = "var a = 1;\n" * 500 + "s = '" + "x" * 6000 + "';\n"
    assert content_reason("data.js", many.encode()) is None


@pytest.mark.parametrize(("kind", "make"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_load_applies_content_checks_and_fills_fields(tmp_path: Path, kind: str, make: SourceFactory) -> None:
    repo = new_repo(tmp_path)
    write(repo, "tool", "#!/usr/bin/env python3\nprint('hi')\n")
    write(repo, "main.go", "package main\n")
    write(repo, "img.dat", b"\x89PNG\r\n\x1a\n\0\0\0")
    write(repo, "latin.txt", "na\xefve".encode("latin-1"))
    write(repo, "one-line.js", "var x=1;" * 2000)
    commit_all(repo)
    skipped: list[tuple[str, str]] = []
    with make(repo) as src:
        skips = SkipCounts()
        entries = discover(src, skips=skips)
        files = {
            f.path: f
            for f in load(src, entries, skips=skips, on_skip=lambda e, r: skipped.append((e.path, r)))
        }
    assert set(files) == {"tool", "main.go"}
    assert files["tool"].lang == "python" and files["main.go"].lang == "go"
    assert files["tool"].sha256 == hashlib.sha256(files["tool"].content).hexdigest()
    assert skips.as_dict() == {"binary": 1, "undecodable": 1, "minified": 1}
    assert sorted(skipped) == [
        ("img.dat", "binary"),
        ("latin.txt", "undecodable"),
        ("one-line.js", "minified"),
    ]


# ------------------------------------------------------------------------ links and submodules


def test_dir_source_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.txt", "secret\n")
    root = tmp_path / "root"
    write(root, "real.py", "ok\n")
    (root / "link-to-file.py").symlink_to(root / "real.py")
    (root / "escape").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    with DirSource(root) as src:
        files, skips = run(src)
    assert set(files) == {"real.py"}
    assert skips == {"symlink": 3}


def test_read_refuses_a_parent_swapped_for_an_escaping_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "f.py", "secret\n")
    root = tmp_path / "root"
    write(root, "d/f.py", "mine\n")
    write(root, "ok.py", "ok\n")
    with DirSource(root) as src:
        skips = SkipCounts()
        entries = discover(src, skips=skips)
        shutil.rmtree(root / "d")
        (root / "d").symlink_to(outside)  # swapped after listing
        reported: list[str] = []
        crafted = [*entries, FileEntry("../outside/f.py", 7, "7:0")]
        files = {f.path: f for f in load(src, crafted, skips=skips, on_skip=lambda e, r: reported.append(r))}
        assert set(files) == {"ok.py"}
        assert skips.as_dict() == {"symlink": 2}
        assert reported == ["symlink", "symlink"]
        assert src.read_control(".gitignore") is None


@pytest.mark.parametrize(("kind", "make"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_committed_symlinks_are_counted_not_followed(tmp_path: Path, kind: str, make: SourceFactory) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.txt")
    repo = new_repo(tmp_path)
    write(repo, "a.py")
    (repo / "to-a.py").symlink_to("a.py")
    (repo / "escape").symlink_to(outside)
    commit_all(repo)
    with make(repo) as src:
        assert listed(src) == ({"a.py"}, {"symlink": 2})


def test_submodules_are_counted(tmp_path: Path) -> None:
    inner = new_repo(tmp_path, "inner")
    write(inner, "lib.py")
    inner_head = commit_all(inner)
    repo = new_repo(tmp_path)
    write(repo, "main.py")
    git(repo, "add", "main.py")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{inner_head},libs/inner")
    git(repo, "commit", "-q", "-m", "with a submodule")
    with GitSource(repo) as src:
        assert listed(src) == ({"main.py"}, {"submodule": 1})
    # In the working directory a nested repository is a submodule too, and is not walked.
    shutil.copytree(inner, repo / "libs" / "inner", symlinks=True)
    with WorktreeSource(repo) as src:
        assert listed(src) == ({"main.py"}, {"submodule": 1})


# --------------------------------------------------------------------------------- skip counts


@pytest.mark.parametrize(("kind", "make"), ALL_KINDS, ids=[k for k, _ in ALL_KINDS])
def test_skip_counts_are_exact_per_reason(tmp_path: Path, kind: str, make: SourceFactory) -> None:
    repo = new_repo(tmp_path)
    write(repo, ".gitignore", "gen/\n*.tmp\n")
    write(repo, "gen/a.c")
    write(repo, "gen/b.c")
    write(repo, "gen/deep/c.c")
    write(repo, "x.tmp")
    write(repo, "node_modules/p/a.js")
    write(repo, "node_modules/p/b.js")
    write(repo, "lib.min.js")
    write(repo, "huge.txt", "y" * 2000)
    write(repo, "blob.bin", b"\0\1\2")
    write(repo, "latin.txt", b"\xe9t\xe9\n")
    (repo / "link").symlink_to("lib.min.js")
    (repo / "gen" / "link").symlink_to("a.c")  # a link below an ignored folder is still a link
    write(repo, "main.py", "print(1)\n")
    commit_all(repo)
    with make(repo) as src:
        files, skips = run(src, max_file_bytes=1000)
    assert set(files) == {".gitignore", "main.py"}
    assert skips == {
        "ignored": 4,
        "vendored": 2,
        "minified": 1,
        "too_large": 1,
        "binary": 1,
        "undecodable": 1,
        "symlink": 2,
    }
