"""Mimir with Lens over HTTP: normal answers, honest degraded answers when Lens dies, recovery after restart.

Everything is real: a Lens server process on loopback, Mimir's HTTP client with its
circuit breaker, a git repository made by the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mimir.config import MimirSettings
from mimir.service import Mimir
from support import free_port, start_lens

FILES = {
    "shop/cart.py": (
        "from shop.pricing import apply_discount\n\n\n"
        "def checkout_total(items):\n"
        "    subtotal = sum(price for _, price in items)\n"
        "    return apply_discount(subtotal)\n"
    ),
    "shop/pricing.py": (
        "def apply_discount(amount):\n    if amount > 100:\n        return amount * 0.9\n    return amount\n"
    ),
}


@pytest.fixture
def lens_server(tmp_path: Path) -> Iterator[dict[str, object]]:
    port = free_port()
    state: dict[str, object] = {"port": port, "data": tmp_path / "lens-data", "roots": tmp_path}
    state["proc"] = start_lens(tmp_path / "lens-data", tmp_path, port)
    try:
        yield state
    finally:
        proc = state["proc"]
        assert isinstance(proc, subprocess.Popen)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_lens_outage_is_degraded_then_recovers(
    tmp_path: Path, make_repo: object, lens_server: dict[str, object]
) -> None:
    repo = make_repo(FILES, name="shop-repo")  # type: ignore[operator]
    port = lens_server["port"]
    settings = MimirSettings(
        data_dir=tmp_path / "mimir-data", allowed_roots=str(tmp_path), lens_url=f"http://127.0.0.1:{port}"
    )
    mimir = Mimir(settings)
    try:
        out = mimir.ensure_repo_index(str(repo))
        run = mimir.manager.wait(out["run"]["run_id"], timeout=120)
        assert run.state == "succeeded", run.error
        index_id = out["index_id"]

        normal = mimir.search_repo(index_id, "apply_discount", k=5, mode="hybrid")
        assert normal["results"]
        assert "lens" not in normal["missing"]
        assert {"exact", "bm25"} <= {s for r in normal["results"] for s in r["signals"]}
        assert mimir.lens.status()["breaker"] == "closed"

        proc = lens_server["proc"]
        assert isinstance(proc, subprocess.Popen)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

        started = time.monotonic()
        degraded = mimir.search_repo(index_id, "apply_discount", k=5, mode="hybrid")
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        assert degraded["degraded"] is True
        assert "lens" in degraded["missing"]
        # Answered from what Mimir holds: the symbol graph and stored snippets, with citations.
        top = degraded["results"][0]
        assert top["path"] == "shop/pricing.py" and top["source"] == "snippet"
        assert top["citation"].startswith("shop/pricing.py:L1-L4@")
        assert top["signals"].keys() <= {"symbol", "graph"}
        ask = mimir.ask_index(index_id, "how is the checkout total discounted?")
        assert ask["degraded"] is True and "lens" in ask["missing"]

        # A query with no symbol to fall back on is empty, and says why instead of claiming success.
        empty = mimir.search_repo(index_id, "zzqx nothing matches", k=5)
        assert empty["results"] == [] and empty["degraded"] is True and "message" in empty

        lens_server["proc"] = start_lens(
            lens_server["data"],
            lens_server["roots"],
            port,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 20
        recovered = None
        while time.monotonic() < deadline:
            recovered = mimir.search_repo(index_id, "apply_discount", k=5, mode="hybrid")
            if "lens" not in recovered["missing"]:
                break
            time.sleep(0.5)
        assert recovered is not None and "lens" not in recovered["missing"], recovered
        assert recovered["results"][0]["source"] == "lens"
        assert mimir.lens.status()["breaker"] == "closed"
    finally:
        mimir.close()


def test_bundle_is_searchable_offline_by_another_mimir(tmp_path: Path, make_repo: object) -> None:
    repo = make_repo(FILES, name="bundle-repo")  # type: ignore[operator]
    first = Mimir(MimirSettings(data_dir=tmp_path / "a", allowed_roots=str(tmp_path), embed=False))
    try:
        out = first.ensure_repo_index(str(repo))
        assert first.manager.wait(out["run"]["run_id"], timeout=120).state == "succeeded"
        bundle = first.get_repo_bundle(out["index_id"])
        original = first.search_repo(out["index_id"], "apply_discount", k=3, mode="exact")
    finally:
        first.close()
    second = Mimir(MimirSettings(data_dir=tmp_path / "b", allowed_roots=str(tmp_path), embed=False))
    try:
        imported = second.import_bundle(bundle["path"])
        assert imported == {
            "index_id": out["index_id"],
            "status": "ready",
            "imported": True,
            "commit": out["commit"],
        }
        again = second.search_repo(out["index_id"], "apply_discount", k=3, mode="exact")
        assert [r["citation"] for r in again["results"]] == [r["citation"] for r in original["results"]]
        assert again["results"] and not again["degraded"]
        assert second.import_bundle(bundle["path"])["imported"] is False  # idempotent
    finally:
        second.close()
