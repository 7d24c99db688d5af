"""Bundles: one ``.tar.zst`` carrying an index (shard + metadata) between machines.

Layout: ``manifest.json`` first (so a reader learns what to expect before any data),
then each member as a regular file. The manifest lists every member's size and
SHA-256 under ``"members"``.

A bundle is untrusted input. :func:`extract_bundle` therefore accepts only plain
relative names of regular files that the manifest lists, counts bytes as they
stream (tar headers can lie; zstd frames can expand without bound), verifies every
checksum, and works in a private temporary directory that is renamed into place
only when everything checked out -- a rejected bundle leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import zstandard

MANIFEST_NAME = "manifest.json"
BUNDLE_VERSION = 1
ZSTD_LEVEL = 3  # level 6 took 0.74 s of a 5.6 s incremental django run (benchmarks/pipeline.py)
MAX_MANIFEST_BYTES = 16 << 20
_CHUNK = 1 << 20
# Decompressed bytes that are not member data (tar headers, padding, read-ahead) we tolerate
# before calling the archive hostile: guards against huge pax headers tarfile would buffer.
_OVERHEAD_BASE = 1 << 20
_OVERHEAD_PER_MEMBER = 4096
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class BundleError(Exception):
    """A bundle that cannot be written or must not be trusted; the message names the member."""


def check_member_name(name: str) -> None:
    """Raise :class:`BundleError` unless ``name`` is a plain relative POSIX path."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"member {name!r}: empty or non-string name")
    if name.startswith("/"):
        raise BundleError(f"member {name!r}: absolute path")
    if "\\" in name:
        raise BundleError(f"member {name!r}: backslash in name")
    if _DRIVE_RE.match(name):
        raise BundleError(f"member {name!r}: drive letter")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise BundleError(f"member {name!r}: control character in name")
    if len(name.encode()) > 1024:
        raise BundleError(f"member {name[:60]!r}...: name too long")
    for part in name.split("/"):
        if part == "..":
            raise BundleError(f"member {name!r}: '..' component")
        if part in ("", "."):
            raise BundleError(f"member {name!r}: empty or '.' component")


# -- writing ------------------------------------------------------------------------------
def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class _HashingWriter(io.RawIOBase):
    """Passes bytes to ``fh`` and hashes them, so the bundle's digest costs no second read."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.fh.write(view)
        self.sha.update(view)
        self.size += view.nbytes
        return view.nbytes


class _HashingReader(io.RawIOBase):
    """Reads a member while it is archived and re-hashes it: a file changed after hashing is caught."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """Fixed owner/time/mode: bundles of the same content are byte-identical."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def create_bundle(out_path: Path, members: dict[str, Path], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``out_path`` (.tar.zst) atomically; returns its path, size, sha256 and member digests.

    ``manifest`` is written as given plus ``members`` (name -> size, sha256) and
    ``bundle_version``; ``members`` maps archive names to regular files on disk.
    """
    digests: dict[str, dict[str, Any]] = {}
    for name, path in members.items():
        check_member_name(name)
        if name == MANIFEST_NAME:
            raise BundleError(f"member {name!r}: reserved name")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise BundleError(f"member {name!r}: cannot read {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"member {name!r}: {path} is not a regular file")
        size, sha = _hash_file(path)
        digests[name] = {"size": size, "sha256": sha}
    full_manifest = {**manifest, "bundle_version": BUNDLE_VERSION, "members": digests}
    manifest_bytes = json.dumps(full_manifest, indent=2, sort_keys=True).encode()
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise BundleError(f"member {MANIFEST_NAME!r}: manifest over {MAX_MANIFEST_BYTES} bytes")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = _HashingWriter(raw)
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=-1)
            with (
                compressor.stream_writer(sink, closefd=False) as zw,  # type: ignore[arg-type]
                tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
                for name, path in members.items():
                    expected = digests[name]
                    with open(path, "rb") as fh:
                        reader = _HashingReader(fh)
                        try:
                            tar.addfile(_tarinfo(name, expected["size"]), reader)
                        except OSError as exc:  # tarfile: "unexpected end of data"
                            raise BundleError(f"member {name!r}: {path} shrank while bundling") from exc
                        if reader.sha.hexdigest() != expected["sha256"] or fh.read(1):
                            raise BundleError(f"member {name!r}: {path} changed while bundling")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
        _fsync_dir(out_path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(out_path),
        "size": sink.size,
        "sha256": sink.sha.hexdigest(),
        "members": digests,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------------
class _LimitedReader(io.RawIOBase):
    """The decompressed tar stream, refusing to yield far more than the member data read so far."""

    def __init__(self, source: IO[bytes], overhead_budget: int) -> None:
        self.source = source
        self.budget = overhead_budget
        self.consumed = 0
        self.data_bytes = 0  # member data the extractor has counted

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        data = self.source.read(n)
        self.consumed += len(data)
        if self.consumed - self.data_bytes > self.budget:
            raise BundleError(
                f"archive structure exceeds {self.budget} bytes of headers (hostile or corrupt bundle)"
            )
        return data


@contextlib.contextmanager
def _open_stream(bundle: Path, overhead_budget: int) -> Iterator[tuple[tarfile.TarFile, _LimitedReader]]:
    """A streaming tar reader over the zstd bundle; format errors become BundleError."""
    try:
        with open(bundle, "rb") as fh:
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(fh, read_across_frames=True) as zr:
                limited = _LimitedReader(zr, overhead_budget)
                with tarfile.open(fileobj=limited, mode="r|") as tar:
                    yield tar, limited
    except BundleError:
        raise
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {bundle} not found") from exc
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise BundleError(f"bundle {bundle.name} is corrupt or truncated: {exc}") from exc


def _load_manifest(tar: tarfile.TarFile, max_members: int) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME:
        got = first.name if first is not None else "nothing"
        raise BundleError(f"member {got!r}: expected {MANIFEST_NAME!r} as the first member")
    if not first.isreg() or first.issparse():
        raise BundleError(f"member {MANIFEST_NAME!r}: not a regular file")
    if first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"member {MANIFEST_NAME!r}: over {MAX_MANIFEST_BYTES} bytes")
    fh = tar.extractfile(first)
    assert fh is not None
    raw = fh.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"member {MANIFEST_NAME!r}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), dict):
        raise BundleError(f"member {MANIFEST_NAME!r}: must be an object with a 'members' object")
    members: dict[str, Any] = manifest["members"]
    if len(members) > max_members:
        raise BundleError(f"member {MANIFEST_NAME!r}: lists {len(members)} members (limit {max_members})")
    for name, entry in members.items():
        check_member_name(name)
        if name == MANIFEST_NAME:
            raise BundleError(f"member {name!r}: reserved name listed in the manifest")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
            or entry["size"] < 0
            or not isinstance(entry.get("sha256"), str)
            or not _SHA_RE.match(entry["sha256"])
        ):
            raise BundleError(f"member {name!r}: manifest entry needs an integer size and a hex sha256")
    return manifest


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest alone (reads only the start of the bundle)."""
    with _open_stream(bundle, _OVERHEAD_BASE + MAX_MANIFEST_BYTES) as (tar, _):
        return _load_manifest(tar, max_members=1 << 62)


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isdir():
        return "directory"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    if info.issparse():
        return "sparse file"
    return "regular file" if info.isreg() else f"type {info.type!r}"


def extract_bundle(
    bundle: Path,
    dest: Path,
    *,
    max_member_bytes: int = 2 << 30,
    max_total_bytes: int = 8 << 30,
    max_members: int = 10_000,
) -> dict[str, Any]:
    """Verify and unpack ``bundle`` into ``dest`` (which must not exist yet); returns the manifest.

    All or nothing: members land in a temporary sibling of ``dest`` that becomes
    ``dest`` by one rename after every check passed.
    """
    if dest.exists() or dest.is_symlink():
        raise BundleError(f"destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        budget = _OVERHEAD_BASE + MAX_MANIFEST_BYTES + _OVERHEAD_PER_MEMBER * (max_members + 1)
        with _open_stream(bundle, budget) as (tar, limited):
            manifest = _load_manifest(tar, max_members)
            limited.data_bytes = limited.consumed  # the manifest's bytes are accounted for
            listed: dict[str, dict[str, Any]] = manifest["members"]
            for name, entry in listed.items():
                if entry["size"] > max_member_bytes:
                    raise BundleError(f"member {name!r}: {entry['size']} bytes (limit {max_member_bytes})")
            declared_total = sum(e["size"] for e in listed.values())
            if declared_total > max_total_bytes:
                raise BundleError(f"bundle declares {declared_total} bytes (limit {max_total_bytes})")
            seen: set[str] = set()
            total = 0
            # Not ``for info in tar``: that would start over at the manifest already read.
            while (info := tar.next()) is not None:
                name = info.name
                check_member_name(name)
                kind = _kind(info)
                if kind != "regular file":
                    raise BundleError(f"member {name!r}: {kind} not allowed (regular files only)")
                if name in seen or name == MANIFEST_NAME:
                    raise BundleError(f"member {name!r}: duplicate name")
                seen.add(name)
                if len(seen) > max_members:
                    raise BundleError(f"member {name!r}: more than {max_members} members")
                if name not in listed:
                    raise BundleError(f"member {name!r}: not listed in the manifest")
                if info.size > max_member_bytes:
                    raise BundleError(f"member {name!r}: {info.size} bytes (limit {max_member_bytes})")
                total += _extract_member(tar, info, work, listed[name], limited, max_member_bytes)
                if total > max_total_bytes:
                    raise BundleError(f"member {name!r}: bundle over {max_total_bytes} bytes in total")
            missing = sorted(set(listed) - seen)
            if missing:
                raise BundleError(
                    f"member {missing[0]!r}: listed in the manifest but missing from the bundle"
                )
        os.rename(work, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _extract_member(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    work: Path,
    expected: dict[str, Any],
    limited: _LimitedReader,
    max_member_bytes: int,
) -> int:
    """Stream one member to disk, counting and hashing the bytes actually read."""
    name = info.name
    target = work.joinpath(*name.split("/"))
    if not target.resolve().is_relative_to(work.resolve()):  # belt and braces after check_member_name
        raise BundleError(f"member {name!r}: escapes the destination")
    src = tar.extractfile(info)
    if src is None:
        raise BundleError(f"member {name!r}: cannot read data")
    h = hashlib.sha256()
    size = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as exc:  # e.g. "a" then "a/b": a name that is both file and directory
        raise BundleError(f"member {name!r}: cannot create ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            limited.data_bytes += len(chunk)
            if size > max_member_bytes or size > expected["size"]:
                raise BundleError(f"member {name!r}: more data than declared or allowed")
            h.update(chunk)
            out.write(chunk)
    if size != expected["size"]:
        raise BundleError(f"member {name!r}: {size} bytes, manifest says {expected['size']}")
    if h.hexdigest() != expected["sha256"]:
        raise BundleError(f"member {name!r}: sha256 mismatch (tampered or corrupt)")
    return size
