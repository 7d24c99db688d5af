"""Shared fixtures: real git repositories made on the fly, and Lens instances on temp data dirs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gitrepo import GIT_ENV, commit_all, git, write_files  # noqa: F401 (re-exported for fixtures)
from lens.config import LensSettings
from lens.engine import Lens
from lens.index.embedder import HashEmbedder


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
