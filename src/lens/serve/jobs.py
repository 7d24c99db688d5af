"""In-process index jobs: one worker thread, jobs run in submission order.

The embedded default needs no queue service; step 3 puts a durable queue behind
the same ``submit``/``get`` calls. A job indexes lexically first (searchable as
soon as that commits), then computes embeddings.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lens.engine import Lens
from lens.errors import LensError, NotFound
from lens.serve import metrics

JobState = Literal["queued", "running", "succeeded", "failed"]


@dataclass
class Job:
    id: str
    repo: str
    path: str
    rev: str | None
    worktree: bool
    full: bool
    seed: str | None = None
    state: JobState = "queued"
    stage: str = "queued"
    done: int = 0
    total: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    report: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    embedded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repo": self.repo,
            "path": self.path,
            "rev": self.rev,
            "worktree": self.worktree,
            "full": self.full,
            "seed": self.seed,
            "state": self.state,
            "progress": {"stage": self.stage, "done": self.done, "total": self.total},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "report": self.report,
            "error": self.error,
            "embedded": self.embedded,
        }


class JobRunner:
    def __init__(
        self, lens: Lens, *, max_jobs_kept: int = 1000, on_success: Callable[[Job], None] | None = None
    ) -> None:
        self.lens = lens
        # Runs before a job is marked succeeded (e.g. shipping the shard); raising fails the job.
        self.on_success = on_success
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._max = max_jobs_kept
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lens-index-worker", daemon=True)
        self._thread.start()

    def submit(
        self, repo: str, path: Path, *, rev: str | None, worktree: bool, full: bool, seed: str | None = None
    ) -> Job:
        job = Job(
            id=uuid.uuid4().hex, repo=repo, path=str(path), rev=rev, worktree=worktree, full=full, seed=seed
        )
        with self._lock:
            self._jobs[job.id] = job
            if len(self._jobs) > self._max:
                finished = [j for j in self._jobs.values() if j.state in ("succeeded", "failed")]
                for old in finished[: len(self._jobs) - self._max]:
                    del self._jobs[old.id]
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found", details={"job": job_id})
        return job

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _progress(self, job: Job) -> Callable[[str, int, int], None]:
        def report(stage: str, done: int, total: int) -> None:
            job.stage, job.done, job.total = stage, done, total

        return report

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            self._execute(job)

    def _execute(self, job: Job) -> None:
        job.state, job.started_at = "running", time.time()
        started = time.perf_counter()
        try:
            report = self.lens.index(
                Path(job.path),
                name=job.repo,
                rev=job.rev,
                worktree=job.worktree,
                full=job.full,
                progress=self._progress(job),
                seed=job.seed,
            )
            job.report = report.to_dict()
            metrics.record_index(report)
            job.stage = "embed"

            def embed_progress(done: int, total: int) -> None:
                job.done, job.total = done, total

            job.embedded = self.lens.embed(job.repo, progress=embed_progress, should_stop=self._stop.is_set)
            if self._stop.is_set():
                job.state = "failed"
                job.error = {
                    "code": "interrupted",
                    "message": "server shut down during embedding: the lexical index is live, "
                    "semantic search is incomplete until the next index run",
                    "details": {},
                }
                metrics.INDEX_JOBS.labels(outcome="interrupted").inc()
                return
            if self.on_success is not None:
                job.stage = "ship"
                self.on_success(job)
            job.state, job.stage = "succeeded", "done"
            metrics.INDEX_JOBS.labels(outcome="succeeded").inc()
        except LensError as exc:
            job.state, job.error = "failed", exc.to_dict()
            metrics.INDEX_JOBS.labels(outcome="failed").inc()
        except Exception as exc:  # a job failure must never kill the worker
            job.state = "failed"
            job.error = {
                "code": "internal",
                "message": str(exc),
                "details": {"trace": traceback.format_exc(limit=5)},
            }
            metrics.INDEX_JOBS.labels(outcome="failed").inc()
        finally:
            job.finished_at = time.time()
            metrics.INDEX_DURATION.observe(time.perf_counter() - started)
