"""Write the Grafana dashboards in ops/grafana/dashboards/ from the panel lists below.

    python ops/grafana/build_dashboards.py          # rewrite the JSON files
    python ops/grafana/build_dashboards.py --check  # exit 1 when a JSON file differs

The JSON files are committed (Grafana's file provider reads them); this script is their
source, and tests/ops/test_grafana.py fails when the two disagree. Every PromQL
expression here is parsed by promtool and checked against the metrics the services
really export (tests/ops/test_promql_names.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
SCHEMA_VERSION = 39
REFIDS = "ABCDEFGHIJ"

# Lens SLO routes (the search API) and Mimir's (the research API; /mcp streams indexing progress).
LENS_API = 'route=~"/api/v1/.*"'
MIMIR_API = 'route=~"/api/.*", route!="/api/indexes/{index_id}/bundle"'
REPLICA = 'replica=~"$replica"'


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL or LogQL, legend)
    description: str
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    mappings: dict[str, str] = field(default_factory=dict)
    datasource: dict[str, str] = field(default_factory=lambda: PROMETHEUS)
    stack: bool = False


@dataclass
class Row:
    title: str


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}]
            + [{"color": color, "value": value} for value, color in panel.thresholds],
        }
    if panel.mappings:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    value: {"text": text, "index": i}
                    for i, (value, text) in enumerate(panel.mappings.items())
                },
            }
        ]
    if panel.kind == "timeseries":
        defaults["custom"] = {"stacking": {"mode": "normal" if panel.stack else "none"}, "fillOpacity": 10}
    out: dict[str, Any] = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": panel.datasource,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": REFIDS[i], "datasource": panel.datasource, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }
    if panel.kind == "timeseries":
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        }
    elif panel.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    elif panel.kind == "logs":
        out["options"] = {"showTime": True, "wrapLogMessage": True, "sortOrder": "Descending"}
    return out


def replica_variable(jobs: str) -> dict[str, Any]:
    query = f'label_values(up{{job=~"{jobs}"}}, replica)'
    return {
        "name": "replica",
        "label": "Replica",
        "type": "query",
        "datasource": PROMETHEUS,
        "query": {"query": query, "refId": "replica"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row], jobs: str) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    x = y = 0
    row_height = 0
    for pid, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y += row_height
            x, row_height = 0, 0
            panels.append(
                {
                    "id": pid,
                    "type": "row",
                    "title": item.title,
                    "collapsed": False,
                    "panels": [],
                    "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                }
            )
            y += 1
            continue
        if x + item.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel_json(item, pid, x, y))
        x += item.width
        row_height = max(row_height, item.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mimir-lens"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["mimir-lens"], "asDropdown": True, "title": "Mimir-Lens"}],
        "templating": {"list": [replica_variable(jobs)]},
        "panels": panels,
    }


def rate(metric: str, selector: str, by: str = "", window: str = "$__rate_interval") -> str:
    agg = f"sum by ({by}) " if by else "sum "
    return f"{agg}(rate({metric}{{{selector}}}[{window}]))"


def p95(metric: str, selector: str, by: str) -> str:
    keys = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile(0.95, sum by ({keys}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))"
    )


def error_ratio(prefix: str, by: str) -> str:
    metric = f"{prefix}_http_requests_total"
    errors = rate(metric, REPLICA + ', status=~"5.."', by)
    return f"{errors} / {rate(metric, REPLICA, by)}"


# -- system: RED per service and replica ----------------------------------------------------
SYSTEM: list[Panel | Row] = [
    Row("Lens (per replica)"),
    Panel(
        "Lens requests / s",
        [(rate("lens_http_requests_total", REPLICA, "replica"), "{{replica}}")],
        "Rate: HTTP requests each Lens replica serves, every route.",
        unit="reqps",
    ),
    Panel(
        "Lens 5xx ratio",
        [(error_ratio("lens", "replica"), "{{replica}}")],
        "Errors: share of responses that are 5xx. LensHighErrorRate fires above 5 % for 5 minutes.",
        unit="percentunit",
        thresholds=[(0.05, "red")],
    ),
    Panel(
        "Lens p95 latency (SLO: 2 s)",
        [(p95("lens_http_request_duration_seconds", f"{REPLICA}, {LENS_API}", "replica"), "{{replica}}")],
        "Duration: 95th percentile of /api/v1/* requests per replica; the SLO is p95 < 2 s.",
        unit="s",
        thresholds=[(2, "red")],
    ),
    Panel(
        "Lens requests in flight",
        [(f"sum by (replica) (lens_http_requests_in_flight{{{REPLICA}}})", "{{replica}}")],
        "Saturation: requests being served right now.",
        unit="short",
    ),
    Row("Mimir (per replica)"),
    Panel(
        "Mimir requests / s",
        [(rate("mimir_http_requests_total", REPLICA, "replica"), "{{replica}}")],
        "Rate: HTTP requests (REST and /mcp) each Mimir process serves.",
        unit="reqps",
    ),
    Panel(
        "Mimir 5xx ratio",
        [(error_ratio("mimir", "replica"), "{{replica}}")],
        "Errors: share of responses that are 5xx. MimirHighErrorRate fires above 5 % for 5 minutes.",
        unit="percentunit",
        thresholds=[(0.05, "red")],
    ),
    Panel(
        "Mimir p95 latency (SLO: 5 s)",
        [(p95("mimir_http_request_duration_seconds", f"{REPLICA}, {MIMIR_API}", "replica"), "{{replica}}")],
        "Duration: 95th percentile of /api/* requests (the bundle download and /mcp streams excluded); "
        "the SLO is p95 < 5 s.",
        unit="s",
        thresholds=[(5, "red")],
    ),
    Panel(
        "Mimir requests in flight",
        [(f"sum by (replica) (mimir_http_requests_in_flight{{{REPLICA}}})", "{{replica}}")],
        "Saturation: requests being served right now (open /mcp streams included).",
        unit="short",
    ),
    Row("SLOs and targets"),
    Panel(
        "Latency SLO burn rate (1 h)",
        [
            ("lens:http_request_slow:ratio_rate1h / 0.05", "lens"),
            ("mimir:http_request_slow:ratio_rate1h / 0.05", "mimir"),
        ],
        "How fast the 30-day latency budget (5 % slow requests) burns: 1 = exactly on budget; the "
        "fast-burn page fires at 14.4.",
        unit="short",
        thresholds=[(1, "yellow"), (14.4, "red")],
    ),
    Panel(
        "Scrape targets up",
        [
            (f'up{{job=~"lens|mimir|mimir-worker", {REPLICA}}}', "{{replica}}"),
            ('up{job!~"lens|mimir|mimir-worker"}', "{{job}}"),
        ],
        "1 = Prometheus scrapes the target. A 0 raises LensDown, MimirDown, MimirWorkerDown or ExporterDown.",
        kind="stat",
        width=12,
        thresholds=[(1, "green")],
        mappings={"0": "DOWN", "1": "up"},
    ),
    Row("Resources"),
    Panel(
        "Container CPU (cores)",
        [
            (
                "sum by (name) "
                '(rate(container_cpu_usage_seconds_total{name=~"lens.*|mimir.*"}[$__rate_interval]))',
                "{{name}}",
            )
        ],
        "CPU per container (cAdvisor).",
        unit="short",
        width=8,
    ),
    Panel(
        "Container memory (working set)",
        [('sum by (name) (container_memory_working_set_bytes{name=~"lens.*|mimir.*"})', "{{name}}")],
        "Memory per container (cAdvisor).",
        unit="bytes",
        width=8,
    ),
    Panel(
        "Disk free",
        [
            (
                'node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|overlay|squashfs|nsfs"} / '
                'node_filesystem_size_bytes{fstype!~"tmpfs|ramfs|overlay|squashfs|nsfs"}',
                "{{instance}} {{mountpoint}}",
            )
        ],
        "Free share per filesystem (node_exporter); DiskSpaceLow fires under 10 %.",
        unit="percentunit",
        width=8,
        thresholds=[(0.1, "red")],
    ),
    Panel(
        "nginx requests / s",
        [("sum(rate(nginx_http_requests_total[$__rate_interval]))", "requests")],
        "Requests through the reverse proxy (nginx exporter, stub_status).",
        unit="reqps",
        width=8,
    ),
    Panel(
        "PostgreSQL connections used",
        [
            (
                "sum by (instance) (pg_stat_database_numbackends)"
                " / on (instance) max by (instance) (pg_settings_max_connections)",
                "{{instance}}",
            )
        ],
        "Share of max_connections in use; PostgresConnectionsNearMax fires above 80 %.",
        unit="percentunit",
        width=8,
        thresholds=[(0.8, "red")],
    ),
    Panel(
        "NATS connections",
        [("sum(gnatsd_varz_connections)", "connections")],
        "Client connections to NATS (prometheus-nats-exporter).",
        unit="short",
        width=8,
    ),
    Row("Logs"),
    Panel(
        "Errors in the logs",
        [('{service=~"lens|mimir"} | json | level=~"error|critical"', "")],
        "JSON log lines at level error or critical from every Lens and Mimir container (Loki, via promtail); "
        "each carries request_id and trace_id for the trace in Jaeger.",
        kind="logs",
        width=24,
        height=10,
        datasource=LOKI,
    ),
]

# -- search ---------------------------------------------------------------------------------
SEARCH: list[Panel | Row] = [
    Row("Lens search"),
    Panel(
        "Searches / s by mode",
        [(rate("lens_search_duration_seconds_count", REPLICA, "mode"), "{{mode}}")],
        "Searches Lens ran, by mode (exact, ranked, semantic, hybrid).",
        unit="ops",
        stack=True,
    ),
    Panel(
        "Search p95 by mode",
        [(p95("lens_search_duration_seconds", REPLICA, "mode"), "{{mode}}")],
        "Engine time per search (HTTP overhead excluded).",
        unit="s",
    ),
    Panel(
        "Results per search (median)",
        [
            (
                "histogram_quantile(0.5, sum by (mode, le) "
                f"(rate(lens_search_results_bucket{{{REPLICA}}}[$__rate_interval])))",
                "{{mode}}",
            )
        ],
        "How many results a search returns; zero means users are not finding things.",
        unit="short",
    ),
    Panel(
        "Truncated and timed-out searches / s",
        [
            (rate("lens_search_truncated_total", REPLICA, "mode"), "truncated {{mode}}"),
            (rate("lens_search_timeouts_total", REPLICA, "mode"), "timed out {{mode}}"),
        ],
        "Searches cut at the result cap, and searches that hit their time budget.",
        unit="ops",
    ),
    Panel(
        "Rejected queries / s by code",
        [(rate("lens_search_errors_total", REPLICA, "code"), "{{code}}")],
        "Queries Lens refused (bad syntax, bad regex, unknown repo...).",
        unit="ops",
    ),
    Panel(
        "Lens cache hit ratio",
        [
            (
                f'sum(rate(lens_cache_requests_total{{{REPLICA}, result="hit"}}[$__rate_interval])) / '
                f"sum(rate(lens_cache_requests_total{{{REPLICA}}}[$__rate_interval]))",
                "hit ratio",
            )
        ],
        "Share of searches answered from the Redis cache; CacheHitRateLow fires under 20 %.",
        unit="percentunit",
        thresholds=[(0.2, "green")],
    ),
    Row("Mimir research"),
    Panel(
        "Searches and asks / s",
        [
            (rate("mimir_searches_total", REPLICA, "mode"), "search {{mode}}"),
            ("sum(rate(mimir_asks_total[$__rate_interval]))", "ask"),
        ],
        "Research requests Mimir answered (REST and MCP).",
        unit="ops",
    ),
    Panel(
        "Research p95 (REST)",
        [
            (
                p95(
                    "mimir_http_request_duration_seconds",
                    f'{REPLICA}, route=~"/api/search|/api/ask"',
                    "route",
                ),
                "{{route}}",
            )
        ],
        "End-to-end latency of /api/search and /api/ask.",
        unit="s",
        thresholds=[(5, "red")],
    ),
    Panel(
        "MCP tool p95 by tool",
        [(p95("mimir_mcp_tool_duration_seconds", REPLICA, "tool"), "{{tool}}")],
        "Latency of each MCP tool call.",
        unit="s",
    ),
    Panel(
        "Mimir cache hit ratio by cache",
        [
            (
                "sum by (cache) "
                f'(rate(mimir_cache_requests_total{{{REPLICA}, result="hit"}}[$__rate_interval])) / '
                f"sum by (cache) (rate(mimir_cache_requests_total{{{REPLICA}}}[$__rate_interval]))",
                "{{cache}}",
            )
        ],
        "Share of search and ask results served from the cache.",
        unit="percentunit",
    ),
]

# -- indexing pipeline ----------------------------------------------------------------------
PIPELINE: list[Panel | Row] = [
    Row("Mimir index runs"),
    Panel(
        "Finished index runs / s by state",
        [(rate("mimir_index_runs_total", REPLICA, "state"), "{{state}}")],
        "Runs that ended: succeeded, failed, cancelled.",
        unit="ops",
        stack=True,
    ),
    Panel(
        "Pipeline stage p95",
        [(p95("mimir_pipeline_stage_duration_seconds", REPLICA, "stage"), "{{stage}}")],
        "Duration of each stage (acquire, repomap, symbols, search_index, snippets, bundle).",
        unit="s",
    ),
    Row("Work queue"),
    Panel(
        "Queue depth",
        [(f"max(mimir_queue_depth{{{REPLICA}}})", "waiting jobs")],
        "Index jobs waiting for a worker; MimirQueueBacklog fires above 50 for 15 minutes.",
        unit="short",
        thresholds=[(50, "red")],
    ),
    Panel(
        "Queue jobs / s by outcome",
        [(rate("mimir_queue_jobs_total", REPLICA, "outcome"), "{{outcome}}")],
        "What workers did with the jobs they took.",
        unit="ops",
        stack=True,
    ),
    Panel(
        "Redeliveries / s",
        [(rate("mimir_queue_redeliveries_total", REPLICA), "redeliveries")],
        "Jobs delivered again after a worker died or did not ack in time.",
        unit="ops",
    ),
    Panel(
        "Dead letters (last hour)",
        [(f"sum(increase(mimir_queue_dead_letters_total{{{REPLICA}}}[1h]))", "dead letters")],
        "Jobs that failed every delivery attempt; MimirQueueDeadLetters fires on any.",
        kind="stat",
        unit="short",
        thresholds=[(1, "red")],
    ),
    Row("Lens indexing and shard shipping"),
    Panel(
        "Lens index jobs / s by outcome",
        [(rate("lens_index_jobs_total", REPLICA, "outcome"), "{{outcome}}")],
        "Index jobs each Lens process ran.",
        unit="ops",
    ),
    Panel(
        "Lens index job p95",
        [(p95("lens_index_duration_seconds", REPLICA, ""), "p95")],
        "Duration of one Lens index job.",
        unit="s",
    ),
    Panel(
        "Files indexed / s by repo",
        [(rate("lens_indexed_files_total", REPLICA, "repo"), "{{repo}}")],
        "Files written to shards (added or changed).",
        unit="ops",
    ),
    Panel(
        "Shard sync lag",
        [(f"max by (replica, repo) (lens_shard_sync_lag_seconds{{{REPLICA}}})", "{{replica}} {{repo}}")],
        "Age of a published shard a searcher has not installed yet; LensShardSyncLagHigh fires above "
        "10 minutes.",
        unit="s",
        thresholds=[(600, "red")],
    ),
    Panel(
        "Shard installs / s by outcome",
        [(rate("lens_shard_sync_total", REPLICA, "outcome"), "{{outcome}}")],
        "Shipped shards the searchers installed, or failed to.",
        unit="ops",
    ),
    Panel(
        "Shard install p95",
        [(p95("lens_shard_sync_seconds", REPLICA, "replica"), "{{replica}}")],
        "Download + verify + install time of one shipped shard.",
        unit="s",
    ),
]

# -- Mimir <-> Lens -------------------------------------------------------------------------
INTEGRATION: list[Panel | Row] = [
    Row("Health of the integration"),
    Panel(
        "Lens call success rate",
        [("mimir:lens_calls_success:ratio_rate5m", "{{job}}")],
        "Share of Mimir's Lens calls that Lens answered; MimirLensIntegrationDegraded fires under 95 %.",
        kind="stat",
        unit="percentunit",
        width=8,
        thresholds=[(0.95, "green")],
    ),
    Panel(
        "Circuit breaker",
        [(f"max by (job, replica) (mimir_lens_circuit_state{{{REPLICA}}})", "{{replica}}")],
        "0 closed (calling Lens), 1 half-open (probing), 2 open (not calling: answers are degraded).",
        kind="stat",
        width=8,
        thresholds=[(1, "yellow"), (2, "red")],
        mappings={"0": "closed", "1": "half-open", "2": "OPEN"},
    ),
    Panel(
        "Lens reachable (readiness probe)",
        [(f"min by (replica) (mimir_lens_reachable{{{REPLICA}}})", "{{replica}}")],
        "1 when Mimir's last readiness probe reached Lens.",
        kind="stat",
        width=8,
        mappings={"0": "unreachable", "1": "reachable"},
    ),
    Row("Calls"),
    Panel(
        "Lens calls / s by result",
        [(rate("mimir_lens_calls_total", REPLICA, "result"), "{{result}}")],
        "success: Lens answered; fallback: answered from stored snippets instead (degraded); failure: the "
        "error reached the caller.",
        unit="ops",
        stack=True,
    ),
    Panel(
        "Lens requests / s by operation and outcome",
        [(rate("mimir_lens_requests_total", REPLICA, "operation, outcome"), "{{operation}} {{outcome}}")],
        "HTTP calls Mimir made to Lens.",
        unit="ops",
    ),
    Panel(
        "Lens request p95 by operation (seen from Mimir)",
        [(p95("mimir_lens_request_duration_seconds", REPLICA, "operation"), "{{operation}}")],
        "Latency of Mimir's calls to Lens, retries and backoff included.",
        unit="s",
    ),
    Panel(
        "Retries / s by operation",
        [(rate("mimir_lens_retries_total", REPLICA, "operation"), "{{operation}}")],
        "Lens calls retried after a timeout or a 5xx.",
        unit="ops",
    ),
    Panel(
        "Breaker transitions / s",
        [
            (
                rate("mimir_lens_circuit_transitions_total", REPLICA, "from_state, to_state"),
                "{{from_state}} -> {{to_state}}",
            )
        ],
        "Circuit breaker state changes; flapping means Lens is intermittently failing.",
        unit="ops",
    ),
    Panel(
        "Lens search p95 (seen from Lens)",
        [
            (
                p95("lens_http_request_duration_seconds", f'{REPLICA}, route="/api/v1/search"', "replica"),
                "{{replica}}",
            )
        ],
        "The same searches measured by Lens; the gap to Mimir's view is network and queueing.",
        unit="s",
    ),
]

# -- business -------------------------------------------------------------------------------
BUSINESS: list[Panel | Row] = [
    Row("Usage in the selected range"),
    Panel(
        "Repositories indexed",
        [("sum(increase(mimir_repositories_indexed_total[$__range]))", "indexed")],
        "Index runs that made a repository at a commit searchable.",
        kind="stat",
        width=6,
    ),
    Panel(
        "Searches",
        [("sum(increase(mimir_searches_total[$__range]))", "searches")],
        "Hybrid, exact, ranked and semantic searches answered (REST and MCP).",
        kind="stat",
        width=6,
    ),
    Panel(
        "Questions asked",
        [("sum(increase(mimir_asks_total[$__range]))", "asks")],
        "Multi-hop questions answered.",
        kind="stat",
        width=6,
    ),
    Panel(
        "Requests refused by the rate limit",
        [
            (
                "sum(increase(mimir_rate_limited_total[$__range]))"
                " + sum(increase(lens_rate_limited_total[$__range]))",
                "429s",
            )
        ],
        "HTTP 429 answers of Mimir and Lens.",
        kind="stat",
        width=6,
    ),
    Row("Trends"),
    Panel(
        "MCP tool calls / s by tool",
        [(rate("mimir_mcp_tool_calls_total", REPLICA, "tool"), "{{tool}}")],
        "Which tools AI assistants use.",
        unit="ops",
        stack=True,
    ),
    Panel(
        "MCP tool outcomes / s",
        [(rate("mimir_mcp_tool_calls_total", REPLICA, "outcome"), "{{outcome}}")],
        "ok, error (the caller can act on it), crash (a bug), cancelled.",
        unit="ops",
        stack=True,
    ),
    Panel(
        "Searches / s by mode",
        [(rate("mimir_searches_total", REPLICA, "mode"), "{{mode}}")],
        "Research searches by mode.",
        unit="ops",
        stack=True,
    ),
    Panel(
        "Indexed corpus",
        [
            ("sum(max by (repo) (lens_repo_files))", "files"),
            ("sum(max by (repo) (lens_repo_symbols))", "symbols"),
        ],
        "Files and symbols in the live shards over all repositories.",
        unit="short",
    ),
    Panel(
        "Repositories served per replica",
        [(f"max by (replica) (lens_shards{{{REPLICA}}})", "{{replica}}")],
        "Live shards each Lens replica serves; searchers should match the indexer.",
        unit="short",
    ),
]

DASHBOARDS: dict[str, tuple[str, str, str, list[Panel | Row], str]] = {
    "system.json": (
        "mimir-lens-system",
        "Mimir-Lens / System (RED)",
        "Is every service up, fast and error-free, per replica? Rate, errors and duration of Lens and "
        "Mimir, SLO burn, targets, resources, error logs.",
        SYSTEM,
        "lens|mimir|mimir-worker",
    ),
    "search.json": (
        "mimir-lens-search",
        "Mimir-Lens / Search",
        "How are searches doing: volume and latency per mode, results, truncation, rejected queries, "
        "caches, research latency.",
        SEARCH,
        "lens|mimir",
    ),
    "pipeline.json": (
        "mimir-lens-pipeline",
        "Mimir-Lens / Indexing pipeline",
        "Are repositories getting indexed: runs, stage durations, the work queue, Lens index jobs and "
        "shard shipping to the searchers.",
        PIPELINE,
        "lens|mimir|mimir-worker",
    ),
    "integration.json": (
        "mimir-lens-integration",
        "Mimir-Lens / Mimir to Lens",
        "Is Mimir getting answers from Lens: success rate, circuit breaker, retries, latency on both sides.",
        INTEGRATION,
        "lens|mimir|mimir-worker",
    ),
    "business.json": (
        "mimir-lens-business",
        "Mimir-Lens / Usage",
        "Is the product used: repositories indexed, searches, questions, MCP tools, corpus size.",
        BUSINESS,
        "lens|mimir",
    ),
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(dashboard(uid, title, desc, items, jobs), indent=2, ensure_ascii=False) + "\n"
        for name, (uid, title, desc, items, jobs) in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        stale = [
            n for n, text in rendered.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text
        ]
        for name in stale:
            print(f"{OUT / name} is not what build_dashboards.py renders", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
