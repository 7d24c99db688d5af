"""Acceptance test of the whole production runtime, with real processes (issue 4).

One deployment per module, in ``production`` mode: a fresh PostgreSQL database, a fresh NATS
namespace (jobs, dead letters, shard objects and refs; also the Redis key prefix), the shared
Redis, two ``lens serve --role searcher`` replicas (own data directories), ``mimir serve`` reading
from both (``LENS_URL``), and two ``mimir worker`` processes (3 s ack wait) that build and ship the
shards. Every request carries a bearer token. The tests run in file order and build on each
other's indexes: index, search everywhere, lose a worker mid-run, add a searcher late, lose a
searcher, drain an API process on SIGTERM, read the audit and query logs, stop everything.
The commands are the ones docs/OPERATIONS.md ("Running the whole stack locally") gives.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from gitrepo import commit_all, git, write_files
from infra.shardstore import NatsShardStore, ShardRef
from stack_support import (
    NATS_URL,
    Searcher,
    Service,
    Stack,
    create_database,
    drop_database,
    metric,
    shared_redis_url,
    teardown_namespace,
    token_principal,
    wait_for,
)
from support import free_port

pytestmark = pytest.mark.slow

ACK_WAIT_S = 3
PAUSE_S = 2.5  # every run pauses this long after its symbols stage (MIMIR_TEST_STAGE_DELAY_S)
SHUTDOWN_GRACE_S = 8
INDEXER_TOKEN = f"stack-indexer-{uuid.uuid4().hex}"  # the principal that indexes
READER_TOKEN = f"stack-reader-{uuid.uuid4().hex}"  # the principal that searches
LENS_TOKEN = f"stack-lens-{uuid.uuid4().hex}"  # Mimir -> searchers
RUN_TIMEOUT_S = 90


# -- the repository ---------------------------------------------------------------------------
def repo_files() -> dict[str, str | bytes]:
    """A few dozen files in Python, Go, TypeScript, JavaScript, Rust and Java, plus docs and config."""
    files: dict[str, str | bytes] = {
        "README.md": "# Billing\n\nInvoices, ledgers and late fees.\n",
        "docs/usage.md": "Run `python -m billing.cli` to print the ledger total.\n",
        "billing/__init__.py": "",
        "billing/invoice.py": (
            '"""Invoices and their totals."""\n\n\n'
            "class Invoice:\n"
            "    def __init__(self, lines):\n"
            "        self.lines = lines\n\n\n"
            "def invoice_total(invoice):\n"
            "    return sum(qty * price for qty, price in invoice.lines)\n\n\n"
            "def apply_late_fee(total, days_late):\n"
            "    if days_late <= 0:\n"
            "        return total\n"
            "    return total + min(days_late, 30) * 0.5\n"
        ),
        "billing/tax.py": (
            "RATES = {'eu': 0.2, 'us': 0.07}\n\n\n"
            "def tax_for(region, amount):\n"
            "    return amount * RATES.get(region, 0.0)\n"
        ),
        "billing/ledger.py": (
            "from billing.invoice import apply_late_fee, invoice_total\n"
            "from billing.tax import tax_for\n\n\n"
            "class InvoiceLedger:\n"
            "    def __init__(self):\n"
            "        self.entries = []\n\n"
            "    def record(self, invoice, region, days_late=0):\n"
            "        total = apply_late_fee(invoice_total(invoice), days_late)\n"
            "        self.entries.append(total + tax_for(region, total))\n\n"
            "    def balance(self):\n"
            "        return sum(self.entries)\n"
        ),
        "billing/cli.py": (
            "from billing.invoice import Invoice\n"
            "from billing.ledger import InvoiceLedger\n\n\n"
            "def main():\n"
            "    ledger = InvoiceLedger()\n"
            "    ledger.record(Invoice([(2, 10.0)]), 'eu', days_late=3)\n"
            "    print(ledger.balance())\n"
        ),
        "tests/test_invoice.py": (
            "from billing.invoice import Invoice, apply_late_fee, invoice_total\n\n\n"
            "def test_total():\n"
            "    assert invoice_total(Invoice([(1, 2.0)])) == 2.0\n\n\n"
            "def test_late_fee():\n"
            "    assert apply_late_fee(10.0, 2) == 11.0\n"
        ),
        "cmd/billing/main.go": (
            'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/billing/internal/ledger"\n)\n\n'
            "func main() {\n\tl := &ledger.Ledger{}\n\tl.Add(42)\n\tfmt.Println(l.Total())\n}\n"
        ),
        "internal/ledger/ledger.go": (
            "package ledger\n\n"
            "// Ledger keeps invoice totals in cents.\n"
            "type Ledger struct {\n\tentries []int\n}\n\n"
            "func (l *Ledger) Add(cents int) {\n\tl.entries = append(l.entries, cents)\n}\n\n"
            "func (l *Ledger) Total() int {\n\tt := 0\n\tfor _, c := range l.entries {\n"
            "\t\tt += c\n\t}\n\treturn t\n}\n"
        ),
        "internal/ledger/ledger_test.go": (
            'package ledger\n\nimport "testing"\n\n'
            "func TestTotal(t *testing.T) {\n\tl := &Ledger{}\n\tl.Add(5)\n"
            '\tif l.Total() != 5 {\n\t\tt.Fatal("total")\n\t}\n}\n'
        ),
        "web/src/api.ts": (
            "export interface InvoiceRow { id: string; totalCents: number }\n\n"
            "export async function fetchInvoices(base: string): Promise<InvoiceRow[]> {\n"
            "  const resp = await fetch(`${base}/invoices`);\n"
            "  return (await resp.json()) as InvoiceRow[];\n"
            "}\n"
        ),
        "web/src/format.js": (
            "export function formatCurrency(cents) {\n  return `$${(cents / 100).toFixed(2)}`;\n}\n"
        ),
        "web/src/InvoiceTable.tsx": (
            "import { InvoiceRow } from './api';\nimport { formatCurrency } from './format';\n\n"
            "export function InvoiceTable({ rows }: { rows: InvoiceRow[] }) {\n"
            "  return <ul>{rows.map((r) => <li key={r.id}>{formatCurrency(r.totalCents)}</li>)}</ul>;\n"
            "}\n"
        ),
        "engine/src/lib.rs": (
            "pub mod rates;\n\n"
            "/// Late fee in cents for an invoice that is `days` days overdue.\n"
            "pub fn late_fee_cents(days: u32) -> u64 {\n    u64::from(days.min(30)) * 50\n}\n"
        ),
        "engine/src/rates.rs": (
            "pub struct TaxRate {\n    pub region: &'static str,\n    pub percent: u32,\n}\n\n"
            'pub const EU: TaxRate = TaxRate { region: "eu", percent: 20 };\n'
        ),
        "android/src/main/java/com/example/billing/InvoiceActivity.java": (
            "package com.example.billing;\n\n"
            "public class InvoiceActivity {\n"
            "    public long totalCents(long[] lines) {\n"
            "        long t = 0;\n        for (long l : lines) { t += l; }\n        return t;\n    }\n}\n"
        ),
        "config/settings.yaml": "region: eu\nlate_fee_cap_days: 30\n",
        "scripts/deploy.sh": "#!/bin/sh\nset -e\necho deploying billing\n",
        "Makefile": "test:\n\tpython -m pytest tests\n",
    }
    for i in range(12):
        files[f"billing/rules/rule_{i:02d}.py"] = (
            f"def rule_{i:02d}_discount(amount):\n"
            f'    """Discount rule {i}: {i} percent off above {i * 10}."""\n'
            f"    return amount * (1 - {i} / 100) if amount > {i * 10} else amount\n"
        )
    for i in range(6):
        files[f"internal/handlers/h{i}.go"] = (
            f"package handlers\n\n// Handler{i} serves route {i}.\n"
            f"func Handler{i}(total int) int {{\n\treturn total + {i}\n}}\n"
        )
    return files


# Lens queries sent to every searcher: exact literal, regex, symbol, ranked, language filter.
LENS_QUERIES: list[dict[str, Any]] = [
    {"q": "apply_late_fee", "mode": "exact"},
    {"q": r"/func \(l \*Ledger\) \w+/", "mode": "exact"},
    {"q": "sym:InvoiceLedger", "mode": "exact"},
    {"q": "invoice total late fee", "mode": "ranked"},
    {"q": "Handler lang:go", "mode": "exact"},
]


# -- the deployment ---------------------------------------------------------------------------
@dataclass
class Deployment:
    stack: Stack
    repo: Path
    api: Service  # mimir serve; requests as INDEXER_TOKEN
    reader: Service  # the same process; requests as READER_TOKEN
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> index_id, commit, ...
    searches: list[tuple[str, str, int, int]] = field(default_factory=list)  # what the query log must say


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("stack").resolve()
    redis_url = shared_redis_url()
    database_url = create_database()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    stack = Stack(
        base,
        namespace,
        database_url,
        redis_url,
        mimir_tokens=(INDEXER_TOKEN, READER_TOKEN),
        lens_token=LENS_TOKEN,
        ack_wait_s=ACK_WAIT_S,
        pause_s=PAUSE_S,
        shutdown_grace_s=SHUTDOWN_GRACE_S,
    )
    try:
        stack.repos.mkdir()
        repo = stack.repos / "billing"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write_files(repo, repo_files())
        commit_all(repo, "initial")

        assert "applied 0001_initial" in stack.migrate()
        ports = [free_port() for _ in range(2)]
        stack.lens_url = ",".join(f"http://127.0.0.1:{p}" for p in ports)
        searchers = [stack.start_searcher(f"searcher-{i + 1}", port=p) for i, p in enumerate(ports)]
        api = stack.start_api("mimir-api", INDEXER_TOKEN)
        workers = [stack.start_worker(f"worker-{i + 1}") for i in range(2)]
        stack.wait_serving([*searchers, api, *workers])
        reader = Service(api.name, api.proc, api.port, api.log, {"Authorization": f"Bearer {READER_TOKEN}"})
        yield Deployment(stack, repo, api, reader)
    finally:
        stack.close()
        teardown_namespace(namespace, redis_url)
        drop_database(database_url)


# -- helpers ----------------------------------------------------------------------------------
def index_via_api(d: Deployment) -> dict[str, Any]:
    """POST /api/index/repository for the repo's HEAD as the indexer; returns the 202 body."""
    resp = d.api.post("/api/index/repository", {"path": str(d.repo)})
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    assert body["status"] in ("queued", "indexing"), body
    assert body["job"]["state"] in ("queued", "running"), body
    return body


def wait_job(d: Deployment, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = d.api.get(f"/api/jobs/{run_id}").json()["job"]
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(f"job {run_id}", finished, RUN_TIMEOUT_S, interval=0.2)
    assert job["state"] == "succeeded", job
    return job


def mimir_search(d: Deployment, index_id: str, query: str, mode: str, k: int = 5) -> dict[str, Any]:
    """POST /api/search as the reader; the answer must come from Lens, complete (not degraded)."""
    body = {"index_id": index_id, "query": query, "mode": mode, "k": k, "context_lines": 0}
    resp = d.reader.post("/api/search", body)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    assert out["results"], out
    assert out.get("degraded") is not True and out.get("missing", []) == [], out
    assert {r["source"] for r in out["results"]} == {"lens"}, out
    d.searches.append((index_id, query, k, len(out["results"])))
    return out


def published(d: Deployment, repo: str) -> ShardRef:
    store = NatsShardStore(NATS_URL, d.stack.namespace)
    try:
        ref = store.current(repo)
    finally:
        store.close()
    assert ref is not None, f"no shard published for {repo}"
    return ref


def installed_on(searchers: list[Searcher], repo: str, generation: int, timeout: float = 30) -> None:
    wait_for(
        f"{repo} g{generation} on {[s.name for s in searchers]}",
        lambda: all(s.generation(repo) == generation for s in searchers),
        timeout,
    )


def lens_results(s: Searcher, repo: str, query: dict[str, Any], limit: int = 50) -> list[Any]:
    out = s.search({**query, "repos": [repo], "limit": limit})
    assert not out.get("timed_out"), out
    return [(r["repo"], r["path"], r["line_number"], r["line"]) for r in out["results"]]


def lens_api_calls(s: Searcher) -> float:
    """Requests a searcher answered on its API (searches, file reads), not probes or scrapes."""
    total = 0.0
    for family in text_string_to_metric_families(s.metrics()):
        for sample in family.samples:
            if sample.name == "lens_http_requests_total" and sample.labels["route"].startswith("/api/v1/"):
                total += sample.value
    return total


def file_lines(d: Deployment, commit: str, path: str) -> list[str]:
    return git(d.repo, "show", f"{commit}:{path}").split("\n")


def config_check(service: str, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", f"{service}.serve.cli", "config", "check", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    report: dict[str, Any] = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"] is True and report["problems"] == [], out.stdout + out.stderr
    return report


# -- 1. index through Mimir -------------------------------------------------------------------
def test_index_through_mimir_rest(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    # The deployment passes production's checks (the servers would have refused to start otherwise).
    for service, env in (("mimir", stack.mimir_env()), ("lens", stack.lens_env(stack.base / "x"))):
        assert config_check(service, env)["environment"] == "production"

    commit = git(d.repo, "rev-parse", "HEAD")
    anonymous = httpx.post(f"{d.api.url}/api/index/repository", json={"path": str(d.repo)}, timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"

    started = time.monotonic()
    body = index_via_api(d)
    index_id, run_id = body["index_id"], body["job"]["run_id"]
    assert body["commit"] == commit
    again = index_via_api(d)  # while queued or running: the same run, not a second one
    assert (again["index_id"], again["job"]["run_id"]) == (index_id, run_id)
    job = wait_job(d, run_id)
    print(f"\nfirst index through the queue: {time.monotonic() - started:.1f}s")
    assert job["percent"] == 100.0 and job["error"] is None

    status = d.api.get(f"/api/indexes/{index_id}").json()
    assert status["index"]["status"] == "ready" and status["index"]["commit"] == commit, status
    manifest = d.api.get(f"/api/indexes/{index_id}/manifest").json()
    assert manifest["commit"] == commit and manifest["counts"]["files"] == len(repo_files())

    # PostgreSQL, read directly: one index, one succeeded run, its stages and its file list.
    indexes = stack.sql("SELECT index_id, status, commit_id, lens_repo, latest_run FROM mimir.indexes")
    expected = {"index_id": index_id, "status": "ready", "commit_id": commit, "lens_repo": index_id}
    assert indexes == [{**expected, "latest_run": run_id}]
    runs = stack.sql("SELECT run_id, index_id, state, finished_at FROM mimir.runs")
    assert [(r["run_id"], r["index_id"], r["state"]) for r in runs] == [(run_id, index_id, "succeeded")]
    assert runs[0]["finished_at"] is not None
    stages = stack.sql(
        "SELECT stage, status FROM mimir.run_stages WHERE run_id = %s ORDER BY started_at", run_id
    )
    assert [s["stage"] for s in stages] == [
        "acquire",
        "repomap",
        "symbols",
        "search_index",
        "snippets",
        "bundle",
    ]
    assert {s["status"] for s in stages} == {"succeeded"}, stages
    files = stack.sql("SELECT path, language FROM mimir.files WHERE index_id = %s", index_id)
    langs = {f["path"]: f["language"] for f in files}
    assert set(langs) == set(repo_files())
    assert [langs[p] for p in ("billing/ledger.py", "internal/ledger/ledger.go", "engine/src/lib.rs")] == [
        "python",
        "go",
        "rust",
    ]

    # Mimir /ready: every backend of the production runtime is up, and the job was acked (the run's
    # state is written just before the worker acks, so the depth drops an instant later).
    checks = wait_for("queue depth 0", lambda: _ready_checks(d.api, queue_depth=0), 10)
    for name in ("database", "cache", "queue", "lens", "mcp"):
        assert checks[name]["state"] == "ok", (name, checks[name])
    assert checks["cache"]["backend"] == "redis" and checks["queue"]["backend"] == "nats", checks
    assert checks["queue"]["required"] is True and checks["lens"]["mode"] == "http", checks

    # The shard was published before the run finished; both searchers install that generation.
    ref = published(d, index_id)
    installed_on(stack.searchers, index_id, ref.generation)
    for s in stack.searchers:
        sync = wait_for(f"{s.name} shard_sync ok", functools.partial(_sync_ok, s), 10)
        assert sync["caught_up"] is True and sync["connected"] is True, sync
        assert sync["behind"] == [] and sync["max_lag_seconds"] == 0, sync
        assert s.get(f"/api/v1/repos/{index_id}").json()["repo"]["commit"] == commit
        text = s.metrics()
        assert metric(text, "lens_shard_generation", repo=index_id) == ref.generation
        assert metric(text, "lens_shard_sync_total", outcome="installed") == 1
        assert metric(text, "lens_shard_sync_total", outcome="verify_failed") == 0
    d.indexes["first"] = {"index_id": index_id, "commit": commit, "generation": ref.generation}


def _ready_checks(api: Service, queue_depth: int) -> dict[str, Any] | None:
    resp = api.get("/ready")
    assert resp.status_code == 200, resp.text
    checks: dict[str, Any] = resp.json()["checks"]
    return checks if checks["queue"].get("depth") == queue_depth else None


def _sync_ok(s: Searcher) -> dict[str, Any] | None:
    check = s.shard_sync()
    return check if check["state"] == "ok" else None


# -- 2. the same answers everywhere -----------------------------------------------------------
EXPECTED_PATHS = [  # files each LENS_QUERIES entry must find (at least)
    {"billing/invoice.py", "billing/ledger.py", "tests/test_invoice.py"},
    {"internal/ledger/ledger.go"},
    {"billing/ledger.py"},
    {"billing/invoice.py", "engine/src/lib.rs"},
    {f"internal/handlers/h{i}.go" for i in range(6)},
]


def test_searchers_and_mimir_agree(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    index_id, commit = d.indexes["first"]["index_id"], d.indexes["first"]["commit"]
    s1, s2 = stack.searchers[:2]

    # Directly on each searcher. Different limits (both above the hit count) give different cache
    # keys, so each replica computes from its own installed shard; the third call is served from
    # the Redis cache the replicas share.
    misses = [metric(s.metrics(), "lens_cache_requests_total", result="miss") for s in (s1, s2)]
    shared_hits = metric(s2.metrics(), "lens_cache_requests_total", result="hit")
    for query, paths in zip(LENS_QUERIES, EXPECTED_PATHS, strict=True):
        one = lens_results(s1, index_id, query, limit=50)
        assert paths <= {h[1] for h in one}, (query, one)
        assert 0 < len(one) < 49 and {h[0] for h in one} == {index_id}
        assert lens_results(s2, index_id, query, limit=49) == one, query
        assert lens_results(s2, index_id, query, limit=50) == one, query
    for s, before in zip((s1, s2), misses, strict=True):
        assert metric(s.metrics(), "lens_cache_requests_total", result="miss") - before == len(LENS_QUERIES)
    assert metric(s2.metrics(), "lens_cache_requests_total", result="hit") - shared_hits == len(LENS_QUERIES)
    for s in (s1, s2):  # searchers are read-only replicas, even for a valid token
        refused = s.post("/api/v1/repos", {"path": str(d.repo), "name": "x"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "read_only_replica"

    # Through Mimir: every result cites path, lines and commit, and the cited lines are the file's.
    calls = [lens_api_calls(s) for s in (s1, s2)]
    for mode, text, term in (
        ("exact", "apply_late_fee", "apply_late_fee"),
        ("ranked", "ledger balance entries", "balance"),
        ("hybrid", "InvoiceLedger record", "InvoiceLedger"),
    ):
        out = mimir_search(d, index_id, text, mode)
        assert out["commit"] == commit and out["index_id"] == index_id, out
        for r in out["results"]:
            assert r["citation"] == f"{r['path']}:L{r['start_line']}-L{r['end_line']}@{commit}", r
            assert 1 <= r["start_line"] <= r["end_line"] <= len(file_lines(d, commit, r["path"])), r
            check = d.reader.post("/api/citations/verify", {"citation": r["citation"], "sha256": r["sha256"]})
            assert check.status_code == 200 and check.json()["status"] == "valid", check.text
        top = out["results"][0]
        cited = file_lines(d, commit, top["path"])[top["start_line"] - 1 : top["end_line"]]
        assert any(term in line for line in cited), (top, cited)
    assert all(lens_api_calls(s) > n for s, n in zip((s1, s2), calls, strict=True)), "not round-robin"

    # MCP over Streamable HTTP with the reader's token: the same citations as REST (the same
    # arguments, so the answer REST computed comes back from the Redis cache).
    via_rest = [r["citation"] for r in mimir_search(d, index_id, "InvoiceLedger", "exact")["results"]]
    hit = {"cache": "search", "result": "hit"}
    cache_hits = metric(d.api.metrics(), "mimir_cache_requests_total", **hit)
    tools, found, symbol = anyio.run(_mcp_calls, d.api.url, READER_TOKEN, index_id)
    assert metric(d.api.metrics(), "mimir_cache_requests_total", **hit) == cache_hits + 1
    d.searches.append((index_id, "InvoiceLedger", 5, len(found["results"])))
    assert {"search_repo", "find_symbol", "ensure_repo_index"} <= tools
    assert [r["citation"] for r in found["results"]] == via_rest and found["commit"] == commit
    assert ("billing/ledger.py", 5) in [(s["path"], s["start_line"]) for s in symbol["symbols"]], symbol
    denied = httpx.post(
        f"{d.api.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        headers={"Accept": "application/json, text/event-stream"},
        timeout=10,
    )
    assert denied.status_code == 401


async def _mcp_calls(base: str, token: str, index_id: str) -> tuple[set[str], dict[str, Any], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0)) as http,
        Client(
            streamable_http_client(f"{base}/mcp", http_client=http), cache=None, read_timeout_seconds=30
        ) as client,
    ):
        tools = {t.name for t in (await client.list_tools()).tools}
        args = {"index_id": index_id, "query": "InvoiceLedger", "mode": "exact", "k": 5, "context_lines": 0}
        found = await client.call_tool("search_repo", args)
        symbol = await client.call_tool("find_symbol", {"index_id": index_id, "name": "InvoiceLedger"})
    assert not found.is_error and not symbol.is_error, (found.content, symbol.content)
    assert isinstance(found.structured_content, dict) and isinstance(symbol.structured_content, dict)
    return tools, found.structured_content, symbol.structured_content


# -- 3. a worker dies mid-run -----------------------------------------------------------------
def test_killed_worker_job_finishes_on_the_other(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    refunds = (
        "from billing.invoice import invoice_total\n\n\n"
        "def issue_refund_credit(invoice, reason):\n"
        "    return {'amount': invoice_total(invoice), 'reason': reason}\n"
    )
    write_files(d.repo, {"billing/refunds.py": refunds})
    commit = commit_all(d.repo, "refunds")
    before = {w.name: _worker_metrics(w) for w in stack.workers}
    body = index_via_api(d)
    index_id, run_id = body["index_id"], body["job"]["run_id"]
    assert index_id != d.indexes["first"]["index_id"] and body["commit"] == commit

    run = wait_for("the run to pause after symbols", lambda: _paused(stack, run_id), 30)
    pid = int(run["pid"])
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    holder = next(w for w in stack.workers if w.proc.pid == ppid)
    survivor = next(w for w in stack.workers if w is not holder)
    holder.proc.kill()  # kill -9 of the worker process alone: its run child must notice by itself
    assert holder.proc.wait(5) == -signal.SIGKILL
    wait_for("the orphaned run process to die", lambda: not Path(f"/proc/{pid}").exists(), 5)
    killed_at = time.monotonic()

    job = wait_job(d, run_id)
    took = time.monotonic() - killed_at
    print(f"\nredelivered and finished {took:.1f}s after the kill (ack wait {ACK_WAIT_S}s)")
    assert took >= PAUSE_S  # rerun from scratch, so it paused once more
    assert job["error"] is None
    assert stack.sql("SELECT run_id, state FROM mimir.runs WHERE index_id = %s", index_id) == [
        {"run_id": run_id, "state": "succeeded"}
    ]
    assert {r["index_id"]: r["status"] for r in stack.sql("SELECT index_id, status FROM mimir.indexes")} == {
        d.indexes["first"]["index_id"]: "ready",
        index_id: "ready",
    }
    assert [p.name for p in (stack.mimir_data / "indexes").iterdir() if p.name.startswith(".")] == []
    assert _worker_metrics(survivor)["redeliveries"] - before[survivor.name]["redeliveries"] == 1
    wait_for(
        "the survivor to count the job",
        lambda: _worker_metrics(survivor)["succeeded"] - before[survivor.name]["succeeded"] == 1,
        10,
    )
    assert _worker_metrics(survivor)["dead_letters"] == 0

    ref = published(d, index_id)
    installed_on(stack.searchers, index_id, ref.generation)
    for s in stack.searchers:
        found = lens_results(s, index_id, {"q": "issue_refund_credit", "mode": "exact"})
        assert [(h[1], h[2]) for h in found] == [("billing/refunds.py", 4)], found
        old = lens_results(s, d.indexes["first"]["index_id"], {"q": "issue_refund_credit", "mode": "exact"})
        assert old == []  # the first commit's shard is untouched
    top = mimir_search(d, index_id, "issue_refund_credit", "exact", k=3)["results"][0]
    assert top["citation"] == f"billing/refunds.py:L{top['start_line']}-L{top['end_line']}@{commit}"
    assert top["start_line"] <= 4 <= top["end_line"], top
    d.indexes["second"] = {"index_id": index_id, "commit": commit, "generation": ref.generation}


def _paused(stack: Stack, run_id: str) -> dict[str, Any] | None:
    """The run's row while it sits in its test pause (artifacts already in its .tmp directory)."""
    rows = stack.sql("SELECT state, stage, pid FROM mimir.runs WHERE run_id = %s", run_id)
    tmp = stack.mimir_data / "indexes" / f".tmp-{run_id}" / "research.sqlite"
    if not rows or not tmp.exists():
        return None
    row = rows[0]
    return row if (row["state"], row["stage"]) == ("running", "symbols") and row["pid"] else None


def _worker_metrics(w: Service) -> dict[str, float]:
    text = w.metrics()
    return {
        "succeeded": metric(text, "mimir_queue_jobs_total", outcome="succeeded"),
        "redeliveries": metric(text, "mimir_queue_redeliveries_total"),
        "dead_letters": metric(text, "mimir_queue_dead_letters_total"),
    }


# -- 4. a searcher added late -----------------------------------------------------------------
def test_late_searcher_catches_up_by_itself(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    s1 = stack.searchers[0]
    late = stack.start_searcher("searcher-late")
    wait_for("the late searcher to be ready", late.ready, 60)
    # Ready means caught up: every published shard is already installed, no polling needed.
    for facts in d.indexes.values():
        assert late.generation(facts["index_id"]) == published(d, facts["index_id"]).generation
    sync = late.shard_sync()
    assert sync["state"] == "ok" and sync["caught_up"] is True and sync["behind"] == [], sync
    assert metric(late.metrics(), "lens_shard_sync_total", outcome="installed") == len(d.indexes)
    for facts in d.indexes.values():
        for query in [*LENS_QUERIES, {"q": "issue_refund_credit", "mode": "exact"}]:
            expected = lens_results(s1, facts["index_id"], query, limit=48)
            assert lens_results(late, facts["index_id"], query, limit=47) == expected, query
    started = time.monotonic()
    assert late.stop() == 0  # SIGTERM: a clean exit
    assert time.monotonic() - started < SHUTDOWN_GRACE_S
    stack.searchers.remove(late)


# -- 5. a searcher dies -----------------------------------------------------------------------
def test_searcher_loss_fails_over_and_the_replica_catches_up(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    s1, s2 = stack.searchers
    first = d.indexes["first"]["index_id"]
    s1.kill()
    served = lens_api_calls(s2)
    for query, mode in (
        ("late_fee_cents", "exact"),
        ("InvoiceLedger balance", "hybrid"),
        ("tax_for region", "ranked"),
        ("formatCurrency", "exact"),
    ):
        mimir_search(d, first, query, mode)  # complete answers from searcher-2, never degraded
    assert lens_api_calls(s2) > served
    lens = d.api.get("/ready").json()["checks"]["lens"]  # one replica answering is enough
    assert lens["state"] == "ok" and lens["breaker"] == "closed", lens

    # Published while searcher-1 is down ...
    write_files(
        d.repo, {"billing/disputes.py": "def open_chargeback_dispute(invoice):\n    return invoice\n"}
    )
    commit = commit_all(d.repo, "disputes")
    body = index_via_api(d)
    wait_job(d, body["job"]["run_id"])
    index_id = body["index_id"]
    ref = published(d, index_id)
    installed_on([s2], index_id, ref.generation)
    d.indexes["third"] = {"index_id": index_id, "commit": commit, "generation": ref.generation}

    # ... is installed when it is back, on the same port and data directory.
    again = stack.start_searcher("searcher-1", port=s1.port)
    wait_for("searcher-1 to be ready again", again.ready, 60)
    for facts in d.indexes.values():
        assert again.generation(facts["index_id"]) == s2.generation(facts["index_id"]) == facts["generation"]
    # Only what it missed was downloaded: its data directory remembered the rest.
    assert metric(again.metrics(), "lens_shard_sync_total", outcome="installed") == 1
    dispute = {"q": "open_chargeback_dispute", "mode": "exact"}
    assert lens_results(again, index_id, dispute, limit=30) == lens_results(s2, index_id, dispute, limit=31)
    assert [h[1] for h in lens_results(again, index_id, dispute)] == ["billing/disputes.py"]
    served = lens_api_calls(again)
    for q in ("open_chargeback_dispute", "InvoiceLedger", "tax_for"):
        mimir_search(d, index_id, q, "exact", k=3)
    assert lens_api_calls(again) > served  # back in Mimir's rotation


# -- 6. SIGTERM drains an API process ---------------------------------------------------------
def test_sigterm_drains_in_flight_requests(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    api = stack.start_api("mimir-api-drain", READER_TOKEN)  # a second API replica of the deployment
    stack.wait_serving([api])
    wait_for("the second API process to be ready", api.ready, 30)
    index_id = d.indexes["first"]["index_id"]
    query = "InvoiceLedger drain"
    payload = json.dumps({"index_id": index_id, "query": query, "mode": "exact", "k": 3}).encode()
    head = (
        f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
        f"Authorization: Bearer {READER_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    # A slow client: the request is in flight (headers and half the body sent) when SIGTERM lands.
    conn = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    try:
        conn.sendall(head + payload[:20])
        in_flight = "mimir_http_requests_in_flight"  # the scrape itself is one
        wait_for("the request to be in flight", lambda: metric(api.metrics(), in_flight) >= 2, 10)
        api.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for("new connections to be refused", lambda: _refused(api.port), 5)
        assert api.alive(), "exited with a request in flight"
        conn.sendall(payload[20:])
        status, body = _read_http_response(conn)
    finally:
        conn.close()
    assert status == 200, body
    assert body["results"] and body["results"][0]["path"] == "billing/ledger.py", body
    d.searches.append((index_id, query, 3, len(body["results"])))
    assert api.proc.wait(SHUTDOWN_GRACE_S) == 0, api.log_tail()
    assert time.monotonic() - signalled < SHUTDOWN_GRACE_S
    stack.apis.remove(api)
    assert d.api.get("/ready").status_code == 200  # the other API process is untouched


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _read_http_response(conn: socket.socket) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 response with a Content-Length body; the server must close the connection after."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before the response headers: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    assert rest[length:] == b"" and conn.recv(1) == b"", "draining: the server closes the connection"
    out: dict[str, Any] = json.loads(rest[:length])
    return int(lines[0].split()[1]), out


# -- 7. who did what ----------------------------------------------------------------------------
def test_audit_and_query_logs(deployment: Deployment) -> None:
    d, stack = deployment, deployment.stack
    indexer, reader = token_principal(INDEXER_TOKEN), token_principal(READER_TOKEN)
    # A refused action is audited too, under the caller who tried it.
    refused = d.reader.post("/api/index/repository", {"path": "/etc"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "path_not_allowed", refused.text

    audit = stack.sql("SELECT action, principal, target, detail FROM mimir.audit_log ORDER BY id")
    first, second, third = (d.indexes[k]["index_id"] for k in ("first", "second", "third"))
    assert [(a["action"], a["principal"], a["target"]) for a in audit] == [
        *[("index", indexer, str(d.repo))] * 4,
        ("index", reader, "/etc"),
    ]
    assert [a["detail"].get("index_id") for a in audit] == [first, first, second, third, None]
    assert [a["detail"]["outcome"] for a in audit] == ["ok"] * 4 + ["path_not_allowed"]
    assert all(a["detail"]["rev"] == "HEAD" and a["detail"]["force"] is False for a in audit)

    # Every answered search, REST and MCP alike, in order, under the reader's principal.
    log = stack.sql(
        "SELECT kind, index_id, query, k, results, took_ms, principal FROM mimir.query_log ORDER BY id"
    )
    assert [(q["index_id"], q["query"], q["k"], q["results"]) for q in log] == d.searches
    assert {(q["kind"], q["principal"]) for q in log} == {("search", reader)}
    assert all(q["took_ms"] > 0 for q in log)
    assert len({q["index_id"] for q in log}) == 3


# -- 8. the deployment stops cleanly ------------------------------------------------------------
def test_every_process_exits_zero_on_sigterm(deployment: Deployment) -> None:
    stack = deployment.stack
    alive = [s for s in stack.services if s.alive()]
    names = sorted(s.name for s in alive)  # one worker was killed in test 3, the drained API exited
    assert names[:3] == ["mimir-api", "searcher-1", "searcher-2"] and len(names) == 4, names
    assert names[3] in ("worker-1", "worker-2"), names
    for s in alive:
        os.kill(s.proc.pid, signal.SIGTERM)
    started = time.monotonic()
    codes = {s.name: s.proc.wait(SHUTDOWN_GRACE_S + 5) for s in alive}
    assert codes == dict.fromkeys(codes, 0), {s.name: s.log_tail(5) for s in alive if codes[s.name]}
    assert time.monotonic() - started < SHUTDOWN_GRACE_S
