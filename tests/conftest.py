"""Shared fixtures: real git repositories made on the fly, and Lens instances on temp data dirs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lens.config import LensSettings
from lens.engine import Lens
from lens.index.embedder import HashEmbedder

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        check=True,
        capture_output=True,
        env=env,
    )
    return out.stdout.decode().strip()


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


def commit_all(repo: Path, message: str = "commit") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """make_repo({"a.py": "..."}, name="repo") -> path of a git repo with one commit."""
    counter = {"n": 0}

    def make(files: dict[str, str | bytes], name: str | None = None) -> Path:
        counter["n"] += 1
        repo = tmp_path / (name or f"repo{counter['n']}")
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write_files(repo, files)
        commit_all(repo, "initial")
        return repo

    return make


@pytest.fixture
def lens_factory(tmp_path: Path) -> Callable[..., Lens]:
    """A Lens on a fresh data dir; HashEmbedder unless ``real_embedder=True``."""

    def make(real_embedder: bool = False, **settings: object) -> Lens:
        data = tmp_path / f"lens-data-{len(list(tmp_path.glob('lens-data-*')))}"
        s = LensSettings(data_dir=data, allowed_roots=str(tmp_path), **settings)  # type: ignore[arg-type]
        if real_embedder:
            return Lens(s)
        return Lens(s, embedder_factory=HashEmbedder)

    return make
