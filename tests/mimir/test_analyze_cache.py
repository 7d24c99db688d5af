"""The analysis cache: reusing the previous analysis's per-file results gives the full analysis's output."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mimir.analyze import Analysis, SourceFile, analyze_repository
from mimir.analyze import cache as cache_mod
from mimir.analyze.cache import AnalysisCache, FileFacts

BASE = {
    "app/__init__.py": "",
    "app/models.py": (
        "class Base:\n    def save(self):\n        return 1\n\n\n"
        "class User(Base):\n    def save(self):\n        return super().save() + tally(2)\n"
    ),
    "app/views.py": (
        "from app.models import User\n\n\n"
        "def show(uid):\n    user = User()\n    log_event(uid)\n    return user.save()\n"
    ),
    "app/legacy.py": "def tally(n):\n    return n\n",
    "app/uses_tally.py": "def count():\n    return tally\n",
    "lib/util.go": "package lib\n\nfunc Helper() int { return Other() }\n\nfunc Other() int { return 1 }\n",
    "web/a.ts": "import { b } from './b';\nexport function a(): number { return b(); }\n",
    "web/b.ts": "export function b(): number { return 1; }\n",
    "README.md": "# docs, no grammar\n",
}


def files_of(tree: dict[str, str]) -> list[SourceFile]:
    return [SourceFile(path, None, text) for path, text in tree.items()]


def same(a: Analysis, b: Analysis) -> None:
    assert a.definitions == b.definitions
    assert a.imports == b.imports
    assert a.references == b.references
    assert a.graph.to_dict() == b.graph.to_dict()
    assert list(a.ranks.files.items()) == list(b.ranks.files.items())
    assert list(a.ranks.symbols.items()) == list(b.ranks.symbols.items())
    assert a.skipped == b.skipped


def edited(**changes: str | None) -> dict[str, str]:
    tree = dict(BASE)
    for key, text in changes.items():
        path = key.replace("__", "/").replace("_DOT_", ".")
        if text is None:
            tree.pop(path)
        else:
            tree[path] = text
    return tree


CASES = {
    "unchanged": dict(BASE),
    "one edit, new name nobody uses": edited(
        app__views_DOT_py=BASE["app/views.py"] + "\n\ndef extra():\n    pass\n"
    ),
    "new name used by unchanged files": edited(
        app__legacy_DOT_py="def tally(n):\n    return n\n\n\ndef log_event(x):\n    return x\n"
    ),
    "removed file and names": edited(app__legacy_DOT_py=None),
    "renamed file": {("app/renamed.py" if p == "app/legacy.py" else p): t for p, t in BASE.items()},
    "copy of a file": {**BASE, "app/copy.py": BASE["app/uses_tally.py"]},
    "non-ascii text": edited(
        app__views_DOT_py="# é ü\n" + BASE["app/views.py"].replace("uid)\n", "uid)  # ü tally\n")
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reused_analysis_equals_full_analysis(case: str, tmp_path: Path) -> None:
    parent = analyze_repository(files_of(BASE))
    assert parent.cache is not None
    assert parent.reuse == {"reused": 0, "rescanned": 0, "analyzed": 8}
    path = tmp_path / cache_mod.FILE_NAME
    parent.cache.save(path)
    child = files_of(CASES[case])
    full = analyze_repository(child)
    for previous in (parent.cache, AnalysisCache.load(path)):  # in memory and from disk
        assert previous is not None
        again = analyze_repository(child, previous=previous)
        same(full, again)
        assert again.reuse["reused"] > 0
        # ... and a second generation from the reused analysis back to the parent commit
        assert again.cache is not None
        again.cache.save(tmp_path / "second.sqlite")
        back = analyze_repository(files_of(BASE), previous=AnalysisCache.load(tmp_path / "second.sqlite"))
        same(parent, back)


def test_reuse_counts_say_what_was_parsed_again() -> None:
    parent = analyze_repository(files_of(BASE))
    child = analyze_repository(files_of(CASES["new name used by unchanged files"]), previous=parent.cache)
    # legacy.py changed; views.py uses log_event, defined only now, so it is scanned again
    assert child.reuse == {"reused": 6, "rescanned": 1, "analyzed": 1}
    assert any(r.name == "log_event" and r.path == "app/views.py" for r in child.references)
    # The caller's hashes (Mimir has them from acquire) key the lookups instead of hashing again.
    tree = CASES["new name used by unchanged files"]
    hashes = {f.path: cache_mod.content_key(f.text.encode(), "-")[0] for f in files_of(tree)}
    same_commit = analyze_repository(files_of(tree), previous=child.cache, hashes=hashes)
    assert same_commit.reuse == {"reused": 8, "rescanned": 0, "analyzed": 0}
    wrong = analyze_repository(files_of(tree), previous=child.cache, hashes=dict.fromkeys(hashes, "0" * 64))
    assert wrong.reuse == {"reused": 0, "rescanned": 0, "analyzed": 8}


def test_entries_are_shared_by_identical_files_and_keep_their_own_paths() -> None:
    tree = {"a/one.py": "def f():\n    return g()\n\n\ndef g():\n    return 1\n"}
    tree["b/two.py"] = tree["a/one.py"]
    analysis = analyze_repository(files_of(tree))
    assert analysis.cache is not None and len(analysis.cache) == 1
    again = analyze_repository(files_of(tree), previous=analysis.cache)
    same(analysis, again)
    assert {r.path for r in again.references} == {"a/one.py", "b/two.py"}


def test_facts_round_trip_through_json() -> None:
    analysis = analyze_repository(files_of(BASE))
    assert analysis.cache is not None
    for key, entry in analysis.cache.entries.items():
        assert isinstance(entry, FileFacts)
        decoded = FileFacts.decode(entry.encode(), entry.path, key[1])
        assert decoded == entry


def test_unusable_caches_are_ignored(tmp_path: Path) -> None:
    analysis = analyze_repository(files_of(BASE))
    assert analysis.cache is not None
    path = tmp_path / cache_mod.FILE_NAME
    assert AnalysisCache.load(path) is None  # missing
    path.write_bytes(b"garbage, not sqlite")
    assert AnalysisCache.load(path) is None
    analysis.cache.save(path)  # replaces the file
    loaded = AnalysisCache.load(path)
    assert loaded is not None and len(loaded) == len(analysis.cache)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE facts SET data = '[[\"damaged' WHERE rowid = 1")
    conn.commit()
    damaged = AnalysisCache.load(path)
    assert damaged is not None
    again = analyze_repository(files_of(BASE), previous=damaged)  # that one file is analyzed again
    same(analysis, again)
    assert again.reuse == {"reused": 7, "rescanned": 0, "analyzed": 1}
    conn.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (json.dumps("other code"),))
    conn.commit()
    conn.close()
    assert AnalysisCache.load(path) is None  # written by other code or grammars
