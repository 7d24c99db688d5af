"""A real Prometheus scrapes the real Lens and Mimir, evaluates the real service-down alerts,
and fires LensDown when Lens stops.

Prometheus (/usr/bin/prometheus, Debian's package) runs on a free loopback port with a config
in a temp dir: scrape every second, evaluate every second, and a rules file generated from
ops/prometheus/rules/integrated-alerts.yml -- the same alert expressions and labels, only a
`for:` of 2 s instead of minutes. The targets carry the job names and replica labels of the
integrated config, so the alert expression is the production one.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ops_support import (
    EXPORTER_PREFIXES,
    LiveStack,
    alerts,
    dashboard_expressions,
    metric_names,
    promtool,
    require_binary,
    rule_expressions,
)

from support import free_port

pytestmark = pytest.mark.slow

LIVE_ALERTS = (
    "LensDown",
    "MimirDown",
    "ExporterDown",
    "PostgresDown",
    "RedisDown",
    "PostgresConnectionsNearMax",
)


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def prometheus(live_stack: LiveStack, exporters: dict[str, tuple[int, str]], tmp_path: Path) -> Iterator[str]:
    real = {a["alert"]: a for a in alerts()}
    test_rules = {
        "groups": [
            {
                "name": "live-test",
                "interval": "1s",
                "rules": [{**real[name], "for": "2s"} for name in LIVE_ALERTS],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(test_rules, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "lens",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{live_stack.lens.port}"],
                        "labels": {"replica": "lens-searcher-1"},
                    }
                ],
            },
            {
                "job_name": "mimir",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{live_stack.mimir.port}"], "labels": {"replica": "mimir-1"}}
                ],
            },
        ]
        + [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, (port, _) in exporters.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            require_binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "Prometheus to be ready", lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
        )
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(base: str, path: str, **params: str) -> Any:
    resp = httpx.get(f"{base}{path}", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]


def _firing(base: str, name: str) -> list[dict[str, Any]]:
    return [
        a
        for a in _get(base, "/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == name and a["state"] == "firing"
    ]


def test_prometheus_scrapes_the_services_and_fires_lens_down(live_stack: LiveStack, prometheus: str) -> None:
    def all_up() -> bool:
        targets = _get(prometheus, "/api/v1/targets")["activeTargets"]
        return len(targets) == 5 and all(t["health"] == "up" for t in targets)

    _wait_for("both targets up", all_up)

    # Real series with the labels the rules and dashboards rely on.
    def lens_requests() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _get(
            prometheus, "/api/v1/query", query='lens_http_requests_total{route="/api/v1/search"}'
        )["result"]
        return result

    series = _wait_for("Lens request counters", lens_requests)
    assert {s["metric"]["job"] for s in series} == {"lens"}
    assert {s["metric"]["replica"] for s in series} == {"lens-searcher-1"}
    built = _get(prometheus, "/api/v1/query", query="mimir_build_info")["result"]
    assert built and built[0]["metric"]["job"] == "mimir"

    # Prometheus's own engine accepts every rule and dashboard expression, and the panels on the
    # real exporters' metrics (PostgreSQL connections used, free disk, ...) get data: their
    # label joins fit what the exporters really label.
    exporter_prefixes = tuple(EXPORTER_PREFIXES.values())
    empty = []
    for expr in rule_expressions() + dashboard_expressions():
        result = _get(prometheus, "/api/v1/query", query=expr.promql)["result"]
        names = metric_names(expr.promql)
        on_real_exporters = bool(names) and all(n.startswith(exporter_prefixes) for n in names)
        if on_real_exporters and ".json:" in expr.source and not result:
            empty.append(expr.source)
    assert not empty, f"no data from the real exporters for: {empty}"

    rules = _get(prometheus, "/api/v1/rules")["groups"][0]["rules"]
    assert {r["name"] for r in rules} == set(LIVE_ALERTS) and all(r["health"] == "ok" for r in rules)
    assert _firing(prometheus, "LensDown") == []

    live_stack.lens.stop()

    (alert,) = _wait_for("LensDown to fire", lambda: _firing(prometheus, "LensDown"), timeout=60)
    assert alert["labels"]["job"] == "lens"
    assert alert["labels"]["replica"] == "lens-searcher-1"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "Lens replica lens-searcher-1 is down"
    assert alert["annotations"]["runbook_url"] == "docs/OBSERVABILITY.md#lensdown"
    # Mimir, the exporters and their servers are still up: their alerts stay quiet.
    for name in LIVE_ALERTS[1:]:
        assert _firing(prometheus, name) == [], name
