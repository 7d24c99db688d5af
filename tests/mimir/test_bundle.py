"""Bundles: round trip, tampering, and hand-crafted hostile archives (tarfile + zstandard)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from mimir.bundle import BundleError, create_bundle, extract_bundle, read_manifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def craft(
    path: Path,
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    listed: dict[str, bytes],
    *,
    manifest: dict[str, Any] | None = None,
    fmt: int = tarfile.PAX_FORMAT,
) -> Path:
    """A .tar.zst with manifest.json (listing ``listed``) first, then ``entries`` verbatim."""
    if manifest is None:
        manifest = {"members": {n: {"size": len(d), "sha256": sha(d)} for n, d in listed.items()}}
    raw = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


def assert_clean(dest: Path) -> None:
    """Nothing extracted, nothing half-extracted: dest absent and no temp dirs beside it."""
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")] == []


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shard.sqlite").write_bytes(bytes(range(256)) * 4000)
    (src / "meta.json").write_text('{"repo": "demo"}')
    return {"index/shard.sqlite": src / "shard.sqlite", "meta.json": src / "meta.json"}


def test_round_trip(tmp_path: Path, sources: dict[str, Path]) -> None:
    out = tmp_path / "out" / "demo.tar.zst"
    info = create_bundle(out, sources, {"repo": "demo", "commit": "abc"})

    assert info["path"] == str(out)
    assert info["size"] == out.stat().st_size
    assert info["sha256"] == sha(out.read_bytes())
    assert info["members"]["meta.json"] == {
        "size": sources["meta.json"].stat().st_size,
        "sha256": sha(sources["meta.json"].read_bytes()),
    }
    assert [p.name for p in out.parent.iterdir()] == ["demo.tar.zst"]  # no temp file left

    # manifest.json is the first member and carries the digests.
    with (
        out.open("rb") as fh,
        zstandard.ZstdDecompressor().stream_reader(fh) as zr,
        tarfile.open(fileobj=zr, mode="r|") as tar,
    ):
        names = [m.name for m in tar]
    assert names == ["manifest.json", "index/shard.sqlite", "meta.json"]
    manifest = read_manifest(out)
    assert manifest["repo"] == "demo" and manifest["commit"] == "abc"
    assert manifest["members"] == info["members"]

    dest = tmp_path / "restored" / "demo"
    assert extract_bundle(out, dest) == manifest
    for name, src in sources.items():
        assert (dest / name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["demo"]


def test_bundles_are_deterministic(tmp_path: Path, sources: dict[str, Path]) -> None:
    a = create_bundle(tmp_path / "a.tar.zst", sources, {"x": 1})
    b = create_bundle(tmp_path / "b.tar.zst", sources, {"x": 1})
    assert a["sha256"] == b["sha256"]


def test_create_rejects_bad_members(tmp_path: Path, sources: dict[str, Path]) -> None:
    out = tmp_path / "x.tar.zst"
    with pytest.raises(BundleError, match=r"'\.\./x'.*'\.\.' component"):
        create_bundle(out, {"../x": sources["meta.json"]}, {})
    with pytest.raises(BundleError, match=r"'manifest\.json': reserved"):
        create_bundle(out, {"manifest.json": sources["meta.json"]}, {})
    with pytest.raises(BundleError, match=r"'d': .* not a regular file"):
        create_bundle(out, {"d": tmp_path}, {})
    assert list(tmp_path.glob("*x.tar.zst*")) == []


def test_extract_refuses_existing_destination(tmp_path: Path, sources: dict[str, Path]) -> None:
    out = tmp_path / "b.tar.zst"
    create_bundle(out, sources, {})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(BundleError, match="already exists"):
        extract_bundle(out, dest)
    assert (dest / "keep").read_text() == "mine"


def test_tampered_member_is_rejected(tmp_path: Path) -> None:
    good, evil = b"A" * 1000, b"A" * 999 + b"B"
    bundle = craft(
        tmp_path / "t.tar.zst",
        [reg("ok.txt", b"fine"), reg("data.bin", evil)],
        {
            "ok.txt": b"fine",
            "data.bin": good,
        },
    )
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=r"'data\.bin': sha256 mismatch"):
        extract_bundle(bundle, dest)
    assert_clean(dest)


def test_truncated_bundle_is_rejected(tmp_path: Path, sources: dict[str, Path]) -> None:
    out = tmp_path / "b.tar.zst"
    create_bundle(out, sources, {})
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="corrupt or truncated"):
        extract_bundle(cut, dest)
    assert_clean(dest)


def test_manifest_must_come_first(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
    bundle = tmp_path / "b.tar.zst"
    bundle.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    with pytest.raises(BundleError, match=r"'a\.txt': expected 'manifest\.json' as the first member"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="first member"):
        extract_bundle(bundle, tmp_path / "dest")
    assert_clean(tmp_path / "dest")


OK = reg("ok.txt", b"fine")
HOSTILE: list[tuple[str, list[tuple[tarfile.TarInfo, bytes | None]], dict[str, bytes], str]] = [
    ("absolute", [OK, reg("/tmp/evil-abs", b"x")], {"ok.txt": b"fine"}, r"'/tmp/evil-abs': absolute path"),
    ("dotdot", [OK, reg("../escape.txt", b"x")], {"ok.txt": b"fine"}, r"'\.\./escape.txt': '\.\.' component"),
    ("inner-dotdot", [OK, reg("a/../../escape.txt", b"x")], {"ok.txt": b"fine"}, r"'\.\.' component"),
    ("backslash", [OK, reg("..\\escape.txt", b"x")], {"ok.txt": b"fine"}, "backslash"),
    ("drive", [OK, reg("C:escape.txt", b"x")], {"ok.txt": b"fine"}, "drive letter"),
    (
        "symlink",
        [OK, special("link", tarfile.SYMTYPE, "/etc/passwd")],
        {"ok.txt": b"fine", "link": b""},
        "'link': symlink not allowed",
    ),
    (
        "hardlink",
        [OK, special("hard", tarfile.LNKTYPE, "ok.txt")],
        {"ok.txt": b"fine", "hard": b""},
        "'hard': hardlink not allowed",
    ),
    (
        "device",
        [OK, special("dev", tarfile.CHRTYPE)],
        {"ok.txt": b"fine", "dev": b""},
        "'dev': device not allowed",
    ),
    (
        "fifo",
        [OK, special("pipe", tarfile.FIFOTYPE)],
        {"ok.txt": b"fine", "pipe": b""},
        "'pipe': fifo not allowed",
    ),
    ("directory", [OK, special("sub", tarfile.DIRTYPE)], {"ok.txt": b"fine"}, "'sub': directory not allowed"),
    (
        "unlisted",
        [OK, reg("extra.txt", b"x")],
        {"ok.txt": b"fine"},
        "'extra.txt': not listed in the manifest",
    ),
    ("duplicate", [OK, reg("ok.txt", b"fine")], {"ok.txt": b"fine"}, "'ok.txt': duplicate"),
    ("second-manifest", [OK, reg("manifest.json", b"{}")], {"ok.txt": b"fine"}, "'manifest.json': duplicate"),
    (
        "missing",
        [OK],
        {"ok.txt": b"fine", "gone.txt": b"x"},
        "'gone.txt': listed in the manifest but missing",
    ),
]


@pytest.mark.parametrize(("label", "entries", "listed", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_archives_are_rejected(
    tmp_path: Path,
    label: str,
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    listed: dict[str, bytes],
    message: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bundle = craft(tmp_path / f"{label}.tar.zst", entries, listed)
    dest = work / "dest"
    with pytest.raises(BundleError, match=message):
        extract_bundle(bundle, dest)
    assert_clean(dest)
    assert sorted(p.name for p in work.iterdir()) == []  # nothing beside dest either
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/evil-abs").exists()


def test_pax_path_override_is_checked(tmp_path: Path) -> None:
    """A pax header may rename a member after the fact; the effective name is what gets checked."""
    info, data = reg("harmless.txt", b"x")
    info.pax_headers = {"path": "../../pax-escape.txt"}
    bundle = craft(tmp_path / "pax.tar.zst", [OK, (info, data)], {"ok.txt": b"fine"})
    with pytest.raises(BundleError, match=r"pax-escape.txt'.*'\.\.' component"):
        extract_bundle(bundle, tmp_path / "dest")
    assert_clean(tmp_path / "dest")


def test_manifest_listing_bad_name_is_rejected(tmp_path: Path) -> None:
    bundle = craft(tmp_path / "m.tar.zst", [OK], {"ok.txt": b"fine", "/etc/shadow": b""})
    with pytest.raises(BundleError, match="'/etc/shadow': absolute path"):
        extract_bundle(bundle, tmp_path / "dest")
    assert_clean(tmp_path / "dest")


def test_oversized_member_is_rejected(tmp_path: Path) -> None:
    big = b"z" * 5000
    bundle = craft(tmp_path / "big.tar.zst", [OK, reg("big.bin", big)], {"ok.txt": b"fine", "big.bin": big})
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=r"'big.bin': 5000 bytes \(limit 4096\)"):
        extract_bundle(bundle, dest, max_member_bytes=4096)
    assert_clean(dest)


def test_lying_manifest_is_caught_while_streaming(tmp_path: Path) -> None:
    """The manifest claims 10 bytes; the archive carries 5000: counted bytes, not claims, decide."""
    big = b"z" * 5000
    manifest = {
        "members": {
            "ok.txt": {"size": 4, "sha256": sha(b"fine")},
            "big.bin": {"size": 10, "sha256": sha(big)},
        }
    }
    bundle = craft(tmp_path / "lie.tar.zst", [OK, reg("big.bin", big)], {}, manifest=manifest)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=r"'big\.bin': more data than declared"):
        extract_bundle(bundle, dest)
    assert_clean(dest)


def test_total_size_limit(tmp_path: Path) -> None:
    a, b = b"a" * 3000, b"b" * 3000
    bundle = craft(tmp_path / "tot.tar.zst", [reg("a", a), reg("b", b)], {"a": a, "b": b})
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="limit 5000"):
        extract_bundle(bundle, dest, max_total_bytes=5000)
    assert_clean(dest)


def test_too_many_members(tmp_path: Path) -> None:
    files = {f"f{i}.txt": b"x" for i in range(4)}
    entries = [reg(n, d) for n, d in files.items()]
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="lists 4 members \\(limit 3\\)"):
        extract_bundle(craft(tmp_path / "many.tar.zst", entries, files), dest, max_members=3)
    assert_clean(dest)
    # The manifest may under-report; the streamed count still stops at the limit.
    listed3 = dict(list(files.items())[:3])
    with pytest.raises(BundleError, match="more than 3 members"):
        extract_bundle(craft(tmp_path / "many2.tar.zst", entries, listed3), dest, max_members=3)
    assert_clean(dest)


def test_huge_pax_header_is_refused(tmp_path: Path) -> None:
    """tarfile buffers a pax header whole; a bundle made mostly of header bytes must be refused."""
    info, data = reg("ok.txt", b"fine")
    info.pax_headers = {"comment": "x" * (24 << 20)}
    bundle = craft(tmp_path / "hdr.tar.zst", [(info, data)], {"ok.txt": b"fine"})
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="headers"):
        extract_bundle(bundle, dest, max_members=10)
    assert_clean(dest)
