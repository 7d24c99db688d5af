"""Readiness: each dependency reports its own state; ``/ready`` is 503 when a required one is down.

``/health`` stays a constant answer (liveness must not depend on anything); ``/ready`` asks
every registered probe, so a new dependency is one ``add`` call where it is created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["ok", "degraded", "down", "disabled"]


@dataclass
class ComponentState:
    state: State
    detail: dict[str, Any] = field(default_factory=dict)


Probe = Callable[[], ComponentState]


@dataclass
class _Check:
    probe: Probe
    required: bool


class Readiness:
    """A registry of named dependency probes."""

    def __init__(self) -> None:
        self._checks: dict[str, _Check] = {}

    def add(self, name: str, probe: Probe, *, required: bool = True) -> None:
        self._checks[name] = _Check(probe, required)

    def report(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(ready, {name: {state, required, seconds, ...detail}}); a probe that raises is down."""
        ready = True
        out: dict[str, dict[str, Any]] = {}
        for name, check in self._checks.items():
            started = time.perf_counter()
            try:
                result = check.probe()
            except Exception as exc:  # a probe failing for any reason means that dependency is down
                result = ComponentState("down", {"error": f"{type(exc).__name__}: {exc}"})
            if result.state == "down" and check.required:
                ready = False
            out[name] = {
                "state": result.state,
                "required": check.required,
                "seconds": round(time.perf_counter() - started, 4),
                **result.detail,
            }
        return ready, out
