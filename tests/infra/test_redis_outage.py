"""Redis dies under running Mimir and Lens servers: answers stay correct, /ready says degraded,
and the cache heals by itself when Redis is back, with no restart of either app.

Everything is real: a private redis-server started from ops/redis/redis.conf (SIGKILLed and
restarted on the same port), the FastAPI apps over TestClient, real index runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis_server import PrivateRedis, fresh_prefix

from gitrepo import commit_all, write_files
from infra.cache import make_cache
from infra.ratelimit import make_rate_limiter
from lens.engine import Lens
from lens.serve.api import create_app as create_lens_app
from mimir.config import MimirSettings
from mimir.lensclient import HttpLens
from mimir.serve.api import create_app as create_mimir_app
from mimir.service import Mimir
from support import free_port

pytestmark = pytest.mark.slow

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
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample from the app's own /metrics (0 when absent): what Prometheus would scrape."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def cache_state(client: TestClient) -> str:
    resp = client.get("/ready")
    assert resp.status_code == 200, resp.text  # the cache is never required: degraded is still ready
    cache: dict[str, Any] = resp.json()["checks"]["cache"]
    assert cache["required"] is False and cache["backend"] == "redis", cache
    return str(cache["state"])


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def redis_keys(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return list(client.scan_iter(match=f"{prefix}*"))
    finally:
        client.close()


# -- Mimir ---------------------------------------------------------------------------------
@pytest.fixture
def indexed_mimir(tmp_path: Path, make_repo: Callable[..., Path]) -> tuple[MimirSettings, str]:
    """Settings of a data dir holding one ready index (built without any cache), and its id."""
    repo = make_repo(FILES, name="shop-repo")
    settings = MimirSettings(data_dir=tmp_path / "mimir-data", allowed_roots=str(tmp_path))
    service = Mimir(settings)
    try:
        out = service.ensure_repo_index(str(repo))
        run = service.manager.wait(out["run"]["run_id"], timeout=180)
        assert run.state == "succeeded", run.error
    finally:
        service.close()
    return settings, str(out["index_id"])


def test_mimir_cache_survives_a_redis_outage(
    indexed_mimir: tuple[MimirSettings, str], private_redis: PrivateRedis
) -> None:
    base, index_id = indexed_mimir
    prefix = fresh_prefix()
    settings = base.model_copy(update={"redis_url": private_redis.url, "nats_namespace": prefix})
    service = Mimir(settings)
    search = {"index_id": index_id, "query": "apply_discount", "k": 5, "mode": "hybrid"}
    ask = {"index_id": index_id, "question": "how is the checkout total discounted?"}
    hits = {"cache": "search", "result": "hit"}
    try:
        with TestClient(create_mimir_app(service)) as client:
            assert cache_state(client) == "ok"
            first = client.post("/api/search", json=search)
            assert first.status_code == 200 and first.json()["results"], first.text
            assert first.json()["degraded"] is False
            before = metric(client, "mimir_cache_requests_total", **hits)
            second = client.post("/api/search", json=search)
            assert second.content == first.content  # byte-identical: the cache adds nothing
            assert metric(client, "mimir_cache_requests_total", **hits) == before + 1
            assert redis_keys(private_redis.url, prefix), "the entry must live in Redis"

            asked = client.post("/api/ask", json=ask)
            assert asked.status_code == 200 and asked.json()["degraded"] is False, asked.text
            assert client.post("/api/ask", json=ask).content == asked.content
            assert metric(client, "mimir_cache_requests_total", cache="ask", result="hit") >= 1
            assert metric(client, "mimir_cache_up") == 1

            private_redis.kill()
            errors = metric(client, "mimir_cache_requests_total", cache="search", result="error")
            started = time.monotonic()
            during = client.post("/api/search", json=search)
            assert time.monotonic() - started < 5.0
            assert during.status_code == 200 and during.content == first.content  # still right, uncached
            assert metric(client, "mimir_cache_requests_total", cache="search", result="error") > errors
            other = client.post("/api/search", json={**search, "query": "checkout_total", "mode": "exact"})
            assert other.status_code == 200 and other.json()["results"], other.text
            assert cache_state(client) == "degraded"
            assert metric(client, "mimir_cache_up") == 0

            private_redis.start()  # same port, empty: no persistence
            wait_for(lambda: cache_state(client) == "ok")
            assert client.post("/api/search", json=search).content == first.content  # miss, stored
            before = metric(client, "mimir_cache_requests_total", **hits)
            assert client.post("/api/search", json=search).content == first.content
            assert metric(client, "mimir_cache_requests_total", **hits) == before + 1
            assert metric(client, "mimir_cache_up") == 1
    finally:
        service.close()


def test_mimir_never_caches_a_degraded_answer(
    indexed_mimir: tuple[MimirSettings, str], private_redis: PrivateRedis
) -> None:
    base, index_id = indexed_mimir
    prefix = fresh_prefix()
    settings = base.model_copy(update={"redis_url": private_redis.url, "nats_namespace": prefix})
    dead_lens = HttpLens(f"http://127.0.0.1:{free_port()}", connect_timeout=0.5, read_timeout=0.5)
    service = Mimir(settings, lens=dead_lens)
    search = {"index_id": index_id, "query": "apply_discount", "k": 5, "mode": "hybrid"}
    try:
        with TestClient(create_mimir_app(service)) as client:
            for _ in range(2):
                resp = client.post("/api/search", json=search)
                assert resp.status_code == 200 and resp.json()["degraded"] is True, resp.text
            assert metric(client, "mimir_cache_requests_total", cache="search", result="miss") >= 2
            assert redis_keys(private_redis.url, prefix) == []
    finally:
        service.close()
        dead_lens.close()


# -- Lens ----------------------------------------------------------------------------------
def test_lens_cache_invalidates_on_reindex_and_survives_a_redis_outage(
    make_repo: Callable[..., Path], lens_factory: Callable[..., Lens], private_redis: PrivateRedis
) -> None:
    repo = make_repo(FILES, name="shop")
    prefix = fresh_prefix()
    engine = lens_factory(embed=False, redis_url=private_redis.url, nats_namespace=prefix)
    engine.index(repo, name="shop")
    params = {"q": "amount", "mode": "exact"}
    hits = {"result": "hit"}
    with TestClient(create_lens_app(engine)) as client:
        assert cache_state(client) == "ok"
        first = client.get("/api/v1/search", params=params)
        assert first.status_code == 200 and first.json()["results"], first.text
        before = metric(client, "lens_cache_requests_total", **hits)
        assert client.get("/api/v1/search", params=params).content == first.content
        assert metric(client, "lens_cache_requests_total", **hits) == before + 1
        assert redis_keys(private_redis.url, prefix), "the entry must live in Redis"

        # A re-index (incremental, same generation directory) changes the key: the new line shows.
        write_files(repo, {"shop/refund.py": "def refund(amount):\n    return -amount\n"})
        commit_all(repo, "refunds")
        engine.index(repo, name="shop")
        fresh = client.get("/api/v1/search", params=params)
        assert "shop/refund.py" in {r["path"] for r in fresh.json()["results"]}, fresh.text
        assert metric(client, "lens_cache_requests_total", **hits) == before + 1  # that was a miss

        private_redis.kill()
        started = time.monotonic()
        during = client.get("/api/v1/search", params=params)
        assert time.monotonic() - started < 5.0
        assert during.status_code == 200
        assert during.json()["results"] == fresh.json()["results"]  # recomputed, not stale
        assert metric(client, "lens_cache_requests_total", result="error") >= 1
        assert cache_state(client) == "degraded"
        assert metric(client, "lens_cache_up") == 0

        private_redis.start()
        wait_for(lambda: cache_state(client) == "ok")
        stored = client.get("/api/v1/search", params=params)
        before = metric(client, "lens_cache_requests_total", **hits)
        assert client.get("/api/v1/search", params=params).content == stored.content
        assert metric(client, "lens_cache_requests_total", **hits) == before + 1
        assert metric(client, "lens_cache_up") == 1


# -- a hung Redis ---------------------------------------------------------------------------
def test_a_hung_redis_costs_one_short_timeout_then_nothing(private_redis: PrivateRedis) -> None:
    cache = make_cache(private_redis.url, fresh_prefix(), timeout_s=0.2)
    try:
        cache.set("k", b"v", 30)
        assert cache.lookup("k") == ("hit", b"v")
        private_redis.pause()
        started = time.monotonic()
        assert cache.lookup("k") == ("error", None)
        assert time.monotonic() - started < 1.0  # the socket timeout, plus one reconnect attempt
        started = time.monotonic()
        for _ in range(100):
            assert cache.lookup("k") == ("error", None)  # backing off: Redis is not waited on
        assert time.monotonic() - started < 0.1
        private_redis.resume()
        wait_for(lambda: cache.state() == "ok")
        assert cache.lookup("k") == ("hit", b"v")
    finally:
        cache.close()


# -- rate limiter --------------------------------------------------------------------------
def test_rate_limiter_fails_open_during_the_outage_then_limits_again(private_redis: PrivateRedis) -> None:
    fail_open: list[int] = []
    limiter = make_rate_limiter(
        private_redis.url, 2, fresh_prefix(), timeout_s=0.25, on_error=lambda: fail_open.append(1)
    )
    assert limiter is not None
    try:
        assert [limiter.hit("caller").allowed for _ in range(3)] == [True, True, False]

        private_redis.kill()
        assert all(limiter.hit("caller").allowed for _ in range(3))  # fail open, not lockout
        assert len(fail_open) == 3
        assert limiter.state() == "degraded"

        # Restarted empty: the Lua script is gone too and must be reloaded transparently.
        private_redis.start()
        wait_for(lambda: limiter.state() == "ok")
        assert [limiter.hit("caller").allowed for _ in range(3)] == [True, True, False]
        assert len(fail_open) == 3
    finally:
        limiter.close()


def test_lens_rate_limits_fail_open_visibly_while_redis_is_down(
    lens_factory: Callable[..., Lens], private_redis: PrivateRedis
) -> None:
    engine = lens_factory(
        embed=False, redis_url=private_redis.url, nats_namespace=fresh_prefix(), rate_limit_per_minute=2
    )
    with TestClient(create_lens_app(engine)) as client:
        assert [client.get("/api/v1/repos").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/ready").json()["checks"]["rate_limiter"]["state"] == "ok"

        private_redis.kill()
        errors_before = metric(client, "lens_rate_limiter_errors_total")
        assert [client.get("/api/v1/repos").status_code for _ in range(3)] == [200, 200, 200]
        assert metric(client, "lens_rate_limiter_errors_total") >= errors_before + 1
        limiter = client.get("/ready").json()["checks"]["rate_limiter"]
        assert limiter["state"] == "degraded" and limiter["required"] is False

        private_redis.start()
        wait_for(lambda: client.get("/ready").json()["checks"]["rate_limiter"]["state"] == "ok")
