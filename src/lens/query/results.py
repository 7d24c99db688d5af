"""Search results as every mode returns them (the CLI and HTTP API serialize these)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lens.errors import BadRequest

Mode = Literal["exact", "ranked", "semantic", "hybrid"]
MODES: tuple[Mode, ...] = ("exact", "ranked", "semantic", "hybrid")


@dataclass
class Hit:
    repo: str
    path: str
    commit: str | None
    language: str | None
    line_number: int  # 1-based; 0 for type:file hits
    line: str
    ranges: list[tuple[int, int]]  # [start, end) character columns of the matches in ``line``
    score: float
    why: list[str]
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    start_line: int | None = None  # chunk span for ranked/semantic hits
    end_line: int | None = None
    symbol: dict[str, Any] | None = None
    signals: dict[str, float] = field(default_factory=dict)  # per-mode scores in hybrid

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies and cost ~2 ms per 100-hit page.
        d = dict(self.__dict__)
        d["ranges"] = [list(r) for r in self.ranges]
        return d


@dataclass
class SearchResult:
    query: str
    mode: Mode
    results: list[Hit]
    total: int
    total_is_estimate: bool
    truncated: bool
    timed_out: bool
    next_cursor: str | None
    took_ms: float
    semantic: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["results"] = [h.to_dict() for h in self.results]
        return d


def query_fingerprint(query: str, mode: str, repos: list[str] | None) -> str:
    raw = json.dumps([query, mode, sorted(repos or [])])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_cursor(offset: int, fingerprint: str, ordering: str = "global") -> str:
    raw = json.dumps({"o": offset, "q": fingerprint, "m": ordering}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> tuple[int, str]:
    """(offset, ordering) a cursor stands for; a cursor from another query is an error, not page 1."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset = int(data["o"])
        fp = str(data["q"])
        ordering = str(data.get("m", "global"))
        if ordering not in ("global", "stream"):
            raise ValueError(ordering)
    except Exception:
        raise BadRequest("invalid cursor", details={"cursor": cursor[:100]}) from None
    if fp != fingerprint:
        raise BadRequest("cursor belongs to a different query", details={"cursor": cursor[:100]})
    if offset < 0:
        raise BadRequest("invalid cursor", details={"cursor": cursor[:100]})
    return offset, ordering
