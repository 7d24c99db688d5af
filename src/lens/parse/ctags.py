"""Symbol definitions for languages without a tree-sitter grammar here, via universal-ctags.

Starting a process per file would dominate indexing time on large trees, so the API is a batch: the
batch is written to a temporary directory and one ctags process reads the whole file list.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence

from lens.parse.model import Symbol

log = logging.getLogger(__name__)

# ctags long kind name -> our kind.  Anything else (members, fields, prototypes, enumerators, locals,
# parameters, labels, includes, ...) is not a definition we index.
KIND_MAP: dict[str, str] = {
    "function": "function",
    "func": "function",
    "subroutine": "function",
    "procedure": "function",
    "method": "method",
    "singletonMethod": "method",
    "class": "class",
    "struct": "struct",
    "union": "struct",
    "enum": "enum",
    "interface": "interface",
    "trait": "trait",
    "typedef": "type",
    "type": "type",
    "alias": "type",
    "macro": "constant",
    "define": "constant",
    "constant": "constant",
    "variable": "variable",
    "namespace": "module",
    "module": "module",
}
_CLASS_SCOPES = frozenset({"class", "struct", "union", "interface", "trait"})
_SCOPE_SEPARATORS = ("::", "\\", ".")

_missing_logged = False
_lock = threading.Lock()
_ctags_path: str | None = None
_ctags_checked = False


def find_ctags() -> str | None:
    """Path of a universal-ctags with JSON output, or None (checked once per process)."""
    global _ctags_path, _ctags_checked
    with _lock:
        if not _ctags_checked:
            _ctags_checked = True
            for candidate in (os.environ.get("LENS_CTAGS"), shutil.which("ctags"), "/usr/bin/ctags"):
                if candidate and _is_universal(candidate):
                    _ctags_path = candidate
                    break
        return _ctags_path


def _is_universal(path: str) -> bool:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=10, check=False).stdout.decode(
            "utf-8", "replace"
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "Universal Ctags" in out and "+json" in out


def _warn_missing() -> None:
    global _missing_logged
    if not _missing_logged:
        _missing_logged = True
        log.warning("universal-ctags with JSON support not found; files without tree-sitter get windows only")


def _safe_name(path: str) -> str:
    """A file name that keeps the extension and special names (Makefile) that ctags detects by."""
    base = posixpath.basename(path.replace("\\", "/")) or "file"
    base = base.replace("\n", "_").replace("\r", "_")
    return "file" if base in (".", "..") else base


def _container(scope: object) -> str | None:
    """Innermost name of a ctags scope (``ns::Foo`` -> ``Foo``, ``App\\Models`` -> ``Models``)."""
    if not isinstance(scope, str) or not scope:
        return None
    for sep in _SCOPE_SEPARATORS:
        if sep in scope:
            scope = scope.rsplit(sep, 1)[1]
    return scope or None


def _to_symbol(tag: dict[str, object]) -> Symbol | None:
    kind = KIND_MAP.get(str(tag.get("kind", "")))
    name = tag.get("name")
    line = tag.get("line")
    if kind is None or not isinstance(name, str) or not name or not isinstance(line, int):
        return None
    if name.startswith("__anon"):  # ctags names anonymous structs/enums __anonXXXX
        return None
    end = tag.get("end")
    end_line = end if isinstance(end, int) and end >= line else line
    scope_kind = tag.get("scopeKind")
    if kind == "function" and scope_kind in _CLASS_SCOPES:
        kind = "method"
    return Symbol(name, kind, _container(tag.get("scope")), line, end_line, line)


_CMD_OPTIONS = (
    "--options=NONE",  # ignore ~/.ctags.d and friends: results must not depend on the machine
    "--output-format=json",
    "--fields=+neKZ-P-t-f",  # line, end, long kind names, scope; no pattern, type or file scope
    "--sort=no",
    "-G",  # guess languages from shebangs for extension-less scripts
    "-f",
    "-",
    "-L",
    "-",
)


class _CtagsCrashed(Exception):
    """ctags exited abnormally; some file in the batch is to blame, so the batch can be bisected."""


# Batches are written to memory-backed storage when there is some: creating a directory and a file
# per source file on a busy disk cost about a millisecond each, more than ctags spends parsing it.
_SCRATCH_DIRS = ("/dev/shm",)
# The kind of a JSON tag line, read without decoding the line: most tags (struct members,
# enumerators, labels, ...) are not kept, and json.loads is the slow part of reading the output.
_KIND_RE = re.compile(rb'"kind": "([^"\\]*)"')
_KEPT_KINDS = frozenset(k.encode() for k in KIND_MAP)


def _scratch_dir() -> str | None:
    for candidate in _SCRATCH_DIRS:
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None  # the platform's temporary directory


def _run(exe: str, files: Sequence[tuple[str, bytes]], timeout: float) -> dict[str, list[Symbol]]:
    scratch = _scratch_dir()
    try:
        return _run_in(exe, files, timeout, scratch)
    except OSError:
        if scratch is None:
            raise
        return _run_in(exe, files, timeout, None)  # e.g. a small /dev/shm that is full


def _run_in(
    exe: str, files: Sequence[tuple[str, bytes]], timeout: float, scratch: str | None
) -> dict[str, list[Symbol]]:
    with tempfile.TemporaryDirectory(prefix="lens-ctags-", dir=scratch) as tmp:
        names: dict[str, str] = {}
        for i, (path, content) in enumerate(files):
            rel = f"{i}/{_safe_name(path)}"
            os.mkdir(os.path.join(tmp, str(i)))
            with open(os.path.join(tmp, rel), "wb") as fh:
                fh.write(content)
            names[rel] = path
        proc = subprocess.run(
            [exe, *_CMD_OPTIONS],
            cwd=tmp,
            input="".join(f"{rel}\n" for rel in names).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise _CtagsCrashed(f"exit {proc.returncode}: {proc.stderr[-300:].decode('utf-8', 'replace')}")
    result: dict[str, list[Symbol]] = {path: [] for path in names.values()}
    for raw in proc.stdout.splitlines():
        kind = _KIND_RE.search(raw)
        if kind is not None and kind.group(1) not in _KEPT_KINDS:
            continue  # _to_symbol() would drop it
        try:
            tag = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(tag, dict) or tag.get("_type") != "tag":
            continue
        orig = names.get(str(tag.get("path", "")))
        sym = _to_symbol(tag)
        if orig is not None and sym is not None:
            result[orig].append(sym)
    for syms in result.values():
        syms.sort(key=lambda s: (s.start_line, s.line))
    return result


def ctags_symbols(files: Sequence[tuple[str, bytes]], timeout: float = 600.0) -> dict[str, list[Symbol]]:
    """Symbols for each ``(path, content)`` from one ctags run; ``{}`` if ctags is unavailable.

    Paths in the result are the given ones; files ctags has no parser for map to ``[]``.  If ctags
    crashes, the batch is bisected so one bad file only loses its own symbols (it is then absent from
    the result); a timeout or OS error gives up on the whole batch.
    """
    if not files:
        return {}
    exe = find_ctags()
    if exe is None:
        _warn_missing()
        return {}
    try:
        return _run(exe, files, timeout)
    except _CtagsCrashed as exc:
        if len(files) == 1:
            log.warning("ctags failed on %s: %s", files[0][0], exc)
            return {}
        mid = len(files) // 2
        return {**ctags_symbols(files[:mid], timeout), **ctags_symbols(files[mid:], timeout)}
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("ctags failed on a batch of %d files: %s", len(files), exc)
        return {}
