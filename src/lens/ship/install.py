"""Download one published shard, verify it, and make it the repository's live generation.

Also remembers which ref each repository was installed from (``installed.json``), because a
local generation number alone cannot tell two publications of the same generation apart.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from infra.shardstore import ShardRef, ShardStore
from lens.index import shard as shardlib
from lens.index.catalog import Catalog, validate_name


def install_ref(catalog: Catalog, store: ShardStore, ref: ShardRef, work_dir: Path) -> None:
    """Fetch ``ref`` into ``work_dir`` (same filesystem as the catalog), then ``import_shard`` it.

    The import is an atomic CURRENT flip: searches already running finish on the old generation.
    Any failure (download, verification, a file that is not a shard) leaves the old one live.
    """
    validate_name(ref.repo)
    work_dir.mkdir(parents=True, exist_ok=True)
    download = work_dir / f"{ref.repo}.{uuid.uuid4().hex[:8]}.download"
    try:
        store.fetch(ref, download)
        catalog.import_shard(ref.repo, download)
    finally:
        download.unlink(missing_ok=True)


def clean_work_dir(work_dir: Path) -> None:
    """Remove downloads a crash left behind (never live: only an import makes a shard live)."""
    if work_dir.is_dir():
        for leftover in work_dir.iterdir():
            if leftover.is_file() and (".download" in leftover.name or ".part-" in leftover.name):
                leftover.unlink(missing_ok=True)


def local_generation(catalog: Catalog, repo: str) -> int | None:
    """The generation recorded inside the live shard, or None when the repo is not here."""
    shard = catalog.current_shard(repo)
    if shard is None:
        return None
    conn = shardlib.connect(shard, readonly=True)
    try:
        return int(shardlib.get_meta(conn).get("generation", 0))
    finally:
        conn.close()


class InstalledRefs:
    """``{repo: ref}`` of what this data directory installed from the store, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._refs: dict[str, ShardRef] = {}
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            raw = {}
        for repo, value in raw.items() if isinstance(raw, dict) else []:
            try:
                self._refs[repo] = ShardRef.from_dict(value)
            except ValueError:
                continue

    def get(self, repo: str) -> ShardRef | None:
        return self._refs.get(repo)

    def repos(self) -> list[str]:
        return sorted(self._refs)

    def set(self, ref: ShardRef) -> None:
        self._refs[ref.repo] = ref
        self._save()

    def drop(self, repo: str) -> None:
        if self._refs.pop(repo, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({r: ref.to_dict() for r, ref in sorted(self._refs.items())}, indent=1))
        os.replace(tmp, self.path)
