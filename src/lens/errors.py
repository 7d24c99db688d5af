"""Error types shared by every Lens layer.

Each error carries a stable machine-readable ``code`` and the HTTP status the
API maps it to, so the CLI and the HTTP layer report the same problem the same way.
"""

from __future__ import annotations

from typing import Any


class LensError(Exception):
    """Base class: a problem the caller can understand and act on."""

    code = "internal"
    status = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class QuerySyntaxError(LensError):
    """A query that cannot be parsed; ``position`` is the 0-based offset of the problem."""

    code = "bad_query"
    status = 400

    def __init__(self, message: str, position: int, *, details: dict[str, Any] | None = None) -> None:
        merged = {"position": position, **(details or {})}
        super().__init__(f"{message} (at position {position})", details=merged)
        self.position = position


class BadRequest(LensError):
    code = "bad_request"
    status = 400


class NotFound(LensError):
    code = "not_found"
    status = 404


class PathNotAllowed(LensError):
    """A filesystem path outside the configured allowed roots."""

    code = "path_not_allowed"
    status = 403


class Unauthorized(LensError):
    code = "unauthorized"
    status = 401


class Conflict(LensError):
    code = "conflict"
    status = 409


class SourceError(LensError):
    """The repository or revision cannot be read (not a repo, unknown revision, git failure)."""

    code = "bad_source"
    status = 400
