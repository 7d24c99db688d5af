"""The process that executes one index run: ``python -m mimir.pipeline.worker INDEX_ID RUN_ID``.

Settings arrive as JSON in ``MIMIR_WORKER_SETTINGS`` (so the run sees exactly what its starter
resolved). The process leads its own session, so cancel, shutdown or a crash of whoever waits
for it can kill it together with everything it started (Lens's parse workers).

``--queued`` (one attempt of a queued job): the run kills its own process group when the
``mimir worker`` that started it dies, so a redelivered job never runs twice at once, and a failure
leaves the run's state to that worker (retry or fail for good). Without it (embedded mode) a run
outlives a short-lived starter such as ``mimir index --no-wait`` and records its own outcome.

Test-only hook: ``MIMIR_TEST_STAGE_DELAY_S`` makes the run pause that many seconds once, after the
``symbols`` stage (artifacts already in ``.tmp-<run>``), so tests can kill a worker mid-run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from infra.observability import tracing
from infra.observability.metrics import MULTIPROC_ENV
from mimir import __version__
from mimir.config import MimirSettings
from mimir.pipeline.run import log_path, run_pipeline
from mimir.store import store_for

QUEUED = "--queued"


def spawn(settings: MimirSettings, index_id: str, run_id: str, *, queued: bool) -> subprocess.Popen[bytes]:
    """Start a run in its own session; stderr goes next to the run's log."""
    log = log_path(settings, run_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MIMIR_WORKER_SETTINGS": settings.model_dump_json(), **tracing.inject_env()}
    # The run's metrics would die with it (its starter records the run); keep it out of the
    # server's multiprocess metrics directory, where its gauges would outlive it.
    env.pop(MULTIPROC_ENV, None)
    argv = [sys.executable, "-m", "mimir.pipeline.worker", index_id, run_id]
    with open(log.with_suffix(".stderr"), "ab") as err:
        return subprocess.Popen(
            [*argv, QUEUED] if queued else argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: one kill takes the whole tree
        )


def kill_group(pid: int, proc: subprocess.Popen[bytes] | None = None, wait_s: float = 2.0) -> None:
    """SIGKILL the run's process group (and the leader, should it have left the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


def is_run_process(pid: int, run_id: str) -> bool:
    """Is ``pid`` (on this host) still the process running ``run_id``?"""
    try:
        return run_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _die_with_parent() -> None:
    """Watch the parent; once it is gone (we were re-parented), kill our whole process group."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _test_stage_delay(settings: MimirSettings, run_id: str) -> Callable[[], bool]:
    """``should_stop`` that pauses once between symbols and search_index (MIMIR_TEST_STAGE_DELAY_S)."""
    delay = float(os.environ.get("MIMIR_TEST_STAGE_DELAY_S") or 0)
    if delay <= 0:
        return lambda: False
    store = store_for(settings, migrate=False)
    paused = threading.Event()

    def should_stop() -> bool:
        if not paused.is_set() and store.get_run(run_id).stage == "symbols":
            paused.set()
            time.sleep(delay)
        return False

    return should_stop


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != QUEUED]
    if len(args) != 2:
        print(f"usage: python -m mimir.pipeline.worker INDEX_ID RUN_ID [{QUEUED}]", file=sys.stderr)
        return 2
    queued = QUEUED in argv
    if queued:
        _die_with_parent()
    settings = MimirSettings.model_validate_json(os.environ["MIMIR_WORKER_SETTINGS"])
    tracing.setup_tracing(
        "mimir", version=__version__, environment=settings.environment, endpoint=settings.otel_endpoint
    )
    try:
        # One span for the run, a child of whatever started it (a request, a queued job).
        with (
            tracing.attached(tracing.extract_env(os.environ)),
            tracing.span("index run", mimir__run_id=args[1]),
        ):
            run_pipeline(
                settings,
                args[0],
                args[1],
                should_stop=_test_stage_delay(settings, args[1]),
                final_attempt=not queued,
            )
    except BaseException as exc:  # the run already recorded why; the exit code says it failed
        print(f"index run {args[1]} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
