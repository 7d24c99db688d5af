"""A thread-safe circuit breaker, so a dead Lens costs callers microseconds, not timeouts.

States: ``closed`` (calls flow; failures are counted) -> ``open`` after
``failure_threshold`` consecutive failures, or when the failure rate over the last
``window`` seconds reaches ``failure_rate`` (with at least ``min_calls`` calls) ->
after ``reset_timeout`` seconds ``half_open``: exactly one trial call is let
through; its success closes the circuit, its failure opens it again.

Callers bracket each call with :meth:`CircuitBreaker.allow` and one of
:meth:`~CircuitBreaker.record_success` / :meth:`~CircuitBreaker.record_failure`
(or use :meth:`CircuitBreaker.call`). Outcomes that say nothing about the
dependency's health (a 4xx answer still proves it is up) should be recorded as
successes. The clock is injectable so tests can drive every transition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TypeVar

log = logging.getLogger("mimir.breaker")

State = Literal["closed", "open", "half_open"]
StateListener = Callable[[State, State], None]
T = TypeVar("T")


class CircuitOpen(Exception):
    """Raised by :meth:`CircuitBreaker.allow` while the circuit rejects calls."""

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitBreaker:
    """Consecutive-failure and failure-rate breaker with a single half-open trial."""

    def __init__(
        self,
        *,
        name: str = "lens",
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        window: float = 30.0,
        failure_rate: float = 0.5,
        min_calls: int = 20,
        trial_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not 0.0 < failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.window = window
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        # A trial whose caller never reports back must not wedge the breaker in half_open.
        self.trial_timeout = trial_timeout
        self.on_state_change = on_state_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._opened_at = 0.0
        self._trial_started: float | None = None
        self._consecutive = 0
        self._recent: deque[tuple[float, bool]] = deque()  # (time, failed) inside the window
        self._recent_failures = 0  # kept in step with _recent: no rescans under load
        self._counters = {
            "allowed": 0,
            "rejected": 0,
            "successes": 0,
            "failures": 0,
            "opened": 0,
            "half_opened": 0,
            "closed": 0,
        }

    # -- inspection -----------------------------------------------------------------
    @property
    def state(self) -> State:
        """The current state; an expired ``open`` reads as ``half_open``."""
        with self._lock:
            change = self._tick()
            state = self._state
        self._notify(change)
        return state

    def counters(self) -> dict[str, Any]:
        """A snapshot of the counters (for ``status()`` and metrics)."""
        with self._lock:
            change = self._tick()
            snap: dict[str, Any] = dict(self._counters)
            snap["state"] = self._state
            snap["consecutive_failures"] = self._consecutive
            snap["window_calls"] = len(self._recent)
            snap["window_failures"] = self._recent_failures
            snap["retry_after"] = self._retry_after() if self._state == "open" else 0.0
        self._notify(change)
        return snap

    # -- the protocol ---------------------------------------------------------------
    def allow(self) -> None:
        """Admit one call or raise :class:`CircuitOpen` at once."""
        with self._lock:
            change = self._tick()
            now = self._clock()
            error: CircuitOpen | None = None
            if self._state == "open":
                error = CircuitOpen(
                    f"circuit {self.name!r} is open after repeated failures; retrying in "
                    f"{self._retry_after():.1f}s",
                    retry_after=self._retry_after(),
                )
            elif self._state == "half_open":
                if self._trial_started is not None and now - self._trial_started < self.trial_timeout:
                    error = CircuitOpen(
                        f"circuit {self.name!r} is half-open and its trial call is in flight",
                        retry_after=0.0,
                    )
                else:
                    self._trial_started = now
            if error is not None:
                self._counters["rejected"] += 1
            else:
                self._counters["allowed"] += 1
        self._notify(change)
        if error is not None:
            raise error

    def record_success(self) -> None:
        with self._lock:
            self._counters["successes"] += 1
            self._consecutive = 0
            self._remember(failed=False)
            change = self._move("closed") if self._state == "half_open" else None
        self._notify(change)

    def record_failure(self) -> None:
        with self._lock:
            self._counters["failures"] += 1
            self._consecutive += 1
            self._remember(failed=True)
            change: tuple[State, State] | None = None
            if self._state == "half_open" or (self._state == "closed" and self._should_trip()):
                change = self._move("open")
        self._notify(change)

    def call(self, fn: Callable[[], T], *, is_failure: Callable[[BaseException], bool] | None = None) -> T:
        """Run ``fn`` through the breaker; exceptions count as failures unless ``is_failure`` says no."""
        self.allow()
        try:
            result = fn()
        except BaseException as exc:
            if is_failure is None or is_failure(exc):
                self.record_failure()
            else:
                self.record_success()
            raise
        self.record_success()
        return result

    def reset(self) -> None:
        """Force ``closed`` and forget history (operator action, tests)."""
        with self._lock:
            self._consecutive = 0
            self._recent.clear()
            self._recent_failures = 0
            change = self._move("closed") if self._state != "closed" else None
        self._notify(change)

    # -- internals (called with the lock held) --------------------------------------
    def _retry_after(self) -> float:
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    def _tick(self) -> tuple[State, State] | None:
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout:
            return self._move("half_open")
        return None

    def _remember(self, *, failed: bool) -> None:
        now = self._clock()
        self._recent.append((now, failed))
        self._recent_failures += failed
        while self._recent and now - self._recent[0][0] > self.window:
            self._recent_failures -= self._recent.popleft()[1]

    def _should_trip(self) -> bool:
        if self._consecutive >= self.failure_threshold:
            return True
        calls = len(self._recent)
        if calls < self.min_calls:
            return False
        return self._recent_failures / calls >= self.failure_rate

    def _move(self, new: State) -> tuple[State, State] | None:
        old = self._state
        if old == new:
            return None
        self._state = new
        self._trial_started = None
        if new == "open":
            self._opened_at = self._clock()
            self._counters["opened"] += 1
        elif new == "half_open":
            self._counters["half_opened"] += 1
        else:
            self._counters["closed"] += 1
            self._consecutive = 0
            self._recent.clear()
            self._recent_failures = 0
        return old, new

    def _notify(self, change: tuple[State, State] | None) -> None:
        """Run the listener outside the lock: a slow or failing hook must not block or break calls."""
        if change is None or self.on_state_change is None:
            return
        try:
            self.on_state_change(*change)
        except Exception:
            log.exception("circuit %r: on_state_change hook failed", self.name)
