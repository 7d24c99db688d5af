"""Every PromQL expression of the alert rules and the dashboards parses (promtool), and reads
only metrics the services really export -- read from /metrics of a running Lens and Mimir after a
real workload, not from a list in this file.

An earlier prototype shipped dashboards on metric names nothing emitted; these tests make that
impossible. node_, pg_ and redis_ names are checked against the real exporters (Debian's
packages, the `exporters` fixture); the exporters that cannot run here (NATS, cAdvisor, nginx,
the OTel collector) pass by an explicit prefix allowlist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ops_support import (
    EXPORTER_PREFIXES,
    OBSERVABILITY_DOC,
    Expression,
    Family,
    LiveStack,
    Matcher,
    dashboard_expressions,
    is_third_party,
    label_values_selector,
    metric_names,
    parse_exposition,
    promtool,
    recorded_names,
    rule_expressions,
    selectors,
    series_index,
    substitute_grafana,
)

pytestmark = pytest.mark.slow

# Labels Prometheus adds from the scrape config, not the services.
TARGET_LABELS = {"job", "instance", "replica", "service", "role"}


def all_expressions() -> list[Expression]:
    return rule_expressions() + dashboard_expressions()


# -- the extractor ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="lens"} == 0', {"up"}),
        ("rate(lens_http_requests_total[5m])", {"lens_http_requests_total"}),
        (
            'sum by (job, le) (rate(x_bucket{route=~"/api/.*", le="2.0"}[5m])) / on (job) group_left sum(y)',
            {"x_bucket", "y"},
        ),
        ("sum without (instance) (a) and ignoring (mode) b unless c or d", {"a", "b", "c", "d"}),
        ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m])))", {"h_bucket"}),
        ('count_values("version", build_info) > bool 1', {"build_info"}),
        ("topk(5, m offset 1h) @ start()", {"m"}),
        ("max_over_time(g[1h:5m]) * Inf - NaN + 1e3 + 0x1f", {"g"}),
        ("lens:http_request_slow:ratio_rate1h > (14.4 * 0.05)", {"lens:http_request_slow:ratio_rate1h"}),
        ('{__name__="exact_name", a="b"}', {"exact_name"}),
        ('{__name__=~"regex_.*"}', set()),
        ('label_replace(m, "dst", "x", "src", "(.*)")', {"m"}),
        ("sum(m) by (group_left_label)", {"m"}),
        ('a{l="with } brace, and \\"quote\\""} # a comment naming not_a_metric', {"a"}),
        ("atan2(a, b)", {"a", "b"}),
        ("a atan2 b", {"a", "b"}),
    ],
)
def test_metric_names_extractor(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selectors_keep_label_matchers() -> None:
    (sel,) = selectors('rate(x_bucket{route!="/a", le="2.0", b=~"c|d", e!~\'f\'}[5m])')
    assert sel.name == "x_bucket"
    assert sel.matchers == [
        Matcher("route", "!=", "/a"),
        Matcher("le", "=", "2.0"),
        Matcher("b", "=~", "c|d"),
        Matcher("e", "!~", "f"),
    ]
    assert Matcher("b", "=~", "c|d").matches("d") and not Matcher("b", "=~", "c|d").matches("cd")
    assert Matcher("e", "!~", "f").matches("g") and not Matcher("route", "!=", "/a").matches("/a")


def test_extractor_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="tokenize"):
        metric_names("a ? b")
    with pytest.raises(ValueError, match="label matcher"):
        metric_names("a{b}")


def test_grafana_variables_are_substituted_and_unknown_ones_refused() -> None:
    assert (
        substitute_grafana(
            'rate(a{replica=~"$replica"}[$__rate_interval]) + b[${__range}] + c[[[__interval]]]'
        )
        == 'rate(a{replica=~"lens-searcher-1"}[1m]) + b[1h] + c[1m]'
    )
    with pytest.raises(ValueError, match="unknown Grafana variable"):
        substitute_grafana('a{x=~"$nope"}')
    assert label_values_selector('label_values(up{job=~"a|b"}, replica)') == 'up{job=~"a|b"}'
    assert label_values_selector("label_values(replica)") is None
    with pytest.raises(ValueError, match="unsupported"):
        label_values_selector("query_result(up)")


def test_expressions_were_found() -> None:
    """Guard against a loader that silently finds nothing (and so checks nothing)."""
    rules, panels = rule_expressions(), dashboard_expressions()
    assert len(rules) >= 30 and len(panels) >= 40
    sources = {e.source.split(":")[0] for e in panels}
    assert sources == {"system.json", "search.json", "pipeline.json", "integration.json", "business.json"}


# -- (a) every expression parses -------------------------------------------------------------
def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    exprs = all_expressions()
    doc = {
        "groups": [
            {
                "name": "parse-check",
                "rules": [{"record": f"parse_check:expr_{i}", "expr": e.promql} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "parse-check.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = promtool("check", "rules", str(path))
    if result.returncode != 0:
        bad = {int(n) for n in re.findall(r"parse_check:expr_(\d+)", result.stdout + result.stderr)}
        details = "\n".join(f"  {exprs[i].source}: {exprs[i].promql}" for i in sorted(bad))
        pytest.fail(f"promtool rejects expressions:\n{result.stdout}{result.stderr}\n{details}")
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# -- (b) every metric name is exported by a running service -----------------------------------
def _exports(live_stack: LiveStack) -> dict[str, dict[str, Family]]:
    """service -> sample name -> family, from the real scrapes."""
    return {name: series_index(parse_exposition(text)) for name, text in live_stack.scrapes.items()}


def test_scrapes_come_from_the_running_services(live_stack: LiveStack) -> None:
    """The export lists are the services' own: both scrapes are real and saw this workload."""
    lens = parse_exposition(live_stack.scrapes["lens"])
    mimir = parse_exposition(live_stack.scrapes["mimir"])
    assert all(name.startswith(("lens_", "process_", "python_")) for name in lens), sorted(lens)
    assert all(name.startswith(("mimir_", "process_", "python_")) for name in mimir), sorted(mimir)
    lens_routes = lens["lens_http_requests"].label_values("route")
    mimir_routes = mimir["mimir_http_requests"].label_values("route")
    assert {"/api/v1/search", "/api/v1/repos"} <= lens_routes, lens_routes
    assert {"/api/index/repository", "/api/search", "/api/ask", "/mcp"} <= mimir_routes, mimir_routes
    assert "500" not in lens["lens_http_requests"].label_values("status")
    assert {"400", "404"} <= mimir["mimir_http_requests"].label_values("status")
    assert "400" in lens["lens_http_requests"].label_values("status")
    assert sum(v for n, _, v in mimir["mimir_lens_calls"].samples if n.endswith("_total")) > 0


def test_every_metric_name_is_exported(live_stack: LiveStack) -> None:
    exports = _exports(live_stack)
    recorded = recorded_names()
    missing: list[str] = []
    for expr in all_expressions():
        for name in sorted(metric_names(expr.promql)):
            if name in recorded or is_third_party(name):
                continue
            owner = name.split("_", 1)[0]
            if owner not in exports:
                missing.append(f"{expr.source}: {name} (no service is called {owner!r})")
            elif name not in exports[owner]:
                missing.append(f"{expr.source}: {name} is not exported by {owner}")
    assert not missing, "metric names nothing exports:\n" + "\n".join(missing)


def test_recording_rules_are_used_and_exist() -> None:
    """A recorded name an expression reads must be recorded by some rule (typos are not 'exported')."""
    recorded = recorded_names()
    used = {n for e in all_expressions() for n in metric_names(e.promql) if ":" in n}
    assert used <= recorded, used - recorded
    assert recorded <= used, f"recording rules nothing reads: {recorded - used}"


def test_label_matchers_fit_the_exported_series(live_stack: LiveStack) -> None:
    """Label names exist on the series; `le` bounds are real buckets; routes are real routes."""
    exports = _exports(live_stack)
    problems: list[str] = []
    for expr in all_expressions():
        for sel in selectors(expr.promql):
            if sel.name is None or sel.name.split("_", 1)[0] not in exports:
                continue
            fam = exports[sel.name.split("_", 1)[0]].get(sel.name)
            if fam is None:
                continue  # reported by test_every_metric_name_is_exported
            owner = sel.name.split("_", 1)[0]
            for m in sel.matchers:
                problems += _check_matcher(expr.source, sel.name, fam, m, live_stack.routes[owner])
    assert not problems, "\n".join(problems)


def _check_matcher(source: str, name: str, fam: Family, m: Matcher, openapi_paths: set[str]) -> list[str]:
    where = f"{source}: {name}{{{m.label}{m.op}{m.value!r}}}"
    if m.label in TARGET_LABELS:
        return []
    if m.label == "le":
        if not name.endswith("_bucket") or fam.type != "histogram":
            return [f"{where}: le on a series that is not a histogram bucket"]
        bounds = fam.label_values("le")
        if not bounds:
            return [f"{where}: the histogram has no samples in this workload, its buckets are unknown"]
        if m.op == "=" and m.value not in bounds:
            return [f"{where}: no such bucket; the histogram's bounds are {sorted(bounds, key=float)}"]
        return []
    if fam.samples and m.label not in fam.label_names():
        return [f"{where}: the series has no label {m.label!r} (labels: {sorted(fam.label_names())})"]
    if m.label == "route":
        known = openapi_paths | fam.label_values("route")
        if m.op in ("=", "!=") and m.value not in known:
            return [f"{where}: not a route of the service"]
        if m.op in ("=~", "!~") and not any(re.fullmatch(m.value, r) for r in known):
            return [f"{where}: matches no route of the service"]
    return []


def test_exporter_metric_names_are_real(exporters: dict[str, tuple[int, str]]) -> None:
    """node_, pg_ and redis_ names are checked against the real exporters (Debian packages), not
    just allowed by prefix; so are their label matchers (e.g. fstype on node_filesystem_*)."""
    scraped = {job: series_index(parse_exposition(text)) for job, (_, text) in exporters.items()}
    by_prefix = {prefix: job for job, prefix in EXPORTER_PREFIXES.items()}
    problems: list[str] = []
    checked = 0
    for expr in all_expressions():
        for sel in selectors(expr.promql):
            job = next((j for p, j in by_prefix.items() if sel.name and sel.name.startswith(p)), None)
            if job is None or sel.name is None:
                continue
            checked += 1
            fam = scraped[job].get(sel.name)
            if fam is None:
                problems.append(f"{expr.source}: {sel.name} is not exported by the {job} exporter")
                continue
            for m in sel.matchers:
                problems += _check_matcher(expr.source, sel.name, fam, m, set())
    assert checked >= 5
    assert not problems, "\n".join(problems)


def test_every_exported_metric_is_documented(live_stack: LiveStack) -> None:
    """docs/OBSERVABILITY.md names every metric the services export (the reverse direction)."""
    doc = OBSERVABILITY_DOC.read_text()
    undocumented: list[str] = []
    for service, text in live_stack.scrapes.items():
        for name, family in parse_exposition(text).items():
            if name.startswith(("process_", "python_")) or name.endswith("_created"):
                continue
            shown = name + "_total" if family.type == "counter" else name
            generic = "<svc>_" + shown.split("_", 1)[1]  # metrics both services export
            if not any(f"`{n}`" in doc for n in (shown, name, generic)):
                undocumented.append(f"{service}: {shown}")
    assert not undocumented, "exported but not in docs/OBSERVABILITY.md:\n" + "\n".join(undocumented)
