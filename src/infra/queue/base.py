"""The work-queue seam: at-least-once jobs with explicit ack, redelivery and dead letters.

Both services' code is synchronous, so the seam is too. A delivered :class:`Job` must be
settled exactly once (ack, nak, term or release) or kept alive with ``in_progress()``;
a job nobody settles within the ack wait is delivered again, and a job that used up its
``max_deliver`` deliveries goes to the dead-letter queue with the reason, so nothing is lost
silently. ``MemoryQueue`` and ``JetStreamQueue`` pass the same conformance suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.health import ComponentState


class QueueError(Exception):
    """A queue operation did not happen (the caller must not assume it did)."""


class QueueUnavailable(QueueError):
    """The queue's server cannot be reached right now."""


def exhausted_reason(max_deliver: int) -> str:
    """The dead-letter reason when no delivery was acknowledged: the worker died, hung or gave up."""
    return f"not acknowledged after {max_deliver} deliveries (worker died, stalled or handed it back)"


@dataclass(frozen=True)
class DeadLetter:
    """A job that will not be delivered again, and why."""

    data: dict[str, Any]
    headers: dict[str, str]
    msg_id: str
    reason: str
    deliveries: int
    at: float


DeadLetterCallback = Callable[[DeadLetter], None]


class JobOps(Protocol):
    """What a queue backend does for a job it delivered (``Job`` forwards to it)."""

    def ack(self, job: Job) -> None: ...
    def nak(self, job: Job, delay: float) -> None: ...
    def in_progress(self, job: Job) -> None: ...
    def term(self, job: Job, reason: str) -> None: ...
    def release(self, job: Job) -> None: ...


@dataclass(eq=False)
class Job:
    """One delivery of a queued payload. ``attempt`` counts deliveries, starting at 1."""

    data: dict[str, Any]
    headers: dict[str, str]
    msg_id: str
    attempt: int
    max_deliver: int
    ops: JobOps = field(repr=False)
    handle: Any = field(repr=False)  # backend's own reference to this delivery
    settled: bool = False

    @property
    def num_delivered(self) -> int:
        return self.attempt

    @property
    def last_attempt(self) -> bool:
        """True when a failure now should be final: no delivery is left after this one."""
        return self.attempt >= self.max_deliver

    def ack(self) -> None:
        """Done: the job is removed from the queue."""
        self._settle(lambda: self.ops.ack(self))

    def nak(self, delay: float = 0.0) -> None:
        """Failed this time: deliver again after ``delay`` seconds (dead-lettered if none are left)."""
        self._settle(lambda: self.ops.nak(self, max(0.0, delay)))

    def term(self, reason: str) -> None:
        """Never deliver again: the job goes to the dead-letter queue with ``reason``."""
        self._settle(lambda: self.ops.term(self, reason))

    def release(self) -> None:
        """Hand back unfinished work (shutdown) without spending the job's last delivery."""
        self._settle(lambda: self.ops.release(self))

    def in_progress(self) -> None:
        """Heartbeat: restart the ack-wait clock, so a long job is not delivered to someone else."""
        if self.settled:
            raise QueueError(f"job {self.msg_id} is already settled")
        self.ops.in_progress(self)

    def _settle(self, op: Callable[[], None]) -> None:
        if self.settled:
            raise QueueError(f"job {self.msg_id} is already settled")
        op()
        self.settled = True


class WorkQueue(Protocol):
    """A durable work queue shared by any number of consumers; each job goes to one at a time."""

    def publish(self, payload: dict[str, Any], *, msg_id: str, headers: dict[str, str] | None = None) -> bool:
        """Enqueue ``payload``; False when ``msg_id`` was already published within the dedup window."""
        ...

    def fetch(self, timeout: float) -> Job | None:
        """The next job, or None when none arrives within ``timeout`` seconds."""
        ...

    def depth(self) -> int:
        """Jobs in the queue not yet settled (waiting or being worked on)."""
        ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        ...

    def probe(self) -> ComponentState:
        """Readiness: ok when jobs can be published and fetched."""
        ...

    def close(self) -> None: ...
