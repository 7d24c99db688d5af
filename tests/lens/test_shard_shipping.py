"""Shard shipping end to end: a ``lens serve --role indexer`` publishes through real NATS JetStream,
``lens serve --role searcher`` replicas (own data dirs, same namespace) install and serve it.

Also Mimir's HttpLens over a comma-separated LENS_URL: round-robin over the replicas, failover.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitrepo import commit_all, git, write_files
from infra.shardstore import NatsShardStore, ShardRef
from mimir.lensclient import HttpLens, LensUnavailable
from support import free_port

NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
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
    "cmd/main.go": (
        'package main\n\nimport "fmt"\n\n'
        "type Cart struct{ Items []int }\n\n"
        "func (c *Cart) Total() int {\n\tt := 0\n"
        "\tfor _, i := range c.Items {\n\t\tt += i\n\t}\n\treturn t\n}\n\n"
        "func main() { fmt.Println((&Cart{}).Total()) }\n"
    ),
}
# Settings of the surrounding environment that must not leak into the Lens processes.
_FOREIGN = ("REDIS_URL", "NATS_URL", "NATS_NAMESPACE", "LENS_URL", "LENS_ROLE", "PROMETHEUS_MULTIPROC_DIR")
QUERIES: list[dict[str, Any]] = [
    {"q": "apply_discount", "mode": "exact"},
    {"q": r"/def \w+_total/", "mode": "exact"},
    {"q": "sym:Total", "mode": "exact"},
    {"q": "checkout total discount", "mode": "ranked"},
    {"q": "Cart lang:go", "mode": "exact"},
]


@dataclass
class LensProc:
    """A ``lens serve`` child process."""

    url: str
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=10)

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(self.url + "/api/v1/search", json={"limit": 50, **body}, timeout=10)
        assert resp.status_code == 200, resp.text
        out: dict[str, Any] = resp.json()
        return out

    def generation(self, repo: str) -> int | None:
        resp = self.get(f"/api/v1/repos/{repo}")
        return int(resp.json()["repo"]["generation"]) if resp.status_code == 200 else None

    def metric(self, name: str, **labels: str) -> float:
        """The sample ``name`` whose labels include ``labels`` (0 when absent)."""
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Cluster:
    root: Path
    namespace: str
    started: list[LensProc] = field(default_factory=list)

    def start(self, role: str, name: str, **overrides: str) -> LensProc:
        port = free_port()
        data = self.root / f"{name}-data"
        log = self.root / f"{name}.log"
        env = {
            **{k: v for k, v in os.environ.items() if k not in _FOREIGN},
            "LENS_DATA_DIR": str(data),
            "LENS_ALLOWED_ROOTS": str(self.root),
            "LENS_EMBED": "0",
            "LENS_NATS_URL": NATS_URL,
            "LENS_NATS_NAMESPACE": self.namespace,
            "LENS_CACHE_TTL_S": "0",
            **overrides,
        }
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(port), "--role", role],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        lens = LensProc(f"http://127.0.0.1:{port}", proc, data, log)
        self.started.append(lens)
        wait_for(lambda: _healthy(lens), 30, f"{name} to start (log: {log})")
        return lens

    def store(self) -> NatsShardStore:
        return NatsShardStore(NATS_URL, self.namespace)


def _healthy(lens: LensProc) -> bool:
    assert lens.proc.poll() is None, lens.log.read_text()
    try:
        return lens.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


async def _drop_namespace(ns: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for stream in (f"KV_{ns}-generations", f"OBJ_{ns}-shards", f"{ns}_JOBS", f"{ns}_DLQ"):
            try:
                await js.delete_stream(stream)
            except Exception as exc:
                if "not found" not in str(exc).lower():
                    raise
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One indexer and two searchers on a fresh namespace, shared by this module's tests."""
    c = Cluster(tmp_path_factory.mktemp("shipping"), f"t{uuid.uuid4().hex[:12]}")
    try:
        c.start("indexer", "indexer")
        c.start("searcher", "searcher-a")
        c.start("searcher", "searcher-b")
        yield c
    finally:
        for lens in c.started:
            lens.stop()
        asyncio.run(_drop_namespace(c.namespace))


def _make_repo(root: Path, name: str) -> Path:
    repo = root / name
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_files(repo, dict(FILES))
    commit_all(repo, "initial")
    return repo


def index(indexer: LensProc, repo: Path, name: str) -> dict[str, Any]:
    """POST an index job to the indexer and wait for it; returns the job (report.shipped = the ref)."""
    resp = httpx.post(indexer.url + "/api/v1/repos", json={"path": str(repo), "name": name}, timeout=10)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job"]["id"]
    job: dict[str, Any] = {}

    def done() -> bool:
        nonlocal job
        job = indexer.get(f"/api/v1/jobs/{job_id}").json()["job"]
        return job["state"] in ("succeeded", "failed")

    wait_for(done, 60, f"index job {job_id}")
    assert job["state"] == "succeeded", job
    return job


def installed_everywhere(searchers: list[LensProc], repo: str, generation: int) -> float:
    """Wait until every searcher serves ``generation`` of ``repo``; returns the wall time then."""
    wait_for(lambda: all(s.generation(repo) == generation for s in searchers), 30, f"{repo} g{generation}")
    return time.time()


def _results(out: dict[str, Any]) -> list[Any]:
    return [(r["repo"], r["path"], r["line_number"], r["line"]) for r in out["results"]]


def test_searchers_serve_the_shipped_shard_identically(cluster: Cluster) -> None:
    indexer, a, b = cluster.started[:3]
    repo = _make_repo(cluster.root, "shop-one")
    job = index(indexer, repo, "shop-one")
    shipped = ShardRef.from_dict(job["report"]["shipped"])
    assert shipped.repo == "shop-one" and shipped.generation == job["report"]["generation"]

    installed_at = installed_everywhere([a, b], "shop-one", shipped.generation)
    print(f"\nshipping latency, publication -> both searchers: {installed_at - shipped.published_at:.3f}s")
    for query in QUERIES:
        expected = _results(indexer.search({**query, "repos": ["shop-one"]}))
        assert expected, query
        assert _results(a.search({**query, "repos": ["shop-one"]})) == expected, query
        assert _results(b.search({**query, "repos": ["shop-one"]})) == expected, query

    for s in (a, b):
        ready = s.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["shard_sync"]["state"] == "ok", ready.text
        assert s.metric("lens_shard_sync_total", outcome="installed") >= 1
        assert s.metric("lens_shard_generation", repo="shop-one") == shipped.generation
        assert s.metric("lens_shard_sync_lag_seconds", repo="shop-one") == 0


def test_searchers_refuse_writes(cluster: Cluster) -> None:
    a = cluster.started[1]
    post = httpx.post(a.url + "/api/v1/repos", json={"path": str(cluster.root), "name": "x"}, timeout=10)
    delete = httpx.delete(a.url + "/api/v1/repos/shop-one", timeout=10)
    for resp in (post, delete):
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "read_only_replica"


def test_reindex_swaps_every_searcher_to_the_new_generation(cluster: Cluster) -> None:
    indexer, a, b = cluster.started[:3]
    repo = _make_repo(cluster.root, "shop-two")
    first = ShardRef.from_dict(index(indexer, repo, "shop-two")["report"]["shipped"])
    installed_everywhere([a, b], "shop-two", first.generation)
    assert a.search({"q": "loyalty_points", "repos": ["shop-two"]})["results"] == []

    write_files(repo, {"shop/loyalty.py": "def loyalty_points(total):\n    return int(total // 10)\n"})
    commit_all(repo, "loyalty")
    second = ShardRef.from_dict(index(indexer, repo, "shop-two")["report"]["shipped"])
    assert second.generation > first.generation
    installed_at = installed_everywhere([a, b], "shop-two", second.generation)
    print(f"\nre-index shipping latency, publication -> both: {installed_at - second.published_at:.3f}s")
    for s in (a, b):
        hits = s.search({"q": "loyalty_points", "repos": ["shop-two"]})["results"]
        assert [h["path"] for h in hits] == ["shop/loyalty.py"]


def test_late_searcher_catches_up_on_start(cluster: Cluster) -> None:
    indexer = cluster.started[0]
    repo = _make_repo(cluster.root, "shop-three")
    shipped = ShardRef.from_dict(index(indexer, repo, "shop-three")["report"]["shipped"])
    late = cluster.start("searcher", "searcher-late")
    wait_for(lambda: late.get("/ready").status_code == 200, 30, "the late searcher to be ready")
    # Ready means caught up: every published repo is already here, no polling needed.
    assert late.generation("shop-three") == shipped.generation
    expected = _results(indexer.search({"q": "apply_discount", "repos": ["shop-three"]}))
    assert _results(late.search({"q": "apply_discount", "repos": ["shop-three"]})) == expected
    late.stop()

    # Restarted on the same data directory, it already has every ref: nothing is downloaded again.
    again = cluster.start("searcher", "searcher-late")
    wait_for(lambda: again.get("/ready").status_code == 200, 30, "the restarted searcher to be ready")
    assert again.generation("shop-three") == shipped.generation
    assert again.metric("lens_shard_sync_total", outcome="installed") == 0
    again.stop()


def test_searcher_without_nats_is_not_ready(cluster: Cluster) -> None:
    """NATS unreachable at start: /ready is 503 (no catch-up happened) and says why; /health is 200."""
    dead = f"nats://127.0.0.1:{free_port()}"
    lonely = cluster.start("searcher", "searcher-offline", LENS_NATS_URL=dead)
    try:
        wait_for(
            lambda: lonely.get("/ready").json()["checks"]["shard_sync"]["store_error"], 15, "a store error"
        )
        ready = lonely.get("/ready")
        assert ready.status_code == 503
        check = ready.json()["checks"]["shard_sync"]
        assert check["state"] == "down" and check["caught_up"] is False and check["connected"] is False, check
        assert lonely.get("/health").status_code == 200
    finally:
        lonely.stop()


def test_second_process_on_a_data_dir_stands_by(cluster: Cluster) -> None:
    """Two processes on one data directory (``--workers N``): one syncs, the other reports its status."""
    a = cluster.started[1]
    twin = cluster.start("searcher", "searcher-twin", LENS_DATA_DIR=str(a.data))
    try:
        wait_for(lambda: twin.get("/ready").status_code == 200, 15, "the standby process to be ready")
        ready = twin.get("/ready")
        assert ready.json()["checks"]["shard_sync"]["standby"] is True
        assert twin.search({"q": "apply_discount", "repos": ["shop-one"]})["results"]
        assert twin.metric("lens_shard_sync_total", outcome="installed") == 0
    finally:
        twin.stop()


def test_tampered_object_is_rejected_and_the_old_generation_kept(cluster: Cluster) -> None:
    indexer, a, b = cluster.started[:3]
    repo = _make_repo(cluster.root, "shop-four")
    good = ShardRef.from_dict(index(indexer, repo, "shop-four")["report"]["shipped"])
    installed_everywhere([a, b], "shop-four", good.generation)
    before = [s.metric("lens_shard_sync_total", outcome="verify_failed") for s in (a, b)]

    # A newer ref whose object's bytes were altered after hashing: what a corrupted or hostile
    # store would hand out. Written straight to the buckets, as a broken publisher would.
    store = cluster.store()
    try:
        download = cluster.root / "good.sqlite"
        store.fetch(good, download)
        data = bytearray(download.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bad = ShardRef(
            "shop-four", good.generation + 1, good.sha256, good.size, time.time(), "shop-four/tampered"
        )
        asyncio.run(_put_raw(cluster.namespace, bad, bytes(data)))
    finally:
        store.close()

    wait_for(
        lambda: all(
            s.metric("lens_shard_sync_total", outcome="verify_failed") > n
            for s, n in zip((a, b), before, strict=True)
        ),
        30,
        "both searchers to reject the tampered shard",
    )
    for s in (a, b):
        assert s.generation("shop-four") == good.generation  # still serving the verified one
        assert s.search({"q": "apply_discount", "repos": ["shop-four"]})["results"]
        ready = s.get("/ready")
        assert ready.status_code == 200  # degraded, not down: it keeps serving
        check = ready.json()["checks"]["shard_sync"]
        assert check["state"] == "degraded" and "shop-four" in check["behind"], check
        assert "verify_failed" in check["errors"]["shop-four"]
        assert s.metric("lens_shard_sync_lag_seconds", repo="shop-four") > 0

    # The next good publication heals it.
    write_files(repo, {"shop/fix.py": "def fixed():\n    return 1\n"})
    commit_all(repo, "fix")
    healed = ShardRef.from_dict(index(indexer, repo, "shop-four")["report"]["shipped"])
    assert healed.generation >= bad.generation  # equal replaces: the store's ref is authoritative
    installed_everywhere([a, b], "shop-four", healed.generation)
    wait_for(
        lambda: all(s.get("/ready").json()["checks"]["shard_sync"]["state"] == "ok" for s in (a, b)), 10, "ok"
    )


async def _put_raw(ns: str, ref: ShardRef, data: bytes) -> None:
    import nats

    from infra.shardstore import repo_key

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        await (await js.object_store(f"{ns}-shards")).put(ref.object_name, data)
        await (await js.key_value(f"{ns}-generations")).put(repo_key(ref.repo), ref.to_json())
    finally:
        await nc.close()


def test_httplens_spreads_over_replicas_and_fails_over(cluster: Cluster) -> None:
    _indexer, a, b = cluster.started[:3]
    repo = _make_repo(cluster.root, "shop-five")
    shipped = ShardRef.from_dict(index(cluster.started[0], repo, "shop-five")["report"]["shipped"])
    installed_everywhere([a, b], "shop-five", shipped.generation)

    def searches(lens: LensProc) -> float:
        return lens.metric("lens_http_requests_total", route="/api/v1/search", method="POST", status="200")

    before = [searches(a), searches(b)]
    with HttpLens(f"{a.url},{b.url}") as client:
        for _ in range(10):
            out = client.search("apply_discount", mode="exact", limit=5, context=0, repos=["shop-five"])
            assert out["results"]
    assert [searches(a) - before[0], searches(b) - before[1]] == [5, 5]

    # A search then a file read, as Mimir does per result: an even cycle, so one rotation shared by
    # every call would send every search to the same replica; searches must still alternate.
    before = [searches(a), searches(b)]
    with HttpLens(f"{a.url},{b.url}") as client:
        for _ in range(6):
            hit = client.search("apply_discount", mode="exact", limit=5, context=0, repos=["shop-five"])
            path = hit["results"][0]["path"]
            assert client.read_file("shop-five", path, 1, 2)["lines"]
    assert [searches(a) - before[0], searches(b) - before[1]] == [3, 3]

    dead = f"http://127.0.0.1:{free_port()}"
    with HttpLens(f"{dead},{a.url}", backoff_base=0.01) as client:
        for _ in range(4):
            assert client.search("apply_discount", mode="exact", limit=5, context=0, repos=["shop-five"])[
                "results"
            ]
        assert client.breaker.state == "closed"
        assert client.breaker.counters()["failures"] == 0

    with HttpLens(f"{dead},http://127.0.0.1:{free_port()}", backoff_base=0.01) as client:
        with pytest.raises(LensUnavailable):
            client.search("apply_discount", mode="exact", limit=5, context=0, repos=["shop-five"])
        assert client.breaker.counters()["failures"] == 1  # one failed call, however many replicas it tried


def test_mimir_pipeline_ships_its_shard_to_the_searchers(cluster: Cluster) -> None:
    """Mimir with NATS: a queue worker builds the shard in-process, publishes it before the run ends,
    and Mimir's reads go to the searchers listed in LENS_URL."""
    from mimir.config import MimirSettings
    from mimir.pipeline.dispatch import QueueWorker
    from mimir.service import Mimir

    _indexer, a, b = cluster.started[:3]
    repo = _make_repo(cluster.root, "mimir-shop")
    settings = MimirSettings(
        data_dir=cluster.root / "mimir-data",
        allowed_roots=str(cluster.root),
        lens_url=f"{a.url},{b.url}",
        nats_url=NATS_URL,
        nats_namespace=cluster.namespace,
        embed=False,
    )
    mimir = Mimir(settings)
    worker = QueueWorker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        out = mimir.ensure_repo_index(str(repo))
        run = mimir.manager.wait(out["run"]["run_id"], timeout=120)
        assert run.state == "succeeded", run.error
        store = cluster.store()
        try:
            ref = store.current(out["index_id"])  # published by the time the run succeeded
        finally:
            store.close()
        assert ref is not None
        installed_everywhere([a, b], out["index_id"], ref.generation)
        found = mimir.search_repo(out["index_id"], "apply_discount", k=5, mode="exact")
        assert found["results"] and "lens" not in found["missing"], found
        assert {r["path"] for r in found["results"]} >= {"shop/pricing.py"}
    finally:
        worker.stop()
        thread.join(30)
        worker.close()
        mimir.close()


def test_searcher_rides_out_a_nats_outage(tmp_path: Path) -> None:
    """A private NATS dies after the catch-up: the searcher stays ready (degraded) and keeps serving;
    once NATS is back it reconnects by itself and installs what was published meanwhile.
    Published here by the Lens engine in-process + ShardPublisher (the library path)."""
    from lens.config import LensSettings
    from lens.engine import Lens
    from lens.ship.publisher import ShardPublisher

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
    from nats_server import NatsServer

    with NatsServer() as server:
        cluster = Cluster(tmp_path, f"t{uuid.uuid4().hex[:12]}")
        engine = Lens(LensSettings(data_dir=tmp_path / "publisher-data", embed=False))
        repo = _make_repo(tmp_path, "shop-out")

        def publish() -> ShardRef:
            engine.index(repo, name="shop-out")
            store = NatsShardStore(server.url, cluster.namespace)
            try:
                return ShardPublisher(engine.catalog, store, work_dir=tmp_path / "outgoing").publish(
                    "shop-out"
                )
            finally:
                store.close()

        first = publish()
        searcher = cluster.start("searcher", "searcher", LENS_NATS_URL=server.url)
        try:
            wait_for(lambda: searcher.get("/ready").status_code == 200, 30, "catch-up")
            assert searcher.generation("shop-out") == first.generation

            server.kill()
            wait_for(lambda: not _sync_check(searcher)["connected"], 20, "the searcher to notice the outage")
            ready = searcher.get("/ready")
            assert ready.status_code == 200 and _sync_check(searcher)["state"] == "degraded", ready.text
            assert searcher.search({"q": "apply_discount", "repos": ["shop-out"]})["results"]

            server.start()
            write_files(repo, {"shop/after.py": "def after_outage():\n    return 2\n"})
            commit_all(repo, "after the outage")
            second = publish()
            installed_everywhere([searcher], "shop-out", second.generation)
            wait_for(lambda: _sync_check(searcher)["state"] == "ok", 10, "shard_sync ok again")
            hits = searcher.search({"q": "after_outage", "repos": ["shop-out"]})["results"]
            assert [h["path"] for h in hits] == ["shop/after.py"]
        finally:
            searcher.stop()


def _sync_check(lens: LensProc) -> dict[str, Any]:
    check: dict[str, Any] = lens.get("/ready").json()["checks"]["shard_sync"]
    return check


def test_shipping_roles_need_nats(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*_FOREIGN, "LENS_NATS_URL")}
    env["LENS_DATA_DIR"] = str(tmp_path / "data")
    cmd = [sys.executable, "-m", "lens.serve.cli", "serve", "--port", str(free_port()), "--role", "searcher"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "needs LENS_NATS_URL" in out.stderr + out.stdout
