"""The Grafana dashboards, defined once; generate.py writes them as JSON."""

from __future__ import annotations

from typing import Any

from scripts.rules import INDEX_RATIO, RATIO, hist_buckets, hist_mean, hist_quantile, hist_share_above, le, load_spec

DS = {"type": "prometheus", "uid": "${datasource}"}
J = 'job=~"$job", instance=~"$instance"'
"""The matchers of a global family (no project_id: the API's, the shard gauges, the interval, process_*)."""
P = 'project_id=~"$project"'
JP = f"{J}, {P}"
"""The matchers of a per-project family (every chat family, the per-project self-metrics): the selected
projects. Each query over one keeps project_id in its ``by``, so a panel shows one line or row per project
(tests/test_dashboards.py fails on one that does not)."""
JM = ['job=~"$job"', 'instance=~"$instance"', P]
"""``JP`` as matchers, for the histogram queries of scripts/rules.py (each in the classic-or-native form)."""
JG = ['job=~"$job"', 'instance=~"$instance"']
"""``J`` as matchers, for the histogram queries of a global family."""
R = f'job=~"$job", {P}'
"""The matchers of a recorded series: its rule keeps job and project_id, not instance."""
RI = "$__rate_interval"
LEGEND = "{{project_id}}"
"""The legend of a per-project line or value: its project."""
TAG = "llamacloud"


def q(expr: str, legend: str = "", instant: bool = False, fmt: str | None = None, exemplar: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if exemplar:  # each exemplar names the session of the run; the datasource links it to the drill-down
        target["exemplar"] = True
    if instant:
        target.update(instant=True, range=False)
    if fmt:
        target["format"] = fmt
    return target


def panel(
    kind: str, title: str, description: str, unit: str, targets: list[dict], w: int = 8, h: int = 8, **options: Any
) -> dict[str, Any]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(options.pop("defaults", {}))
    result = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": options.pop("overrides", [])},
        "gridPos": {"w": w, "h": h},
        "options": options.pop("panel_options", {}),
    }
    result.update(options)
    return result


def steps(base: str, *marks: tuple[float, str]) -> dict[str, Any]:
    """Explicit thresholds: ``base`` colour below the first mark, then each mark's colour from its value up."""
    return {"mode": "absolute", "steps": [{"color": base, "value": None}, *({"color": c, "value": v} for v, c in marks)]}


NEUTRAL = steps("text")
"""A count with no good or bad value: shown plain, never Grafana's default red at 80."""


def stat(
    title: str, description: str, unit: str, expr: str, thresholds: dict[str, Any], mappings: list[dict] | None = None, **kw: Any
) -> dict[str, Any]:
    return panel(
        "stat",
        title,
        description,
        unit,
        [q(expr, LEGEND if "by (project_id)" in expr else "", instant=True)],  # a value per project, named
        w=kw.pop("w", 4),
        h=kw.pop("h", 4),
        panel_options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        defaults={"thresholds": thresholds, "mappings": mappings or []},
        **kw,
    )


def series(title: str, description: str, unit: str, *targets: dict, **kw: Any) -> dict[str, Any]:
    return panel("timeseries", title, description, unit, list(targets), **kw)


def table(title: str, description: str, expr: str, **kw: Any) -> dict[str, Any]:
    return panel(
        "table",
        title,
        description,
        kw.pop("unit", "short"),
        [q(expr, instant=True, fmt="table")],
        transformations=[
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {"project_id": "Project"}}}
        ],
        **kw,
    )


def by_index() -> dict[str, Any]:
    """One row per index: runs in the range, the recorded 30m error ratio, and its most frequent error type."""
    window = load_spec()["index_ratio_window"]
    targets = [
        q(
            f"sum by (project_id, index_id) (increase(llamacloud_chat_index_runs_total{{{JP}}}[$__range]))",
            instant=True,
            fmt="table",
        ),
        q(f"max by (project_id, index_id) ({INDEX_RATIO}{window}{{{R}}})", instant=True, fmt="table"),
        q(
            f"topk by (project_id, index_id) (1, sum by (project_id, index_id, error_type) "
            f"(increase(llamacloud_chat_index_run_errors_total{{{JP}}}[$__range])))",
            instant=True,
            fmt="table",
        ),
    ]
    names = {
        "project_id": "Project",
        "index_id": "Index",
        "Value #A": "Runs (range)",
        "Value #B": f"Error ratio ({window})",
        "error_type": "Top error type",
        "Value #C": "Its failed runs (range)",
    }
    ratio = {
        "matcher": {"id": "byName", "options": names["Value #B"]},
        "properties": [
            {"id": "unit", "value": "percentunit"},
            {"id": "thresholds", "value": steps("green", (0.05, "yellow"), (0.2, "red"))},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}},
        ],
    }
    return panel(
        "table",
        "By index",
        "Runs, error ratio and top error type of each index its sessions are bound "
        "to, per project (a session bound to two counts under both; _none: bound to none; _other: past "
        "--label-value-limit). Red from 20%, as LlamaCloudChatIndexErrorRatioHigh.",
        "short",
        targets,
        w=24,
        h=9,
        overrides=[ratio],
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": names}},
        ],
        panel_options={"sortBy": [{"displayName": names["Value #B"], "desc": True}]},
    )


RUNAWAY = "LlamaCloudChatRunawayAgents"


def runaway() -> dict[str, Any]:
    """The share of runs past the runaway alert's bounds (its defaults), with its threshold as a line."""
    alert = next(a for a in load_spec()["alerts"] if a["alert"] == RUNAWAY)
    params = alert["params"]

    def share(family: str, bound: float, legend: str) -> dict[str, Any]:
        return q(hist_share_above(family, le(bound), "project_id", JM, RI), f"{{{{project_id}}}} {legend}")

    return series(
        "Runaway runs",
        f"Share of the runs finished in each interval that went past {params['turns']} turns, and past "
        f"{params['tool_calls']} tool calls: the top buckets of the per-run histograms, where looping agents land. "
        f"The dashed red line is the threshold of {RUNAWAY} ({params['threshold']:.0%} of at least "
        f"{params['min_runs']} runs over {params['window']}, for {alert['for']}); the chart's "
        f"prometheusRule.alerts.{RUNAWAY} may set other bounds and thresholds.",
        "percentunit",
        share("llamacloud_chat_run_turns", params["turns"], f"over {params['turns']} turns"),
        share("llamacloud_chat_run_tool_calls", params["tool_calls"], f"over {params['tool_calls']} tool calls"),
        w=12,
        defaults={
            "min": 0,
            "thresholds": steps("green", (params["threshold"], "red")),
            "custom": {"thresholdsStyle": {"mode": "dashed"}},
        },
    )


def layout(panels: list[dict]) -> list[dict]:
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x, row_h = x + w, max(row_h, h)
    return panels


def _query_variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


PROJECT_REGEX = r'/project_id="(?<value>[^"]+)"(?:.*project_name="(?<text>[^"]*)")?/'
"""The ``project`` variable's options from each ``llamacloud_project_info`` series as Grafana's
``query_result`` writes it (``name{label="value",...} value timestamp``, labels sorted, so project_id comes
before project_name): the value is the project's ID, the text its name (the ID when it has none)."""


def project_variable() -> dict[str, Any]:
    """The watched projects, shown by name, selected by ID (``project_id=~"$project"``); All is ``.*``, which
    also matches the self-metrics of a default project not named yet (no project_id for a moment)."""
    query = f"query_result(llamacloud_project_info{{{J}}})"
    return {**_query_variable("project", query), "regex": PROJECT_REGEX}


def variables(extra: list[dict] | None = None) -> dict[str, Any]:
    source = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0}
    job = _query_variable("job", "label_values(llamacloud_collector_build_info, job)")
    instance = _query_variable("instance", 'label_values(llamacloud_collector_build_info{job=~"$job"}, instance)')
    return {"list": [source, job, instance, project_variable(), *(extra or [])]}


def dashboard(uid: str, title: str, description: str, panels: list[dict], extra_vars: list[dict] | None = None) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "graphTooltip": 1,
        "links": [
            {
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "title": "LlamaCloud dashboards",
            }
        ],
        "templating": variables(extra_vars),
        "annotations": {"list": []},
        "panels": layout(panels),
    }


YES_NO = [{"type": "value", "options": {"0": {"text": "no"}, "1": {"text": "yes"}}}]
UP_DOWN = [{"type": "value", "options": {"0": {"text": "down"}, "1": {"text": "up"}}}]
RUNS = f"llamacloud_chat_runs_total{{{JP}}}"
ERRS = f'llamacloud_chat_runs_total{{{JP}, outcome="error"}}'
OBJECTIVE = load_spec()["objective"]
"""The SLO objective the rules are generated with: the dashboards' default and their colours."""
BUDGET = round(1 - OBJECTIVE, 6)
SLO = {
    "name": "slo",
    "label": "SLO (run success ratio)",
    "type": "custom",
    "query": ",".join(dict.fromkeys(str(v) for v in (OBJECTIVE, 0.99, 0.995, 0.999, 0.95))),
    "current": {"text": str(OBJECTIVE), "value": str(OBJECTIVE)},
    "options": [],
}
BURN = steps("green", (1, "yellow"), (6, "orange"), (14.4, "red"))
"""Burn rate: the SRE workbook's alert levels (tickets from 1x and 3x, pages from 6x and 14.4x)."""


def legend(*labels: str) -> str:
    """A per-project legend: the project, then ``labels`` (``{{project_id}} {{outcome}}``)."""
    return " ".join([LEGEND, *(f"{{{{{label}}}}}" for label in labels)])


def quantiles(metric: str) -> list[dict]:
    return [
        q(hist_quantile(p, metric, "project_id", JM, RI), f"p{int(p * 100)} {LEGEND}", exemplar=True) for p in (0.5, 0.95, 0.99)
    ]


def overview() -> dict[str, Any]:
    panels = [
        stat(
            "Runs (range)",
            "Finished chat runs in the selected range, per project.",
            "short",
            f"sum by (project_id) (increase({RUNS}[$__range]))",
            NEUTRAL,
        ),
        stat(
            "Error ratio (range)",
            f"Share of finished runs that failed in the selected range, per project. Red above the "
            f"error budget of the {OBJECTIVE} objective ({BUDGET:.2%}).",
            "percentunit",
            f"sum by (project_id) (increase({ERRS}[$__range])) / sum by (project_id) (increase({RUNS}[$__range]))",
            steps("green", (BUDGET, "red")),
        ),
        stat(
            "Error budget burn (1h)",
            "How many times faster than the SLO allows the error budget burns, over "
            "the last hour (error ratio / (1 - SLO)), per project. 14.4 and 6 page, 3 and 1 open tickets.",
            "x",
            f"max by (project_id) ({RATIO}1h{{{R}}}) / (1 - $slo)",
            BURN,
        ),
        stat(
            "Runs in progress",
            "Sessions whose history ends in an unfinished run, per project.",
            "short",
            f"sum by (project_id) (llamacloud_chat_runs_in_progress{{{JP}}})",
            NEUTRAL,
        ),
        stat(
            "Oldest run in progress",
            "How long the oldest unfinished run of each project has been running, from when the "
            "collector first saw it. Red from 30 minutes, as LlamaCloudChatRunStuck.",
            "s",
            f"time() - min by (project_id) (llamacloud_chat_oldest_run_in_progress_seen_timestamp_seconds{{{JP}}})",
            steps("green", (600, "yellow"), (1800, "red")),
        ),
        stat(
            "Tokens (range)",
            "Input plus output tokens of runs finished in the range, per project.",
            "short",
            f"sum by (project_id) (increase(llamacloud_chat_tokens_total{{{JP}}}[$__range]))",
            NEUTRAL,
        ),
        series(
            "Runs per minute by outcome",
            "Finished chat runs per minute, success and error, per project. Exemplars (the "
            "dots) name a session of each outcome: click one to open it in the session drill-down.",
            "cpm",
            q(f"sum by (project_id, outcome) (rate({RUNS}[{RI}])) * 60", legend("outcome"), exemplar=True),
            w=12,
        ),
        series(
            "Error ratio against the SLO",
            "Share of runs that failed, per project, against the error budget line "
            "1 - SLO, and the 1h and 6h ratios the burn-rate alerts read.",
            "percentunit",
            q(
                f"sum by (project_id) (rate({ERRS}[{RI}])) / sum by (project_id) (rate({RUNS}[{RI}]))",
                f"{LEGEND} error ratio",
                exemplar=True,
            ),
            q(f"max by (project_id) ({RATIO}1h{{{R}}})", f"{LEGEND} 1h (alerts)"),
            q(f"max by (project_id) ({RATIO}6h{{{R}}})", f"{LEGEND} 6h (alerts)"),
            q("1 - $slo", "error budget (1 - SLO)"),
            w=12,
        ),
        series(
            "Run duration p50 / p95 / p99",
            "Quantiles of finished-run duration, per project.",
            "s",
            *quantiles("llamacloud_chat_run_duration_seconds"),
            w=12,
        ),
        panel(
            "heatmap",
            "Run duration heatmap",
            "Distribution of finished-run durations of the selected projects together (select one project to see its own).",
            "s",
            [q(hist_buckets("llamacloud_chat_run_duration_seconds", JM, RI), "{{le}}", fmt="heatmap")],
            w=12,
            panel_options={"calculate": False, "yAxis": {"unit": "s"}},
        ),
        series(
            "Tokens per minute",
            "Input and output tokens per minute of finished runs, per project.",
            "short",
            q(f"sum by (project_id, token_type) (rate(llamacloud_chat_tokens_total{{{JP}}}[{RI}])) * 60", legend("token_type")),
            w=12,
        ),
        series(
            "Tokens per run",
            "Mean and p95 tokens per run, input and output, per project.",
            "short",
            q(hist_mean("llamacloud_chat_run_tokens", "project_id, token_type", JM, RI), f"mean {legend('token_type')}"),
            q(
                hist_quantile(0.95, "llamacloud_chat_run_tokens", "project_id, token_type", JM, RI),
                f"p95 {legend('token_type')}",
            ),
            w=12,
        ),
        series(
            "Turns per run",
            "Mean and p95 turns per finished run, per project.",
            "short",
            q(hist_mean("llamacloud_chat_run_turns", "project_id", JM, RI), f"mean {LEGEND}"),
            q(hist_quantile(0.95, "llamacloud_chat_run_turns", "project_id", JM, RI), f"p95 {LEGEND}"),
            w=12,
        ),
        runaway(),
        series(
            "Tool calls by tool",
            "Tool calls per minute by tool, per project.",
            "cpm",
            q(f"sum by (project_id, tool) (rate(llamacloud_chat_tool_calls_total{{{JP}}}[{RI}])) * 60", legend("tool")),
        ),
        series(
            "Tool calls left without a result",
            "Tool calls per minute that got no tool_result in their run, per project.",
            "cpm",
            q(
                f'sum by (project_id, tool) (rate(llamacloud_chat_tool_calls_total{{{JP}, outcome="no_result"}}[{RI}])) * 60',
                legend("tool"),
            ),
        ),
        series(
            "Skipped index queries by index",
            "Index queries runs could not make, per project and index.",
            "short",
            q(
                f"sum by (project_id, index_id) (increase(llamacloud_chat_skipped_index_queries_total{{{JP}}}[{RI}]))",
                legend("index_id"),
            ),
        ),
        series(
            "Errors by type",
            "Failed runs per minute by classified error type, per project; the exemplars are failed runs: click one "
            "to open its session.",
            "cpm",
            q(
                f"sum by (project_id, error_type) (rate(llamacloud_chat_run_errors_total{{{JP}}}[{RI}])) * 60",
                legend("error_type"),
            ),
            q(f"sum by (project_id) (rate({ERRS}[{RI}])) * 60", f"{LEGEND} all failed runs", exemplar=True),
            w=12,
        ),
        series(
            "Runs in progress",
            "Unfinished runs, and the age of the oldest, per project.",
            "short",
            q(f"sum by (project_id) (llamacloud_chat_runs_in_progress{{{JP}}})", f"{LEGEND} in progress"),
            q(
                f"time() - min by (project_id) (llamacloud_chat_oldest_run_in_progress_seen_timestamp_seconds{{{JP}}})",
                f"{LEGEND} oldest (s)",
            ),
            w=12,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* oldest \\(s\\)$"},
                    "properties": [{"id": "unit", "value": "s"}, {"id": "custom.axisPlacement", "value": "right"}],
                }
            ],
        ),
        by_index(),
        table(
            "Top sessions by errors",
            "Sessions with the most failed runs in the range, with their project.",
            "topk(10, sum by (project_id, session_id) "
            f'(increase(llamacloud_chat_session_runs_total{{{JP}, outcome="error"}}[$__range])))',
            w=12,
            h=9,
        ),
        table(
            "Top sessions by tokens",
            "Sessions that used the most tokens in the range, with their project.",
            f"topk(10, sum by (project_id, session_id) (increase(llamacloud_chat_session_tokens_total{{{JP}}}[$__range])))",
            w=12,
            h=9,
        ),
    ]
    return dashboard(
        "llamacloud-chat-overview",
        "LlamaCloud chat / Overview",
        "Chat runs, errors against the SLO, duration, tokens, tools and skipped indexes, per project.",
        panels,
        [SLO],
    )


def session() -> dict[str, Any]:
    s = f'{JP}, session_id="$session_id"'
    var = {
        "name": "session_id",
        "label": "session",
        "type": "query",
        "datasource": DS,
        "refresh": 2,
        "query": {"query": f"label_values(llamacloud_chat_session_info{{{JP}}}, session_id)", "refId": "s"},
        "definition": f"label_values(llamacloud_chat_session_info{{{JP}}}, session_id)",
        "sort": 1,
    }
    panels = [
        table(
            "Session info",
            "Project, access, bound indexes (and title with --expose-titles).",
            f"llamacloud_chat_session_info{{{s}}}",
            w=24,
            h=4,
        ),
        stat(
            "Last run duration",
            "Duration of the session's most recent run (job_metadata). Yellow from 60 s, "
            "red from 120 s, as LlamaCloudChatRunDurationHigh.",
            "s",
            f"max by (project_id) (llamacloud_chat_session_last_run_duration_seconds{{{s}}})",
            steps("green", (60, "yellow"), (120, "red")),
        ),
        stat(
            "Last run input tokens",
            "Input tokens of the most recent run.",
            "short",
            f'max by (project_id) (llamacloud_chat_session_last_run_tokens{{{s}, token_type="input"}})',
            NEUTRAL,
        ),
        stat(
            "Last run output tokens",
            "Output tokens of the most recent run.",
            "short",
            f'max by (project_id) (llamacloud_chat_session_last_run_tokens{{{s}, token_type="output"}})',
            NEUTRAL,
        ),
        stat(
            "Last run turns",
            "Turns of the most recent run.",
            "short",
            f"max by (project_id) (llamacloud_chat_session_last_run_turns{{{s}}})",
            NEUTRAL,
        ),
        stat(
            "Last run failed",
            "Whether the most recent run failed: red when it did.",
            "none",
            f"max by (project_id) (llamacloud_chat_session_last_run_error{{{s}}})",
            steps("green", (1, "red")),
            YES_NO,
        ),
        stat(
            "Last updated",
            "When the session last changed upstream.",
            "dateTimeFromNow",
            f"max by (project_id) (llamacloud_chat_session_last_updated_timestamp_seconds{{{s}}}) * 1000",
            NEUTRAL,
        ),
        series(
            "Runs over time",
            "Finished runs of the session by outcome.",
            "short",
            q(f"sum by (project_id, outcome) (increase(llamacloud_chat_session_runs_total{{{s}}}[{RI}]))", "{{outcome}}"),
            w=12,
        ),
        series(
            "Tokens over time",
            "Tokens used by the session's finished runs.",
            "short",
            q(
                f"sum by (project_id, token_type) (increase(llamacloud_chat_session_tokens_total{{{s}}}[{RI}]))",
                "{{token_type}}",
            ),
            w=12,
        ),
        series(
            "Runs (cumulative)",
            "Finished runs of the session since the collector started counting.",
            "short",
            q(f"sum by (project_id, outcome) (llamacloud_chat_session_runs_total{{{s}}})", "{{outcome}}"),
            w=24,
        ),
    ]
    return dashboard(
        "llamacloud-chat-session",
        "LlamaCloud chat / Session drill-down",
        "One chat session: its last run and its runs and tokens over time.",
        panels,
        [var],
    )


def health() -> dict[str, Any]:
    a = "llamacloud_collector_api_requests_total"
    panels = [
        stat(
            "Up",
            "Whether the last poll of each project reached the API and it answered (lowest across instances): red "
            "when it did not.",
            "none",
            f"min by (project_id) (llamacloud_collector_up{{{JP}}})",
            steps("red", (1, "green")),
            UP_DOWN,
        ),
        stat(
            "Since last successful poll, in intervals",
            "Time since the last successful poll of each project, in poll intervals. Red from 3, as "
            "LlamaCloudCollectorPollStale.",
            "x",
            f"max by (project_id) ((time() - llamacloud_collector_last_success_timestamp_seconds{{{JP}}}) "
            f"/ ignoring (project_id) group_left () llamacloud_collector_poll_interval_seconds{{{J}}})",
            steps("green", (2, "yellow"), (3, "red")),
        ),
        stat(
            "Sessions watched",
            "Sessions watched across shards, per project.",
            "short",
            f"sum by (project_id) (llamacloud_collector_sessions_watched{{{JP}}})",
            NEUTRAL,
        ),
        stat(
            "Shards reporting",
            "Distinct collector shards scraped (two pods claiming one shard count once), out of the configured "
            "total: LlamaCloudCollectorShardsMissing fires below it.",
            "short",
            f'count(count_values("shard", llamacloud_collector_shard{{{J}}}))',
            NEUTRAL,
        ),
        stat(
            "Invalid payloads (range)",
            "API answers that failed validation (every project together): schema drift or a hostile answer. Orange from 1.",
            "short",
            f"sum(increase(llamacloud_collector_invalid_payloads_total{{{J}}}[$__range]))",
            steps("green", (1, "orange")),
        ),
        stat(
            "History resets (range)",
            "Histories that shrank or changed and were re-synced, per project. Yellow from 1.",
            "short",
            f"sum by (project_id) (increase(llamacloud_collector_history_resets_total{{{JP}}}[$__range]))",
            steps("green", (1, "yellow")),
        ),
        series(
            "Poll duration",
            "Duration of the last poll cycle per instance and project.",
            "s",
            q(
                f"max by (instance, project_id) (llamacloud_collector_poll_duration_seconds{{{JP}}})",
                "{{instance}} {{project_id}}",
            ),
        ),
        series(
            "How late new runs are counted",
            "Percentiles of llamacloud_collector_count_lag_seconds over 10 minutes (recorded), per project: from a "
            "session's last_updated_at to the commit that counted its new runs. Beside them the listing pass and the "
            "interval: the lag is about one pass plus one interval (README, Sizing); "
            "LlamaCloudCollectorCountLagHigh fires past 2 intervals and a pass.",
            "s",
            *(
                q(f"max by (project_id) (job:llamacloud_collector_count_lag_seconds:p{p}_rate10m{{{R}}})", f"p{p} {LEGEND}")
                for p in (50, 90, 99)
            ),
            q(
                f"max by (project_id) (llamacloud_collector_listing_pass_duration_seconds{{{JP}}})",
                f"listing pass {LEGEND}",
            ),
            q(f"max(llamacloud_collector_poll_interval_seconds{{{J}}})", "interval"),
        ),
        series(
            "Polls by result",
            "Poll cycles per minute by result, per project.",
            "cpm",
            q(f"sum by (project_id, result) (rate(llamacloud_collector_polls_total{{{JP}}}[{RI}])) * 60", legend("result")),
        ),
        series(
            "API requests by operation and code",
            "Requests per second to the LlamaCloud API (every project together); code error is a transport or protocol failure.",
            "reqps",
            q(f"sum by (operation, code) (rate({a}{{{J}}}[{RI}]))", "{{operation}} {{code}}"),
        ),
        series(
            "API latency p95",
            "p95 API request latency by operation, whole exchange (every project together).",
            "s",
            q(hist_quantile(0.95, "llamacloud_collector_api_request_duration_seconds", "operation", JG, RI), "{{operation}}"),
        ),
        series(
            "Retries and 429s",
            "Retried requests by reason, and 429 answers (every project together).",
            "reqps",
            q(
                f"sum by (operation, reason) (rate(llamacloud_collector_api_retries_total{{{J}}}[{RI}]))",
                "retry {{operation}} {{reason}}",
            ),
            q(f'sum(rate({a}{{{J}, code="429"}}[{RI}]))', "429"),
        ),
        series(
            "Request budget",
            "Requests waiting, on average, for --max-requests-per-second or a pause a 429 asked for (the rate of "
            "llamacloud_collector_api_budget_wait_seconds_total), and the requests the API says it still allows "
            "(its X-RateLimit-Remaining, when it sends one). Requests waiting all the time: the budget sets the "
            "pace of the listing pass and so the lag (README, Sizing). One budget for every project.",
            "short",
            q(f"sum(rate(llamacloud_collector_api_budget_wait_seconds_total{{{J}}}[{RI}]))", "requests waiting"),
            q(f"min(llamacloud_collector_api_rate_limit_remaining{{{J}}})", "API: remaining"),
        ),
        series(
            "Sessions fetched and unchanged",
            "Sessions retrieved (new, changed) and skipped as unchanged, per project.",
            "short",
            q(
                f"sum by (project_id, reason) (increase(llamacloud_collector_session_fetches_total{{{JP}}}[{RI}]))",
                legend("reason"),
            ),
            q(
                f"sum by (project_id) (increase(llamacloud_collector_sessions_unchanged_total{{{JP}}}[{RI}]))",
                f"{LEGEND} unchanged",
            ),
        ),
        series(
            "Sessions watched",
            "Sessions watched per instance and project.",
            "short",
            q(
                f"sum by (instance, project_id) (llamacloud_collector_sessions_watched{{{JP}}})",
                "{{instance}} {{project_id}}",
            ),
        ),
        series(
            "Invalid payloads, values and history resets",
            "Schema drift or hostile answers (every project together), refused values (negative, NaN, infinite, "
            "over 2^53) and rewritten histories, per project.",
            "short",
            q(
                f"sum by (operation) (increase(llamacloud_collector_invalid_payloads_total{{{J}}}[{RI}]))",
                "invalid {{operation}}",
            ),
            q(
                f"sum by (project_id, field) (increase(llamacloud_collector_invalid_values_total{{{JP}}}[{RI}]))",
                f"{LEGEND} refused {{{{field}}}}",
            ),
            q(
                f"sum by (project_id) (increase(llamacloud_collector_history_resets_total{{{JP}}}[{RI}]))",
                f"{LEGEND} history resets",
            ),
        ),
        series(
            "Dropped series",
            "Sessions and label values over a limit, not exposed as their own series, per project.",
            "short",
            q(f"sum by (project_id, family) (llamacloud_collector_series_dropped{{{JP}}})", legend("family")),
        ),
        series(
            "Process CPU",
            "CPU seconds per second used by each collector.",
            "percentunit",
            q(f"rate(process_cpu_seconds_total{{{J}}}[{RI}])", "{{instance}}"),
        ),
        series(
            "Process memory",
            "Resident memory of each collector.",
            "bytes",
            q(f"process_resident_memory_bytes{{{J}}}", "{{instance}}"),
        ),
    ]
    return dashboard(
        "llamacloud-collector-health",
        "LlamaCloud chat / Collector health",
        "Is the collector polling each project, how the API answers, and what it costs.",
        panels,
    )


GEN_AI_CALLS = "gen_ai_invoke_agent_invocations_total"
GEN_AI_FAILED = f'{GEN_AI_CALLS}{{{JP}, error_type!=""}}'


def genai() -> dict[str, Any]:
    """The chat overview read through the OpenTelemetry GenAI names (``--semconv gen_ai`` or ``both``): for teams
    whose dashboards are built on the conventions. The same counts as the overview's."""
    calls = f"{GEN_AI_CALLS}{{{JP}}}"
    panels = [
        stat(
            "Invocations (range)",
            "Agent invocations (finished chat runs) in the selected range, per project.",
            "short",
            f"sum by (project_id) (increase({calls}[$__range]))",
            NEUTRAL,
        ),
        stat(
            "Error ratio (range)",
            f"Share of invocations with an error.type in the selected range, per project. Red above the error "
            f"budget of the {OBJECTIVE} objective ({BUDGET:.2%}).",
            "percentunit",
            f"sum by (project_id) (increase({GEN_AI_FAILED}[$__range])) / sum by (project_id) (increase({calls}[$__range]))",
            steps("green", (BUDGET, "red")),
        ),
        stat(
            "Tokens per invocation (mean)",
            "gen_ai.client.token.usage: mean input plus output tokens of an invocation, per project.",
            "short",
            "sum by (project_id) (" + hist_mean("gen_ai_client_token_usage", "project_id, gen_ai_token_type", JM, RI) + ")",
            NEUTRAL,
        ),
        series(
            "Invocations per minute by error type",
            "gen_ai_invoke_agent_invocations_total per minute, per project: without error_type the ones that "
            "succeeded, with it the failed ones by type (OpenTelemetry's error.type).",
            "cpm",
            q(f"sum by (project_id, error_type) (rate({calls}[{RI}])) * 60", legend("error_type")),
            w=12,
        ),
        series(
            "Invocation duration p50 / p95 / p99",
            "gen_ai.invoke_agent.duration quantiles, per project.",
            "s",
            *quantiles("gen_ai_invoke_agent_duration_seconds"),
            w=12,
        ),
        series(
            "Token usage per invocation p50 / p95 by type",
            "gen_ai.client.token.usage quantiles by gen_ai.token.type (input, output), per project.",
            "short",
            *(
                q(
                    hist_quantile(p, "gen_ai_client_token_usage", "project_id, gen_ai_token_type", JM, RI),
                    f"p{int(p * 100)} {legend('gen_ai_token_type')}",
                )
                for p in (0.5, 0.95)
            ),
            w=12,
        ),
        series(
            "Inference calls per invocation p50 / p95 / p99",
            "gen_ai.invoke_agent.inference_calls: model calls (turns) per invocation, per project.",
            "short",
            *quantiles("gen_ai_invoke_agent_inference_calls"),
            w=12,
        ),
        series(
            "Tool calls per invocation p50 / p95 / p99",
            "gen_ai.invoke_agent.tool_calls per invocation, per project.",
            "short",
            *quantiles("gen_ai_invoke_agent_tool_calls"),
            w=12,
        ),
        table(
            "By data source",
            "Invocations in the selected range by gen_ai.data_source.id (the indexes of the session: a run counts "
            "under each) and error.type, per project.",
            "sum by (project_id, gen_ai_data_source_id, error_type) "
            f"(increase(gen_ai_invoke_agent_data_source_invocations_total{{{JP}}}[$__range]))",
            w=12,
        ),
    ]
    return dashboard(
        "llamacloud-chat-genai",
        "LlamaCloud chat / OpenTelemetry GenAI names",
        "The chat overview under the OpenTelemetry GenAI semantic conventions' names (--semconv gen_ai or both).",
        panels,
    )


DASHBOARDS = {
    "chat-overview.json": overview,
    "chat-session.json": session,
    "collector-health.json": health,
    "chat-genai.json": genai,
}
