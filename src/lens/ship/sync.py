"""A searcher replica's follower: install every shard the indexers publish, and say how far behind it is.

One background thread: connect to the store, watch it (the watch first replays every current ref,
then streams changes), and install each ref that differs from what this data directory installed.
The store's current ref is authoritative; normally that means a newer generation. Installs are
atomic (see :func:`lens.ship.install.install_ref`), so a failed download keeps the old generation
serving; it is retried with capped exponential backoff and the replica reports ``degraded``.
Readiness stays ``down`` until the initial catch-up has tried every published repository once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.health import ComponentState
from infra.shardstore import ShardEvent, ShardRef, ShardStore, ShardVerifyError, ShardWatch
from lens.errors import LensError
from lens.index.catalog import Catalog
from lens.serve import metrics
from lens.ship.install import InstalledRefs, clean_work_dir, install_ref, local_generation

log = logging.getLogger("lens.ship.sync")
_STATUS_EVERY_S = 2.0
_STATUS_STALE_S = 15.0


@dataclass
class RepoSync:
    """What one repository looks like from this replica."""

    repo: str
    installed: ShardRef | None = None
    local_generation: int | None = None
    wanted: ShardRef | None = None
    attempts: int = 0
    retry_at: float = 0.0  # monotonic
    last_error: str | None = None
    last_install_seconds: float | None = None

    def behind(self) -> bool:
        if self.wanted is None:
            return False
        have = self.installed
        return have is None or (have.generation, have.sha256) != (self.wanted.generation, self.wanted.sha256)

    def lag(self, now: float) -> float:
        return max(0.0, now - self.wanted.published_at) if self.wanted is not None and self.behind() else 0.0

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "local_generation": self.local_generation,
            "wanted_generation": self.wanted.generation if self.wanted else None,
            "behind": self.behind(),
            "lag_seconds": round(self.lag(now), 3),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_install_seconds": self.last_install_seconds,
        }


class ShardSync:
    """Keeps ``catalog`` in step with a shard store; ``start`` it once, ``stop`` on shutdown."""

    def __init__(
        self,
        catalog: Catalog,
        open_store: Callable[[], ShardStore],
        *,
        work_dir: Path,
        tick: float = 0.5,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self._open_store = open_store
        self.work_dir = work_dir
        self._tick = tick
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._installed = InstalledRefs(work_dir / "installed.json")
        self._repos: dict[str, RepoSync] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._connected = False
        self._standby = False
        self._store_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="lens-shard-sync", daemon=True)
        for repo in self._installed.repos():
            ref = self._installed.get(repo)
            generation = local_generation(catalog, repo)
            if generation is None:  # removed locally since: forget it, it will be fetched again
                self._installed.drop(repo)
            else:
                self._repos[repo] = RepoSync(repo, installed=ref, local_generation=generation)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # -- reporting ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """This process's view, or, in a standby worker process, the syncing process's shared one."""
        if self._standby:
            return self._shared_status()
        now = time.time()
        with self._lock:
            repos = {name: st.to_dict(now) for name, st in sorted(self._repos.items())}
        return {
            "caught_up": self._caught_up.is_set(),
            "connected": self._connected,
            "store_error": self._store_error,
            "behind": sorted(name for name, r in repos.items() if r["behind"]),
            "max_lag_seconds": max((r["lag_seconds"] for r in repos.values()), default=0.0),
            "repos": repos,
            "updated_at": now,
        }

    def probe(self) -> ComponentState:
        """``down`` before the initial catch-up; ``degraded`` while behind, failing or disconnected."""
        status = self.status()
        keys = ("caught_up", "connected", "store_error", "behind", "max_lag_seconds", "standby")
        detail = {k: status[k] for k in keys if k in status}
        errors = {n: r["last_error"] for n, r in status["repos"].items() if r["last_error"]}
        if errors:
            detail["errors"] = errors
        if not status["caught_up"]:
            return ComponentState("down", detail)
        if errors or status["behind"] or not status["connected"]:
            return ComponentState("degraded", detail)
        return ComponentState("ok", detail)

    def _shared_status(self) -> dict[str, Any]:
        try:
            shared: dict[str, Any] = json.loads((self.work_dir / "status.json").read_text())
            fresh = time.time() - float(shared["updated_at"]) < _STATUS_STALE_S
        except (OSError, ValueError, KeyError, TypeError):
            shared, fresh = {}, False
        if not fresh:
            shared = {
                "caught_up": False,
                "connected": False,
                "store_error": f"no process is syncing {self.work_dir} (no fresh status.json)",
                "behind": [],
                "max_lag_seconds": 0.0,
                "repos": {},
            }
        return shared | {"standby": True}

    def _share_status(self) -> None:
        """Heartbeat for standby worker processes of the same server (``lens serve --workers N``)."""
        while True:
            tmp = self.work_dir / f".status.{os.getpid()}"
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps(self.status()))
                os.replace(tmp, self.work_dir / "status.json")
            if self._stop.wait(_STATUS_EVERY_S):
                return

    # -- the follower thread -----------------------------------------------------------------
    def _run(self) -> None:
        """Sync if this process holds the data directory's sync lock, else stand by for it."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.work_dir / "sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not self._stop.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another worker process syncs; importing twice would waste work
                    self._standby = True
                    self._stop.wait(_STATUS_EVERY_S)
                    continue
                self._standby = False
                threading.Thread(
                    target=self._share_status, name="lens-shard-sync-status", daemon=True
                ).start()
                self._lead()
        finally:
            os.close(fd)

    def _lead(self) -> None:
        clean_work_dir(self.work_dir)
        backoff = self._retry_base
        while not self._stop.is_set():
            try:
                store = self._open_store()
            except Exception as exc:  # unreachable store: serve what we have, try again later
                self._disconnected(f"{type(exc).__name__}: {exc}")
                self._stop.wait(backoff)
                backoff = min(self._retry_cap, backoff * 2)
                continue
            backoff = self._retry_base
            try:
                with store.watch() as watch:
                    self._connected, self._store_error = True, None
                    self._follow(store, watch)
            except Exception as exc:
                self._disconnected(f"{type(exc).__name__}: {exc}")
                self._stop.wait(self._retry_base)
            finally:
                with contextlib.suppress(Exception):
                    store.close()

    def _disconnected(self, error: str) -> None:
        if error != self._store_error:
            log.warning("shard store unavailable: %s", error)
        self._connected, self._store_error = False, error

    def _follow(self, store: ShardStore, watch: ShardWatch) -> None:
        synced = False
        while not self._stop.is_set():
            event = watch.get(self._tick)
            while event is not None:
                synced = self._apply(event) or synced
                event = watch.get(0)
            if synced:
                self._install_due(store, watch)
                if not self._caught_up.is_set() and self._initial_pass_done():
                    self._caught_up.set()
                    status = self.status()
                    log.info(
                        "shard sync caught up: %d repos, behind %s", len(status["repos"]), status["behind"]
                    )
            self._publish_lag()

    def _apply(self, event: ShardEvent) -> bool:
        """Record one event; True for the end of the initial replay."""
        if event.kind == "synced":
            return True
        with self._lock:
            st = self._repos.setdefault(event.repo, RepoSync(event.repo))
            if event.kind == "put" and event.ref is not None:
                if st.wanted != event.ref:  # a new publication: earlier failures no longer apply
                    st.wanted, st.attempts, st.retry_at, st.last_error = event.ref, 0, 0.0, None
            elif event.kind == "invalid":
                st.last_error = f"unreadable ref in the store: {event.error}"
        if event.kind == "delete":
            self._remove(event.repo)
        return False

    def _initial_pass_done(self) -> bool:
        with self._lock:
            return all(not st.behind() or st.attempts > 0 for st in self._repos.values())

    def _install_due(self, store: ShardStore, watch: ShardWatch) -> None:
        now = time.monotonic()
        with self._lock:
            due = [st for st in self._repos.values() if st.behind() and st.retry_at <= now]
        for st in sorted(due, key=lambda s: s.repo):
            if self._stop.is_set():
                return
            self._install(store, st)
            event = watch.get(0)  # a newer ref may have arrived meanwhile: take it before going on
            while event is not None:
                self._apply(event)
                event = watch.get(0)

    def _install(self, store: ShardStore, st: RepoSync) -> None:
        ref = st.wanted
        assert ref is not None
        started = time.perf_counter()
        try:
            install_ref(self.catalog, store, ref, self.work_dir)
            generation = local_generation(self.catalog, ref.repo)
        except ShardVerifyError as exc:
            self._failed(st, ref, "verify_failed", exc)
            return
        except Exception as exc:  # download, store or import failure: the live generation stays
            self._failed(st, ref, "failed", exc)
            return
        seconds = time.perf_counter() - started
        self._installed.set(ref)
        with self._lock:
            st.installed, st.local_generation = ref, generation
            st.attempts, st.retry_at, st.last_error = 0, 0.0, None
            st.last_install_seconds = round(seconds, 3)
        metrics.SHARD_SYNC.labels(outcome="installed").inc()
        metrics.SHARD_SYNC_SECONDS.observe(seconds)
        metrics.SHARD_GENERATION.labels(repo=ref.repo).set(generation or 0)
        metrics.SHARD_SYNC_LAG.labels(repo=ref.repo).set(0)
        log.info(
            "installed %s generation %s (%d bytes) in %.2fs, %.2fs after publication",
            ref.repo,
            ref.generation,
            ref.size,
            seconds,
            time.time() - ref.published_at,
        )

    def _failed(self, st: RepoSync, ref: ShardRef, outcome: str, exc: BaseException) -> None:
        metrics.SHARD_SYNC.labels(outcome=outcome).inc()
        message = exc.message if isinstance(exc, LensError) else str(exc)
        with self._lock:
            st.attempts += 1
            delay = min(self._retry_cap, self._retry_base * 2 ** (st.attempts - 1))
            st.retry_at = time.monotonic() + random.uniform(delay / 2, delay)
            st.last_error = f"{outcome}: {type(exc).__name__}: {message}"
        log.warning(
            "could not install %s generation %d (attempt %d, keeping the live generation): %s",
            ref.repo,
            ref.generation,
            st.attempts,
            st.last_error,
        )

    def _remove(self, repo: str) -> None:
        """The repository was deleted from the store: stop serving it here too."""
        try:
            if self.catalog.current_shard(repo) is not None:
                self.catalog.remove(repo)
        except (LensError, OSError) as exc:
            with self._lock:
                st = self._repos.get(repo)
                if st is not None:
                    st.wanted, st.last_error = None, f"could not remove: {exc}"
            return
        self._installed.drop(repo)
        with self._lock:
            self._repos.pop(repo, None)
        for gauge in (metrics.SHARD_SYNC_LAG, metrics.SHARD_GENERATION):
            with contextlib.suppress(KeyError):
                gauge.remove(repo)
        log.info("removed %s: deleted from the shard store", repo)

    def _publish_lag(self) -> None:
        now = time.time()
        with self._lock:
            lags = [(st.repo, st.lag(now)) for st in self._repos.values() if st.wanted is not None]
        for repo, lag in lags:
            metrics.SHARD_SYNC_LAG.labels(repo=repo).set(lag)
