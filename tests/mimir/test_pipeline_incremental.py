"""A re-index that reuses the previous commit's analysis produces exactly what a from-scratch index does.

Two data directories index the same repository: one indexes the parent commit first and then the
child (so the child's run reuses the parent's analysis cache and Lens shard), the other indexes the
child only. The research databases, graph, repo map and manifest counts must be identical.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitrepo import commit_all, git, write_files
from mimir.analyze.cache import FILE_NAME
from mimir.config import MimirSettings
from mimir.pipeline.run import index_dir
from mimir.service import Mimir

FILES = {
    "shop/__init__.py": "",
    "shop/util/__init__.py": "",
    "shop/pricing.py": (
        "from shop.util.money import round_cents\n\n\n"
        "class Discount:\n"
        "    def apply(self, amount):\n"
        "        return round_cents(amount * 0.9)\n\n\n"
        "def apply_discount(amount):\n"
        "    if amount > 100:\n"
        "        return Discount().apply(amount)\n"
        "    return amount\n"
    ),
    "shop/util/money.py": (
        "def round_cents(x):\n    return round(x, 2)\n\n\ndef fmt(x):\n    return f'{x:.2f}'\n"
    ),
    "shop/cart.py": (
        "from shop.pricing import apply_discount\n"
        "from shop.util import money\n\n\n"
        "def checkout_total(items):\n"
        "    subtotal = sum(price for _, price in items)\n"
        "    audit_log(subtotal)\n"
        "    return money.fmt(apply_discount(subtotal))\n"
    ),
    "shop/legacy.py": "def old_total(items):\n    return len(items)\n",
    "shop/report.py": "def report(items):\n    return old_total\n",
    "shop/copy_a.py": "def same():\n    return helper_value\n",
    "web/app.js": "import { fmt } from './fmt.js';\nexport function show(x) { return fmt(x); }\n",
    "web/fmt.js": "export function fmt(x) { return String(x); }\n",
    "README.md": "# shop\n",
}

# The child commit: one edited file that defines names other (unchanged) files already use
# (audit_log, helper_value), a deleted file (its names disappear), a new file, a renamed file and a
# copy of an existing file.
CHANGES: dict[str, str | bytes] = {
    "shop/util/money.py": (
        "def round_cents(x):\n    return round(x, 2)\n\n\ndef fmt(x):\n    return f'{x:.2f}'\n\n\n"
        "def audit_log(value):\n    return value\n\n\ndef helper_value():\n    return 3\n"
    ),
    "shop/refunds.py": (
        "from shop.cart import checkout_total\n\n\ndef refund(items):\n    return -checkout_total(items)\n"
    ),
    "shop/copy_b.py": "def same():\n    return helper_value\n",
}


def _index(mimir: Mimir, repo: Path) -> dict[str, Any]:
    out = mimir.ensure_repo_index(str(repo))
    run = mimir.manager.wait(out["run"]["run_id"], timeout=180)
    assert run.state == "succeeded", run.error
    manifest = mimir.manifest(out["index_id"])
    assert isinstance(manifest, dict)
    return manifest


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        out = {n: list(conn.execute(f"SELECT * FROM {n} ORDER BY rowid")) for n in names}
        out["indexes"] = sorted(
            conn.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type='index'")
        )
    finally:
        conn.close()
    out["meta"] = [row for row in out["meta"] if row[0] != "analysis_seconds"]  # timings
    return out


def _settings(tmp_path: Path, name: str) -> MimirSettings:
    return MimirSettings(data_dir=tmp_path / name, allowed_roots=str(tmp_path), embed=False, lens_url=None)


def test_incremental_reindex_equals_full_index(tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(FILES, name="shop-repo")
    incremental = Mimir(_settings(tmp_path, "data-incremental"))
    scratch = Mimir(_settings(tmp_path, "data-scratch"))
    try:
        first = _index(incremental, repo)
        assert first["analysis_reuse"] == {"reused": 0, "rescanned": 0, "analyzed": 10}

        write_files(repo, CHANGES)
        git(repo, "rm", "-q", "shop/legacy.py")
        git(repo, "mv", "web/fmt.js", "web/format.js")
        (repo / "web/app.js").write_text(
            "import { fmt } from './format.js';\nexport function show(x) { return fmt(x); }\n"
        )
        commit_all(repo, "child")

        second = _index(incremental, repo)
        full = _index(scratch, repo)
        assert second["index_id"] == full["index_id"] != first["index_id"]
        # money.py, refunds.py and app.js are new content; cart.py and copy_a/copy_b.py use a name
        # defined only now, so they are re-scanned; the rest (and the renamed fmt.js) is reused,
        # report.py without its use of old_total, whose definition is gone.
        assert second["analysis_reuse"] == {"reused": 5, "rescanned": 3, "analyzed": 3}
        assert full["analysis_reuse"] == {"reused": 0, "rescanned": 0, "analyzed": 11}
        assert second["counts"] == full["counts"]
        assert second["skipped"] == full["skipped"]

        inc_dir = index_dir(incremental.settings, second["index_id"])
        full_dir = index_dir(scratch.settings, full["index_id"])
        assert _tables(inc_dir / "research.sqlite") == _tables(full_dir / "research.sqlite")
        for name in ("graph.json", "repomap.md"):
            assert (inc_dir / name).read_bytes() == (full_dir / name).read_bytes(), name
        refs = _tables(full_dir / "research.sqlite")["refs"]
        assert ("audit_log", "shop/cart.py", 7, "call", "checkout_total") in refs
        assert ("helper_value", "shop/copy_b.py", 2, "ref", "same") in refs
        assert not any(r[1] == "shop/legacy.py" or r[0] == "old_total" for r in refs)
        parent = _tables(index_dir(incremental.settings, first["index_id"]) / "research.sqlite")
        assert ("old_total", "shop/report.py", 2, "ref", "report") in parent["refs"]

        # The cache stays next to the index, out of the bundle.
        assert (inc_dir / FILE_NAME).is_file()
        assert FILE_NAME not in second["artifacts"] and FILE_NAME not in second["bundle"].get("members", {})
        assert set(second["artifacts"]) == set(full["artifacts"])

        # A cache that cannot be read means a full analysis, never a failed or wrong run.
        (inc_dir / FILE_NAME).write_bytes(b"not a database")
        (repo / "shop/legacy.py").write_text("def old_total(items):\n    return len(items)\n")
        commit_all(repo, "grandchild")
        third = _index(incremental, repo)
        assert third["analysis_reuse"]["reused"] == 0
        assert third["counts"]["files"] == full["counts"]["files"] + 1
    finally:
        incremental.close()
        scratch.close()


def test_close_waits_for_cancelled_runs_to_be_recorded(
    tmp_path: Path, make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing Mimir with a run in flight cancels it and records how it ended before the store
    closes: its reaper thread once wrote to the closed store ("Cannot operate on a closed database")."""
    import mimir.pipeline.manager as manager_mod

    record_run = manager_mod.metrics.record_run

    def slow_record_run(run: Any) -> None:  # the reaper's last step, made slow enough to lose the race
        time.sleep(0.5)
        record_run(run)

    monkeypatch.setattr(manager_mod.metrics, "record_run", slow_record_run)
    repo = make_repo(FILES, name="shop-repo")
    mimir = Mimir(_settings(tmp_path, "data"))
    out = mimir.ensure_repo_index(str(repo))
    run_id = out["run"]["run_id"]
    reapers = dict(mimir.manager._reapers)
    assert run_id in reapers
    mimir.close()
    assert not any(t.is_alive() for t in reapers.values())
    assert mimir.manager._reapers == {}
    reopened = Mimir(_settings(tmp_path, "data"))
    try:
        run = reopened.store.get_run(run_id)
        assert run.state not in ("queued", "running"), run
    finally:
        reopened.close()
