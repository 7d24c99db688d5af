"""Mimir's MCP server driven by the MCP SDK's own client: over stdio and over Streamable HTTP.

A real git repository, a real server subprocess (``python -m mimir.serve.cli``), real
indexing runs. One data directory per module: the first test indexes, later ones reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_types import BlobResourceContents, CallToolResult, TextResourceContents

from gitrepo import commit_all, git, write_files
from infra.auth import token_id
from mimir.serve.mcp import build_mcp_server
from mimir.service import Mimir
from mimir.store import SqliteStore
from support import free_port

pytestmark = pytest.mark.slow

FILES = {
    "zoo/__init__.py": "",
    "zoo/animals.py": '''"""Animals and the sounds they make."""


class Animal:
    """Base class of every animal in the zoo."""

    def __init__(self, name: str) -> None:
        self.name = name

    def speak(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} says {self.speak()}"


class Dog(Animal):
    def speak(self) -> str:
        return "woof"


class Cat(Animal):
    def speak(self) -> str:
        return "meow"


class Puppy(Dog):
    def speak(self) -> str:
        return "yip " + super().speak()
''',
    "zoo/keeper.py": '''"""The keeper feeds animals and makes them perform."""

from zoo.animals import Cat, Dog, Puppy


def make_animals() -> list:
    return [Dog("rex"), Cat("tom"), Puppy("bit")]


def chorus() -> list[str]:
    """Every animal describes itself."""
    return [animal.describe() for animal in make_animals()]


def feeding_schedule(hours: int) -> dict[str, int]:
    """How many meals each animal gets in the given hours."""
    return {animal.name: hours // 4 for animal in make_animals()}
''',
    "zoo/config.py": '''"""Configuration loading for the zoo."""

import json


def parse_config(text: str) -> dict:
    """Parse the JSON configuration text, applying defaults."""
    data = json.loads(text)
    data.setdefault("opening_hour", 9)
    return data


def load_config(path: str) -> dict:
    with open(path) as fh:
        return parse_config(fh.read())
''',
    "zoo/main.py": """from zoo.config import load_config
from zoo.keeper import chorus, feeding_schedule


def main(path: str) -> None:
    config = load_config(path)
    for line in chorus():
        print(line)
    print(feeding_schedule(config["opening_hour"]))
""",
}


@dataclass
class MimirEnv:
    base: Path
    repo: Path
    data: Path
    env: dict[str, str]


def make_sample_repo(root: Path) -> Path:
    """A small git repo: functions calling each other across files and a class hierarchy."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    write_files(root, FILES)
    commit_all(root, "initial")
    return root


def server_env(base: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {
        "MIMIR_DATA_DIR": str(data),
        "MIMIR_ALLOWED_ROOTS": str(base),
        "XDG_DATA_HOME": str(base / "xdg"),
        "HOME": str(base),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    for key in ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "LANG", "TMPDIR"):
        if key in os.environ:
            env.setdefault(key, os.environ[key])
    return env


@pytest.fixture(scope="module")
def menv(tmp_path_factory: pytest.TempPathFactory) -> MimirEnv:
    base = tmp_path_factory.mktemp("mimir-mcp").resolve()
    repo = make_sample_repo(base / "zoo-repo")
    data = base / "data"
    return MimirEnv(base, repo, data, server_env(base, data))


def stdio_params(env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "mimir.serve.cli", "mcp"], env=env)


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    return " ".join(getattr(c, "text", "") for c in result.content)


async def wait_ready(client: Client, index_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = structured(await client.call_tool("index_status", {"index_id": index_id}))
        if status["index"]["status"] == "ready":
            return status
        assert status["index"]["status"] in ("queued", "indexing"), status
        assert time.monotonic() < deadline, f"index not ready after {timeout}s: {status}"
        await anyio.sleep(0.5)


def resource_text(contents: list[TextResourceContents | BlobResourceContents]) -> str:
    assert len(contents) == 1
    item = contents[0]
    assert isinstance(item, TextResourceContents)
    return item.text


EXPECTED_TOOLS = {
    "ensure_repo_index",
    "index_status",
    "search_repo",
    "ask_index",
    "get_repo_bundle",
    "cancel",
    "find_symbol",
    "find_references",
    "read_span",
    "repo_map",
    "verify_citation",
    "list_indexes",
}


# -- stdio ------------------------------------------------------------------------------
def test_stdio_tools_are_described(menv: MimirEnv) -> None:
    async def main() -> None:
        async with Client(
            stdio_params(menv.env), mode="legacy", cache=None, read_timeout_seconds=60
        ) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == EXPECTED_TOOLS
            for tool in tools.values():
                assert tool.description and len(tool.description) > 60, tool.name
                assert tool.input_schema["type"] == "object"
                assert tool.output_schema is not None, tool.name
            search = tools["search_repo"].input_schema["properties"]
            assert search["k"]["minimum"] == 1 and search["k"]["maximum"] == 200
            assert set(search["mode"]["enum"]) == {"hybrid", "exact", "ranked", "semantic"}
            assert tools["search_repo"].input_schema["required"] == ["index_id", "query"]
            assert "poll index_status" in (tools["ensure_repo_index"].description or "")
            assert not (tools["search_repo"].description or " ").startswith(" ")
            assert "ensure_repo_index" in search["index_id"]["description"]
            assert tools["search_repo"].annotations is not None
            assert tools["search_repo"].annotations.read_only_hint is True
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
            assert {
                f"mimir://indexes/{{index_id}}/{p}" for p in ("status", "manifest", "log", "bundle")
            } <= templates

    anyio.run(main)


def test_stdio_full_flow(menv: MimirEnv) -> None:
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    async def main() -> None:
        async with Client(
            stdio_params(menv.env), mode="legacy", cache=None, read_timeout_seconds=600
        ) as client:
            # -- errors first: nothing indexed yet
            text = error_text(await client.call_tool("search_repo", {"index_id": "nope-123", "query": "x"}))
            assert "unknown index" in text and "unknown_index" in text and "ensure_repo_index" in text
            outside = str(menv.base.parent)
            text = error_text(await client.call_tool("ensure_repo_index", {"path": outside}))
            assert "outside the allowed roots" in text and "path_not_allowed" in text
            text = error_text(await client.call_tool("search_repo", {"index_id": "x", "query": "y", "k": 0}))
            assert "k" in text  # schema validation, reported as a tool error

            # -- index with a progress token: waits, streaming progress
            started = await client.call_tool(
                "ensure_repo_index", {"path": str(menv.repo)}, progress_callback=on_progress
            )
            data = structured(started)
            index_id = data["index_id"]
            assert data["status"] == "ready", data
            assert data["run"]["state"] == "succeeded"
            assert notes, "no progress notifications arrived"
            values = [p[0] for p in notes]
            assert values == sorted(values) and len(set(values)) == len(values)
            assert all(total == 100.0 for _, total, _ in notes)
            assert len(notes) >= 2 and notes[-1][0] == 100.0, notes  # from queued to done
            assert all(msg and ": " in msg for _, _, msg in notes), notes  # "<stage>: <message>"
            status = await wait_ready(client, index_id)
            assert status["run"]["percent"] == 100.0

            # -- without a progress token: returns at once, reused
            again = structured(await client.call_tool("ensure_repo_index", {"path": str(menv.repo)}))
            assert again["index_id"] == index_id and again["reused"] is True and again["status"] == "ready"

            # -- research
            found = structured(
                await client.call_tool(
                    "search_repo", {"index_id": index_id, "query": "parse the configuration", "k": 5}
                )
            )
            assert 1 <= len(found["results"]) <= 5
            top = found["results"][0]
            paths = [r["path"] for r in found["results"]]
            assert "zoo/config.py" in paths, paths
            commit = data["commit"]
            for r in found["results"]:
                assert r["citation"] == f"{r['path']}:L{r['start_line']}-L{r['end_line']}@{commit}"
                assert len(r["sha256"]) == 64
                assert isinstance(r["signals"], dict) and r["signals"]
            assert top["snippet"]["lines"]

            asked = structured(
                await client.call_tool(
                    "ask_index",
                    {"index_id": index_id, "question": "how does chorus make animals speak?", "max_hops": 2},
                )
            )
            assert asked["findings"], asked
            assert all("@" in f["citation"] for f in asked["findings"])
            assert asked["hops"] >= 1
            assert any(f["hop"] >= 1 for f in asked["findings"])
            assert asked["answer"]

            sym = structured(await client.call_tool("find_symbol", {"index_id": index_id, "name": "Puppy"}))
            assert sym["symbols"] and sym["symbols"][0]["path"] == "zoo/animals.py"
            assert sym["symbols"][0]["kind"] == "class"

            refs = structured(
                await client.call_tool("find_references", {"index_id": index_id, "symbol": "make_animals"})
            )
            assert any(r["path"] == "zoo/keeper.py" for r in refs["references"]), refs
            callers = {c["caller"]["name"] for c in refs["callers"]}
            assert {"chorus", "feeding_schedule"} <= callers, refs["callers"]

            span = structured(
                await client.call_tool(
                    "read_span", {"index_id": index_id, "path": "zoo/config.py", "start": 6, "end": 10}
                )
            )
            assert span["lines"][0].startswith("def parse_config")
            assert span["citation"] == f"zoo/config.py:L6-L10@{commit}"

            rmap = structured(await client.call_tool("repo_map", {"index_id": index_id, "token_budget": 512}))
            assert "zoo/animals.py" in rmap["text"] and rmap["tokens"] <= 512

            listed = structured(await client.call_tool("list_indexes", {}))
            assert [i["index_id"] for i in listed["indexes"]] == [index_id]

            # -- resources
            status_doc = json.loads(
                resource_text((await client.read_resource(f"mimir://indexes/{index_id}/status")).contents)
            )
            assert status_doc["index"]["status"] == "ready"
            manifest = json.loads(
                resource_text((await client.read_resource(f"mimir://indexes/{index_id}/manifest")).contents)
            )
            assert manifest["commit"] == commit and manifest["counts"]["files"] >= 5
            log_text = resource_text((await client.read_resource(f"mimir://indexes/{index_id}/log")).contents)
            assert "succeeded" in log_text
            bundle_meta = json.loads(
                resource_text((await client.read_resource(f"mimir://indexes/{index_id}/bundle")).contents)
            )
            assert bundle_meta["size"] > 0 and len(bundle_meta["sha256"]) == 64

            bundle = structured(await client.call_tool("get_repo_bundle", {"index_id": index_id}))
            assert Path(bundle["path"]).is_file()
            assert bundle["size"] == Path(bundle["path"]).stat().st_size
            blob = (await client.read_resource(bundle["blob_uri"])).contents
            assert isinstance(blob[0], BlobResourceContents) and blob[0].mime_type == "application/zstd"

            # -- citations: valid, then stale after editing the working tree
            cited = top["citation"]
            ok = structured(
                await client.call_tool("verify_citation", {"citation": cited, "sha256": top["sha256"]})
            )
            assert ok["status"] == "valid", ok
            ok2 = structured(await client.call_tool("verify_citation", {"citation": cited}))
            assert ok2["status"] == "valid", ok2
            target = menv.repo / top["path"]
            original = target.read_text()
            lines = original.split("\n")
            lines[top["start_line"] - 1] = lines[top["start_line"] - 1] + "  # edited"
            target.write_text("\n".join(lines))
            try:
                stale = structured(
                    await client.call_tool("verify_citation", {"citation": cited, "sha256": top["sha256"]})
                )
                assert stale["status"] == "stale", stale
            finally:
                target.write_text(original)

            # -- more errors: unknown resources, bad citations, cancel of a finished run
            with pytest.raises(Exception, match="unknown index"):
                await client.read_resource("mimir://indexes/nope-123/status")
            text = error_text(await client.call_tool("verify_citation", {"citation": "not a citation"}))
            assert "citation must look like" in text
            done = structured(await client.call_tool("cancel", {"index_id": index_id}))
            assert done["run"]["state"] == "succeeded"

    anyio.run(main)


# -- Streamable HTTP --------------------------------------------------------------------


@pytest.fixture
def http_server(menv: MimirEnv, request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    """Start `mimir serve` on a free loopback port; yields (base URL, extra env)."""
    extra: dict[str, str] = getattr(request, "param", {})
    port = free_port()
    env = {**menv.env, **extra}
    log = (menv.base / f"serve-{port}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mimir.serve.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (menv.base / f"serve-{port}.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield base, extra
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def _http_flow(client: Client, menv: MimirEnv) -> str:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert tools == EXPECTED_TOOLS
    notes: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(progress)

    data = structured(
        await client.call_tool("ensure_repo_index", {"path": str(menv.repo)}, progress_callback=on_progress)
    )
    index_id: str = data["index_id"]
    await wait_ready(client, index_id)
    found = structured(
        await client.call_tool(
            "search_repo", {"index_id": index_id, "query": "Puppy speak", "k": 3, "mode": "hybrid"}
        )
    )
    assert found["results"] and any(r["path"] == "zoo/animals.py" for r in found["results"])
    text = error_text(await client.call_tool("index_status", {"index_id": "missing-index"}))
    assert "unknown index" in text
    status = json.loads(
        resource_text((await client.read_resource(f"mimir://indexes/{index_id}/status")).contents)
    )
    assert status["index"]["index_id"] == index_id
    return index_id


def test_http_modern_and_handshake_clients(menv: MimirEnv, http_server: tuple[str, dict[str, str]]) -> None:
    base, _ = http_server

    async def main() -> None:
        # 2026-era client: no initialize, protocol version pinned.
        async with Client(f"{base}/mcp", mode="2026-07-28", cache=None, read_timeout_seconds=600) as modern:
            assert modern.protocol_version == "2026-07-28"
            index_id = await _http_flow(modern, menv)
        # Handshake-era client: initialize first.
        async with Client(f"{base}/mcp", mode="legacy", cache=None, read_timeout_seconds=600) as legacy:
            assert legacy.protocol_version in ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
            assert await _http_flow(legacy, menv) == index_id
        # Auto: the SDK's default discovery.
        async with Client(f"{base}/mcp", cache=None, read_timeout_seconds=600) as auto:
            listed = structured(await auto.call_tool("list_indexes", {}))
            assert index_id in [i["index_id"] for i in listed["indexes"]]

    anyio.run(main)
    # A handshake-era client that skips initialize entirely (plain JSON-RPC over HTTP).
    resp = httpx.post(
        f"{base}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert "search_repo" in resp.text
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'mimir_mcp_tool_calls_total{outcome="ok",tool="search_repo"}' in metrics
    assert 'mimir_mcp_tool_calls_total{outcome="error",tool="index_status"}' in metrics
    assert 'mimir_http_requests_total{method="POST",route="/mcp"' in metrics


@pytest.mark.parametrize("http_server", [{"MIMIR_API_TOKENS": "s3cret-token,other"}], indirect=True)
def test_http_bearer_token(menv: MimirEnv, http_server: tuple[str, dict[str, str]]) -> None:
    base, _ = http_server
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    denied = httpx.post(f"{base}/mcp", json=body, headers=accept, timeout=10)
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "unauthorized"
    assert denied.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(
        f"{base}/mcp", json=body, headers={**accept, "Authorization": "Bearer nope"}, timeout=10
    )
    assert wrong.status_code == 401
    assert httpx.get(f"{base}/api/indexes", timeout=10).status_code == 401
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200

    @asynccontextmanager
    async def connect(token: str | None, mode: str) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http,
            Client(
                streamable_http_client(f"{base}/mcp", http_client=http),
                mode=mode,
                cache=None,
                read_timeout_seconds=30,
            ) as client,
        ):
            yield client

    async def main() -> None:
        async with connect("s3cret-token", "legacy") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert tools == EXPECTED_TOOLS
            listed = structured(await client.call_tool("list_indexes", {}))
            assert isinstance(listed["indexes"], list)
        async with connect("other", "2026-07-28") as client:
            assert {t.name for t in (await client.list_tools()).tools} == EXPECTED_TOOLS
            refused = await client.call_tool("cancel", {"index_id": "no-such-index"})
            assert refused.is_error
        with pytest.raises(Exception):  # noqa: B017 -- the SDK's error type for an HTTP 401 is not public
            async with connect(None, "legacy"):
                pass

    anyio.run(main)
    # The MCP action is audited under the caller's token id (never the token itself).
    store = SqliteStore(menv.data / "mimir.sqlite")
    entries = [e for e in store.audit_entries(action="cancel") if e.target == "no-such-index"]
    assert [e.principal for e in entries] == [f"token:{token_id(hashlib.sha256(b'other').digest())}"]
    assert entries[0].detail["via"] == "mcp" and entries[0].detail["outcome"] == "unknown_index"


# -- in-process, against a scripted facade: the paths a real run rarely takes ----------------
class _RecordedAudit:
    """The one store call MCP tools make themselves: audit entries for index and cancel."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str | None, dict[str, Any]]] = []

    def audit(self, action: str, principal: str, target: str | None, detail: dict[str, Any]) -> None:
        self.entries.append((action, principal, target, detail))


class ScriptedMimir:
    """Stands in for :class:`Mimir`: a run that walks through ``states``, then stays on the last."""

    def __init__(self, states: list[tuple[str, float]], error: dict[str, str] | None = None) -> None:
        self.states = states
        self.error = error
        self.polls = 0
        self.store = _RecordedAudit()

    def ensure_repo_index(self, path: str, rev: str = "HEAD", force: bool = False) -> dict[str, Any]:
        return {
            "index_id": "x-1",
            "status": "queued",
            "commit": "c0ffee",
            "reused": False,
            "run": {
                "run_id": "r",
                "state": "queued",
                "stage": "queued",
                "percent": 0.0,
                "message": "queued",
                "error": None,
            },
        }

    def index_status(self, index_id: str) -> dict[str, Any]:
        state, percent = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        done = state in ("succeeded", "failed", "cancelled")
        index_status = {"succeeded": "ready", "failed": "failed", "cancelled": "cancelled"}.get(
            state, "indexing"
        )
        return {
            "index": {"index_id": index_id, "status": index_status},
            "run": {
                "run_id": "r",
                "state": state,
                "stage": "search_index",
                "percent": percent,
                "message": f"lens embed {percent}",
                "error": self.error if done else None,
            },
        }

    def search_repo(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ZeroDivisionError("scripted crash")


def _scripted_server(fake: ScriptedMimir, wait_s: float = 30.0) -> MCPServer:
    return build_mcp_server(cast(Mimir, fake), progress_wait_s=wait_s, poll_interval_s=0.01)


def test_progress_then_failure_is_a_tool_error() -> None:
    fake = ScriptedMimir(
        [("running", 10.0), ("running", 10.0), ("running", 40.0), ("failed", 40.0)],
        error={"code": "SourceError", "message": "git exploded"},
    )
    notes: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message))

    async def main() -> None:
        async with Client(_scripted_server(fake), mode="legacy", cache=None) as client:
            result = await client.call_tool(
                "ensure_repo_index", {"path": "/r"}, progress_callback=on_progress
            )
            text = error_text(result)
            assert "indexing x-1 failed: git exploded" in text and "SourceError" in text
            assert "mimir://indexes/x-1/log" in text

    anyio.run(main)
    values = [v for v, _ in notes]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing
    assert values[0] == 0.0 and 40.0 in values


def test_progress_wait_is_bounded() -> None:
    fake = ScriptedMimir([("running", 5.0)])

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pass

    async def main() -> None:
        async with Client(_scripted_server(fake, wait_s=0.2), mode="legacy", cache=None) as client:
            data = structured(
                await client.call_tool("ensure_repo_index", {"path": "/r"}, progress_callback=on_progress)
            )
            assert data["waited"] == "timeout" and data["status"] == "indexing"
            assert "poll index_status" in data["message"]
            # No progress token: returns at once, without polling.
            polls = fake.polls
            quick = structured(await client.call_tool("ensure_repo_index", {"path": "/r"}))
            assert quick["status"] == "queued" and fake.polls == polls

    anyio.run(main)


def test_unexpected_exception_is_a_tool_error() -> None:
    async def main() -> None:
        async with Client(_scripted_server(ScriptedMimir([])), mode="legacy", cache=None) as client:
            text = error_text(await client.call_tool("search_repo", {"index_id": "x-1", "query": "q"}))
            assert "internal error in Mimir (ZeroDivisionError: scripted crash)" in text
            # ... and the server keeps serving.
            assert len((await client.list_tools()).tools) == 12

    anyio.run(main)
