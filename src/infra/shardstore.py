"""Where indexers put Lens shards and searchers get them: a file store plus a "current ref" per repo.

A publication is two steps: the shard file goes into an object store under a new name, then the
repo's ref (generation, sha256, size, object name) is written to a key-value map. Readers only
trust the ref, and ``fetch`` checks the bytes against it, so a torn, tampered or swapped object
is refused instead of served. Generations never go backwards: publishing an older generation
than the current ref raises :class:`StaleGeneration` (the check and the write are one atomic
compare-and-set), while republishing the same generation replaces it.

Two implementations pass the same conformance tests:

- :class:`DirShardStore` -- embedded: a directory of object files and one JSON ref file,
  every change an atomic rename.
- :class:`NatsShardStore` -- NATS JetStream: Object Store bucket ``<ns>-shards`` (chunked,
  streamed from and to disk, so shards of hundreds of MB never sit in memory) and KV bucket
  ``<ns>-generations`` (key = encoded repo name, value = JSON ref). nats-py is async; the store
  runs it on a private event-loop thread and offers a plain blocking API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

log = logging.getLogger("infra.shardstore")
T = TypeVar("T")
_COPY_CHUNK = 1 << 20


# -- the model ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardRef:
    """One published shard: what a searcher must download and what the bytes must hash to."""

    repo: str
    generation: int
    sha256: str
    size: int
    published_at: float
    object_name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardRef:
        try:
            return cls(
                repo=str(data["repo"]),
                generation=int(data["generation"]),
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                published_at=float(data["published_at"]),
                object_name=str(data["object_name"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a shard ref: {exc}") from exc

    @classmethod
    def from_json(cls, raw: bytes) -> ShardRef:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not a shard ref: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("not a shard ref: expected a JSON object")
        return cls.from_dict(data)


EventKind = Literal["put", "delete", "synced", "invalid"]


@dataclass(frozen=True)
class ShardEvent:
    """A change seen by a watch. ``synced`` (once, first) ends the replay of the current refs;
    ``invalid`` is a ref that could not be read (``error`` says why)."""

    kind: EventKind
    repo: str = ""
    ref: ShardRef | None = None
    error: str | None = None


class ShardStoreError(Exception):
    """The store could not do what was asked."""


class ShardStoreUnavailable(ShardStoreError):
    """The backing service is unreachable or timed out."""


class ShardNotFound(ShardStoreError):
    """The ref names an object the store does not hold (deleted or never written)."""


class ShardVerifyError(ShardStoreError):
    """Downloaded bytes do not match the ref's sha256 or size; nothing was written."""


class StaleGeneration(ShardStoreError):
    """A newer generation is already published for this repository."""


class ShardWatch:
    """Events in arrival order, from a background producer; ``get`` blocks up to ``timeout``."""

    _ERROR = "__error__"

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self._queue: queue.Queue[ShardEvent | tuple[str, str]] = queue.Queue()
        self._on_close = on_close
        self._closed = False

    def push(self, event: ShardEvent) -> None:
        self._queue.put(event)

    def fail(self, message: str) -> None:
        self._queue.put((self._ERROR, message))

    def get(self, timeout: float) -> ShardEvent | None:
        """The next event, or None after ``timeout``; raises ShardStoreError once the feed broke."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, tuple):
            raise ShardStoreUnavailable(f"shard watch stopped: {item[1]}")
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> ShardWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardStore(Protocol):
    def publish(self, repo: str, shard_path: Path, generation: int) -> ShardRef:
        """Upload ``shard_path`` and make it ``repo``'s current ref; StaleGeneration if older."""
        ...

    def current(self, repo: str) -> ShardRef | None: ...

    def all(self) -> list[ShardRef]: ...

    def fetch(self, ref: ShardRef, dest_path: Path) -> None:
        """Download to ``dest_path`` (atomically); ShardVerifyError on a sha256/size mismatch."""
        ...

    def watch(self) -> ShardWatch:
        """Every current ref as ``put``, then ``synced``, then changes as they happen."""
        ...

    def delete(self, repo: str) -> None: ...

    def close(self) -> None: ...


# -- helpers shared by both stores ------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_ESCAPED = re.compile(r"=([0-9a-f]{2})")


def repo_key(repo: str) -> str:
    """A KV-key/file-name-safe, reversible spelling of ``repo``: other bytes become ``=hh``."""
    if not repo:
        raise ValueError("repository name must not be empty")
    return "".join(ch if _PLAIN.fullmatch(ch) else "".join(f"={b:02x}" for b in ch.encode()) for ch in repo)


def repo_from_key(key: str) -> str:
    return bytes(_unescape(key)).decode()


def _unescape(key: str) -> bytearray:
    out = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "=" and _ESCAPED.match(key, i):
            out.append(int(key[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(key[i].encode())
            i += 1
    return out


def object_name_for(repo: str, generation: int) -> str:
    """Unique per upload, so a new publication never overwrites bytes a reader is downloading."""
    return f"{repo_key(repo)}/g{generation:08d}-{uuid.uuid4().hex[:12]}"


class _HashingWriter:
    """A file-like sink that hashes and counts what passes through (progress time included)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.size = 0
        self.touched = time.monotonic()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self.touched = time.monotonic()
        return self._fh.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _HashingReader:
    """A readinto-capable source that hashes what is read (nats-py streams from ``readinto``)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.size = 0
        self.touched = time.monotonic()

    def readinto(self, buf: bytearray | memoryview) -> int:
        n = self._fh.readinto(buf)  # type: ignore[attr-defined]
        n = n or 0
        self._hash.update(memoryview(buf)[:n])
        self.size += n
        self.touched = time.monotonic()
        return int(n)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _verified_download(ref: ShardRef, dest: Path, copy: Callable[[_HashingWriter], None]) -> None:
    """Write via ``copy`` into a hidden part file; publish it at ``dest`` only if it matches ``ref``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        with open(part, "wb") as fh:
            sink = _HashingWriter(fh)
            copy(sink)
            fh.flush()
            os.fsync(fh.fileno())
        if sink.size != ref.size or sink.hexdigest() != ref.sha256:
            raise ShardVerifyError(
                f"shard {ref.object_name} of {ref.repo!r} does not match its ref: got {sink.size} bytes "
                f"sha256 {sink.hexdigest()[:16]}..., expected {ref.size} bytes sha256 {ref.sha256[:16]}..."
            )
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


# -- embedded: a directory ---------------------------------------------------------------------
class DirShardStore:
    """``root/objects/<key>/<gen>-<sha>`` files and ``root/refs.json``; a flock orders writers.

    Good for one machine (tests, a single-box deployment); every change is an atomic rename, so a
    crash leaves either the old or the new state. Watching polls ``refs.json``.
    """

    def __init__(self, root: Path, *, poll_interval: float = 0.2) -> None:
        self.root = root
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self._refs_path = root / "refs.json"
        self._poll = poll_interval

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_refs(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._refs_path.read_bytes())
        except FileNotFoundError:
            return {}
        refs = data.get("refs", {}) if isinstance(data, dict) else {}
        return refs if isinstance(refs, dict) else {}

    def _write_refs(self, refs: dict[str, dict[str, Any]]) -> None:
        tmp = self.root / f".refs.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"version": 1, "refs": refs}, sort_keys=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self._refs_path)

    def _object_path(self, name: str) -> Path:
        path = (self.objects / name).resolve()
        if not path.is_relative_to(self.objects.resolve()):
            raise ShardStoreError(f"object name {name!r} escapes the store")
        return path

    def publish(self, repo: str, shard_path: Path, generation: int) -> ShardRef:
        current = self.current(repo)
        if current is not None and current.generation > generation:
            raise _stale(repo, generation, current)
        name = object_name_for(repo, generation)
        final = self._object_path(name)
        final.parent.mkdir(exist_ok=True)
        tmp = final.with_name(f".upload-{final.name}")
        try:
            with open(shard_path, "rb") as src, open(tmp, "wb") as dst:
                sink = _HashingWriter(dst)
                shutil.copyfileobj(src, sink, _COPY_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            ref = ShardRef(repo, generation, sink.hexdigest(), sink.size, time.time(), name)
            with self._locked():
                refs = self._read_refs()
                before = _parse_ref(refs.get(repo))
                if before is not None and before.generation > generation:
                    raise _stale(repo, generation, before)
                os.replace(tmp, final)
                refs[repo] = ref.to_dict()
                self._write_refs(refs)
                keep = {final.name} | ({Path(before.object_name).name} if before is not None else set())
                for old in final.parent.iterdir():
                    if old.name not in keep and not old.name.startswith(".upload-"):
                        old.unlink(missing_ok=True)
            return ref
        finally:
            tmp.unlink(missing_ok=True)

    def current(self, repo: str) -> ShardRef | None:
        return _parse_ref(self._read_refs().get(repo))

    def all(self) -> list[ShardRef]:
        refs = (_parse_ref(v) for v in self._read_refs().values())
        return sorted((r for r in refs if r is not None), key=lambda r: r.repo)

    def fetch(self, ref: ShardRef, dest_path: Path) -> None:
        path = self._object_path(ref.object_name)

        def copy(sink: _HashingWriter) -> None:
            try:
                src = open(path, "rb")  # noqa: SIM115 -- closed below; FileNotFoundError maps to ShardNotFound
            except FileNotFoundError:
                raise ShardNotFound(f"object {ref.object_name} of {ref.repo!r} is gone") from None
            with src:
                shutil.copyfileobj(src, sink, _COPY_CHUNK)

        _verified_download(ref, dest_path, copy)

    def delete(self, repo: str) -> None:
        with self._locked():
            refs = self._read_refs()
            if refs.pop(repo, None) is not None:
                self._write_refs(refs)
            shutil.rmtree(self.objects / repo_key(repo), ignore_errors=True)

    def watch(self) -> ShardWatch:
        stop = threading.Event()
        watch = ShardWatch(on_close=stop.set)

        def poll() -> None:
            seen: dict[str, ShardRef] = {}
            first = True
            while not stop.is_set():
                try:
                    raw = self._read_refs()
                except (OSError, ValueError) as exc:
                    watch.fail(f"cannot read {self._refs_path}: {exc}")
                    return
                now: dict[str, ShardRef] = {}
                for repo, value in raw.items():
                    ref = _parse_ref(value)
                    if ref is None:
                        if first:
                            watch.push(ShardEvent("invalid", repo, error="unreadable ref"))
                        continue
                    now[repo] = ref
                for repo, ref in sorted(now.items()):
                    if seen.get(repo) != ref:
                        watch.push(ShardEvent("put", repo, ref))
                for repo in sorted(seen.keys() - now.keys()):
                    watch.push(ShardEvent("delete", repo))
                seen = now
                if first:
                    watch.push(ShardEvent("synced"))
                    first = False
                stop.wait(self._poll)

        threading.Thread(target=poll, name="shardstore-dir-watch", daemon=True).start()
        return watch

    def close(self) -> None:
        pass


def _parse_ref(value: object) -> ShardRef | None:
    if not isinstance(value, dict):
        return None
    try:
        return ShardRef.from_dict(value)
    except ValueError:
        return None


def _stale(repo: str, generation: int, current: ShardRef) -> StaleGeneration:
    return StaleGeneration(
        f"{repo!r} generation {generation} is older than the published generation {current.generation}"
    )


# -- NATS JetStream ---------------------------------------------------------------------------
class _LoopThread:
    """An asyncio loop on its own daemon thread; ``run`` submits a coroutine and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ShardStoreUnavailable(f"NATS operation timed out after {timeout:.0f}s") from None

    def run_while_progressing(
        self, coro: Coroutine[Any, Any, T], touched: Callable[[], float], stall_timeout: float
    ) -> T:
        """Wait as long as bytes keep moving: a big shard may take minutes, a stalled one must not."""
        future = self.submit(coro)
        while True:
            try:
                return future.result(min(1.0, stall_timeout))
            except TimeoutError:
                if time.monotonic() - touched() > stall_timeout:
                    future.cancel()
                    raise ShardStoreUnavailable(f"transfer stalled for {stall_timeout:.0f}s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


_BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_FETCH_BATCH = 32  # chunks per pull request: 16 MiB in flight with 512 KiB chunks


class NatsShardStore:
    """Object Store ``<ns>-shards`` + KV ``<ns>-generations`` on NATS JetStream (blocking API)."""

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        replicas: int = 1,
        chunk_size: int = 512 * 1024,
        op_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        connect_timeout: float = 3.0,
        gc_grace_s: float = 600.0,
    ) -> None:
        if not _BUCKET_RE.match(namespace):
            raise ValueError(f"NATS namespace {namespace!r} may use letters, digits, '_' and '-' only")
        self.url = url
        self.namespace = namespace
        self.objects_bucket = f"{namespace}-shards"
        self.kv_bucket = f"{namespace}-generations"
        self._replicas = replicas
        self._chunk = chunk_size
        self._timeout = op_timeout
        self._stall = stall_timeout
        self._gc_grace = gc_grace_s
        self._watches: set[ShardWatch] = set()
        self._watches_lock = threading.Lock()
        self._meta_subjects = f"$O.{self.objects_bucket}.M.>"
        self._loop = _LoopThread(f"shardstore-nats-{namespace}")
        try:
            self._nc, self._kv, self._obs = self._loop.run(
                self._connect(connect_timeout), timeout=connect_timeout * 4 + op_timeout
            )
        except BaseException as exc:
            self._loop.close()
            if isinstance(exc, ShardStoreError):
                raise
            raise ShardStoreUnavailable(f"cannot use NATS at {url}: {type(exc).__name__}: {exc}") from exc

    async def _connect(self, connect_timeout: float) -> tuple[Any, Any, Any]:
        import nats
        from nats.js.errors import BucketNotFoundError

        async def quiet(exc: Exception) -> None:
            log.warning("nats %s: %s: %s", self.url, type(exc).__name__, exc)

        async def disconnected() -> None:
            # A watch cannot be trusted across a reconnect (the server may have restarted and lost
            # its consumer): end it, so its owner reopens the store and gets a fresh replay.
            with self._watches_lock:
                watches = list(self._watches)
            for watch in watches:
                watch.fail(f"disconnected from NATS at {self.url}")

        nc = await nats.connect(
            self.url,
            name="lens-shardstore",
            connect_timeout=connect_timeout,
            max_reconnect_attempts=3,
            reconnect_time_wait=1,
            error_cb=quiet,
            disconnected_cb=disconnected,
            closed_cb=disconnected,
        )
        try:
            js = self._js = nc.jetstream(timeout=self._timeout)
            try:
                kv = await js.key_value(self.kv_bucket)
            except BucketNotFoundError:
                kv = await js.create_key_value(bucket=self.kv_bucket, history=1, replicas=self._replicas)
            try:
                obs = await js.object_store(self.objects_bucket)
            except BucketNotFoundError:
                obs = await js.create_object_store(self.objects_bucket, replicas=self._replicas)
        except BaseException:
            await nc.close()
            raise
        return nc, kv, obs

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop.run(coro, timeout=self._timeout * 3)
        except ShardStoreError:
            raise
        except Exception as exc:
            raise _nats_error(exc) from exc

    # -- refs ------------------------------------------------------------------------------
    async def _get_entry(self, repo: str) -> tuple[ShardRef | None, int]:
        """(current ref, its KV revision); revision 0 means absent, for compare-and-set."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._kv.get(repo_key(repo))
        except KeyNotFoundError as exc:  # a deleted key keeps a tombstone whose revision must be matched
            return None, int(getattr(exc.entry, "revision", 0) or 0)
        return ShardRef.from_json(entry.value), int(entry.revision)

    def current(self, repo: str) -> ShardRef | None:
        return self._run(self._get_entry(repo))[0]

    def all(self) -> list[ShardRef]:
        async def collect() -> list[ShardRef]:
            watcher = await self._kv.watchall(ignore_deletes=True)
            refs: list[ShardRef] = []
            try:
                while (entry := await watcher.updates(timeout=self._timeout)) is not None:
                    with contextlib.suppress(ValueError):
                        refs.append(ShardRef.from_json(entry.value))
            finally:
                await watcher.stop()
            return refs

        return sorted(self._run(collect()), key=lambda r: r.repo)

    # -- publish ---------------------------------------------------------------------------
    def publish(self, repo: str, shard_path: Path, generation: int) -> ShardRef:
        current = self.current(repo)
        if current is not None and current.generation > generation:
            raise _stale(repo, generation, current)
        name = object_name_for(repo, generation)
        with open(shard_path, "rb") as fh:
            source = _HashingReader(fh)
            try:
                self._loop.run_while_progressing(self._put(name, source), lambda: source.touched, self._stall)
            except ShardStoreError:
                raise
            except Exception as exc:
                raise _nats_error(exc) from exc
        ref = ShardRef(repo, generation, source.hexdigest(), source.size, time.time(), name)
        try:
            return self._run(self._commit(ref))
        except BaseException:
            with contextlib.suppress(Exception):
                self._run(self._delete_object(name))
            raise

    async def _put(self, name: str, source: _HashingReader) -> None:
        from nats.js import api

        options = api.ObjectMetaOptions(max_chunk_size=self._chunk)
        await self._obs.put(name, source, meta=api.ObjectMeta(name=name, options=options))

    async def _commit(self, ref: ShardRef) -> ShardRef:
        """Compare-and-set the ref (so racing publishers cannot go backwards), then GC old objects."""
        from nats.js.errors import KeyWrongLastSequenceError

        for _ in range(20):
            before, revision = await self._get_entry(ref.repo)
            if before is not None and before.generation > ref.generation:
                raise _stale(ref.repo, ref.generation, before)
            try:
                await self._kv.update(repo_key(ref.repo), ref.to_json(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another publisher got there first: look again
            keep = {ref.object_name} | ({before.object_name} if before is not None else set())
            await self._gc(ref.repo, keep, self._gc_grace)
            return ref
        raise ShardStoreError(f"could not publish {ref.repo!r}: the ref kept changing under us")

    async def _delete_object(self, name: str) -> None:
        from nats.js.errors import ObjectNotFoundError

        with contextlib.suppress(ObjectNotFoundError):
            await self._obs.delete(name)

    async def _gc(self, repo: str, keep: set[str], grace_s: float) -> None:
        """Drop this repo's objects but the current and previous ones (readers may be on them).

        Objects younger than ``grace_s`` stay too: one may be a racing publisher's upload that
        is complete but not committed yet. Listing reads the bucket's meta subjects from the
        stream state (one server-side snapshot) rather than nats-py's watch-based ``list``.
        """
        from nats.js.errors import ObjectNotFoundError

        prefix = repo_key(repo) + "/"
        stream = await self._js.stream_info(f"OBJ_{self.objects_bucket}", subjects_filter=self._meta_subjects)
        for subject in stream.state.subjects or {}:
            name = base64.urlsafe_b64decode(subject.rsplit(".", 1)[-1]).decode()
            if not name.startswith(prefix) or name in keep:
                continue
            try:
                info = await self._obs.get_info(name)
            except ObjectNotFoundError:
                continue  # already deleted (its meta record is a tombstone)
            if grace_s > 0 and _age_s(info.mtime) < grace_s:
                continue
            await self._delete_object(name)

    # -- fetch / delete / watch ------------------------------------------------------------
    def fetch(self, ref: ShardRef, dest_path: Path) -> None:
        def copy(sink: _HashingWriter) -> None:
            from nats.js.errors import ObjectNotFoundError

            try:
                self._loop.run_while_progressing(self._download(ref, sink), lambda: sink.touched, self._stall)
            except ObjectNotFoundError:
                raise ShardNotFound(f"object {ref.object_name} of {ref.repo!r} is gone") from None
            except ShardStoreError:
                raise
            except Exception as exc:
                raise _nats_error(exc) from exc

        _verified_download(ref, dest_path, copy)

    async def _download(self, ref: ShardRef, sink: _HashingWriter) -> None:
        """Stream the object's chunks through an ephemeral pull consumer, a batch in flight at a time.

        About 3x the throughput of nats-py's ``ObjectStore.get`` (an ordered push consumer whose
        flow control waits on the client); memory stays bounded by one batch.
        """
        from nats.js import api

        info = await self._obs.get_info(ref.object_name)
        if info.size != ref.size:
            raise ShardVerifyError(
                f"object {ref.object_name} holds {info.size} bytes, its ref says {ref.size}"
            )
        stream, subject = f"OBJ_{self.objects_bucket}", f"$O.{self.objects_bucket}.C.{info.nuid}"
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=subject,
            inactive_threshold=self._stall,
        )
        sub = await self._js.pull_subscribe(subject, stream=stream, config=config)
        try:
            received = 0
            while received < (info.chunks or 0):
                batch = await sub.fetch(batch=min(_FETCH_BATCH, info.chunks - received), timeout=self._stall)
                for msg in batch:
                    sink.write(msg.data)
                received += len(batch)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
                await self._js.delete_consumer(stream, sub._consumer)

    def delete(self, repo: str) -> None:
        async def remove() -> None:
            await self._kv.delete(repo_key(repo))
            await self._gc(repo, keep=set(), grace_s=0)

        self._run(remove())

    def watch(self) -> ShardWatch:
        holder: dict[str, Any] = {}

        def close() -> None:
            with self._watches_lock:
                self._watches.discard(watch)
            task = holder.get("task")
            if task is not None:
                self._loop.loop.call_soon_threadsafe(task.cancel)

        watch = ShardWatch(on_close=close)
        with self._watches_lock:
            self._watches.add(watch)

        async def start() -> None:
            watcher = await self._kv.watchall()
            holder["task"] = asyncio.ensure_future(pump(watcher))

        async def pump(watcher: Any) -> None:
            try:
                async for entry in watcher:
                    watch.push(_event_from_entry(entry))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                watch.fail(f"{type(exc).__name__}: {exc}")
            else:
                watch.fail("watch ended")
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

        try:
            self._run(start())
        except BaseException:
            watch.close()
            raise
        return watch

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._nc.close(), timeout=5)
        self._loop.close()


def _age_s(mtime: str | None) -> float:
    """Seconds since an object's ISO mtime; 0 (too young to collect) when it cannot be read."""
    try:
        return time.time() - datetime.fromisoformat(str(mtime)).timestamp()
    except ValueError:
        return 0.0


def _event_from_entry(entry: Any) -> ShardEvent:
    if entry is None:
        return ShardEvent("synced")
    repo = repo_from_key(entry.key)
    if entry.operation in ("DEL", "PURGE"):
        return ShardEvent("delete", repo)
    try:
        return ShardEvent("put", repo, ShardRef.from_json(entry.value))
    except ValueError as exc:
        return ShardEvent("invalid", repo, error=str(exc))


def _nats_error(exc: BaseException) -> ShardStoreError:
    import nats.errors

    if isinstance(
        exc, nats.errors.TimeoutError | nats.errors.ConnectionClosedError | nats.errors.NoServersError
    ):
        return ShardStoreUnavailable(f"NATS unavailable: {type(exc).__name__}: {exc}")
    return ShardStoreError(f"NATS error: {type(exc).__name__}: {exc}")
