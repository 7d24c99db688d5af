"""Work queue: the ``WorkQueue`` seam and the embedded ``MemoryQueue``.

The NATS one is ``infra.queue.jetstream.JetStreamQueue`` (imported on demand: it loads nats-py).
"""

from infra.queue.base import (
    DeadLetter,
    DeadLetterCallback,
    Job,
    QueueError,
    QueueUnavailable,
    WorkQueue,
    exhausted_reason,
)
from infra.queue.memory import MemoryQueue

__all__ = [
    "DeadLetter",
    "DeadLetterCallback",
    "Job",
    "MemoryQueue",
    "QueueError",
    "QueueUnavailable",
    "WorkQueue",
    "exhausted_reason",
]
