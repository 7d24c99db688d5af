"""Machine facts every benchmark prints in its header, so each figure names where it was measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def cpu_and_ram() -> tuple[str, int]:
    """(CPU model name, total RAM in KiB) from /proc."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for raw in fh:
            if raw.startswith("model name"):
                cpu = raw.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for raw in fh:
            if raw.startswith("MemTotal:"):
                ram_kib = int(raw.split()[1])
    return cpu, ram_kib


def fetch_corpus(fetch: Path, name: str) -> Path:
    """The unpacked source tree of corpus ``name`` (``../shared/corpora/fetch.sh`` caches it)."""
    out = subprocess.run(["bash", str(fetch), name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"fetch.sh {name} failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def lens_commit() -> str:
    """The project's short commit, marked when tracked files have local changes."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(PROJECT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" + local changes" if dirty else "")
