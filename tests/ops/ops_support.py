"""Helpers for the operations-config tests: the files under ops/, a PromQL metric-name
extractor, Grafana variable substitution, and promtool.

The extractor is deliberately small: promtool (the real PromQL parser) decides whether an
expression is valid; this only has to find the vector selectors of valid expressions
(metric names and their label matchers), and say so loudly when it meets something it
does not understand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.integrated.yml"
RULES_DIR = OPS / "prometheus" / "rules"
RULES_FILE = RULES_DIR / "integrated-alerts.yml"
RULE_TESTS_DIR = OPS / "prometheus" / "tests"
DASHBOARDS_DIR = OPS / "grafana" / "dashboards"
OBSERVABILITY_DOC = ROOT / "docs" / "OBSERVABILITY.md"


# Names exported by third-party exporters next to our services and by Prometheus itself.
# Anything else an expression uses must come from a running service. The node_, pg_ and redis_
# names are further checked against the real exporters (EXPORTERS below); the others cannot
# run here and pass by prefix only.
THIRD_PARTY_PREFIXES = (
    "pg_",  # postgres_exporter
    "redis_",  # redis_exporter
    "gnatsd_",  # prometheus-nats-exporter (server varz/connz)
    "jetstream_",  # prometheus-nats-exporter (-jsz)
    "nats_",
    "node_",  # node_exporter
    "container_",  # cAdvisor
    "nginx_",  # nginx-prometheus-exporter
    "otelcol_",  # the OpenTelemetry Collector's own telemetry
)
PROMETHEUS_NAMES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})
# The exporters Debian packages, run for real by the `exporters` fixture: job name (as in the
# integrated config) -> (binary, arguments, environment, a line that says it reached its server).
# Names with these jobs' prefixes are checked against their real /metrics, not the allowlist.
EXPORTERS: dict[str, tuple[str, list[str], dict[str, str], str]] = {
    "node": (
        "prometheus-node-exporter",
        ["--web.listen-address=127.0.0.1:{port}"],
        {},
        "node_filesystem_avail_bytes",
    ),
    "postgres": (
        "prometheus-postgres-exporter",
        ["--web.listen-address=127.0.0.1:{port}"],
        {"DATA_SOURCE_NAME": "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable"},
        "\npg_up 1",
    ),
    "redis": (
        "prometheus-redis-exporter",
        ["-web.listen-address", "127.0.0.1:{port}", "-redis.addr", "redis://127.0.0.1:6379"],
        {},
        "\nredis_up 1",
    ),
}
EXPORTER_PREFIXES = {"node": "node_", "postgres": "pg_", "redis": "redis_"}

# Values Grafana would put in place of its variables, so an expression can be parsed.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "replica": "lens-searcher-1",
}


# -- files ------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def rules(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of a rules file, in order."""
    doc = load_yaml(path)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    return [rule for rule in rules(path) if "alert" in rule]


def recorded_names() -> set[str]:
    return {str(rule["record"]) for path in rule_files() for rule in rules(path) if "record" in rule}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def iter_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def is_prometheus(datasource: Any) -> bool:
    return isinstance(datasource, dict) and datasource.get("type") == "prometheus"


@dataclass(frozen=True)
class Expression:
    source: str  # where it was found, for error messages
    promql: str  # ready to parse: Grafana variables already substituted


def rule_expressions() -> list[Expression]:
    out = []
    for path in rule_files():
        for rule in rules(path):
            name = rule.get("alert") or rule.get("record")
            out.append(Expression(f"{path.name}: {name}", str(rule["expr"])))
    return out


def label_values_selector(query: str) -> str | None:
    """The series selector of a Grafana ``label_values(selector, label)`` query (None without one)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"\s*label_values\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query):
        return None
    raise ValueError(f"unsupported Grafana variable query: {query!r}")


def dashboard_expressions() -> list[Expression]:
    """PromQL of every Prometheus panel target and every query variable of every dashboard."""
    out = []
    for name, board in dashboards().items():
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") != "query" or not is_prometheus(var.get("datasource")):
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = label_values_selector(str(query))
            if selector is not None:
                out.append(Expression(f"{name}: variable {var['name']}", substitute_grafana(selector)))
        for panel in iter_panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if is_prometheus(target.get("datasource") or panel.get("datasource")):
                    source = f"{name}: panel {panel['title']!r} target {target['refId']}"
                    out.append(Expression(source, substitute_grafana(str(target["expr"]))))
    return out


def substitute_grafana(expr: str) -> str:
    """Replace ``$var``, ``${var}`` and ``[[var]]`` with concrete values; unknown variables raise."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in GRAFANA_VARIABLES:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


# -- PromQL selectors -------------------------------------------------------------------------
@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str

    def matches(self, candidate: str) -> bool:
        if self.op == "=":
            return candidate == self.value
        if self.op == "!=":
            return candidate != self.value
        hit = re.fullmatch(self.value, candidate) is not None  # PromQL regexes are anchored
        return hit if self.op == "=~" else not hit


@dataclass
class Selector:
    name: str | None  # None for {__name__=~"..."}-only selectors with a regex name
    matchers: list[Matcher] = field(default_factory=list)


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}
# Aggregation operators are keywords: `sum by (x) (...)` puts a label list before the parenthesis.
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_NUMBER_WORDS = {"inf", "nan"}
_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:0[xX][0-9a-fA-F]+|\d[\w.]*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}@])
    """,
    re.X,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            out.append((kind, m.group()))
    return out


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of a PromQL expression, in order of appearance."""
    toks = _tokens(expr)
    out: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident":
            low = text.lower()
            if low in _LABEL_LIST_KEYWORDS:
                i += 1
                if toks[i : i + 1] == [("op", "(")]:  # group_left may come without a label list
                    while toks[i] != ("op", ")"):
                        i += 1
                    i += 1
                continue
            if low in _KEYWORDS or low in _NUMBER_WORDS or text in _AGGREGATIONS:
                i += 1
                continue
            if nxt == ("op", "("):  # a function or an aggregation
                i += 1
                continue
            selector = Selector(text)
            i += 1
            if toks[i : i + 1] == [("op", "{")]:
                i = _matchers(toks, i, selector, expr)
            out.append(selector)
            continue
        if (kind, text) == ("op", "{"):
            selector = Selector(None)
            i = _matchers(toks, i, selector, expr)
            names = [m for m in selector.matchers if m.label == "__name__"]
            if len(names) == 1 and names[0].op == "=":
                selector.name = names[0].value
            out.append(selector)
            continue
        if (kind, text) == ("op", "@"):  # @ start() / @ end() / @ <timestamp>
            i += 2 if nxt[0] == "number" else 1
            continue
        i += 1
    return out


def _matchers(toks: list[tuple[str, str]], i: int, selector: Selector, expr: str) -> int:
    """Parse ``{label op "value", ...}`` starting at the ``{``; returns the index after ``}``."""
    i += 1
    while toks[i] != ("op", "}"):
        if toks[i] == ("op", ","):
            i += 1
            continue
        if i + 2 >= len(toks):
            raise ValueError(f"cannot read label matcher at the end of {expr!r}")
        (lk, label), (ok, op), (vk, value) = toks[i], toks[i + 1], toks[i + 2]
        if lk != "ident" or ok != "op" or op not in ("=", "!=", "=~", "!~") or vk != "string":
            raise ValueError(f"cannot read label matcher {label}{op}{value} in {expr!r}")
        selector.matchers.append(Matcher(label, op, _unquote(value)))
        i += 3
    return i + 1


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (a regex ``__name__`` selector contributes none)."""
    return {s.name for s in selectors(expr) if s.name is not None}


def is_third_party(name: str) -> bool:
    return name in PROMETHEUS_NAMES or name.startswith(THIRD_PARTY_PREFIXES)


# -- what a /metrics endpoint exports ---------------------------------------------------------
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


@dataclass
class Family:
    name: str
    type: str
    documentation: str
    samples: list[tuple[str, dict[str, str], float]]

    def series_names(self) -> set[str]:
        """Sample names this family can expose, whether or not it has samples yet."""
        names = {self.name + suffix for suffix in _SUFFIXES.get(self.type, ("",))}
        return names | {s[0] for s in self.samples}

    def label_names(self) -> set[str]:
        return {label for _, labels, _ in self.samples for label in labels if label != "le"}

    def label_values(self, label: str) -> set[str]:
        return {labels[label] for _, labels, _ in self.samples if label in labels}


def parse_exposition(text: str) -> dict[str, Family]:
    """Families of a Prometheus text exposition, keyed by family name.

    prometheus_client writes ``# HELP``/``# TYPE`` for every metric the process defined, also
    for labelled ones that have no sample yet, so a metric defined in the running code counts
    as exported even when this workload did not touch it.
    """
    out: dict[str, Family] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = Family(
            fam.name, fam.type, fam.documentation, [(s.name, dict(s.labels), s.value) for s in fam.samples]
        )
    return out


def series_index(families: dict[str, Family]) -> dict[str, Family]:
    """Every exposable sample name -> its family."""
    return {series: fam for fam in families.values() for series in fam.series_names()}


# -- promtool ---------------------------------------------------------------------------------
def require_binary(name: str) -> str:
    """The path of a Debian-packaged tool the tests need; fails with the install hint."""
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).is_file():
        pytest.fail(
            f"{name} is not installed: scripts/test.sh installs it (apt-get install prometheus exporters)"
        )
    return path


def promtool(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def doc_anchors(path: Path = OBSERVABILITY_DOC) -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", path.read_text(), re.M)}


# -- the live services (started by the live_stack fixture in conftest.py) ----------------------
@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM the service's process group and reap it (idempotent)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class LiveStack:
    lens: Service
    mimir: Service
    scrapes: dict[str, str] = field(default_factory=dict)  # service name -> /metrics text
    routes: dict[str, set[str]] = field(default_factory=dict)  # service name -> OpenAPI paths
    index_id: str = ""
