"""The OpenTelemetry Collector, Loki and promtail configurations.

None of the three can run here: no otelcol, Loki or promtail binary is installable from
Debian's or PyPI's registries on this machine (Debian's ``loki`` package is an unrelated
genetics program). So these tests check what can be checked without them:
- the files parse, and have the top-level sections each program requires;
- every collector pipeline names receivers, processors and exporters that are defined,
  memory_limiter runs first and batch last;
- the ports agree across files (collector -> Prometheus scrape jobs, promtail/collector/Grafana ->
  Loki, collector/Grafana -> Jaeger);
- every JSON field promtail reads, and the trace_id link Grafana derives, exist in the log lines
  the real Lens and Mimir processes wrote during the live workload.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import pytest
from ops_support import OPS, PROMETHEUS_CONFIG, LiveStack, load_yaml

OTEL = OPS / "otel" / "otel-collector-integrated.yaml"
LOKI = OPS / "loki" / "loki-config.yml"
PROMTAIL = OPS / "promtail" / "promtail-config.yml"
GRAFANA_DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "datasources.yml"

# Component types of the collector-contrib distribution that this config may use.
KNOWN = {
    "receivers": {"otlp"},
    "processors": {"batch", "memory_limiter", "resource"},
    "exporters": {"otlp", "otlphttp", "prometheus", "debug"},
    "extensions": {"health_check"},
}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _scrape_port(job: str) -> int:
    jobs = {j["job_name"]: j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    (target,) = jobs[job]["static_configs"][0]["targets"]
    return _port(target)


def _loki_port() -> int:
    return int(load_yaml(LOKI)["server"]["http_listen_port"])


# -- OpenTelemetry Collector ------------------------------------------------------------------
def test_collector_pipelines_reference_defined_components() -> None:
    doc = load_yaml(OTEL)
    service = doc["service"]
    for section, known in KNOWN.items():
        for name in doc.get(section) or {}:
            assert name.split("/")[0] in known, f"{section}.{name}: unknown component type"
    for ext in service.get("extensions", []):
        assert ext in doc["extensions"], ext
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    pipelines = service["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        for section in used:
            names = pipeline.get(section) or []
            if section != "processors":
                assert names, f"pipeline {name} has no {section}"
            for component in names:
                assert component in (doc.get(section) or {}), (
                    f"pipeline {name}: {section} {component} undefined"
                )
            used[section] |= set(names)
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter" and processors[-1] == "batch", name
    for section, names in used.items():
        assert set(doc[section]) == names, f"{section} defined but unused: {set(doc[section]) - names}"


def test_collector_routes_each_signal_to_its_backend() -> None:
    doc = load_yaml(OTEL)
    pipelines, exporters = doc["service"]["pipelines"], doc["exporters"]
    protocols = doc["receivers"]["otlp"]["protocols"]
    assert _port(protocols["grpc"]["endpoint"]) == 4317 and _port(protocols["http"]["endpoint"]) == 4318
    (traces,) = pipelines["traces"]["exporters"]
    assert traces.startswith("otlp/") and exporters[traces]["endpoint"] == "jaeger:4317"
    (metrics,) = pipelines["metrics"]["exporters"]
    assert metrics == "prometheus"
    assert _port(exporters["prometheus"]["endpoint"]) == _scrape_port("otel-collector-exported")
    reader = doc["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["port"] == _scrape_port("otel-collector")
    (logs,) = pipelines["logs"]["exporters"]
    loki = urlparse(exporters[logs]["endpoint"])
    assert (loki.hostname, loki.port, loki.path) == ("loki", _loki_port(), "/otlp")


# -- Loki -------------------------------------------------------------------------------------
def test_loki_config_structure() -> None:
    doc = load_yaml(LOKI)
    assert {"auth_enabled", "server", "common", "schema_config", "limits_config"} <= set(doc)
    assert doc["auth_enabled"] is False
    (schema,) = doc["schema_config"]["configs"]
    # Structured metadata (promtail's request_id/trace_id) and OTLP ingestion need tsdb + v13.
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")
    datetime.strptime(schema["from"], "%Y-%m-%d")
    assert doc["limits_config"]["allow_structured_metadata"] is True
    assert schema["object_store"] in doc["common"]["storage"]
    assert doc["compactor"]["delete_request_store"] == schema["object_store"]


def test_everything_points_at_lokis_port() -> None:
    port = _loki_port()
    (client,) = load_yaml(PROMTAIL)["clients"]
    url = urlparse(client["url"])
    assert (url.hostname, url.port, url.path) == ("loki", port, "/loki/api/v1/push")
    grafana = {d["uid"]: d for d in load_yaml(GRAFANA_DATASOURCES)["datasources"]}
    assert urlparse(grafana["loki"]["url"]).port == port
    assert urlparse(grafana["jaeger"]["url"]).hostname == "jaeger"


# -- promtail ---------------------------------------------------------------------------------
def _pipeline() -> list[dict[str, Any]]:
    (job,) = load_yaml(PROMTAIL)["scrape_configs"]
    stages: list[dict[str, Any]] = job["pipeline_stages"]
    return stages


def _stage(kind: str) -> dict[str, Any]:
    (stage,) = [s[kind] for s in _pipeline() if kind in s]
    return stage or {}


def test_promtail_config_structure() -> None:
    doc = load_yaml(PROMTAIL)
    assert {"server", "positions", "clients", "scrape_configs"} <= set(doc)
    (job,) = doc["scrape_configs"]
    assert job["docker_sd_configs"][0]["host"] == "unix:///var/run/docker.sock"
    extracted = set(_stage("json")["expressions"])
    # Later stages only read what the json stage extracted.
    assert set(_stage("labels")) <= extracted
    assert set(_stage("structured_metadata")) <= extracted
    assert _stage("timestamp")["source"] in extracted
    # One value per request must never become a label (a stream per request would sink Loki).
    assert not {"request_id", "trace_id", "span_id"} & set(_stage("labels"))


def _json_lines(live_stack: LiveStack) -> list[dict[str, Any]]:
    lines = []
    for service in (live_stack.lens, live_stack.mimir):
        for raw in service.log.read_text().splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
    return lines


@pytest.mark.slow
def test_promtail_reads_fields_the_services_really_log(live_stack: LiveStack) -> None:
    lines = _json_lines(live_stack)
    assert {line.get("service") for line in lines} == {"lens", "mimir"}
    keys = {k for line in lines for k in line}
    expressions = _stage("json")["expressions"]
    assert set(expressions.values()) <= keys, set(expressions.values()) - keys
    # Request log lines carry both ids, so a log line leads to its trace and back.
    requests = [line for line in lines if "request_id" in line]
    assert requests and all("trace_id" in line for line in requests)
    # Every line's timestamp is RFC 3339 (promtail's RFC3339Nano accepts it); levels are what
    # the dashboards filter on.
    for line in lines:
        datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert line["level"] in {"debug", "info", "warning", "error", "critical"}, line


@pytest.mark.slow
def test_grafana_derives_trace_links_from_real_log_lines(live_stack: LiveStack) -> None:
    grafana = {d["uid"]: d for d in load_yaml(GRAFANA_DATASOURCES)["datasources"]}
    pattern = grafana["loki"]["jsonData"]["derivedFields"][0]["matcherRegex"]
    raw = next(
        r for r in live_stack.mimir.log.read_text().splitlines() if r.startswith("{") and '"trace_id"' in r
    )
    m = re.search(pattern, raw)
    assert m and m.group(1) == json.loads(raw)["trace_id"]
