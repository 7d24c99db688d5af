"""The embedded work queue: in-process, thread-safe, with JetStream's delivery semantics.

Used where no NATS server is configured and by tests; it redelivers after the ack wait,
honours ``max_deliver`` and dead-letters the same way as :class:`JetStreamQueue`, so code
written against one behaves the same on the other (nothing survives a process restart).
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.health import ComponentState
from infra.queue.base import DeadLetter, DeadLetterCallback, Job, QueueError, exhausted_reason

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    seq: int
    data: dict[str, Any]
    headers: dict[str, str]
    msg_id: str
    delivered: int = 0
    delivery: int = 0  # which delivery holds it now (stale settles are ignored)
    deadline: float | None = None  # in flight until then
    available_at: float = 0.0


class MemoryQueue:
    def __init__(
        self,
        *,
        ack_wait_s: float = 30.0,
        max_deliver: int = 3,
        duplicate_window_s: float = 120.0,
        on_dead_letter: DeadLetterCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.duplicate_window_s = duplicate_window_s
        self.on_dead_letter = on_dead_letter
        self._clock = clock
        self._cond = threading.Condition()
        self._entries: dict[int, _Entry] = {}
        self._seen: dict[str, float] = {}
        self._dlq: list[DeadLetter] = []
        self._seq = itertools.count(1)
        self._closed = False

    # -- WorkQueue ------------------------------------------------------------------------
    def publish(self, payload: dict[str, Any], *, msg_id: str, headers: dict[str, str] | None = None) -> bool:
        with self._cond:
            self._check_open()
            now = self._clock()
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.duplicate_window_s}
            if msg_id in self._seen:
                return False
            self._seen[msg_id] = now
            self._add(copy.deepcopy(payload), dict(headers or {}), msg_id)
            return True

    def fetch(self, timeout: float) -> Job | None:
        give_up = self._clock() + max(0.0, timeout)
        dead: list[DeadLetter] = []
        try:
            with self._cond:
                while True:
                    self._check_open()
                    now = self._clock()
                    entry, wake = self._next_ready(now, dead)
                    if entry is not None:
                        return self._deliver(entry, now)
                    if now >= give_up:
                        return None
                    self._cond.wait(min(give_up, wake) - now)
        finally:
            for letter in dead:
                self._notify_dead(letter)

    def depth(self) -> int:
        with self._cond:
            return len(self._entries)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._cond:
            return list(self._dlq[-limit:])

    def probe(self) -> ComponentState:
        if self._closed:
            return ComponentState("down", {"backend": "memory", "error": "queue is closed"})
        return ComponentState("ok", {"backend": "memory", "depth": self.depth()})

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- JobOps -----------------------------------------------------------------------------
    def ack(self, job: Job) -> None:
        with self._cond:
            if self._holding(job) is not None:
                del self._entries[job.handle[0]]

    def nak(self, job: Job, delay: float) -> None:
        with self._cond:
            entry = self._holding(job)
            if entry is not None:
                entry.deadline = None
                entry.available_at = self._clock() + delay
                self._cond.notify_all()

    def in_progress(self, job: Job) -> None:
        with self._cond:
            entry = self._holding(job)
            if entry is None:
                raise QueueError(f"job {job.msg_id} is no longer held by this delivery")
            entry.deadline = self._clock() + self.ack_wait_s

    def term(self, job: Job, reason: str) -> None:
        with self._cond:
            entry = self._holding(job)
            if entry is None:
                return
            letter = self._bury(entry, reason)
        self._notify_dead(letter)

    def release(self, job: Job) -> None:
        with self._cond:
            entry = self._holding(job)
            if entry is None:
                return
            if entry.delivered < self.max_deliver:
                entry.deadline = None
                entry.available_at = 0.0
            else:  # a fresh copy, so shutting down never spends the last delivery
                del self._entries[entry.seq]
                self._add(entry.data, entry.headers, entry.msg_id)
            self._cond.notify_all()

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise QueueError("queue is closed")

    def _add(self, data: dict[str, Any], headers: dict[str, str], msg_id: str) -> None:
        seq = next(self._seq)
        self._entries[seq] = _Entry(seq, data, headers, msg_id)
        self._cond.notify_all()

    def _next_ready(self, now: float, dead: list[DeadLetter]) -> tuple[_Entry | None, float]:
        """The oldest deliverable entry (expired ones come back; spent ones are dead-lettered)."""
        wake = float("inf")
        for entry in list(self._entries.values()):
            if entry.deadline is not None:
                if entry.deadline > now:
                    wake = min(wake, entry.deadline)
                    continue
                entry.deadline = None
                entry.available_at = 0.0
            if entry.available_at > now:
                wake = min(wake, entry.available_at)
                continue
            if entry.delivered >= self.max_deliver:
                dead.append(self._bury(entry, exhausted_reason(self.max_deliver)))
                continue
            return entry, wake
        return None, wake

    def _deliver(self, entry: _Entry, now: float) -> Job:
        entry.delivered += 1
        entry.delivery += 1
        entry.deadline = now + self.ack_wait_s
        return Job(
            data=copy.deepcopy(entry.data),
            headers=dict(entry.headers),
            msg_id=entry.msg_id,
            attempt=entry.delivered,
            max_deliver=self.max_deliver,
            ops=self,
            handle=(entry.seq, entry.delivery),
        )

    def _holding(self, job: Job) -> _Entry | None:
        """The entry if ``job`` is still its current delivery (a redelivered job moved on)."""
        seq, delivery = job.handle
        entry = self._entries.get(seq)
        if entry is None or entry.delivery != delivery or entry.deadline is None:
            return None
        return entry

    def _bury(self, entry: _Entry, reason: str) -> DeadLetter:
        del self._entries[entry.seq]
        letter = DeadLetter(entry.data, entry.headers, entry.msg_id, reason, entry.delivered, time.time())
        self._dlq.append(letter)
        return letter

    def _notify_dead(self, letter: DeadLetter) -> None:
        if self.on_dead_letter is None:
            return
        try:
            self.on_dead_letter(letter)
        except Exception:  # the letter is already dead-lettered; a failing callback must not undo that
            log.exception("dead-letter callback failed for %s", letter.msg_id)
