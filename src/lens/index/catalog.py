"""Where shards live on disk and how a new generation becomes current.

Layout under the data directory::

    repos/<name>/CURRENT      name of the live generation directory (atomically replaced)
    repos/<name>/g000007/     a generation: shard.sqlite (+ WAL files)
    repos/<name>/tmp-*/       a generation being built; never read, removed on the next run
    repos/<name>/.lock        held by the one indexer allowed to write this repository

Full builds write a fresh generation directory and flip CURRENT; incremental
updates commit in place inside the live generation (SQLite WAL keeps readers on a
consistent snapshot). Renaming a directory that a reader has open is safe; renaming
a WAL database file over another is not, which is why generations are directories.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from lens.errors import BadRequest, Conflict, NotFound
from lens.index.shard import SCHEMA_VERSION

SHARD_FILE = "shard.sqlite"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_GEN_RE = re.compile(r"^g(\d{6,})$")
# Read-path caches trust a file's stat only once it is older than this: two changes within one
# mtime tick would otherwise look like one (the "racy clean" problem git's index has too).
_SETTLED_NS = 1_000_000_000

_StatKey = tuple[int, int, int, int]


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _settled(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or name in {".", ".."}:
        raise BadRequest(
            f"invalid repository name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)",
            details={"name": name},
        )
    return name


class Catalog:
    """The set of indexed repositories under one data directory.

    Searches ask for the repository list and each live generation on every request, so the
    read path caches both, keyed by the stat of ``repos/`` and of each ``CURRENT`` (a publish
    replaces ``CURRENT`` by a rename, a new inode): one ``stat`` per lookup instead of a
    directory listing and file reads, and any change, by this process or another, is seen.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.repos_dir = data_dir / "repos"
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        self._listing: tuple[_StatKey, list[str]] | None = None
        self._pointers: dict[str, tuple[_StatKey, Path]] = {}

    def repo_dir(self, name: str) -> Path:
        return self.repos_dir / validate_name(name)

    def _entries(self) -> list[str]:
        st = os.stat(self.repos_dir)
        key = _stat_key(st)
        cached = self._listing
        if cached is not None and cached[0] == key:
            return cached[1]
        entries = sorted(p.name for p in self.repos_dir.iterdir())
        if _settled(st):
            self._listing = (key, entries)
        return entries

    def names(self) -> list[str]:
        return [name for name in self._entries() if _is_file(self.repos_dir / name / "CURRENT")]

    def current_generation_dir(self, name: str) -> Path | None:
        repo = self.repo_dir(name)
        try:
            st = os.stat(repo / "CURRENT")
        except (FileNotFoundError, NotADirectoryError):
            return None
        key = _stat_key(st)
        cached = self._pointers.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            gen = (repo / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        path = repo / gen
        if not (path / SHARD_FILE).is_file():
            return None
        if _settled(st):
            # CURRENT is never written in place, so this inode always names this generation.
            self._pointers[name] = (key, path)
        return path

    def current_shard(self, name: str) -> Path | None:
        gen = self.current_generation_dir(name)
        return gen / SHARD_FILE if gen else None

    def require_shard(self, name: str) -> Path:
        shard = self.current_shard(name)
        if shard is None:
            raise NotFound(f"repository {name!r} is not indexed", details={"repo": name})
        return shard

    def new_build_dir(self, name: str) -> Path:
        """A private directory for a full build; invisible to readers until published."""
        repo = self.repo_dir(name)
        repo.mkdir(parents=True, exist_ok=True)
        for stale in repo.glob("tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        build = repo / f"tmp-{uuid.uuid4().hex[:12]}"
        build.mkdir()
        return build

    def publish(self, name: str, build_dir: Path) -> Path:
        """Make ``build_dir`` the live generation, atomically; keep one previous generation."""
        repo = self.repo_dir(name)
        numbers = [int(m.group(1)) for p in repo.iterdir() if (m := _GEN_RE.match(p.name))]
        gen_name = f"g{(max(numbers) + 1 if numbers else 1):06d}"
        final = repo / gen_name
        os.rename(build_dir, final)
        _fsync_dir(repo)
        tmp_pointer = repo / f"CURRENT.{uuid.uuid4().hex[:8]}"
        tmp_pointer.write_text(gen_name + "\n")
        with open(tmp_pointer, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_pointer, repo / "CURRENT")
        _fsync_dir(repo)
        keep = {gen_name, *(f"g{n:06d}" for n in sorted(numbers)[-1:])}
        for p in repo.iterdir():
            if _GEN_RE.match(p.name) and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        return final

    def import_shard(self, name: str, shard: Path) -> Path:
        """Publish a copy of ``shard`` (e.g. from a bundle) as ``name``'s next generation.

        SQLite's backup API copies a consistent snapshot (committed WAL frames included)
        without trusting the file's layout; the copy is checked to be a shard of this
        schema before it is published, so a bad file never becomes live.
        """
        with self.lock(name):
            build = self.new_build_dir(name)
            try:
                source = sqlite3.connect(shard.resolve().as_uri() + "?mode=ro", uri=True)
                target = sqlite3.connect(str(build / SHARD_FILE))
                try:
                    source.backup(target)
                    row = target.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                    if row is None or json.loads(row[0]) != SCHEMA_VERSION:
                        raise BadRequest(
                            f"{shard.name} is not a Lens shard of schema version {SCHEMA_VERSION}",
                            details={"repo": name, "shard": str(shard)},
                        )
                    target.execute("PRAGMA journal_mode=WAL")
                finally:
                    target.close()
                    source.close()
            except sqlite3.DatabaseError as exc:
                shutil.rmtree(build, ignore_errors=True)
                raise BadRequest(
                    f"cannot import {shard.name}: {exc}", details={"repo": name, "shard": str(shard)}
                ) from exc
            except BaseException:
                shutil.rmtree(build, ignore_errors=True)
                raise
            return self.publish(name, build)

    def remove(self, name: str) -> None:
        repo = self.repo_dir(name)
        if not (repo / "CURRENT").exists():
            raise NotFound(f"repository {name!r} is not indexed", details={"repo": name})
        with self.lock(name):
            (repo / "CURRENT").unlink()
        shutil.rmtree(repo, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive writer lock for one repository; a second writer gets Conflict at once."""
        repo = self.repo_dir(name)
        repo.mkdir(parents=True, exist_ok=True)
        fd = os.open(repo / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(
                    f"repository {name!r} is being indexed by another process", details={"repo": name}
                ) from None
            yield
        finally:
            os.close(fd)


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
