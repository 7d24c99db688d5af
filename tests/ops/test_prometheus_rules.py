"""The Prometheus configuration, the alert rules and their promtool unit tests.

promtool (Debian's ``prometheus`` package, installed by scripts/test.sh) is the validator:
``check config``, ``check rules`` and ``test rules``. The tests here add what promtool does
not know: every alert is unit-tested (firing), carries severity and the three annotations,
links to a runbook entry that exists, and names only jobs the scrape config defines.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from ops_support import (
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_FILE,
    alerts,
    doc_anchors,
    load_yaml,
    promtool,
    rule_expressions,
    selectors,
)

SEVERITIES = {"critical", "warning", "info"}
REQUIRED_ALERTS = {
    # service down, per job
    "LensDown",
    "MimirDown",
    "MimirWorkerDown",
    "ExporterDown",
    # latency SLOs (multi-window, multi-burn-rate)
    "LensLatencySLOFastBurn",
    "LensLatencySLOSlowBurn",
    "MimirLatencySLOFastBurn",
    "MimirLatencySLOSlowBurn",
    # errors, integration, queue, cache, shards, infrastructure
    "LensHighErrorRate",
    "MimirHighErrorRate",
    "MimirLensIntegrationDegraded",
    "MimirLensCircuitOpen",
    "MimirQueueBacklog",
    "MimirQueueDeadLetters",
    "CacheHitRateLow",
    "LensShardSyncLagHigh",
    "PostgresConnectionsNearMax",
    "DiskSpaceLow",
}


def rule_test_files() -> list[Any]:
    return sorted(RULE_TESTS_DIR.glob("*.test.yml"))


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule_files glob is resolved relative to the config and finds the rules file.
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout


def test_scrape_config_covers_every_component() -> None:
    jobs = scrape_jobs()
    assert set(jobs) >= {
        "mimir",
        "mimir-worker",
        "lens",
        "postgres",
        "redis",
        "nats",
        "node",
        "cadvisor",
        "nginx",
        "otel-collector",
    }
    lens = jobs["lens"]["static_configs"]
    assert {c["labels"]["replica"] for c in lens} == {"lens-searcher-1", "lens-searcher-2", "lens-indexer"}
    assert all(len(c["targets"]) == 1 for c in lens), "one target per replica, so the label is the replica's"
    for name in ("mimir", "mimir-worker"):
        assert all("replica" in c["labels"] for c in jobs[name]["static_configs"]), name
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout, result.stdout


@pytest.mark.slow
def test_promtool_rule_unit_tests_pass() -> None:
    files = rule_test_files()
    assert len(files) >= 2
    result = promtool("test", "rules", *map(str, files), cwd=RULE_TESTS_DIR, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_unit_tests_load_the_real_rules_file() -> None:
    for path in rule_test_files():
        doc = load_yaml(path)
        assert [(RULE_TESTS_DIR / f).resolve() for f in doc["rule_files"]] == [RULES_FILE.resolve()], path


def test_every_alert_has_a_firing_unit_test() -> None:
    """Each alert of the rules file appears in an alert_rule_test, at least once with an alert expected."""
    tested: set[str] = set()
    firing: set[str] = set()
    for path in rule_test_files():
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.add(check["alertname"])
                if check.get("exp_alerts"):
                    firing.add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - tested == set(), f"alerts without a unit test: {sorted(names - tested)}"
    assert names - firing == set(), f"alerts never seen firing in a unit test: {sorted(names - firing)}"
    assert tested <= names, f"unit tests of alerts that do not exist: {sorted(tested - names)}"


def test_the_required_alerts_exist() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: str(a["alert"]))
def test_alert_has_severity_annotations_and_runbook(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    assert alert["labels"]["service"] in {"lens", "mimir", "platform"}
    annotations = alert["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    url = annotations["runbook_url"]
    page, _, anchor = url.partition("#")
    assert page == "docs/OBSERVABILITY.md", url
    assert anchor == alert["alert"].lower(), "one runbook entry per alert, under a heading named after it"
    assert anchor in doc_anchors(), f"docs/OBSERVABILITY.md has no heading for #{anchor}"


def test_alert_and_rule_jobs_exist_in_the_scrape_config() -> None:
    """A `job` matcher names jobs the integrated config scrapes (a renamed job would silence alerts)."""
    jobs = set(scrape_jobs())
    problems = []
    for expr in rule_expressions():
        for sel in selectors(expr.promql):
            for m in sel.matchers:
                if m.label != "job":
                    continue
                if m.op in ("=", "!="):
                    wanted = [m.value]
                else:  # an alternation of literal job names
                    assert re.fullmatch(r"[\w|-]+", m.value), (
                        f"{expr.source}: job regex {m.value!r} is not a list"
                    )
                    wanted = m.value.split("|")
                problems += [f"{expr.source}: job {job!r}" for job in wanted if job not in jobs]
    assert not problems, "jobs the scrape config does not define:\n" + "\n".join(problems)
