"""Grafana provisioning and dashboards: structure Grafana needs to load them, datasource uids
that exist, a replica variable, panels laid out on the grid, and JSON that is exactly what
ops/grafana/build_dashboards.py renders. (PromQL and metric names: test_promql_names.py.)

No Grafana server runs here; this checks the documented dashboard JSON model and the
provisioning file formats, not Grafana's own loader.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from ops_support import OPS, dashboards, iter_panels, load_yaml

GRAFANA = OPS / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
EXPECTED = {"system.json", "search.json", "pipeline.json", "integration.json", "business.json"}


def datasources() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in load_yaml(DATASOURCES)["datasources"]}


def test_dashboard_json_is_what_the_generator_renders() -> None:
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "build_dashboards.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_datasources_provisioning() -> None:
    doc = load_yaml(DATASOURCES)
    assert doc["apiVersion"] == 1
    ds = datasources()
    assert {(uid, d["type"]) for uid, d in ds.items()} == {
        ("prometheus", "prometheus"),
        ("loki", "loki"),
        ("jaeger", "jaeger"),
    }
    assert [d["name"] for d in ds.values() if d.get("isDefault")] == ["Prometheus"]
    for d in ds.values():
        assert re.fullmatch(r"http://[a-z-]+:\d+", d["url"]), d["url"]
    # Cross-links point at datasources that exist.
    assert ds["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"] == "jaeger"
    assert ds["loki"]["jsonData"]["derivedFields"][0]["datasourceUid"] == "jaeger"
    assert ds["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"


def test_dashboard_provider() -> None:
    doc = load_yaml(PROVIDERS)
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert provider["folder"]


def test_the_five_dashboards_exist_with_unique_uids() -> None:
    boards = dashboards()
    assert set(boards) == EXPECTED
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) for uid in uids)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_model(name: str) -> None:
    board = dashboards()[name]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["description"]
    assert "id" not in board or board["id"] is None, "provisioned dashboards must not pin a database id"
    known = datasources()
    panels = list(iter_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 5
    for panel in data_panels:
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"]["uid"] in known, panel["title"]
        assert panel["datasource"]["type"] == known[panel["datasource"]["uid"]]["type"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    # The replica variable, used by the panels.
    variables = {v["name"]: v for v in board["templating"]["list"]}
    replica = variables["replica"]
    assert replica["type"] == "query" and replica["datasource"]["uid"] == "prometheus"
    assert replica["multi"] and replica["includeAll"]
    exprs = [t["expr"] for p in data_panels for t in p["targets"]]
    assert any("$replica" in e for e in exprs), "no panel filters by the replica variable"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in iter_panels(dashboards()[name]["panels"]):
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_system_dashboard_shows_red_per_service_and_replica() -> None:
    exprs = " ".join(
        t["expr"] for p in iter_panels(dashboards()["system.json"]["panels"]) for t in p.get("targets", [])
    )
    for svc in ("lens", "mimir"):
        assert f"{svc}_http_requests_total" in exprs  # rate and errors
        assert f"{svc}_http_request_duration_seconds_bucket" in exprs  # duration
    assert exprs.count("sum by (replica)") >= 6
    assert "histogram_quantile(0.95" in exprs


def test_loki_panels_use_labels_promtail_sets() -> None:
    """LogQL stream selectors may only use labels the promtail pipeline creates."""
    promtail = load_yaml(OPS / "promtail" / "promtail-config.yml")
    labels: set[str] = set()
    for job in promtail["scrape_configs"]:
        labels |= {r["target_label"] for r in job.get("relabel_configs", []) if "target_label" in r}
        for stage in job["pipeline_stages"]:
            labels |= set(stage.get("labels") or {})
    found = 0
    for board in dashboards().values():
        for panel in iter_panels(board["panels"]):
            if panel.get("datasource", {}).get("type") != "loki":
                continue
            for target in panel["targets"]:
                selector = re.match(r"\{([^}]*)\}", target["expr"])
                assert selector, target["expr"]
                used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector.group(1)))
                assert used and used <= labels, (used, labels)
                found += 1
    assert found >= 1
