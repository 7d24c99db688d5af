"""Citations: ``path:Lstart-Lend@commit`` plus the sha256 of exactly those lines.

The hash makes a citation checkable later: the same lines at the same place with
the same text are ``valid``; anything else is ``stale``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mimir.errors import BadRequest

_CITATION_RE = re.compile(
    r"^(?P<path>.+):L(?P<start>\d+)(?:-L?(?P<end>\d+))?@(?P<commit>[0-9a-fA-F]{7,64}|worktree)$"
)


@dataclass(frozen=True)
class Citation:
    path: str
    start: int
    end: int
    commit: str

    def __str__(self) -> str:
        return f"{self.path}:L{self.start}-L{self.end}@{self.commit}"


def parse_citation(text: str) -> Citation:
    m = _CITATION_RE.match(text.strip())
    if not m:
        raise BadRequest("citation must look like path:L10-L20@<commit>", details={"citation": text[:300]})
    start = int(m.group("start"))
    end = int(m.group("end") or start)
    if start < 1 or end < start:
        raise BadRequest(
            "citation line range must satisfy 1 <= start <= end", details={"citation": text[:300]}
        )
    return Citation(m.group("path"), start, end, m.group("commit"))


def span_sha256(lines: list[str]) -> str:
    """sha256 of the cited lines joined with newlines (no trailing newline)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogatepass")).hexdigest()


def cite(path: str, start: int, end: int, commit: str | None) -> str:
    return str(Citation(path, start, end, commit or "worktree"))
