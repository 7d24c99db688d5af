"""Queue mode: index runs travel as durable jobs; ``mimir worker`` processes execute them.

With ``MIMIR_NATS_URL`` set, :class:`~mimir.pipeline.manager.IndexManager` records a run as
queued and publishes ``{index_id, run_id, root, rev, commit, force}`` (msg id = run id). Each
:class:`QueueWorker` loop fetches a job, runs the pipeline in a child process (a crash or a
kill cannot take the worker down), heartbeats the job every ack_wait/3 while polling the store
for a cancel, then settles it:

- succeeded, or nothing to do (run already finished, index already ready): ack;
- cancelled in the store: kill the child, ack;
- failed with deliveries left: the run goes back to queued, nak with a backoff;
- failed on the last delivery: the run is failed with the reason and the job dead-lettered;
- worker shutting down (SIGTERM): kill the child, run back to queued, job released at once.

A retry reuses the run id, and the run discards its ``.tmp-<run>`` directory first, so a
repository at a commit always ends as one index from one succeeded run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from infra.observability import tracing
from infra.queue import DeadLetter, DeadLetterCallback, Job, QueueError, WorkQueue
from mimir.config import MimirSettings
from mimir.errors import LensError, UnknownJob
from mimir.pipeline.run import index_dir
from mimir.pipeline.worker import kill_group, spawn
from mimir.serve import metrics
from mimir.store import IndexRecord, MetadataStore, RunRecord, store_for

log = logging.getLogger("mimir.worker")

_POLL_S = 0.25  # how often a running job checks its child, the store (cancel) and shutdown
_FETCH_S = 1.0  # fetch wait: bounds how long an idle loop takes to notice shutdown
_DEPTH_EVERY_S = 10.0


class QueueDown(LensError):
    """The work queue cannot take the job right now; retrying later is the right reaction."""

    code = "queue_unavailable"
    status = 503


def job_payload(rec: IndexRecord, run_id: str, *, force: bool) -> dict[str, Any]:
    return {
        "kind": "index",
        "index_id": rec.index_id,
        "run_id": run_id,
        "root": rec.root,
        "rev": rec.rev,
        "commit": rec.commit,
        "force": force,
    }


def open_queue(settings: MimirSettings, on_dead_letter: DeadLetterCallback | None = None) -> WorkQueue:
    """The JetStream queue named by the settings (raises QueueUnavailable when NATS is down)."""
    from infra.queue.jetstream import JetStreamQueue

    if not settings.nats_url:
        raise ValueError("queue mode needs MIMIR_NATS_URL")
    return JetStreamQueue(
        settings.nats_url,
        namespace=settings.nats_namespace,
        ack_wait_s=settings.queue_ack_wait_s,
        max_deliver=settings.queue_max_deliver,
        on_dead_letter=on_dead_letter,
        client_name=f"mimir-{socket.gethostname()}-{os.getpid()}",
    )


def publish_depth_every(queue: WorkQueue, stop: threading.Event, every_s: float = _DEPTH_EVERY_S) -> None:
    """Keep ``mimir_queue_depth`` fresh from a daemon thread until ``stop`` is set."""

    def loop() -> None:
        while True:
            try:
                metrics.QUEUE_DEPTH.set(queue.depth())
            except QueueError as exc:
                log.debug("queue depth unavailable: %s", exc)
            if stop.wait(every_s):
                return

    threading.Thread(target=loop, name="queue-depth", daemon=True).start()


def backoff_s(attempt: int, ack_wait_s: float) -> float:
    """1 s, 2 s, 4 s ... capped at one ack wait: quick retries for flukes, no hot loop."""
    return float(min(2 ** (attempt - 1), max(1.0, ack_wait_s)))


def _cancelled(run: RunRecord) -> bool:
    # The child writes state="running" once at start, which can land after a cancel; the
    # cancel's error code survives that write, so it is checked too.
    return run.state == "cancelled" or (run.error or {}).get("code") == "cancelled"


class QueueWorker:
    """``concurrency`` loops over one queue connection; :meth:`stop` hands unfinished jobs back."""

    def __init__(
        self,
        settings: MimirSettings,
        *,
        concurrency: int | None = None,
        queue: WorkQueue | None = None,
        store: MetadataStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store if store is not None else store_for(settings)
        self.queue = queue if queue is not None else open_queue(settings, self.dead_lettered)
        self.concurrency = max(1, concurrency or settings.worker_concurrency)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until :meth:`stop`; returns once every loop handed back or finished its job."""
        loops = [
            threading.Thread(target=self._loop, name=f"mimir-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in loops:
            t.start()
        log.info("worker %s: %d loop(s) on the work queue", self.name, self.concurrency)
        for t in loops:
            while t.is_alive():  # join in slices: the main thread must stay free for signals
                t.join(0.5)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.queue.close()
        self.store.close()

    def dead_lettered(self, letter: DeadLetter) -> None:
        """Any dead letter (ours or found by the queue): the run ends failed with the reason."""
        metrics.QUEUE_DEAD_LETTERS.inc()
        metrics.QUEUE_JOBS.labels(outcome="dead_lettered").inc()
        run_id = str(letter.data.get("run_id") or "")
        log.error(
            "job %s dead-lettered after %d deliveries: %s", letter.msg_id, letter.deliveries, letter.reason
        )
        try:
            run = self.store.get_run(run_id)
        except UnknownJob:
            return
        if run.state in ("queued", "running"):
            error = {"code": "dead_lettered", "message": letter.reason, "attempts": letter.deliveries}
            self._finish(run, "failed", error)

    # -- one loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.queue.fetch(_FETCH_S)
            except QueueError as exc:
                log.warning("fetch failed (%s); retrying", exc)
                self.stopping.wait(1.0)
                continue
            if job is None:
                continue
            try:
                run_id = str(job.data.get("run_id"))
                with (
                    tracing.attached(tracing.extract_context(job.headers)),
                    tracing.span("index job", kind=tracing.SpanKind.CONSUMER, mimir__run_id=run_id),
                ):
                    outcome = self.handle(job)
            except Exception:
                log.exception("job %s: handler crashed", job.msg_id)
                outcome = self._settle_after_crash(job)
            if outcome:
                metrics.QUEUE_JOBS.labels(outcome=outcome).inc()

    def handle(self, job: Job) -> str | None:
        """Run one delivered job to a settled state; returns the outcome for the metrics."""
        if job.attempt > 1:
            metrics.QUEUE_REDELIVERIES.inc()
        if self.stopping.is_set():
            job.release()
            return "handed_back"
        run_id, index_id = str(job.data.get("run_id") or ""), str(job.data.get("index_id") or "")
        if not run_id or not index_id:
            job.term("malformed index job: run_id and index_id are required")
            return None  # counted by dead_lettered()
        try:
            run = self.store.get_run(run_id)
        except UnknownJob:
            job.term(f"unknown run {run_id}: not in the metadata store")
            return None
        skip = self._nothing_to_do(job, run)
        if skip:
            log.info("job %s: %s; acknowledged without running", run_id, skip)
            job.ack()
            return "skipped"
        return self._execute(job, run)

    def _nothing_to_do(self, job: Job, run: RunRecord) -> str | None:
        if run.state == "succeeded":
            return "run already succeeded"
        if _cancelled(run):
            return "run was cancelled"
        rec = self.store.get_index(run.index_id)
        if rec.latest_run and rec.latest_run != run.run_id:
            self._finish(
                run, "cancelled", {"code": "superseded", "message": f"superseded by {rec.latest_run}"}
            )
            return f"superseded by run {rec.latest_run}"
        ready = rec.status == "ready" and (index_dir(self.settings, rec.index_id) / "manifest.json").exists()
        if ready and not job.data.get("force") and rec.commit == job.data.get("commit"):
            done = {"stage": "done", "percent": 100.0, "finished_at": time.time()}
            self.store.update_run(run.run_id, state="succeeded", message="already indexed", **done)
            return "index already ready for this commit"
        return None

    def _execute(self, job: Job, run: RunRecord) -> str:
        run_id, index_id = run.run_id, run.index_id
        attempt = f"attempt {job.attempt}/{job.max_deliver}"
        self.store.update_run(
            run_id,
            state="running",
            stage="starting",
            percent=0.0,
            message=f"{attempt} on {self.name}",
            error=None,
            finished_at=None,
            pid=None,
        )
        log.info("job %s: %s started", run_id, attempt)
        proc = spawn(self.settings, index_id, run_id, queued=True)
        try:
            code = self._watch(job, proc, run_id)
        except BaseException:  # never leave a child running behind a job we may not hold any more
            kill_group(proc.pid, proc)
            self._discard_tmp(run_id)
            raise
        if isinstance(code, str):  # settled while running: cancelled or handed back
            return code
        run = self.store.get_run(run_id)
        if run.state == "succeeded":
            job.ack()
            metrics.record_run(run)
            return "succeeded"
        self._discard_tmp(run_id)
        if _cancelled(run):
            self._finish(run, "cancelled", {"code": "cancelled", "message": "cancelled by request"})
            job.ack()
            return "cancelled"
        error = run.error or {"code": "worker_died", "message": f"index run exited with code {code}"}
        reason = f"{error.get('code')}: {error.get('message')}"
        if job.last_attempt:
            log.error("job %s: %s failed (%s); no attempt left", run_id, attempt, reason)
            self._finish(run, "failed", {**error, "attempts": job.attempt})
            job.term(reason)
            return "failed"
        delay = backoff_s(job.attempt, self.settings.queue_ack_wait_s)
        note = f"{attempt} failed ({reason}); retry in {delay:.0f}s"
        log.warning("job %s: %s", run_id, note)
        self._requeue(run, note)
        job.nak(delay)
        return "retried"

    def _watch(self, job: Job, proc: subprocess.Popen[bytes], run_id: str) -> int | str:
        """Wait for the child, heartbeating; returns its exit code, or the outcome if settled early."""
        ack_wait = self.settings.queue_ack_wait_s
        beat_every = max(0.2, ack_wait / 3)
        next_beat = last_beat = time.monotonic()
        while (code := proc.poll()) is None:
            now = time.monotonic()
            if self.stopping.is_set():
                kill_group(proc.pid, proc)
                run = self.store.get_run(run_id)
                if run.state == "succeeded":  # finished before the signal; only the child's exit was left
                    job.ack()
                    metrics.record_run(run)
                    log.info("job %s succeeded (its child was still exiting at shutdown)", run_id)
                    return "succeeded"
                self._discard_tmp(run_id)
                self._requeue(run, f"handed back by {self.name} (shutting down)")
                job.release()
                log.info("job %s handed back (shutting down)", run_id)
                return "handed_back"
            if now >= next_beat:
                next_beat = now + beat_every
                try:
                    job.in_progress()
                    last_beat = now
                except QueueError as exc:
                    log.warning("job %s: heartbeat failed: %s", run_id, exc)
                    if now - last_beat > ack_wait * 0.8:  # it is (about to be) someone else's now
                        kill_group(proc.pid, proc)
                        self._discard_tmp(run_id)
                        log.error("job %s abandoned: no heartbeat for %.1fs", run_id, now - last_beat)
                        return "abandoned"
            run = self.store.get_run(run_id)
            if _cancelled(run):
                kill_group(proc.pid, proc)
                self._discard_tmp(run_id)
                self._finish(run, "cancelled", {"code": "cancelled", "message": "cancelled by request"})
                job.ack()
                log.info("job %s cancelled", run_id)
                return "cancelled"
            self.stopping.wait(_POLL_S)
        return code

    # -- store updates ------------------------------------------------------------------------
    def _finish(self, run: RunRecord, state: str, error: dict[str, Any]) -> None:
        self.store.update_run(run.run_id, state=state, error=error, finished_at=time.time())
        self.store.set_index_status(run.index_id, self._status_or_ready(run.index_id, state))
        metrics.record_run(self.store.get_run(run.run_id))

    def _requeue(self, run: RunRecord, message: str) -> None:
        self.store.update_run(
            run.run_id, state="queued", stage="queued", percent=0.0, message=message, error=None, pid=None
        )
        self.store.set_index_status(run.index_id, self._status_or_ready(run.index_id, "queued"))

    def _status_or_ready(self, index_id: str, status: str) -> str:
        """A failed or cancelled rebuild leaves an existing index ready."""
        return "ready" if (index_dir(self.settings, index_id) / "manifest.json").exists() else status

    def _discard_tmp(self, run_id: str) -> None:
        shutil.rmtree(self.settings.data_dir / "indexes" / f".tmp-{run_id}", ignore_errors=True)

    def _settle_after_crash(self, job: Job) -> str | None:
        if job.settled:
            return None
        try:
            job.nak(backoff_s(job.attempt, self.settings.queue_ack_wait_s))
        except QueueError:
            return None  # redelivered after the ack wait anyway
        return "retried"


def serve(
    settings: MimirSettings,
    *,
    concurrency: int | None = None,
    metrics_port: int | None = None,
) -> int:
    """``mimir worker``: run until SIGTERM/SIGINT, then hand unfinished jobs back and exit 0."""
    if not settings.nats_url:
        log.error("mimir worker needs MIMIR_NATS_URL (queue mode)")
        return 2
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host)
    worker = QueueWorker(settings, concurrency=concurrency)
    stop_depth = threading.Event()
    publish_depth_every(worker.queue, stop_depth)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
    finally:
        stop_depth.set()
        worker.close()
    log.info("worker %s stopped", worker.name)
    return 0
