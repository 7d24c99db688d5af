"""Both shard stores behave the same: publish/current/fetch, verification, generations, watch, delete.

The NATS store runs against the real JetStream server (``TEST_NATS_URL``, default loopback:4222);
each test gets its own namespace and deletes its buckets afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.shardstore import (
    DirShardStore,
    NatsShardStore,
    ShardEvent,
    ShardNotFound,
    ShardRef,
    ShardStore,
    ShardStoreUnavailable,
    ShardVerifyError,
    ShardWatch,
    StaleGeneration,
    repo_from_key,
    repo_key,
)
from support import free_port

NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")


async def _nats_call(fn: Callable[..., object], *args: object) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await fn(nc.jetstream(), *args)  # type: ignore[misc]
    finally:
        await nc.close()


async def _drop_buckets(js: object, ns: str) -> None:
    for call, bucket in (("delete_key_value", f"{ns}-generations"), ("delete_object_store", f"{ns}-shards")):
        try:
            await getattr(js, call)(bucket)
        except Exception as exc:  # a bucket never created is fine; anything else should be seen
            if "not found" not in str(exc).lower():
                raise


async def _overwrite_object(js: object, bucket: str, name: str, data: bytes) -> None:
    obs = await js.object_store(bucket)  # type: ignore[attr-defined]
    await obs.put(name, data)


@dataclasses.dataclass
class Backend:
    store: ShardStore
    tamper: Callable[[ShardRef, bytes], None]  # overwrite the stored object behind the ref's back
    twin: Callable[[], ShardStore]  # another client of the same store, default settings


@pytest.fixture(params=["dir", "nats"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "dir":
        root = tmp_path / "store"

        def tamper_file(ref: ShardRef, data: bytes) -> None:
            (root / "objects" / ref.object_name).write_bytes(data)

        yield Backend(DirShardStore(root, poll_interval=0.05), tamper_file, lambda: DirShardStore(root))
        return
    ns = f"t{uuid.uuid4().hex[:12]}"
    nats_store = NatsShardStore(NATS_URL, ns, chunk_size=64 * 1024, gc_grace_s=0)  # GC at once: testable

    def tamper_object(ref: ShardRef, data: bytes) -> None:
        asyncio.run(_nats_call(_overwrite_object, f"{ns}-shards", ref.object_name, data))

    try:
        yield Backend(nats_store, tamper_object, lambda: NatsShardStore(NATS_URL, ns))
    finally:
        nats_store.close()
        asyncio.run(_nats_call(_drop_buckets, ns))


def _shard(tmp_path: Path, size: int = 300_000, seed: int = 0) -> Path:
    """A stand-in shard file: the store ships bytes, it never opens them."""
    path = tmp_path / f"shard-{seed}-{size}.sqlite"
    block = hashlib.sha256(str(seed).encode()).digest()
    path.write_bytes((block * (size // len(block) + 1))[:size])
    return path


def _events_until(watch: ShardWatch, done: Callable[[list[ShardEvent]], bool]) -> list[ShardEvent]:
    seen: list[ShardEvent] = []
    deadline = time.monotonic() + 10
    while not done(seen):
        assert time.monotonic() < deadline, f"timed out; saw {seen}"
        event = watch.get(timeout=0.2)
        if event is not None:
            seen.append(event)
    return seen


def test_publish_current_fetch(backend: Backend, tmp_path: Path) -> None:
    s = backend.store
    shard = _shard(tmp_path, size=1_000_003)  # several chunks, odd size
    before = time.time()
    ref = s.publish("alpha", shard, 3)
    data = shard.read_bytes()
    assert (ref.repo, ref.generation, ref.size) == ("alpha", 3, len(data))
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert before <= ref.published_at <= time.time()
    assert s.current("alpha") == ref
    assert s.current("missing") is None
    assert s.all() == [ref]

    dest = tmp_path / "out" / "shard.sqlite"
    s.fetch(ref, dest)
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["shard.sqlite"]


def test_empty_shard_round_trips(backend: Backend, tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    ref = backend.store.publish("void", empty, 1)
    assert (ref.size, ref.sha256) == (0, hashlib.sha256(b"").hexdigest())
    backend.store.fetch(ref, tmp_path / "out.sqlite")
    assert (tmp_path / "out.sqlite").read_bytes() == b""


def test_tampered_object_is_refused_and_nothing_is_written(backend: Backend, tmp_path: Path) -> None:
    s, tamper = backend.store, backend.tamper
    shard = _shard(tmp_path)
    ref = s.publish("beta", shard, 1)
    bad = bytearray(shard.read_bytes())
    bad[1000] ^= 0xFF  # same size, one flipped byte
    tamper(ref, bytes(bad))
    out = tmp_path / "out"
    with pytest.raises(ShardVerifyError):
        s.fetch(ref, out / "shard.sqlite")
    assert not out.exists() or list(out.iterdir()) == []


def test_ref_with_wrong_sha_or_size_is_refused(backend: Backend, tmp_path: Path) -> None:
    s = backend.store
    ref = s.publish("gamma", _shard(tmp_path), 1)
    out = tmp_path / "out"
    for wrong in (dataclasses.replace(ref, sha256="0" * 64), dataclasses.replace(ref, size=ref.size + 1)):
        with pytest.raises(ShardVerifyError):
            s.fetch(wrong, out / "shard.sqlite")
    assert not out.exists() or list(out.iterdir()) == []
    s.fetch(ref, out / "shard.sqlite")  # the true ref still works
    assert (out / "shard.sqlite").stat().st_size == ref.size


def test_newer_generation_replaces_older_is_refused(backend: Backend, tmp_path: Path) -> None:
    s = backend.store
    r1 = s.publish("delta", _shard(tmp_path, seed=1), 1)
    r2 = s.publish("delta", _shard(tmp_path, seed=2), 2)
    assert s.current("delta") == r2 and r2.sha256 != r1.sha256 and r2.object_name != r1.object_name
    s.fetch(r1, tmp_path / "prev.sqlite")  # the previous object stays for readers still on it
    r3 = s.publish("delta", _shard(tmp_path, seed=3), 3)
    with pytest.raises(ShardNotFound):  # ...but not the one before that
        s.fetch(r1, tmp_path / "gone.sqlite")
    assert not (tmp_path / "gone.sqlite").exists()

    with pytest.raises(StaleGeneration):
        s.publish("delta", _shard(tmp_path, seed=4), 2)
    assert s.current("delta") == r3
    again = s.publish("delta", _shard(tmp_path, seed=5), 3)  # same generation: replaces
    assert s.current("delta") == again and again.sha256 != r3.sha256


def test_watch_replays_then_follows(backend: Backend, tmp_path: Path) -> None:
    s = backend.store
    first = s.publish("eps.ilon", _shard(tmp_path, seed=1), 1)
    with s.watch() as watch:
        replay = _events_until(watch, lambda seen: any(e.kind == "synced" for e in seen))
        assert [(e.kind, e.repo, e.ref) for e in replay] == [("put", "eps.ilon", first), ("synced", "", None)]

        second = s.publish("eps.ilon", _shard(tmp_path, seed=2), 2)
        other = s.publish("zeta", _shard(tmp_path, seed=3), 1)
        puts = _events_until(watch, lambda seen: len(seen) >= 2)
        expected = {("put", "eps.ilon", second), ("put", "zeta", other)}
        assert {(e.kind, e.repo, e.ref) for e in puts} == expected

        s.delete("eps.ilon")
        gone = _events_until(watch, lambda seen: len(seen) >= 1)
        assert [(e.kind, e.repo) for e in gone] == [("delete", "eps.ilon")]


def test_delete_removes_ref_and_objects(backend: Backend, tmp_path: Path) -> None:
    s = backend.store
    ref = s.publish("eta", _shard(tmp_path), 1)
    keep = s.publish("theta", _shard(tmp_path, seed=9), 1)
    s.delete("eta")
    assert s.current("eta") is None
    assert s.all() == [keep]
    with pytest.raises(ShardNotFound):
        s.fetch(ref, tmp_path / "x.sqlite")
    again = s.publish("eta", _shard(tmp_path, seed=7), 1)  # a deleted repo can be published again
    assert s.current("eta") == again


def test_repo_keys_are_safe_and_reversible() -> None:
    for name in ("plain-name_1", "go.std", "a/b", "x=y", "café", ".hidden."):
        key = repo_key(name)
        assert all(c.isascii() and (c.isalnum() or c in "_-=") for c in key), key
        assert repo_from_key(key) == name
    with pytest.raises(ValueError):
        repo_key("")


def test_nats_store_unreachable_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(ShardStoreUnavailable):
        NatsShardStore(f"nats://127.0.0.1:{free_port()}", "unreachable", connect_timeout=0.5)
    assert time.monotonic() - started < 15


def test_racing_publishers_never_go_backwards(backend: Backend, tmp_path: Path) -> None:
    first, other = backend.twin(), backend.twin()
    shard = _shard(tmp_path)
    stale: list[int] = []

    def publish_all(store: ShardStore, generations: range) -> None:
        for generation in generations:
            try:
                store.publish("race", shard, generation)
            except StaleGeneration:
                stale.append(generation)

    try:
        with backend.store.watch() as watch:
            _events_until(watch, lambda seen: any(e.kind == "synced" for e in seen))
            threads = [
                threading.Thread(target=publish_all, args=(first, range(1, 21, 2))),
                threading.Thread(target=publish_all, args=(other, range(2, 21, 2))),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            current = backend.store.current("race")
            assert current is not None and current.generation == 20
            seen = _events_until(watch, lambda seen: any(e.ref == current for e in seen))
        generations = [e.ref.generation for e in seen if e.ref is not None]
        assert generations == sorted(generations), generations  # watchers never see a step back
        assert 20 not in stale
    finally:
        first.close()
        other.close()
