"""The catalog's read-path caches never hide a publish, a new repository or a removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from lens.index import catalog as catalog_mod
from lens.index.catalog import SHARD_FILE, Catalog


def _publish(catalog: Catalog, name: str) -> Path:
    build = catalog.new_build_dir(name)
    (build / SHARD_FILE).write_bytes(b"")
    return catalog.publish(name, build)


@pytest.mark.parametrize("settled_ns", [-1, 10**18])  # trust every stat at once / never
def test_every_change_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled_ns: int) -> None:
    monkeypatch.setattr(catalog_mod, "_SETTLED_NS", settled_ns)
    catalog = Catalog(tmp_path)
    assert catalog.names() == []
    first = _publish(catalog, "a")
    assert catalog.names() == ["a"]
    assert catalog.current_generation_dir("a") == first
    for _ in range(3):  # publishes in quick succession, within one mtime tick
        newer = _publish(catalog, "a")
        assert catalog.current_generation_dir("a") == newer
    _publish(catalog, "b")
    assert catalog.names() == ["a", "b"]
    catalog.remove("a")
    assert catalog.names() == ["b"]
    assert catalog.current_generation_dir("a") is None


def test_another_catalog_sees_this_ones_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (here: two catalogs) on one data directory."""
    monkeypatch.setattr(catalog_mod, "_SETTLED_NS", -1)
    writer, reader = Catalog(tmp_path), Catalog(tmp_path)
    gen1 = _publish(writer, "r")
    assert reader.current_generation_dir("r") == gen1
    gen2 = _publish(writer, "r")
    assert reader.current_generation_dir("r") == gen2
    assert reader.require_shard("r") == gen2 / SHARD_FILE
