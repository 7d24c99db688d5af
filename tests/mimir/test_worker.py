"""Queue mode end to end, with real processes: an in-process Mimir API publishes index jobs to a
real NATS JetStream (fresh namespace per test, deleted after) and two ``mimir worker`` processes
run them. Crashes (kill -9), shutdowns (SIGTERM), cancels and always-failing jobs must all end
with one run and at most one index, never a duplicate.

The runs pause via the test-only ``MIMIR_TEST_STAGE_DELAY_S`` hook (mimir.pipeline.worker) so a
worker can be killed while it holds a job.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gitrepo import commit_all, git, write_files
from infra.queue.jetstream import JetStreamQueue
from mimir.config import MimirSettings
from mimir.pipeline.dispatch import QueueDown
from mimir.service import Mimir
from mimir.store import RunRecord
from support import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
from nats_server import SHARED_URL, delete_namespace, fresh_namespace

pytestmark = pytest.mark.slow

ACK_WAIT_S = 3
MAX_DELIVER = 3
PAUSE_S = 6  # the run pauses this long after its symbols stage
FILES = {
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef twice(x):\n    return add(x, x)\n",
    "calc/main.py": "from calc.ops import twice\n\n\ndef run():\n    return twice(21)\n",
}
# Settings the parent environment must not leak into the workers (another database, cache, ...).
_FOREIGN = ("DATABASE_URL", "REDIS_URL", "NATS_URL", "NATS_NAMESPACE", "LENS_URL", "LENS_TOKEN")


def make_repo(root: Path) -> tuple[Path, str]:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    write_files(root, FILES)
    return root, commit_all(root, "initial")


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scrape(port: int) -> dict[str, float]:
    """Samples of the mimir_queue_* and index-run metrics a worker serves, by name{labels}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("mimir_queue_", "mimir_index_runs_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    metrics_port: int

    def metric(self, name: str) -> float:
        return scrape(self.metrics_port).get(name, 0.0)


@dataclass
class Cluster:
    base: Path
    namespace: str
    settings: MimirSettings
    mimir: Mimir
    workers: list[Worker] = field(default_factory=list)

    def start_workers(self, n: int = 2, *, pause_s: float = 0) -> list[Worker]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MIMIR_", "PROMETHEUS_")) and k not in _FOREIGN
        }
        env.update(
            MIMIR_DATA_DIR=str(self.settings.data_dir),
            MIMIR_ALLOWED_ROOTS=str(self.base),
            MIMIR_NATS_URL=SHARED_URL,
            MIMIR_NATS_NAMESPACE=self.namespace,
            MIMIR_QUEUE_ACK_WAIT_S=str(ACK_WAIT_S),
            MIMIR_QUEUE_MAX_DELIVER=str(MAX_DELIVER),
            MIMIR_EMBED="false",
            MIMIR_LOG_LEVEL="INFO",
            MIMIR_TEST_STAGE_DELAY_S=str(pause_s),
        )
        started = []
        for _ in range(n):
            port = free_port()
            log = open(self.base / f"worker-{len(self.workers)}.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(
                [sys.executable, "-m", "mimir.serve.cli", "worker", "--metrics-port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            started.append(Worker(proc, port))
            self.workers.append(started[-1])
        for w in started:  # up: metrics served (the queue connection is made before that returns)
            wait_for("worker metrics endpoint", lambda w=w: _serving(w), 30)
        return started

    def run(self, run_id: str) -> RunRecord:
        return self.mimir.store.get_run(run_id)

    def runs_of(self, index_id: str) -> list[tuple[str, str]]:
        conn = sqlite3.connect(str(self.settings.data_dir / "mimir.sqlite"))
        try:
            return list(conn.execute("SELECT run_id, state FROM runs WHERE index_id = ?", (index_id,)))
        finally:
            conn.close()

    def holder(self, run_id: str) -> Worker:
        """The worker whose child process is executing ``run_id`` right now."""
        pid = wait_for("the run's pid", lambda: self.run(run_id).pid, 30)
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return next(w for w in self.workers if w.proc.pid == ppid)

    def paused(self, run_id: str) -> RunRecord:
        """Wait until the run sits in its test pause, with artifacts in its .tmp directory."""
        tmp = self.settings.data_dir / "indexes" / f".tmp-{run_id}"

        def in_pause() -> RunRecord | None:
            run = self.run(run_id)
            ok = run.state == "running" and run.stage == "symbols" and (tmp / "research.sqlite").exists()
            return run if ok else None

        result: RunRecord = wait_for("the run to pause after symbols", in_pause, 60)
        return result

    def dead_letters(self) -> list[Any]:
        q = JetStreamQueue(SHARED_URL, namespace=self.namespace)
        try:
            return q.dead_letters()
        finally:
            q.close()

    def leftovers(self) -> list[str]:
        root = self.settings.data_dir / "indexes"
        return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def total(workers: list[Worker], name: str) -> float:
    return sum(w.metric(name) for w in workers)


def settled(workers: list[Worker], name: str, expected: float) -> None:
    """The job's final metric lands just after the run's final state (ack, then count): wait for it."""
    wait_for(f"{name} == {expected}", lambda: total(workers, name) == expected, 10)


def _serving(w: Worker) -> bool:
    if w.proc.poll() is not None:
        raise AssertionError(f"worker exited early with {w.proc.returncode}")
    try:
        scrape(w.metrics_port)
    except OSError:
        return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    base = tmp_path.resolve()
    namespace = fresh_namespace()
    settings = MimirSettings(
        data_dir=base / "data",
        allowed_roots=str(base),
        nats_url=SHARED_URL,
        nats_namespace=namespace,
        queue_ack_wait_s=ACK_WAIT_S,
        queue_max_deliver=MAX_DELIVER,
        embed=False,
        database_url=None,
        redis_url=None,
        lens_url=None,
    )
    mimir = Mimir(settings)
    c = Cluster(base, namespace, settings, mimir)
    try:
        yield c
    finally:
        for w in c.workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait(10)
        mimir.close()
        delete_namespace(SHARED_URL, namespace)


def _index_once(c: Cluster, repo: Path) -> dict[str, Any]:
    out = c.mimir.ensure_repo_index(str(repo), "HEAD")
    assert out["status"] == "queued" and out["run"]["state"] in ("queued", "running")
    return out


def test_job_runs_once_and_ensure_is_idempotent(cluster: Cluster) -> None:
    repo, commit = make_repo(cluster.base / "calc")
    workers = cluster.start_workers(2)
    out = _index_once(cluster, repo)
    run_id = out["run"]["run_id"]
    again = cluster.mimir.ensure_repo_index(str(repo), "HEAD")  # while queued/running: the same run
    assert again["run"]["run_id"] == run_id

    run = cluster.mimir.manager.wait(run_id, timeout=120)
    assert run.state == "succeeded", run
    assert cluster.runs_of(out["index_id"]) == [(run_id, "succeeded")]
    assert [i["index_id"] for i in cluster.mimir.list_indexes()] == [out["index_id"]]
    manifest = cluster.mimir.manifest(out["index_id"])
    assert manifest["commit"] == commit and manifest["counts"]["files"] == len(FILES)
    reused = cluster.mimir.ensure_repo_index(str(repo), "HEAD")
    assert reused["reused"] is True and reused["run"]["run_id"] == run_id
    assert cluster.leftovers() == []
    assert cluster.dead_letters() == []

    settled(workers, 'mimir_queue_jobs_total{outcome="succeeded"}', 1)
    assert total(workers, "mimir_queue_redeliveries_total") == 0

    with TestClient(create_app_for(cluster.mimir)) as client:
        ready = client.get("/ready").json()
        assert ready["checks"]["queue"]["state"] == "ok" and ready["checks"]["queue"]["required"] is True
        assert "mimir_queue_depth 0.0" in client.get("/metrics").text


def create_app_for(mimir: Mimir) -> Any:
    from mimir.serve.api import create_app

    return create_app(mimir)


def test_killed_worker_job_is_redelivered_and_finished_once(cluster: Cluster) -> None:
    repo, commit = make_repo(cluster.base / "calc")
    cluster.start_workers(2, pause_s=PAUSE_S)
    out = _index_once(cluster, repo)
    run_id = out["run"]["run_id"]
    first = cluster.paused(run_id)
    holder = cluster.holder(run_id)
    survivor = next(w for w in cluster.workers if w is not holder)

    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(5)
    assert first.pid is not None
    wait_for("the orphaned run to die with its worker", lambda: not _alive(first.pid), 5)

    run = cluster.mimir.manager.wait(run_id, timeout=120)
    assert run.state == "succeeded", run
    assert cluster.runs_of(out["index_id"]) == [(run_id, "succeeded")]
    assert [i["index_id"] for i in cluster.mimir.list_indexes()] == [out["index_id"]]
    assert cluster.mimir.manifest(out["index_id"])["commit"] == commit
    assert cluster.leftovers() == []
    assert cluster.dead_letters() == []
    settled([survivor], 'mimir_queue_jobs_total{outcome="succeeded"}', 1)
    assert survivor.metric("mimir_queue_redeliveries_total") == 1


def test_sigterm_hands_the_job_back(cluster: Cluster) -> None:
    repo, commit = make_repo(cluster.base / "calc")
    cluster.start_workers(2, pause_s=PAUSE_S)
    out = _index_once(cluster, repo)
    run_id = out["run"]["run_id"]
    first = cluster.paused(run_id)
    holder = cluster.holder(run_id)
    survivor = next(w for w in cluster.workers if w is not holder)

    started = time.monotonic()
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert first.pid is not None and not _alive(first.pid)  # its child was stopped, not orphaned

    run = cluster.mimir.manager.wait(run_id, timeout=120)
    assert run.state == "succeeded", run
    assert cluster.runs_of(out["index_id"]) == [(run_id, "succeeded")]
    assert cluster.mimir.manifest(out["index_id"])["commit"] == commit
    assert cluster.leftovers() == []
    assert cluster.dead_letters() == []
    settled([survivor], 'mimir_queue_jobs_total{outcome="succeeded"}', 1)


def test_cancel_stops_the_run_on_its_worker(cluster: Cluster) -> None:
    repo, _ = make_repo(cluster.base / "calc")
    workers = cluster.start_workers(2, pause_s=PAUSE_S)
    out = _index_once(cluster, repo)
    run_id = out["run"]["run_id"]
    first = cluster.paused(run_id)

    assert cluster.mimir.cancel(out["index_id"])["run"]["state"] == "cancelled"
    assert first.pid is not None
    wait_for("the run's process to be killed", lambda: not _alive(first.pid), 3)
    wait_for(
        "the cancelled job to be acked", lambda: cluster.mimir.manager.queue_probe().detail["depth"] == 0, 5
    )
    time.sleep(ACK_WAIT_S + 1)  # acked, not merely abandoned: nobody picks it up again
    run = cluster.run(run_id)
    assert run.state == "cancelled" and run.error and run.error["code"] == "cancelled"
    assert cluster.mimir.index_status(out["index_id"])["index"]["status"] == "cancelled"
    assert cluster.leftovers() == []
    settled(workers, 'mimir_queue_jobs_total{outcome="cancelled"}', 1)
    assert total(workers, "mimir_queue_redeliveries_total") == 0


def test_always_failing_job_is_dead_lettered_after_max_deliver(cluster: Cluster) -> None:
    repo, _ = make_repo(cluster.base / "calc")
    out = _index_once(cluster, repo)  # queued before any worker runs ...
    run_id = out["run"]["run_id"]
    shutil.rmtree(repo)  # ... and then its repository disappears
    workers = cluster.start_workers(2)

    run = cluster.mimir.manager.wait(run_id, timeout=120)
    assert run.state == "failed", run
    assert run.error is not None and run.error["attempts"] == MAX_DELIVER and run.error["message"]
    assert cluster.mimir.index_status(out["index_id"])["index"]["status"] == "failed"
    letters = wait_for("the dead letter", cluster.dead_letters, 10)
    assert [(d.msg_id, d.data["run_id"], d.deliveries) for d in letters] == [(run_id, run_id, MAX_DELIVER)]
    assert run.error["message"] in letters[0].reason
    assert cluster.runs_of(out["index_id"]) == [(run_id, "failed")]
    assert cluster.leftovers() == []
    settled(workers, "mimir_queue_dead_letters_total", 1)
    assert total(workers, 'mimir_queue_jobs_total{outcome="retried"}') == MAX_DELIVER - 1
    assert total(workers, 'mimir_queue_jobs_total{outcome="failed"}') == 1
    assert total(workers, "mimir_queue_redeliveries_total") == MAX_DELIVER - 1


def test_queue_down_means_not_ready_and_503(tmp_path: Path) -> None:
    base = tmp_path.resolve()
    repo, _ = make_repo(base / "calc")
    settings = MimirSettings(
        data_dir=base / "data",
        allowed_roots=str(base),
        nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens there
        nats_namespace=fresh_namespace(),
        embed=False,
        database_url=None,
        redis_url=None,
        lens_url=None,
    )
    mimir = Mimir(settings)
    try:
        state = mimir.manager.queue_probe()
        assert state.state == "down" and state.detail["error"]
        with pytest.raises(QueueDown) as info:
            mimir.ensure_repo_index(str(repo), "HEAD")
        assert info.value.status == 503
        with TestClient(create_app_for(mimir)) as client:
            resp = client.get("/ready")
            assert resp.status_code == 503
            assert resp.json()["checks"]["queue"]["state"] == "down"
            resp = client.post("/api/index/repository", json={"path": str(repo)})
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "queue_unavailable"
        assert mimir.list_indexes() == []  # refused before anything was recorded
    finally:
        mimir.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie awaiting its reaper is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
