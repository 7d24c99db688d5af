"""What a Lens server does about shipping, by ``LENS_ROLE``.

- ``all`` (default): nothing; the server indexes and searches its own data directory.
- ``indexer``: after each successful index job, publish the new live shard (the job fails with
  ``ship_failed`` if that is impossible, so nobody believes the searchers have it).
- ``searcher``: follow the store with :class:`~lens.ship.sync.ShardSync`; refuse index and delete
  requests, since a replica only serves what the indexers shipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from infra.health import ComponentState, Readiness
from infra.shardstore import NatsShardStore, ShardRef, ShardStore, ShardStoreError, ShardStoreUnavailable
from lens.config import LensSettings
from lens.errors import LensError
from lens.index.catalog import Catalog
from lens.serve import metrics
from lens.ship.publisher import ShardPublisher
from lens.ship.sync import ShardSync

if TYPE_CHECKING:
    from lens.serve.jobs import Job

T = TypeVar("T")


class ReadOnlyReplica(LensError):
    code = "read_only_replica"
    status = 409


class ShipFailed(LensError):
    code = "ship_failed"
    status = 503


class ServerShipping:
    """Shipping duties of one Lens server (never built for role ``all``)."""

    def __init__(
        self,
        catalog: Catalog,
        settings: LensSettings,
        *,
        open_store: Callable[[], ShardStore] | None = None,
    ) -> None:
        self.role = settings.role
        if open_store is None:
            open_store = _nats_store(settings)
        self.catalog = catalog
        self.work_dir = settings.data_dir / "ship"
        self._open_store = open_store
        self.sync = (
            ShardSync(catalog, open_store, work_dir=self.work_dir) if self.role == "searcher" else None
        )
        self._publisher: ShardPublisher | None = None
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._last_ref: ShardRef | None = None

    def start(self, readiness: Readiness) -> None:
        if self.sync is not None:
            self.sync.start()
            readiness.add("shard_sync", self.sync.probe)
        else:
            readiness.add("shard_publish", self._publish_probe, required=False)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        with self._lock:
            if self._publisher is not None:
                self._publisher.store.close()
                self._publisher = None

    # -- searcher --------------------------------------------------------------------------
    def check_writable(self, what: str) -> None:
        if self.role == "searcher":
            raise ReadOnlyReplica(
                f"this Lens is a searcher replica and serves only shards shipped by the indexers; "
                f"send {what} to a Lens with LENS_ROLE=indexer",
                details={"role": self.role},
            )

    # -- indexer ---------------------------------------------------------------------------
    def after_index(self, job: Job) -> None:
        """JobRunner hook: ship the job's new generation; raising fails the job."""
        if self.role != "indexer":
            return  # a searcher runs no index jobs (they are refused); role "all" has no shipping
        ref = self._with_publisher(lambda p: p.publish(job.repo), f"publish {job.repo!r}")
        self._last_ref = ref
        if job.report is not None:
            job.report["shipped"] = ref.to_dict()

    def after_delete(self, repo: str) -> None:
        self._with_publisher(lambda p: p.unpublish(repo), f"unpublish {repo!r}")

    def _with_publisher(self, action: Callable[[ShardPublisher], T], what: str) -> T:
        """Run ``action`` on a connected publisher; reconnect once if the connection had dropped."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._publisher is None:
                        store = self._open_store()
                        self._publisher = ShardPublisher(
                            self.catalog, store, work_dir=self.work_dir, observe=_count_publication
                        )
                    result = action(self._publisher)
                    self._last_error = None
                    return result
                except ShardStoreUnavailable as exc:
                    self._drop_publisher()
                    if attempt == 2:
                        raise self._ship_failed(what, exc) from exc
                except ShardStoreError as exc:
                    raise self._ship_failed(what, exc) from exc
        raise AssertionError("unreachable")

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.store.close()
            finally:
                self._publisher = None

    def _ship_failed(self, what: str, exc: Exception) -> ShipFailed:
        self._last_error = f"{type(exc).__name__}: {exc}"
        return ShipFailed(
            f"could not {what} to the shard store: {exc}; the searchers do not have it",
            details={"reason": type(exc).__name__},
        )

    def _publish_probe(self) -> ComponentState:
        detail: dict[str, object] = {"last_error": self._last_error}
        if self._last_ref is not None:
            detail["last_published"] = self._last_ref.to_dict()
        return ComponentState("degraded" if self._last_error else "ok", detail)


def _nats_store(settings: LensSettings) -> Callable[[], ShardStore]:
    url, namespace = settings.nats_url, settings.nats_namespace
    if not url:
        raise LensError(
            f"LENS_ROLE={settings.role} needs LENS_NATS_URL: shards ship through NATS JetStream",
            details={"role": settings.role},
        )

    def open_store() -> ShardStore:
        return NatsShardStore(url, namespace)

    return open_store


def _count_publication(outcome: str) -> None:
    metrics.SHARD_PUBLISH.labels(outcome=outcome).inc()


def shipping_for(catalog: Catalog, settings: LensSettings) -> ServerShipping | None:
    """The server's shipping duties, or None for role ``all``; raises when the settings cannot work."""
    return None if settings.role == "all" else ServerShipping(catalog, settings)
