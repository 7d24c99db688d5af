"""Which listed files get indexed: path rules before reading, content checks after.

Ignore rules
    ``.gitignore`` files (the root one and nested ones) are read from the indexed tree itself
    and applied for every source kind: from the commit's tree for git sources, from disk for
    work trees and plain directories. For a git source this means tracked files that a
    ``.gitignore`` matches (generated files committed by mistake, ``git add -f``) are skipped
    too; one rule for every kind keeps a repository's index the same whether it is read from
    a commit or from its checkout. ``.git/info/exclude`` and global excludes are per-machine
    and not applied.

    Semantics follow git: each ``.gitignore`` applies below its own directory, deeper files
    win over shallower ones, and nothing below an excluded directory can be re-included (its
    ``.gitignore`` is not even read). Patterns are git's wildmatch, compiled to RE2 sets.

    ``.lensignore`` (root only, gitignore syntax) is read the same way and wins over every
    ``.gitignore``: a match excludes, a ``!`` match includes, even a vendored directory
    (``!vendor/`` indexes ``vendor``; ``.git`` is never indexed).

Precedence when several reasons apply: ignored, vendored, minified, too_large, undecodable
(path not UTF-8); after reading: binary, undecodable, minified.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import re2

from lens.discover.language import detect_language
from lens.discover.model import FileEntry, LoadedFile, SkipCounts
from lens.discover.source import RepoSource, SkipFn

VENDORED_DIRS: Final = frozenset(
    {
        "node_modules",
        "vendor",
        "dist",
        "build",
        "target",
        ".git",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".mypy_cache",
        "bower_components",
    }
)
MINIFIED_SUFFIXES: Final = (".min.js", ".min.css", "-min.js", ".bundle.js", ".map")
BINARY_SNIFF_BYTES: Final = 8192

# Content heuristic for minified code: only where minifiers are routine.
_MINIFIABLE: Final = (".js", ".mjs", ".cjs", ".css")
_MINIFIED_AVG_LINE: Final = 300
_MINIFIED_LONG_LINE: Final = 5000
_MINIFIED_FEW_LINES: Final = 20


# ----------------------------------------------------------------------------------- gitignore
# Patterns are matched the way git does (dir.c + wildmatch.c, on bytes, case-sensitive), one
# directory level at a time: a pattern decides about a path only if it matches that very path,
# never because it matches one of its parents -- parents are decided first, and nothing below
# an excluded directory is looked at. pathspec cannot be used for this: its compiled patterns
# also match everything below a matching directory, and its GitIgnoreSpec lets ``!a/f`` re-include
# a file below an excluded ``a/``, which git does not.

_ANY: Final = r"[\x00-\xff]"
_DIRS_PREFIX: Final = rf"(?:{_ANY}*/)?"
_SLASH: Final = ord("/")
_CTYPE: Final[dict[bytes, Callable[[str], bool]]] = {
    b"alnum": str.isalnum,
    b"alpha": str.isalpha,
    b"blank": lambda c: c in " \t",
    b"cntrl": lambda c: ord(c) < 32 or ord(c) == 127,
    b"digit": str.isdigit,
    b"graph": lambda c: 33 <= ord(c) <= 126,
    b"lower": str.islower,
    b"print": lambda c: 32 <= ord(c) <= 126,
    b"punct": lambda c: 33 <= ord(c) <= 126 and not c.isalnum(),
    b"space": lambda c: c in " \t\n\r\v\f",
    b"upper": str.isupper,
    b"xdigit": lambda c: c in "0123456789abcdefABCDEF",
}


def _byte(b: int) -> str:
    return chr(b) if chr(b).isalnum() and b < 128 else f"\\x{b:02x}"


def _bracket(pat: bytes, i: int) -> tuple[str | None, int]:
    """Translate the ``[...]`` starting at ``pat[i]``; (None, _) when git would never match."""
    n = len(pat)
    i += 1
    negated = i < n and pat[i] in b"!^"
    if negated:
        i += 1
    members: set[int] = set()
    prev = -1
    first = True
    while True:
        if i >= n:
            return None, n  # unclosed: git aborts the match
        c = pat[i]
        if c == ord("]") and not first:
            break
        first = False
        if c == ord("\\"):
            i += 1
            if i >= n:
                return None, n
            c = pat[i]
            members.add(c)
        elif c == ord("-") and prev >= 0 and i + 1 < n and pat[i + 1] != ord("]"):
            i += 1
            hi = pat[i]
            if hi == ord("\\"):
                i += 1
                if i >= n:
                    return None, n
                hi = pat[i]
            members.update(range(prev, hi + 1))
            c = -1
        elif c == ord("[") and pat[i + 1 : i + 2] == b":":
            close = pat.find(b"]", i + 2)
            if close < 0:
                return None, n
            if pat[close - 1] != ord(":") or close - 1 < i + 2:
                members.add(c)  # not a [:class:], a plain "["
            else:
                test = _CTYPE.get(pat[i + 2 : close - 1])
                if test is None:
                    return None, n  # unknown class: git aborts
                members.update(b for b in range(128) if test(chr(b)))
                i = close
                c = -1
        else:
            members.add(c)
        prev = c
        i += 1
    chosen = (set(range(256)) - members) if negated else members
    chosen.discard(_SLASH)  # with WM_PATHNAME a bracket never matches "/"
    if not chosen:
        return None, i + 1
    parts: list[str] = []
    run: list[int] = []
    for b in [*sorted(chosen), -2]:
        if run and b != run[-1] + 1:
            parts.append(_byte(run[0]) if len(run) == 1 else f"{_byte(run[0])}-{_byte(run[-1])}")
            run = []
        run.append(b)
    return "[" + "".join(parts) + "]", i + 1


def _glob(pat: bytes) -> str | None:
    """Translate a wildmatch pattern (WM_PATHNAME) to a full-match regex over bytes."""
    out: list[str] = []
    n = len(pat)
    i = 0
    while i < n:
        c = pat[i]
        if c == ord("*"):
            j = i
            while j < n and pat[j] == ord("*"):
                j += 1
            after_slash = pat[j : j + 1] == b"/" or pat[j : j + 2] == b"\\/"
            if j - i >= 2 and (i == 0 or pat[i - 1] == _SLASH) and (j == n or after_slash):
                if j == n:
                    out.append(f"{_ANY}*")  # trailing "/**": everything inside
                else:
                    out.append(_DIRS_PREFIX)  # "**/": zero or more directories
                    j += 1 if pat[j] == _SLASH else 2
            else:
                out.append("[^/]*")
            i = j
        elif c == ord("?"):
            out.append("[^/]")
            i += 1
        elif c == ord("["):
            cls, i = _bracket(pat, i)
            if cls is None:
                return None
            out.append(cls)
        elif c == ord("\\"):
            if i + 1 >= n:
                return None  # a trailing backslash never matches in git
            out.append(_byte(pat[i + 1]))
            i += 2
        else:
            out.append(_byte(c))
            i += 1
    return "".join(out)


def _trim_trailing_spaces(line: bytes) -> bytes:
    """Drop trailing spaces unless backslash-escaped (git's trim_trailing_spaces)."""
    last_space = -1
    i = 0
    while i < len(line):
        c = line[i]
        if c == ord(" "):
            if last_space < 0:
                last_space = i
        elif c == ord("\\"):
            i += 1
            if i >= len(line):
                return line
            last_space = -1
        else:
            last_space = -1
        i += 1
    return line[:last_space] if last_space >= 0 else line


@dataclass(frozen=True, slots=True)
class _Pattern:
    regex: str
    negated: bool
    dir_only: bool


def _parse(line: bytes) -> _Pattern | None:
    line = _trim_trailing_spaces(line)
    if not line or line.startswith(b"#"):
        return None
    negated = line.startswith(b"!")
    if negated:
        line = line[1:]
    dir_only = line.endswith(b"/")
    if dir_only:
        line = line[:-1]
    if not line:
        return None
    anchored = b"/" in line  # otherwise the pattern matches the last path component only
    body = _glob(line[1:] if line.startswith(b"/") else line)
    if body is None:
        return None
    return _Pattern(body if anchored else _DIRS_PREFIX + body, negated, dir_only)


class _LastMatch:
    """Which of several patterns is the last to fully match a path: one RE2 set, one pass."""

    def __init__(self, patterns: list[_Pattern]) -> None:
        self.negated = [p.negated for p in patterns]
        self._set: Any = None
        self._fallback: list[re.Pattern[bytes]] = []
        if not patterns:
            return
        try:
            options = re2.Options()
            options.encoding = re2.Options.Encoding.LATIN1
            options.max_mem = 64 << 20
            options.log_errors = False
            matcher = re2.Set.FullMatchSet(options)
            for p in patterns:
                matcher.Add(p.regex)
            matcher.Compile()
            self._set = matcher
        except re2.error:  # too big or unsupported for RE2: slower but equivalent
            self._fallback = [re.compile(p.regex.encode("ascii")) for p in patterns]

    def decide(self, path: bytes) -> bool | None:
        """True if the last match excludes, False if it re-includes, None without a match."""
        if self._set is not None:
            hits: list[int] | None = self._set.Match(path)
            return None if not hits else not self.negated[max(hits)]
        for index in range(len(self._fallback) - 1, -1, -1):
            if self._fallback[index].fullmatch(path):
                return not self.negated[index]
        return None


class IgnoreFile:
    """One file of gitignore syntax, compiled, for paths relative to its directory."""

    def __init__(self, data: bytes) -> None:
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        patterns = [p for raw in data.split(b"\n") if (p := _parse(raw.removesuffix(b"\r")))]
        self.size = len(patterns)
        self._dirs = _LastMatch(patterns)
        self._files = _LastMatch([p for p in patterns if not p.dir_only])

    def decide(self, path: bytes, *, is_dir: bool) -> bool | None:
        """Exclude (True), re-include (False) or no opinion (None) about this very path."""
        return (self._dirs if is_dir else self._files).decide(path)


def compile_ignore(data: bytes | None) -> IgnoreFile | None:
    """Compile gitignore-syntax bytes; None when there is no usable pattern."""
    if not data:
        return None
    rules = IgnoreFile(data)
    return rules if rules.size else None


_Specs = tuple[tuple[int, IgnoreFile], ...]


def _decide(specs: _Specs, path: bytes, *, is_dir: bool) -> bool | None:
    """The deepest ``.gitignore`` with a matching pattern decides: True to exclude, False to keep."""
    for prefix_len, spec in reversed(specs):
        verdict = spec.decide(path[prefix_len:], is_dir=is_dir)
        if verdict is not None:
            return verdict
    return None


def _fs(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class _Dir:
    reason: str | None  # why everything below is skipped, if it is
    specs: _Specs  # (byte length of the directory prefix, its rules), shallow to deep


def _parent(path: str) -> str | None:
    if not path:
        return None
    return path.rpartition("/")[0]


class PathRules:
    """Path-level decisions, computed once per directory and cached.

    ``read_control`` fetches ``.gitignore``/``.lensignore`` files by repository path, so
    rules come from the same tree as the files they judge.
    """

    def __init__(self, read_control: Callable[[str], bytes | None], *, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self._read = read_control
        self._lens = compile_ignore(read_control(".lensignore"))
        self._dirs: dict[str, _Dir] = {}

    def _lens_decides(self, path: bytes, *, is_dir: bool) -> bool | None:
        return None if self._lens is None else self._lens.decide(path, is_dir=is_dir)

    def _dir(self, path: str) -> _Dir:
        found = self._dirs.get(path)
        if found is not None:
            return found
        # Build missing ancestors top-down without recursion: trees can be very deep.
        todo = [path]
        up = _parent(path)
        while up is not None and up not in self._dirs:
            todo.append(up)
            up = _parent(up)
        for d in reversed(todo):
            self._dirs[d] = self._make(d)
        return self._dirs[path]

    def _make(self, d: str) -> _Dir:
        up = _parent(d)
        if up is None:
            spec = compile_ignore(self._read(".gitignore"))
            return _Dir(None, ((0, spec),) if spec else ())
        above = self._dirs[up]
        if above.reason is not None:
            return _Dir(above.reason, ())
        name = d.rpartition("/")[2]
        if name == ".git":
            return _Dir("vendored", ())
        raw = _fs(d)
        lens = self._lens_decides(raw, is_dir=True)
        if lens or (lens is None and _decide(above.specs, raw, is_dir=True)):
            return _Dir("ignored", ())
        if lens is None and name in VENDORED_DIRS:
            return _Dir("vendored", ())
        spec = compile_ignore(self._read(f"{d}/.gitignore"))
        return _Dir(None, (*above.specs, (len(raw) + 1, spec)) if spec else above.specs)

    def dir_reason(self, path: str) -> str | None:
        """Why the whole directory ``path`` is skipped, or None (usable as a source's prune hint)."""
        return self._dir(path).reason

    def file_reason(self, entry: FileEntry) -> str | None:
        """Why ``entry`` is skipped before reading it, or None to read it."""
        path = entry.path
        where = self._dir(path.rpartition("/")[0])
        if where.reason is not None:
            return where.reason
        raw = _fs(path)
        lens = self._lens_decides(raw, is_dir=False)
        if lens or (lens is None and _decide(where.specs, raw, is_dir=False)):
            return "ignored"
        if path.rpartition("/")[2].lower().endswith(MINIFIED_SUFFIXES):
            return "minified"
        if entry.size > self.max_file_bytes:
            return "too_large"
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # a non-UTF-8 file name, kept by surrogateescape
            return "undecodable"
        return None


def looks_minified(path: str, text: str) -> bool:
    """One-line bundles and minified styles: very long lines in .js/.css files."""
    if not path.lower().endswith(_MINIFIABLE) or len(text) <= _MINIFIED_AVG_LINE:
        return False
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if len(text) / lines > _MINIFIED_AVG_LINE:
        return True
    if lines <= _MINIFIED_FEW_LINES and len(text) > _MINIFIED_LONG_LINE:
        return max(map(len, text.split("\n"))) > _MINIFIED_LONG_LINE
    return False


def content_reason(path: str, data: bytes) -> str | None:
    """Why content read for ``path`` is not indexed, or None."""
    if data.find(b"\0", 0, BINARY_SNIFF_BYTES) != -1:
        return "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "undecodable"
    if looks_minified(path, text):
        return "minified"
    return None


def discover(source: RepoSource, *, max_file_bytes: int = 1 << 20, skips: SkipCounts) -> list[FileEntry]:
    """The files worth reading, sorted by path; every other listed file is counted in ``skips``."""
    rules = PathRules(source.read_control, max_file_bytes=max_file_bytes)
    kept: list[FileEntry] = []
    for entry in source.list_files(skips, prune=rules.dir_reason):
        reason = rules.file_reason(entry)
        if reason is None:
            kept.append(entry)
        else:
            skips.add(reason)
    kept.sort(key=lambda e: e.path)
    return kept


def load(
    source: RepoSource,
    entries: Iterable[FileEntry],
    *,
    skips: SkipCounts,
    on_skip: SkipFn | None = None,
    max_file_bytes: int | None = None,
) -> Iterator[LoadedFile]:
    """Read ``entries`` and yield those whose content is indexable.

    Skipped files are counted in ``skips`` and reported to ``on_skip`` (to remember them by
    oid). ``max_file_bytes`` re-checks sizes for files that grew since they were listed.
    """

    def skip(entry: FileEntry, reason: str) -> None:
        skips.add(reason)
        if on_skip is not None:
            on_skip(entry, reason)

    for entry, data in source.read_many(entries, on_skip=skip):
        if max_file_bytes is not None and len(data) > max_file_bytes:
            skip(entry, "too_large")
            continue
        reason = content_reason(entry.path, data)
        if reason is not None:
            skip(entry, reason)
            continue
        yield LoadedFile(
            path=entry.path,
            oid=entry.oid,
            content=data,
            sha256=hashlib.sha256(data).hexdigest(),
            lang=detect_language(entry.path, data[:256]),
        )
