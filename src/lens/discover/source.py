"""Where a repository's files come from: a git revision, a git working directory, or a plain directory.

Sources only list and read; deciding what to index is the job of :mod:`lens.discover.filters`.
Every source lists without following symbolic links and counts what it cannot offer
(symlinks, submodules) in the caller's :class:`SkipCounts`. Disk reads rely on POSIX
``O_NOFOLLOW`` and ``dir_fd`` (Linux, macOS).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import stat
import subprocess
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal, Protocol, Self

from lens.discover.model import FileEntry, SkipCounts, SourceKind
from lens.errors import SourceError

log = logging.getLogger(__name__)

PruneFn = Callable[[str], str | None]
"""Given a directory path (posix, relative to the root), the skip reason for its whole subtree, or None."""

SkipFn = Callable[[FileEntry, str], None]
"""Told about each entry a source could not read safely, with the skip reason."""

CONTROL_FILES: Final = frozenset({".gitignore", ".lensignore"})
"""The only files :meth:`RepoSource.read_control` reads: the ignore rules filters need."""

_CONTROL_MAX_BYTES: Final = 4 << 20
_OID_RE: Final = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")
# Requests written ahead of the replies read: keeps cat-file busy without threads. 32 lines of at
# most 65 bytes stay far below the smallest pipe buffer (4 KiB), so writing can never block while
# cat-file is itself blocked writing a large blob we have not read yet: no deadlock.
_BATCH_WINDOW: Final = 32
# Variables that would point git at another repository, index or object store than the one asked for.
_GIT_ENV_DROP: Final = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
)
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a file swapped for a FIFO after listing must not hang the open.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class RepoSource(Protocol):
    """What the discovery stage needs from any source of files.

    ``commit`` is the full commit id the files come from (git), HEAD's commit for a
    working directory (None on an unborn branch), None for a plain directory.
    Sources are not thread-safe.
    """

    @property
    def kind(self) -> SourceKind: ...

    @property
    def root(self) -> Path: ...

    @property
    def commit(self) -> str | None: ...

    def list_files(self, skips: SkipCounts, prune: PruneFn | None = None) -> Iterator[FileEntry]:
        """Yield every regular file; count symlinks and submodules in ``skips``.

        ``prune`` is a hint: a source may skip walking a directory for which it returns a
        reason, and then must count each regular file below it under that reason.
        """
        ...

    def read_many(
        self, entries: Iterable[FileEntry], on_skip: SkipFn | None = None
    ) -> Generator[tuple[FileEntry, bytes], None, None]:
        """Yield each entry with its bytes, in order.

        An entry that cannot be read safely is not yielded but reported to ``on_skip``.
        The yielded entry may differ from the one asked for when the file changed since listing.
        Reads may overlap (a git source then serves the newer one with a second process).
        """
        ...

    def read_control(self, path: str) -> bytes | None:
        """The content of a ``.gitignore``/``.lensignore`` file, or None if absent or unusable."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


# --------------------------------------------------------------------------------------------- git


def _git_env() -> dict[str, str]:
    """The environment for git: no redirection to other repositories, no prompts, stable messages."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    env.update(
        LC_ALL="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_OPTIONAL_LOCKS="0",
        # Replace refs would make git show other objects than the commit id we record says.
        GIT_NO_REPLACE_OBJECTS="1",
    )
    return env


def _run_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", "-C", str(cwd), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_git_env(),
            check=False,
        )
    except FileNotFoundError as exc:
        raise SourceError("git is not installed (no `git` on PATH)", details={"path": str(cwd)}) from exc


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class _RepoInfo:
    git_dir: Path
    toplevel: Path | None  # None for a bare repository (or a .git directory itself)

    @property
    def top(self) -> Path:
        """The directory that stands for the whole repository."""
        return self.toplevel or self.git_dir


def _probe(path: Path) -> _RepoInfo | None:
    """Ask git whether ``path`` is in a repository; None when it is not."""
    proc = _run_git(path, "rev-parse", "--is-inside-work-tree", "--absolute-git-dir")
    if proc.returncode != 0:
        msg = _stderr(proc)
        if "not a git repository" in msg:
            return None
        raise SourceError(f"cannot use git repository at {path}: {msg}", details={"path": str(path)})
    inside, git_dir = proc.stdout.decode("utf-8", "surrogateescape").splitlines()[:2]
    toplevel: Path | None = None
    if inside == "true":
        top = _run_git(path, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            raise SourceError(
                f"cannot find the work tree of {path}: {_stderr(top)}", details={"path": str(path)}
            )
        toplevel = Path(os.path.realpath(os.fsdecode(top.stdout.rstrip(b"\n"))))
    return _RepoInfo(git_dir=Path(os.path.realpath(git_dir)), toplevel=toplevel)


def _head_commit(root: Path) -> str | None:
    proc = _run_git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


class _Closing:
    """Context-manager plumbing shared by all sources."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class GitSource(_Closing):
    """Exactly the tree of one commit, read from git objects (never from the working directory).

    One ``git ls-tree`` lists the tree and one long-lived ``git cat-file --batch`` reads every
    blob, so cost does not grow with per-file process starts. Blobs are read raw: no
    clean/smudge filters, no LFS resolution.
    """

    kind: Literal["git"] = "git"

    def __init__(self, root: Path, rev: str = "HEAD") -> None:
        path = Path(os.path.realpath(root))
        if not path.is_dir():
            raise SourceError(f"not a directory: {root}", details={"path": str(root)})
        info = _probe(path)
        if info is None:
            raise SourceError(f"not a git repository: {root}", details={"path": str(root)})
        self.root: Path = info.top
        self.rev = rev
        if not rev or rev.startswith("-") or any(c in rev for c in "\0\n\r"):
            raise SourceError(f"invalid revision {rev!r}", details={"rev": rev})
        proc = _run_git(self.root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if proc.returncode != 0:
            raise SourceError(
                f"unknown revision {rev!r} in {self.root}", details={"rev": rev, "path": str(self.root)}
            )
        self.commit: str = proc.stdout.decode().strip()
        self._entries: list[FileEntry] | None = None
        self._symlinks = 0
        self._submodules = 0
        self._control: dict[str, FileEntry] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._busy = False

    def _tree(self) -> list[FileEntry]:
        """List the tree once; both list_files and read_control use it."""
        if self._entries is not None:
            return self._entries
        proc = _run_git(self.root, "ls-tree", "-r", "-z", "-l", "--full-tree", self.commit)
        if proc.returncode != 0:
            raise SourceError(f"git ls-tree failed for {self.commit} in {self.root}: {_stderr(proc)}")
        entries: list[FileEntry] = []
        symlinks = submodules = 0
        for rec in proc.stdout.split(b"\0"):
            if not rec:
                continue
            meta, _, raw_path = rec.partition(b"\t")
            mode, kind, oid, size = meta.split()
            if mode == b"120000":
                symlinks += 1
            elif mode == b"160000":
                submodules += 1
            elif kind == b"blob" and mode.startswith(b"100"):
                path = raw_path.decode("utf-8", "surrogateescape")
                entry = FileEntry(path=path, size=int(size), oid=oid.decode())
                entries.append(entry)
                if path.rpartition("/")[2] in CONTROL_FILES:
                    self._control[path] = entry
        self._entries, self._symlinks, self._submodules = entries, symlinks, submodules
        return entries

    def list_files(self, skips: SkipCounts, prune: PruneFn | None = None) -> Iterator[FileEntry]:
        """Yield the commit's regular blobs. ``prune`` is ignored: the tree is listed whole anyway."""
        entries = self._tree()
        if self._symlinks:
            skips.add("symlink", self._symlinks)
        if self._submodules:
            skips.add("submodule", self._submodules)
        yield from entries

    def read_control(self, path: str) -> bytes | None:
        self._tree()
        entry = self._control.get(path)
        if entry is None or entry.size > _CONTROL_MAX_BYTES:
            return None
        return next((data for _, data in list(self.read_many([entry]))), None)

    def _spawn(self) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                ["git", "-C", str(self.root), "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_git_env(),
                bufsize=1 << 16,
            )
        except FileNotFoundError as exc:
            raise SourceError("git is not installed (no `git` on PATH)") from exc

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
        try:
            if kill:
                proc.kill()
            elif proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

    def read_many(
        self, entries: Iterable[FileEntry], on_skip: SkipFn | None = None
    ) -> Generator[tuple[FileEntry, bytes], None, None]:
        """Read blobs through the shared ``cat-file --batch`` process, pipelined.

        A missing object (corrupt or partial clone) raises SourceError. A nested call while
        another read is in progress gets a private process, so replies never interleave.
        """
        private = self._busy
        if private:
            proc = self._spawn()
        else:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._spawn()
            proc = self._proc
            self._busy = True
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        pending: deque[FileEntry] = deque()
        healthy = True
        try:
            try:
                for entry in entries:
                    oid = entry.oid.encode()
                    if not _OID_RE.fullmatch(oid):
                        raise SourceError(f"not a git object id for {entry.path!r}: {entry.oid!r}")
                    stdin.write(oid + b"\n")
                    pending.append(entry)
                    if len(pending) >= _BATCH_WINDOW:
                        stdin.flush()
                        head = pending.popleft()
                        yield head, self._reply(stdout, head)
                stdin.flush()
                while pending:
                    head = pending.popleft()
                    yield head, self._reply(stdout, head)
            except BrokenPipeError as exc:
                raise SourceError(f"git cat-file exited unexpectedly in {self.root}") from exc
        except GeneratorExit:
            # The consumer stopped early: the replies still in flight must be consumed to keep the
            # shared process in step (at most _BATCH_WINDOW of them).
            try:
                stdin.flush()
                while pending:
                    self._reply(stdout, pending.popleft())
            except (OSError, SourceError):
                healthy = False
            raise
        except BaseException:
            healthy = False
            raise
        finally:
            if private:
                self._stop(proc, kill=not healthy)
            else:
                self._busy = False
                if not healthy:
                    self._stop(proc, kill=True)
                    self._proc = None

    def _reply(self, stdout: IO[bytes], entry: FileEntry) -> bytes:
        header = stdout.readline()
        parts = header.split()
        if len(parts) != 3 or parts[1] != b"blob":
            what = header.decode("utf-8", "replace").strip() or "no reply"
            raise SourceError(
                f"cannot read {entry.path!r} ({entry.oid}) from {self.root}: {what}",
                details={"path": entry.path, "oid": entry.oid},
            )
        size = int(parts[2])
        data = stdout.read(size)
        if len(data) != size or stdout.read(1) != b"\n":
            raise SourceError(f"short read of {entry.path!r} ({entry.oid}) from git cat-file")
        return data

    def close(self) -> None:
        if self._proc is not None:
            self._stop(self._proc, kill=False)
            self._proc = None


# -------------------------------------------------------------------------------------------- disk


class _Escape(Exception):
    """The path leaves the root (a symlinked parent, ``..``): refuse to read it."""


class _Gone(Exception):
    """The file vanished or stopped being a regular file since it was listed."""


class _DiskSource(_Closing):
    """Shared walking and reading for sources backed by the file system.

    Reads open every directory component with O_NOFOLLOW relative to the previous one, so a
    path can only resolve inside the root whatever was swapped for a symlink after listing.
    Within one ``read_many`` the open directory chain of the last file is kept: sorted reads reuse it.
    """

    kind: SourceKind
    # A directory holding ``.git`` is another repository: a submodule in a work tree.
    _nested_repos_are_submodules = False

    def __init__(self, root: Path, commit: str | None) -> None:
        self.root: Path = root
        self.commit: str | None = commit
        self._root_fd = -1
        self._chain: list[tuple[str, int]] = []

    # -- listing

    def list_files(self, skips: SkipCounts, prune: PruneFn | None = None) -> Iterator[FileEntry]:
        """Walk with ``os.scandir`` without following links; the root's ``.git`` is not content."""
        stack = [""]
        top = str(self.root)
        while stack:
            rel = stack.pop()
            here = os.path.join(top, rel) if rel else top
            try:
                it = os.scandir(here)
            except OSError as exc:
                log.warning("cannot list %s: %s", here, exc)
                continue
            with it:
                for de in it:
                    name = de.name
                    if not rel and name == ".git":
                        continue
                    child = f"{rel}/{name}" if rel else name
                    try:
                        if de.is_symlink():
                            skips.add("symlink")
                        elif de.is_dir(follow_symlinks=False):
                            if self._nested_repos_are_submodules and os.path.lexists(
                                os.path.join(de.path, ".git")
                            ):
                                skips.add("submodule")
                                continue
                            reason = prune(child) if prune is not None else None
                            if reason is None:
                                stack.append(child)
                            else:
                                _count_tree(de.path, reason, skips)
                        elif de.is_file(follow_symlinks=False):
                            st = de.stat(follow_symlinks=False)
                            yield FileEntry(child, st.st_size, _disk_oid(st))
                    except OSError as exc:  # vanished while listing
                        log.debug("skipping %s: %s", child, exc)

    # -- reading

    def _dir_fd(self, parts: Sequence[str]) -> int:
        if self._root_fd < 0:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        keep = 0
        while keep < len(self._chain) and keep < len(parts) and self._chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in self._chain[keep:]:
            os.close(fd)
        del self._chain[keep:]
        for name in parts[keep:]:
            parent = self._chain[-1][1] if self._chain else self._root_fd
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, parent):
                    raise _Escape from exc
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise _Gone from exc
                raise
            self._chain.append((name, fd))
        return self._chain[-1][1] if self._chain else self._root_fd

    def _read(self, path: str) -> tuple[os.stat_result, bytes]:
        parts = path.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise _Escape
        dfd = self._dir_fd(parts[:-1])
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Escape from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise _Gone from exc
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Gone
            with io.FileIO(fd, "r", closefd=False) as f:
                data = f.readall()
        finally:
            os.close(fd)
        return st, data

    def read_many(
        self, entries: Iterable[FileEntry], on_skip: SkipFn | None = None
    ) -> Generator[tuple[FileEntry, bytes], None, None]:
        """Read files from disk; an escape from the root is reported as ``"symlink"``.

        Files that vanished or became unreadable since listing are left out silently (logged).
        """
        self._drop_chain()  # directories opened earlier may have been replaced since
        try:
            yield from self._read_all(entries, on_skip)
        finally:
            self._drop_chain()

    def _read_all(
        self, entries: Iterable[FileEntry], on_skip: SkipFn | None
    ) -> Iterator[tuple[FileEntry, bytes]]:
        for entry in entries:
            try:
                st, data = self._read(entry.path)
            except _Escape:
                log.warning("not reading %r: it resolves outside %s", entry.path, self.root)
                if on_skip is not None:
                    on_skip(entry, "symlink")
                continue
            except _Gone:
                log.debug("not reading %r: gone since listing", entry.path)
                continue
            except OSError as exc:
                log.warning("cannot read %r in %s: %s", entry.path, self.root, exc)
                continue
            oid = _disk_oid(st)
            yield (entry if oid == entry.oid else replace(entry, size=st.st_size, oid=oid)), data

    def read_control(self, path: str) -> bytes | None:
        if path.rpartition("/")[2] not in CONTROL_FILES:
            return None
        try:
            st, data = self._read(path)
        except (_Escape, _Gone, OSError):
            return None
        finally:
            self._drop_chain()
        return data if st.st_size <= _CONTROL_MAX_BYTES else None

    def _drop_chain(self) -> None:
        for _, fd in self._chain:
            os.close(fd)
        self._chain.clear()

    def close(self) -> None:
        self._drop_chain()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1


def _disk_oid(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _count_tree(top: str, reason: str, skips: SkipCounts) -> None:
    """Count a pruned subtree without stat calls: files under ``reason``, links as ``"symlink"``."""
    files = links = 0
    stack = [top]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for de in it:
                try:
                    if de.is_symlink():
                        links += 1
                    elif de.is_dir(follow_symlinks=False):
                        stack.append(de.path)
                    elif de.is_file(follow_symlinks=False):
                        files += 1
                except OSError:
                    continue
    if files:
        skips.add(reason, files)
    if links:
        skips.add("symlink", links)


class WorktreeSource(_DiskSource):
    """A git working directory as it is now: uncommitted edits and untracked files included.

    ``commit`` is HEAD's commit (None on an unborn branch), for reference only: content
    comes from disk, so ``oid`` is ``"<size>:<mtime_ns>"`` like a plain directory.
    """

    kind: Literal["worktree"] = "worktree"
    _nested_repos_are_submodules = True

    def __init__(self, root: Path) -> None:
        path = Path(os.path.realpath(root))
        if not path.is_dir():
            raise SourceError(f"not a directory: {root}", details={"path": str(root)})
        info = _probe(path)
        if info is None or info.toplevel is None:
            raise SourceError(f"not a git work tree: {root}", details={"path": str(root)})
        super().__init__(info.toplevel, _head_commit(info.toplevel))


class DirSource(_DiskSource):
    """A plain directory; nothing is known about versions, so ``commit`` is None."""

    kind: Literal["dir"] = "dir"

    def __init__(self, root: Path) -> None:
        path = Path(os.path.realpath(root))
        if not path.is_dir():
            raise SourceError(f"not a directory: {root}", details={"path": str(root)})
        super().__init__(path, None)


def open_source(
    path: Path, rev: str | None = None, worktree: bool = False
) -> GitSource | WorktreeSource | DirSource:
    """Pick the source for ``path``.

    The top of a work tree, a bare repository or a ``.git`` directory is a git repository:
    its commit ``rev`` (default HEAD), or its working directory when ``worktree``. Any other
    directory, including a subdirectory of a work tree, is read as a plain directory.
    """
    if not os.path.exists(path):
        raise SourceError(f"no such directory: {path}", details={"path": str(path)})
    if not os.path.isdir(path):
        raise SourceError(f"not a directory: {path}", details={"path": str(path)})
    real = Path(os.path.realpath(path))
    try:
        info = _probe(real)
    except SourceError as exc:
        # No git at all: plain directories still work, anything that looks like a repo does not.
        if "not installed" in exc.message and not (real / ".git").exists():
            info = None
        else:
            raise
    if info is not None and real in (info.top, info.git_dir):
        if worktree:
            if info.toplevel is None:
                raise SourceError(f"{path} is a bare repository: it has no working directory to index")
            if rev is not None:
                raise SourceError("a revision cannot be combined with indexing the working directory")
            return WorktreeSource(real)
        return GitSource(real, rev or "HEAD")
    where = f" (inside the git work tree {info.top})" if info is not None else ""
    if rev is not None:
        raise SourceError(
            f"{path} is not the top of a git repository{where}: a revision cannot be read from it",
            details={"path": str(path), "rev": rev},
        )
    if worktree:
        raise SourceError(f"{path} is not the top of a git work tree{where}", details={"path": str(path)})
    return DirSource(real)
