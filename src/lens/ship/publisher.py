"""Publish a repository's live shard to a shard store, and prime a local catalog from one.

A live shard may have committed WAL frames not yet in its main file, so the published file is
a snapshot taken with SQLite's backup API (one consistent read), in rollback-journal mode so it
is complete by itself. Its generation is the one recorded inside the shard.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from infra.shardstore import NatsShardStore, ShardRef, ShardStore
from lens.index import shard as shardlib
from lens.index.catalog import Catalog
from lens.ship.install import install_ref, local_generation

log = logging.getLogger("lens.ship.publisher")


def snapshot_shard(shard: Path, dest: Path) -> int:
    """Copy ``shard`` to ``dest`` as one consistent, self-contained file; returns its generation."""
    source = shardlib.connect(shard, readonly=True)
    target = sqlite3.connect(str(dest))
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
        row = target.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    finally:
        target.close()
        source.close()
    return int(row[0]) if row else 0


class ShardPublisher:
    """Ships ``catalog``'s live shards through ``store``; temporary copies go to ``work_dir``.

    ``observe`` hears each publication's outcome ("published" or "failed"), e.g. for metrics.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: ShardStore,
        *,
        work_dir: Path,
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.work_dir = work_dir
        self._observe = observe or (lambda outcome: None)

    def publish(self, repo: str) -> ShardRef:
        """Snapshot ``repo``'s live shard and make it the store's current ref for ``repo``."""
        shard = self.catalog.require_shard(repo)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        copy = self.work_dir / f"{repo}.{uuid.uuid4().hex[:8]}.outgoing"
        try:
            generation = snapshot_shard(shard, copy)
            ref = self.store.publish(repo, copy, generation)
        except Exception:
            self._observe("failed")
            raise
        finally:
            copy.unlink(missing_ok=True)
        self._observe("published")
        log.info(
            "published %s generation %d (%d bytes) as %s", repo, ref.generation, ref.size, ref.object_name
        )
        return ref

    def unpublish(self, repo: str) -> None:
        self.store.delete(repo)

    def prime(self, repos: Iterable[str | None]) -> list[ShardRef]:
        """Install the store's shard of each repo this catalog lacks or holds an older generation of.

        A builder that starts from the newest published shard indexes incrementally on top of it,
        and its next generation is newer than the published one (so publishing it is not stale).
        """
        installed = []
        for repo in dict.fromkeys(r for r in repos if r):
            ref = self.store.current(repo)
            if ref is None:
                continue
            have = local_generation(self.catalog, repo)
            if have is None or have < ref.generation:
                install_ref(self.catalog, self.store, ref, self.work_dir)
                installed.append(ref)
        return installed


@contextlib.contextmanager
def nats_publisher(
    lens_data_dir: Path, nats_url: str | None, namespace: str
) -> Iterator[ShardPublisher | None]:
    """A publisher for the catalog in ``lens_data_dir`` on NATS, or None when NATS is not configured."""
    if not nats_url:
        yield None
        return
    store = NatsShardStore(nats_url, namespace)
    try:
        yield ShardPublisher(Catalog(lens_data_dir), store, work_dir=lens_data_dir / "ship")
    finally:
        store.close()
