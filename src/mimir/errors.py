"""Mimir's errors: each maps to an MCP tool error and an HTTP status with a clear message."""

from __future__ import annotations

from lens.errors import BadRequest, Conflict, LensError, NotFound, PathNotAllowed


class UnknownIndex(NotFound):
    code = "unknown_index"


class UnknownJob(NotFound):
    code = "unknown_job"


class RunCancelled(LensError):
    code = "cancelled"
    status = 409


class LensDown(LensError):
    """Lens cannot be reached and the operation has no honest degraded answer."""

    code = "lens_unavailable"
    status = 503


class StoreUnavailable(LensError):
    """The metadata database cannot be reached right now; retrying later is the right reaction."""

    code = "database_unavailable"
    status = 503


__all__ = [
    "BadRequest",
    "Conflict",
    "LensDown",
    "LensError",
    "NotFound",
    "PathNotAllowed",
    "RunCancelled",
    "StoreUnavailable",
    "UnknownIndex",
]
