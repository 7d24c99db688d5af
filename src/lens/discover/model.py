"""The files a repository offers at one revision, before and after filtering."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["git", "worktree", "dir"]

# Every reason a file can be skipped; counts are reported per reason.
SKIP_REASONS = (
    "ignored",  # .gitignore / .lensignore (working-directory and plain-directory sources)
    "vendored",  # node_modules, vendor, dist, build, target, .git, ... folders
    "minified",  # *.min.js, *.min.css, one-line bundles
    "too_large",  # over max_file_bytes
    "binary",  # NUL byte in the first 8 KiB
    "undecodable",  # not valid UTF-8
    "symlink",  # links are never followed
    "submodule",  # git submodules (gitlinks)
)


@dataclass(frozen=True)
class FileEntry:
    """A regular file listed by a source, not yet read.

    ``oid`` identifies the content cheaply: the git blob id for git sources,
    ``"<size>:<mtime_ns>"`` for directories. Equal oid means unchanged content.
    """

    path: str  # posix, relative to the repository root
    size: int
    oid: str


@dataclass(frozen=True)
class LoadedFile:
    """An accepted file with its content, ready to parse and index."""

    path: str
    oid: str
    content: bytes  # valid UTF-8
    sha256: str
    lang: str | None


@dataclass
class SkipCounts:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        assert reason in SKIP_REASONS, reason
        self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return {r: self.counts[r] for r in SKIP_REASONS if self.counts[r]}
