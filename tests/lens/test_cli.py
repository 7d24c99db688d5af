"""The ``lens`` command, run as a real subprocess (``python -m lens.serve.cli``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import free_port

FILES: dict[str, str | bytes] = {
    "src/app.py": "def parse_config(path):\n    return open(path).read()\n",
    "src/main.py": "from app import parse_config\n\nprint(parse_config('x.cfg'))\n",
    "blob.bin": b"\x00\x01\x02binary",
}


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    data = tmp_path / "cli-data"

    def run(*args: str, embed: bool = False, check: bool = False) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LENS_DATA_DIR": str(data), "LENS_EMBED": "1" if embed else "0"}
        proc = subprocess.run(
            [sys.executable, "-m", "lens.serve.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return run


def one_json(text: str) -> dict[str, Any]:
    """stdout must be exactly one JSON object (nothing else printed)."""
    value = json.loads(text)
    assert isinstance(value, dict)
    assert text.strip().count("\n") == 0
    return value


def test_index_search_repos_rm(
    run: Callable[..., subprocess.CompletedProcess[str]], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo(FILES, name="proj")
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()

    report = one_json(run("index", str(repo), "--json", check=True).stdout)
    assert report["name"] == "proj"
    assert report["files"] == 2
    assert report["commit"] == head
    assert report["skipped"] == {"binary": 1}
    assert report["embedded"] == 0  # LENS_EMBED=0

    found = one_json(run("search", "parse_config", "--json", check=True).stdout)
    assert found["total"] == 3
    hits = found["results"]
    assert {(h["path"], h["line_number"]) for h in hits} == {
        ("src/app.py", 1),
        ("src/main.py", 1),
        ("src/main.py", 3),
    }
    for h in hits:
        assert h["repo"] == "proj"
        assert h["commit"] == head
        assert isinstance(h["score"], float)
        assert h["why"]
        assert "parse_config" in h["line"]
    assert hits[0]["path"] == "src/app.py" and "symbol" in hits[0]["why"]

    human = run("search", "parse_config", check=True)
    assert "proj/src/app.py:1:def parse_config(path):" in human.stdout
    assert "proj/src/main.py:3:" in human.stdout
    assert "3 shown of 3" in human.stderr

    paged = one_json(run("search", "parse_config", "--limit", "1", "--json", check=True).stdout)
    assert len(paged["results"]) == 1 and paged["next_cursor"]
    nxt = one_json(
        run("search", "parse_config", "--limit", "1", "--cursor", paged["next_cursor"], "--json").stdout
    )
    assert nxt["results"][0] != paged["results"][0]

    listed = one_json(run("repos", "--json", check=True).stdout)
    assert [(r["name"], r["files"], r["skipped"]) for r in listed["repos"]] == [("proj", 2, {"binary": 1})]
    assert "proj" in run("repos", check=True).stdout

    removed = run("rm", "proj", check=True)
    assert "removed proj" in removed.stdout
    assert one_json(run("repos", "--json", check=True).stdout) == {"repos": []}
    again = run("rm", "proj")
    assert again.returncode == 2
    assert "not indexed" in again.stderr


def test_errors_exit_2_with_message(
    run: Callable[..., subprocess.CompletedProcess[str]], make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    run("index", str(make_repo({"a.py": "x = 1\n"}, name="a")), "--json", check=True)

    bad = run("search", "foo (bar")
    assert bad.returncode == 2
    assert "position 4" in bad.stderr
    assert "unbalanced" in bad.stderr
    assert bad.stdout == ""

    bad_json = run("search", "/a(/", "--json")
    assert bad_json.returncode == 2
    err = one_json(bad_json.stdout)["error"]
    assert err["code"] == "bad_query" and err["details"]["position"] == 0

    unknown_repo = run("search", "x", "--repo", "nope")
    assert unknown_repo.returncode == 2 and "nope" in unknown_repo.stderr

    not_a_dir = run("index", str(tmp_path / "missing"), "--json")
    assert not_a_dir.returncode == 2
    assert one_json(not_a_dir.stdout)["error"]["code"]


def test_index_embeds_with_real_model(
    run: Callable[..., subprocess.CompletedProcess[str]], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo({"calc.py": "def add_numbers(a, b):\n    return a + b\n"}, name="tiny")
    report = one_json(run("index", str(repo), "--json", embed=True, check=True).stdout)
    assert report["embedded"] == report["chunks"] > 0
    found = one_json(
        run("search", "sum two values", "--mode", "semantic", "--json", embed=True, check=True).stdout
    )
    assert found["semantic"]["status"] == "ready"
    assert found["results"][0]["path"] == "calc.py"


def test_serve(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LENS_DATA_DIR": str(tmp_path / "serve-data"), "LENS_EMBED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert f"listening on http://127.0.0.1:{port}" in first, first
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.05)
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/repos", timeout=5).json() == {"repos": []}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
