"""Dashboards import cleanly: stable uids, a $datasource variable, units and descriptions, links."""

import json
import re
from pathlib import Path

import pytest

from scripts.rules import load_spec

pytestmark = pytest.mark.tier("unit")

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def panels(board):
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def test_the_dashboards_have_stable_unique_uids():
    boards = [json.loads(f.read_text()) for f in FILES]
    assert sorted(b["uid"] for b in boards) == [
        "llamacloud-chat-genai",
        "llamacloud-chat-overview",
        "llamacloud-chat-session",
        "llamacloud-collector-health",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_conventions(path):
    text = path.read_text()
    board = json.loads(text)
    assert "${DS_" not in text and '"__inputs"' not in text
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query" and variables["instance"]["type"] == "query"
    assert "$job" in variables["instance"]["query"]["query"]
    assert board["links"] and board["links"][0]["tags"] == ["llamacloud"] and "llamacloud" in board["tags"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["description"] and p["fieldConfig"]["defaults"]["unit"], p["title"]
        for target in p["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job"' in target["expr"] or target["expr"] == "1 - $slo", target["expr"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    uids = re.findall(r'"uid":\s*"([^"]+)"', text)
    assert set(uids) <= {board["uid"], "${datasource}"}


def all_panels():
    for path in FILES:
        yield from panels(json.loads(path.read_text()))


def test_every_rate_uses_the_rate_interval():
    for p in all_panels():
        for target in p["targets"]:
            for window in re.findall(r"\b(?:rate|irate)\([^\[]*\[([^\]]+)\]", target["expr"]):
                assert window == "$__rate_interval", (p["title"], target["expr"])


def test_every_stat_has_explicit_thresholds_not_grafanas_default():
    for p in all_panels():
        if p["type"] != "stat":
            continue
        thresholds = p["fieldConfig"]["defaults"]["thresholds"]
        steps = thresholds["steps"]
        assert thresholds["mode"] == "absolute" and steps[0]["value"] is None, p["title"]
        assert {"value": 80, "color": "red"} not in steps, p["title"]


def color_at(panel, value):
    color = None
    for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]:
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return color


def test_up_zero_is_red_and_the_error_ratio_is_coloured_against_the_objective():
    by_title = {p["title"]: p for p in all_panels()}
    assert color_at(by_title["Up"], 0) == "red" and color_at(by_title["Up"], 1) == "green"
    budget = 1 - load_spec()["objective"]
    ratio = by_title["Error ratio (range)"]
    assert color_at(ratio, budget * 0.9) == "green" and color_at(ratio, budget * 1.1) == "red"
    burn = by_title["Error budget burn (1h)"]
    assert [color_at(burn, x) for x in (0.5, 2, 10, 20)] == ["green", "yellow", "orange", "red"]
    assert color_at(by_title["Runs (range)"], 1000) == "text"  # a plain count is never painted red


def test_the_overview_asks_for_exemplars_on_its_error_and_duration_panels():
    board = json.loads((ROOT / "grafana" / "dashboards" / "chat-overview.json").read_text())
    asking = {p["title"] for p in panels(board) if any(t.get("exemplar") for t in p["targets"])}
    assert {
        "Errors by type",
        "Error ratio against the SLO",
        "Run duration p50 / p95 / p99",
        "Runs per minute by outcome",
    } <= asking


def test_the_runaway_panel_reads_the_alerts_bounds_and_draws_its_threshold():
    from scripts.rules import le

    alert = next(a for a in load_spec()["alerts"] if a["alert"] == "LlamaCloudChatRunawayAgents")
    params = alert["params"]
    board = json.loads((ROOT / "grafana" / "dashboards" / "chat-overview.json").read_text())
    panel = next(p for p in panels(board) if p["title"] == "Runaway runs")
    assert panel["type"] == "timeseries" and panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    turns, tools = (t["expr"] for t in panel["targets"])
    matchers = 'job=~"$job", instance=~"$instance", project_id=~"$project"'
    assert f'llamacloud_chat_run_turns_bucket{{{matchers}, le="{le(params["turns"])}"}}' in turns
    assert f'le="{le(params["tool_calls"])}"' in tools and "llamacloud_chat_run_tool_calls_count{" in tools
    threshold = params["threshold"]
    assert color_at(panel, threshold * 0.9) == "green" and color_at(panel, threshold) == "red"
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area")
    assert f"{threshold:.0%}" in panel["description"] and "LlamaCloudChatRunawayAgents" in panel["description"]


HISTOGRAM_REF = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*?)_(bucket|count|sum)\b")


def histogram_families(exprs):
    """The histogram families the expressions read: the collector's, and any other read through _bucket."""
    from collector.families import HISTOGRAMS

    return {f.name for f in HISTOGRAMS} | {m[1] for e in exprs for m in HISTOGRAM_REF.finditer(e) if m[2] == "bucket"}


def missing_native_forms(expr, families):
    """What ``expr`` lacks of the ``or`` form (issue 29): each classic series of a histogram it reads
    (``_bucket``, ``_count``, ``_sum``) needs a native branch after it, ``... or ...`` on the family itself,
    with histogram_count for a count (histogram_fraction for a share), histogram_sum for a sum, and
    histogram_quantile, histogram_fraction or the native histogram itself for buckets. Empty when the query
    answers on classic series and on NHCB."""
    problems = []
    for m in HISTOGRAM_REF.finditer(expr):
        family, suffix = m[1], m[2]
        if family not in families:
            continue
        native = re.search(rf"(?<![\w:]){re.escape(family)}(?:\{{[^}}]*\}})?\[", expr[m.end() :])
        if native is None:
            problems.append(f"{family}_{suffix}: no native {family}[...] after it")
            continue
        after = expr[m.end() :]
        if " or " not in after[: native.start()] and "\nor" not in after[: native.start()]:
            problems.append(f"{family}_{suffix}: the native branch is not joined by `or`")
        want = {"count": ("histogram_count(", "histogram_fraction("), "sum": ("histogram_sum(",)}.get(suffix, ())
        if want and not any(w in after for w in want):
            problems.append(f"{family}_{suffix}: no {' or '.join(want)} on the native branch")
    return problems


def test_every_histogram_query_of_the_dashboards_answers_on_classic_and_native_histograms():
    exprs = [t["expr"] for p in all_panels() for t in p.get("targets", [])]
    families = histogram_families(exprs)
    checked = [e for e in exprs if any(f"{f}_" in e for f in families)]
    assert len(checked) >= 8  # the duration, token, turn, runaway, latency panels
    for expr in checked:
        assert missing_native_forms(expr, families) == [], expr


def test_the_native_form_check_catches_a_query_without_it():
    families = {"x"}
    assert missing_native_forms('histogram_quantile(0.9, sum by (le) (rate(x_bucket{a="b"}[5m])))', families)
    assert missing_native_forms("sum(rate(x_count[5m])) or sum(rate(x[5m]))", families)  # no histogram_count
    assert missing_native_forms("sum(rate(x[5m])) + sum(rate(x_count[5m]))", families)  # native first
    assert not missing_native_forms('(sum(rate(x_count{a="b"}[5m])) or histogram_count(sum(rate(x{a="b"}[5m]))))', families)


PROJECT_FILTER = 'project_id=~"$project"'
SERIES_NAME = re.compile(r"(?<![\w:])((?:[a-z_]+:)?llamacloud_[a-z0-9_]+(?::[a-z0-9_]+)?)(\{[^}]*\})?")
"""A collector series (or a recorded ``level:family:operation``) an expression reads, with its matchers."""
AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|count_values|quantile|topk|bottomk)\s*(?:(by|without)\s*\(([^)]*)\))?\s*\("
)
MATCHING = re.compile(r"\b(on|ignoring)\s*\(([^)]*)\)(\s*group_(?:left|right))?")


def _argument(expr: str, opening: int) -> str:
    """The text between the parenthesis at ``opening`` and the one that closes it."""
    depth = 0
    for i in range(opening, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[opening + 1 : i]
    raise ValueError(f"unbalanced: {expr}")


def _reads_a_project_family(expr: str) -> bool:
    from scripts.rules import per_project

    return any(per_project(m[1]) for m in SERIES_NAME.finditer(expr))


def _labels(text: str) -> set[str]:
    return {label.strip() for label in text.split(",") if label.strip()}


def project_problems(expr: str, dashboard: bool) -> list[str]:
    """What ``expr`` does wrong with projects (DESIGN §5, "Several projects"): an aggregation over a per-project
    family that drops ``project_id`` (``by`` without it, ``without`` it, or no clause; topk and bottomk keep
    their labels), a vector match of two per-project sides that leaves it out (``on`` without it, ``ignoring``
    it; a ``group_left`` or ``group_right`` join with a global family's series is one side per project), a
    global family filtered by project; and on a dashboard, a per-project series without the ``$project`` filter.
    Empty when each answer keeps its project."""
    from scripts.rules import PROJECT, per_project

    problems = []
    for m in SERIES_NAME.finditer(expr):
        name, matchers = m[1], m[2] or ""
        if not per_project(name):
            if PROJECT in matchers:
                problems.append(f"{name}: a global family has no {PROJECT}")
        elif dashboard and PROJECT_FILTER not in matchers:
            problems.append(f"{name}: no {PROJECT_FILTER}")
    for m in AGGREGATION.finditer(expr):
        if not _reads_a_project_family(_argument(expr, m.end() - 1)):
            continue
        labels = _labels(m[3] or "")
        kept = PROJECT in labels if m[2] == "by" else PROJECT not in labels if m[2] == "without" else m[1] in ("topk", "bottomk")
        if not kept:
            problems.append(f"{m[0].strip()} ...: aggregates {PROJECT} away")
    if _reads_a_project_family(expr):
        for m in MATCHING.finditer(expr):
            if not m[3] and (PROJECT in _labels(m[2])) != (m[1] == "on"):
                problems.append(f"{m[0].strip()}: matches across projects")
    return problems


def test_the_project_check_catches_a_query_that_loses_the_project():
    good = 'sum by (project_id, outcome) (rate(llamacloud_chat_runs_total{job=~"$job", project_id=~"$project"}[5m]))'
    assert project_problems(good, dashboard=True) == []
    assert project_problems(good.replace(', project_id=~"$project"', ""), dashboard=True)  # no filter
    assert project_problems(good.replace("project_id, ", ""), dashboard=True)  # by (outcome)
    assert project_problems(good.replace("by (project_id, outcome) ", ""), dashboard=True)  # sum(...)
    assert project_problems(good.replace("by (project_id, outcome)", "without (project_id)"), dashboard=True)
    assert project_problems("max(job:llamacloud_chat_run_errors_per_llamacloud_chat_runs:ratio_rate1h)", dashboard=False)
    assert project_problems('sum(llamacloud_collector_api_requests_total{project_id=~"$project"})', dashboard=True)
    assert not project_problems("sum by (job) (rate(llamacloud_collector_api_requests_total[5m]))", dashboard=False)
    assert not project_problems(
        'topk(10, sum by (project_id, session_id) (llamacloud_chat_session_runs_total{project_id=~"$project"}))', dashboard=True
    )
    runs = "sum by (job, project_id) (rate(llamacloud_chat_runs_total[5m]))"
    assert project_problems(f"{runs} > 0.1 and on (job) {runs} > 10", dashboard=False)
    assert project_problems(f"{runs} / ignoring (project_id) {runs}", dashboard=False)
    assert not project_problems(f"{runs} > 0.1 and on (job, project_id) {runs} > 10", dashboard=False)
    interval = "max by (job) (llamacloud_collector_poll_interval_seconds)"
    assert not project_problems(f"{runs} > on (job) group_left () 3 * {interval}", dashboard=False)


def dashboard_queries():
    """Every panel query and query variable of the dashboards, but the heatmap's: its buckets are one
    distribution, of the selected projects together (its description says so)."""
    for path in FILES:
        board = json.loads(path.read_text())
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                yield path.name, f"variable {var['name']}", var["query"]["query"]
        for p in panels(board):
            if p["type"] != "heatmap":
                yield from ((path.name, p["title"], t["expr"]) for t in p["targets"])


def test_every_dashboard_query_over_a_project_family_filters_and_keeps_the_project():
    queries = list(dashboard_queries())
    assert sum(_reads_a_project_family(expr) for _, _, expr in queries) >= 50
    wrong = [(board, title, expr, problems) for board, title, expr in queries if (problems := project_problems(expr, True))]
    assert wrong == [], "\n".join(map(str, wrong))


def js_regex(pattern: str) -> re.Pattern[str]:
    """A Grafana variable regex (``/.../``, JavaScript's named groups) as Python's."""
    assert pattern.startswith("/") and pattern.endswith("/")
    return re.compile(pattern[1:-1].replace("(?<", "(?P<"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_dashboard_selects_projects_by_name(path):
    names = [v["name"] for v in json.loads(path.read_text())["templating"]["list"]]
    project = json.loads(path.read_text())["templating"]["list"][names.index("project")]
    assert names.index("job") < names.index("instance") < names.index("project")  # it reads both
    assert "session_id" not in names or names.index("project") < names.index("session_id")  # which it filters
    assert project["type"] == "query" and project["multi"] and project["includeAll"]
    assert project["allValue"] == ".*"  # also a default project not named yet: no project_id for a moment
    assert project["query"]["query"] == 'query_result(llamacloud_project_info{job=~"$job", instance=~"$instance"})'
    regex = js_regex(project["regex"])
    # each series as Grafana's query_result writes it: name{labels, sorted, unescaped} value timestamp
    for line, value, text in (
        (
            'llamacloud_project_info{instance="c:9742",job="lc",project_id="p-1",project_name="Support bot"} 1 17e11',
            "p-1",
            "Support bot",
        ),
        (
            'llamacloud_project_info{endpoint="http",instance="10.0.0.1:9742",job="lc",pod="lc-0",'
            'project_id="0b9a",project_name="Sales (EU)",service="lc"} 1 17e11',
            "0b9a",
            "Sales (EU)",
        ),
        ('llamacloud_project_info{instance="c:9742",job="lc",project_id="p-2"} 1 17e11', "p-2", None),
    ):
        m = regex.search(line)
        assert m is not None and m["value"] == value and m["text"] == text, line
