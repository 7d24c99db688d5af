"""Starting, watching and cancelling index runs.

``ensure`` is idempotent: the same repository at the same commit is one index.
Each run executes in a spawned worker process that leads its own process group;
``cancel`` kills the group (the run and anything it started, such as Lens's
parse workers) and the run's private directory is removed, so within 2 s nothing
of it is left running or half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from lens.discover.source import open_source
from lens.engine import check_allowed
from mimir.config import MimirSettings
from mimir.errors import BadRequest
from mimir.pipeline.run import index_dir, log_path, store_for
from mimir.store import IndexRecord, RunRecord

_ACTIVE = ("queued", "running")


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "repo"
    return slug[:40]


def index_id_for(root: Path, commit: str | None) -> str:
    """Readable and stable: <dir name>-<hash of root path>-<commit prefix>."""
    root_hash = hashlib.sha256(str(root).encode()).hexdigest()[:6]
    return f"{_slug(root.name)}-{root_hash}-{(commit or 'worktree')[:12]}"


class IndexManager:
    def __init__(self, settings: MimirSettings) -> None:
        self.settings = settings
        self.store = store_for(settings)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

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
            run = self.store.create_run(run_id, index_id)
            log = log_path(self.settings, run_id)
            log.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "MIMIR_WORKER_SETTINGS": self.settings.model_dump_json()}
            with open(log.with_suffix(".stderr"), "ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mimir.pipeline.worker", index_id, run_id],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,  # its own process group: cancel kills the whole tree
                )
            self._procs[run_id] = proc
            self.store.update_run(run_id, pid=proc.pid)
            threading.Thread(target=self._reap, args=(run_id, proc), daemon=True).start()
            return self.store.get_index(index_id), self.store.get_run(run_id)

    def _alive(self, run: RunRecord) -> bool:
        """Is the run's worker still running? Runs started by another Mimir process count too."""
        proc = self._procs.get(run.run_id)
        if proc is not None:
            return proc.poll() is None
        if not run.pid:
            return run.state == "queued" and time.time() - run.created_at < 30
        try:
            cmdline = Path(f"/proc/{run.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return run.run_id.encode() in cmdline

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
        self._procs.pop(run_id, None)

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
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
        proc = self._procs.get(run.run_id)
        pid = proc.pid if proc is not None else run.pid
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)
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

    def close(self) -> None:
        for run_id in list(self._procs):
            run = self.store.get_run(run_id)
            self.cancel(run.index_id)
