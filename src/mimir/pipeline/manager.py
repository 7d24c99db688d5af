"""Starting, watching and cancelling index runs.

``ensure`` is idempotent: the same repository at the same commit is one index.

Embedded mode (default): each run executes in a spawned worker process that leads its own
process group; ``cancel`` kills the group (the run and anything it started, such as Lens's
parse workers) and the run's private directory is removed, so within 2 s nothing of it is
left running or half-written.

Queue mode (``MIMIR_NATS_URL``): the run is recorded as queued and published as a durable job
(:mod:`mimir.pipeline.dispatch`); ``mimir worker`` processes execute it. ``cancel`` marks the run
cancelled in the store and the worker holding it kills its child within a poll interval.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from infra.health import ComponentState
from infra.observability import tracing
from infra.queue import QueueError, WorkQueue
from lens.discover.source import open_source
from lens.engine import check_allowed
from mimir.config import MimirSettings
from mimir.errors import BadRequest
from mimir.pipeline.dispatch import QueueDown, job_payload, open_queue, publish_depth_every
from mimir.pipeline.run import index_dir
from mimir.pipeline.worker import is_run_process, kill_group, spawn
from mimir.serve import metrics
from mimir.store import IndexRecord, RunRecord, store_for

log = logging.getLogger("mimir.manager")

_ACTIVE = ("queued", "running")
_RECONNECT_EVERY_S = 5.0


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "repo"
    return slug[:40]


def index_id_for(root: Path, commit: str | None) -> str:
    """Readable and stable: <dir name>-<hash of root path>-<commit prefix>."""
    root_hash = hashlib.sha256(str(root).encode()).hexdigest()[:6]
    return f"{_slug(root.name)}-{root_hash}-{(commit or 'worktree')[:12]}"


class IndexManager:
    def __init__(self, settings: MimirSettings, queue: WorkQueue | None = None) -> None:
        self.settings = settings
        self.store = store_for(settings)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        # One reaper per spawned run; close() waits for them, so none writes to a closed store.
        self._reapers: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.queue_mode = bool(settings.nats_url) or queue is not None
        self._queue = queue
        self._queue_error = ""
        self._next_connect = 0.0
        self._queue_lock = threading.Lock()
        self._stop_depth = threading.Event()
        if self.queue_mode:
            self._connected_queue()  # NATS down at start: /ready says so and ensure answers 503

    def resolve(self, path: str, rev: str | None) -> tuple[Path, str | None]:
        root = check_allowed(Path(path), self.settings.roots())
        if not root.exists():
            raise BadRequest(f"path {path!r} does not exist", details={"path": path})
        with open_source(root, rev=rev) as source:
            return Path(source.root), source.commit

    def ensure(
        self, path: str, rev: str | None = None, force: bool = False
    ) -> tuple[IndexRecord, RunRecord | None]:
        """The index for ``path`` at ``rev``: existing when ready, else a (possibly running) run."""
        root, commit = self.resolve(path, rev)
        index_id = index_id_for(root, commit)
        with self._lock:
            try:
                rec: IndexRecord | None = self.store.get_index(index_id)
            except Exception:
                rec = None
            if rec is not None and rec.latest_run:
                run = self.store.get_run(rec.latest_run)
                if run.state in _ACTIVE and self._alive(run):
                    return rec, run
                if rec.status == "ready" and not force:
                    return rec, run
            queue = self._require_queue() if self.queue_mode else None  # 503 before any record
            now = time.time()
            if rec is None:
                rec = IndexRecord(
                    index_id=index_id,
                    repo=root.name,
                    root=str(root),
                    rev=rev,
                    commit=commit,
                    lens_repo=index_id,
                    status="queued",
                    latest_run=None,
                    created_at=now,
                    updated_at=now,
                )
                self.store.upsert_index(rec)
            run_id = uuid.uuid4().hex
            if queue is not None:
                return self._enqueue(queue, rec, run_id, force)
            self.store.create_run(run_id, index_id)
            proc = spawn(self.settings, index_id, run_id, queued=False)
            self._procs[run_id] = proc
            self.store.update_run(run_id, pid=proc.pid)
            reaper = threading.Thread(target=self._reap, args=(run_id, proc), daemon=True)
            self._reapers[run_id] = reaper
            reaper.start()
            return self.store.get_index(index_id), self.store.get_run(run_id)

    def _enqueue(
        self, queue: WorkQueue, rec: IndexRecord, run_id: str, force: bool
    ) -> tuple[IndexRecord, RunRecord]:
        """Queue mode: record the run as queued, then publish its job (msg id = run id)."""
        self.store.create_run(run_id, rec.index_id)
        try:
            # traceparent in the message headers: the worker's spans continue this request's trace.
            queue.publish(
                job_payload(rec, run_id, force=force), msg_id=run_id, headers=tracing.inject_headers()
            )
        except QueueError as exc:
            self.store.update_run(
                run_id,
                state="failed",
                finished_at=time.time(),
                error={"code": QueueDown.code, "message": f"could not queue the run: {exc}"},
            )
            self.store.set_index_status(rec.index_id, self._status_or_ready(rec.index_id, "failed"))
            raise QueueDown(f"work queue unavailable: {exc}", details={"index_id": rec.index_id}) from exc
        self.store.update_run(run_id, message="queued for a worker")
        return self.store.get_index(rec.index_id), self.store.get_run(run_id)

    def _connected_queue(self) -> WorkQueue | None:
        """The queue, connecting on first use (and again after a failed connect); None if down."""
        with self._queue_lock:
            if self._queue is None:
                if time.monotonic() < self._next_connect:  # NATS down: a probe must not wait each time
                    return None
                try:
                    self._queue = open_queue(self.settings)
                except QueueError as exc:
                    self._queue_error = str(exc)
                    self._next_connect = time.monotonic() + _RECONNECT_EVERY_S
                    log.warning("work queue unavailable: %s", exc)
                    return None
                publish_depth_every(self._queue, self._stop_depth)
            return self._queue

    def _require_queue(self) -> WorkQueue:
        queue = self._connected_queue()
        if queue is None:
            raise QueueDown(f"work queue unavailable: {self._queue_error}", details={})
        return queue

    def queue_probe(self) -> ComponentState:
        """Readiness of the work queue: "disabled" in embedded mode."""
        if not self.queue_mode:
            return ComponentState("disabled")
        queue = self._connected_queue()
        if queue is None:
            return ComponentState("down", {"backend": "nats", "error": self._queue_error})
        state = queue.probe()
        if state.state == "ok" and "depth" in state.detail:
            metrics.QUEUE_DEPTH.set(state.detail["depth"])
        return state

    def _status_or_ready(self, index_id: str, status: str) -> str:
        """A failed or cancelled rebuild leaves an existing index ready."""
        return "ready" if (index_dir(self.settings, index_id) / "manifest.json").exists() else status

    def _alive(self, run: RunRecord) -> bool:
        """Is the run still going? Runs started by another Mimir process count too.

        In queue mode an active run belongs to the queue: it is alive until a worker settles it.
        """
        if self.queue_mode:
            return True
        proc = self._procs.get(run.run_id)
        if proc is not None:
            return proc.poll() is None
        if not run.pid:
            return run.state == "queued" and time.time() - run.created_at < 30
        return is_run_process(run.pid, run.run_id)

    def _reap(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        run = self.store.get_run(run_id)
        if run.state in _ACTIVE:  # died without saying why (killed, crashed)
            self.store.update_run(
                run_id,
                state="failed",
                finished_at=time.time(),
                error={"code": "worker_died", "message": f"index worker exited with code {code}"},
            )
            self.store.set_index_status(run.index_id, "failed")
        # The spawning process reaps each run exactly once: the one place to count it.
        metrics.record_run(self.store.get_run(run_id))
        self._procs.pop(run_id, None)
        self._reapers.pop(run_id, None)

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        if self.queue_mode:
            return self._poll_until_done(run_id, timeout)
        proc = self._procs.get(run_id)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        deadline = time.monotonic() + 2.0
        run = self.store.get_run(run_id)
        while (
            run.state in _ACTIVE and time.monotonic() < deadline and (proc is None or proc.poll() is not None)
        ):
            time.sleep(0.02)
            run = self.store.get_run(run_id)
        return run

    def cancel(self, index_id: str) -> RunRecord:
        rec = self.store.get_index(index_id)
        if not rec.latest_run:
            raise BadRequest(f"index {index_id!r} has no run to cancel", details={"index_id": index_id})
        run = self.store.get_run(rec.latest_run)
        if run.state not in _ACTIVE:
            return run
        # Record the outcome first, so the reaper thread never mistakes the kill for a crash.
        self.store.update_run(
            run.run_id,
            state="cancelled",
            finished_at=time.time(),
            error={"code": "cancelled", "message": "cancelled by request"},
        )
        if self.queue_mode:  # the worker holding the job sees this, kills its child and acks
            self.store.set_index_status(index_id, self._status_or_ready(index_id, "cancelled"))
            return self.store.get_run(run.run_id)
        proc = self._procs.get(run.run_id)
        pid = proc.pid if proc is not None else run.pid
        if pid:
            kill_group(pid, proc)
        shutil.rmtree(self.settings.data_dir / "indexes" / f".tmp-{run.run_id}", ignore_errors=True)
        # Again after the kill: the worker may have written "running" between our first write and it.
        self.store.update_run(
            run.run_id, state="cancelled", error={"code": "cancelled", "message": "cancelled by request"}
        )
        still_ready = (index_dir(self.settings, index_id) / "manifest.json").exists()
        self.store.set_index_status(index_id, "ready" if still_ready else "cancelled")
        return self.store.get_run(run.run_id)

    def status(self, index_id: str) -> dict[str, Any]:
        rec = self.store.get_index(index_id)
        run = self.store.get_run(rec.latest_run) if rec.latest_run else None
        return {"index": rec.to_dict(), "run": run.to_dict() if run else None}

    def _poll_until_done(self, run_id: str, timeout: float | None) -> RunRecord:
        deadline = time.monotonic() + (timeout if timeout is not None else 365 * 86_400.0)
        run = self.store.get_run(run_id)
        while run.state in _ACTIVE and time.monotonic() < deadline:
            time.sleep(0.1)
            run = self.store.get_run(run_id)
        return run

    def close(self, reap_timeout: float = 10.0) -> None:
        """Embedded runs die with their manager; queued runs are durable and stay queued.

        Waits (up to ``reap_timeout``) for each cancelled run's reaper to record how it ended:
        the caller closes the store next.
        """
        for run_id in list(self._procs):
            run = self.store.get_run(run_id)
            self.cancel(run.index_id)
        deadline = time.monotonic() + reap_timeout
        for reaper in list(self._reapers.values()):
            reaper.join(max(0.0, deadline - time.monotonic()))
        self._stop_depth.set()
        with self._queue_lock:
            if self._queue is not None:
                self._queue.close()
                self._queue = None
