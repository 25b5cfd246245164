"""The three Grafana dashboards, defined once; generate.py writes them as JSON."""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
J = 'job=~"$job"'
RI = "$__rate_interval"
TAG = "llamacloud"


def q(expr: str, legend: str = "", instant: bool = False, fmt: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        target.update(instant=True, range=False)
    if fmt:
        target["format"] = fmt
    return target


def panel(kind: str, title: str, description: str, unit: str, targets: list[dict], w: int = 8, h: int = 8,
          **options: Any) -> dict[str, Any]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(options.pop("defaults", {}))
    result = {"type": kind, "title": title, "description": description, "datasource": DS, "targets": targets,
              "fieldConfig": {"defaults": defaults, "overrides": options.pop("overrides", [])},
              "gridPos": {"w": w, "h": h}, "options": options.pop("panel_options", {})}
    result.update(options)
    return result


def stat(title: str, description: str, unit: str, expr: str, **kw: Any) -> dict[str, Any]:
    return panel("stat", title, description, unit, [q(expr, instant=True)], w=kw.pop("w", 4), h=kw.pop("h", 4),
                 panel_options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}, **kw)


def series(title: str, description: str, unit: str, *targets: dict, **kw: Any) -> dict[str, Any]:
    return panel("timeseries", title, description, unit, list(targets), **kw)


def table(title: str, description: str, expr: str, **kw: Any) -> dict[str, Any]:
    return panel("table", title, description, kw.pop("unit", "short"), [q(expr, instant=True, fmt="table")],
                 transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}], **kw)


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


def variables(extra: list[dict] | None = None) -> dict[str, Any]:
    job = {"name": "job", "label": "job", "type": "query", "datasource": DS,
           "query": {"query": "label_values(llamacloud_collector_build_info, job)", "refId": "job"},
           "definition": "label_values(llamacloud_collector_build_info, job)", "refresh": 2,
           "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}}
    source = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
              "current": {}, "hide": 0}
    return {"list": [source, job, *(extra or [])]}


def dashboard(uid: str, title: str, description: str, panels: list[dict],
              extra_vars: list[dict] | None = None) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": [TAG], "editable": True,
        "schemaVersion": 39, "version": 1, "timezone": "browser", "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "graphTooltip": 1,
        "links": [{"type": "dashboards", "tags": [TAG], "asDropdown": False, "includeVars": True,
                   "keepTime": True, "title": "LlamaCloud dashboards"}],
        "templating": variables(extra_vars), "annotations": {"list": []}, "panels": layout(panels),
    }


RUNS = f"llamacloud_chat_runs_total{{{J}}}"
ERRS = f'llamacloud_chat_runs_total{{{J}, outcome="error"}}'
SLO = {"name": "slo", "label": "SLO (run success ratio)", "type": "custom", "query": "0.99,0.995,0.999,0.95",
       "current": {"text": "0.99", "value": "0.99"}, "options": []}


def quantiles(metric: str, by: str = "", unit: str = "s") -> list[dict]:
    group = f"le{', ' + by if by else ''}"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [q(f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket{{{J}}}[{RI}])))", f"p{int(p * 100)}{suffix}")
            for p in (0.5, 0.95, 0.99)]


def overview() -> dict[str, Any]:
    panels = [
        stat("Runs (range)", "Finished chat runs in the selected range.", "short", f"sum(increase({RUNS}[$__range]))"),
        stat("Error ratio (range)", "Share of finished runs that failed in the selected range.", "percentunit",
             f"sum(increase({ERRS}[$__range])) / sum(increase({RUNS}[$__range]))"),
        stat("Error budget remaining", "Share of the SLO's error budget left over the selected range "
             "(1 - error ratio / (1 - SLO)).", "percentunit",
             f"1 - (sum(increase({ERRS}[$__range])) / sum(increase({RUNS}[$__range]))) / (1 - $slo)"),
        stat("Runs in progress", "Sessions whose history ends in an unfinished run.", "short",
             f"sum(llamacloud_chat_runs_in_progress{{{J}}})"),
        stat("Oldest run in progress", "How long the oldest unfinished run has been running, "
             "from when the collector first saw it.", "s", f"max(llamacloud_chat_oldest_run_in_progress_seconds{{{J}}})"),
        stat("Tokens (range)", "Input plus output tokens of runs finished in the range.", "short",
             f"sum(increase(llamacloud_chat_tokens_total{{{J}}}[$__range]))"),
        series("Runs per minute by outcome", "Finished chat runs per minute, success and error.", "cpm",
               q(f"sum by (outcome) (rate({RUNS}[{RI}])) * 60", "{{outcome}}"), w=12),
        series("Error ratio against the SLO", "Share of runs that failed (5m), against the error budget line "
               "1 - SLO.", "percentunit",
               q(f"sum(rate({ERRS}[5m])) / sum(rate({RUNS}[5m]))", "error ratio"),
               q("1 - $slo", "error budget (1 - SLO)"), w=12),
        series("Run duration p50 / p95 / p99", "Quantiles of finished-run duration.", "s",
               *quantiles("llamacloud_chat_run_duration_seconds"), w=12),
        panel("heatmap", "Run duration heatmap", "Distribution of finished-run durations.", "s",
              [q(f"sum by (le) (increase(llamacloud_chat_run_duration_seconds_bucket{{{J}}}[{RI}]))", "{{le}}",
                 fmt="heatmap")], w=12, panel_options={"calculate": False, "yAxis": {"unit": "s"}}),
        series("Tokens per minute", "Input and output tokens per minute of finished runs.", "short",
               q(f"sum by (type) (rate(llamacloud_chat_tokens_total{{{J}}}[{RI}])) * 60", "{{type}}")),
        series("Tokens per run", "Mean and p95 tokens per run, input and output.", "short",
               q(f"sum by (type) (rate(llamacloud_chat_run_tokens_sum{{{J}}}[{RI}])) / "
                 f"sum by (type) (rate(llamacloud_chat_run_tokens_count{{{J}}}[{RI}]))", "mean {{type}}"),
               q(f"histogram_quantile(0.95, sum by (le, type) (rate(llamacloud_chat_run_tokens_bucket{{{J}}}[{RI}])))",
                 "p95 {{type}}")),
        series("Turns per run", "Mean and p95 turns per finished run.", "short",
               q(f"sum(rate(llamacloud_chat_run_turns_sum{{{J}}}[{RI}])) / "
                 f"sum(rate(llamacloud_chat_run_turns_count{{{J}}}[{RI}]))", "mean"),
               q(f"histogram_quantile(0.95, sum by (le) (rate(llamacloud_chat_run_turns_bucket{{{J}}}[{RI}])))", "p95")),
        series("Tool calls by tool", "Tool calls per minute by tool.", "cpm",
               q(f"sum by (tool) (rate(llamacloud_chat_tool_calls_total{{{J}}}[{RI}])) * 60", "{{tool}}")),
        series("Tool calls left without a result", "Tool calls per minute that got no tool_result in their run.",
               "cpm", q(f'sum by (tool) (rate(llamacloud_chat_tool_calls_total{{{J}, outcome="no_result"}}[{RI}])) * 60',
                        "{{tool}}")),
        series("Skipped index queries by index", "Index queries runs could not make, per index.", "short",
               q(f"sum by (index_id) (increase(llamacloud_chat_skipped_index_queries_total{{{J}}}[{RI}]))",
                 "{{index_id}}")),
        series("Errors by type", "Failed runs per minute by classified error type.", "cpm",
               q(f"sum by (error_type) (rate(llamacloud_chat_run_errors_total{{{J}}}[{RI}])) * 60", "{{error_type}}"),
               w=12),
        series("Runs in progress", "Unfinished runs, and the age of the oldest.", "short",
               q(f"sum(llamacloud_chat_runs_in_progress{{{J}}})", "in progress"),
               q(f"max(llamacloud_chat_oldest_run_in_progress_seconds{{{J}}})", "oldest (s)"), w=12,
               overrides=[{"matcher": {"id": "byName", "options": "oldest (s)"},
                           "properties": [{"id": "unit", "value": "s"}, {"id": "custom.axisPlacement",
                                                                         "value": "right"}]}]),
        table("Top sessions by errors", "Sessions with the most failed runs in the range.",
              f'topk(10, sum by (session_id) (increase(llamacloud_chat_session_runs_total{{{J}, outcome="error"}}[$__range])))',
              w=12, h=9),
        table("Top sessions by tokens", "Sessions that used the most tokens in the range.",
              f"topk(10, sum by (session_id) (increase(llamacloud_chat_session_tokens_total{{{J}}}[$__range])))",
              w=12, h=9),
    ]
    return dashboard("llamacloud-chat-overview", "LlamaCloud chat / Overview",
                     "Chat runs, errors against the SLO, duration, tokens, tools and skipped indexes.", panels, [SLO])


def session() -> dict[str, Any]:
    s = f'{J}, session_id="$session_id"'
    var = {"name": "session_id", "label": "session", "type": "query", "datasource": DS, "refresh": 2,
           "query": {"query": f"label_values(llamacloud_chat_session_info{{{J}}}, session_id)", "refId": "s"},
           "definition": f"label_values(llamacloud_chat_session_info{{{J}}}, session_id)", "sort": 1}
    panels = [
        table("Session info", "Access, bound indexes (and title with --expose-titles).",
              f"llamacloud_chat_session_info{{{s}}}", w=24, h=4),
        stat("Last run duration", "Duration of the session's most recent run (job_metadata).", "s",
             f"max(llamacloud_chat_session_last_run_duration_seconds{{{s}}})"),
        stat("Last run input tokens", "Input tokens of the most recent run.", "short",
             f'max(llamacloud_chat_session_last_run_tokens{{{s}, type="input"}})'),
        stat("Last run output tokens", "Output tokens of the most recent run.", "short",
             f'max(llamacloud_chat_session_last_run_tokens{{{s}, type="output"}})'),
        stat("Last run turns", "Turns of the most recent run.", "short",
             f"max(llamacloud_chat_session_last_run_turns{{{s}}})"),
        stat("Last run failed", "1 when the most recent run failed.", "bool_yes_no",
             f"max(llamacloud_chat_session_last_run_error{{{s}}})"),
        stat("Last updated", "When the session last changed upstream.", "dateTimeFromNow",
             f"max(llamacloud_chat_session_last_updated_timestamp_seconds{{{s}}}) * 1000"),
        series("Runs over time", "Finished runs of the session by outcome.", "short",
               q(f"sum by (outcome) (increase(llamacloud_chat_session_runs_total{{{s}}}[{RI}]))", "{{outcome}}"),
               w=12),
        series("Tokens over time", "Tokens used by the session's finished runs.", "short",
               q(f"sum by (type) (increase(llamacloud_chat_session_tokens_total{{{s}}}[{RI}]))", "{{type}}"), w=12),
        series("Runs (cumulative)", "Finished runs of the session since the collector started counting.", "short",
               q(f"sum by (outcome) (llamacloud_chat_session_runs_total{{{s}}})", "{{outcome}}"), w=24),
    ]
    return dashboard("llamacloud-chat-session", "LlamaCloud chat / Session drill-down",
                     "One chat session: its last run and its runs and tokens over time.", panels, [var])


def health() -> dict[str, Any]:
    a = "llamacloud_collector_api_requests_total"
    panels = [
        stat("Up", "1 when the last poll reached the API and it answered (lowest across instances).", "bool_yes_no",
             f"min(llamacloud_collector_up{{{J}}})"),
        stat("Since last successful poll", "Seconds since the last successful poll finished.", "s",
             f"time() - max(llamacloud_collector_last_success_timestamp_seconds{{{J}}})"),
        stat("Sessions watched", "Sessions watched across shards.", "short",
             f"sum(llamacloud_collector_sessions_watched{{{J}}})"),
        stat("Shards reporting", "Collector shards scraped, out of the configured total.", "short",
             f"count(llamacloud_collector_shard{{{J}}})"),
        stat("Invalid payloads (range)", "API answers that failed validation: schema drift.", "short",
             f"sum(increase(llamacloud_collector_invalid_payloads_total{{{J}}}[$__range]))"),
        stat("History resets (range)", "Histories that shrank or changed and were re-synced.", "short",
             f"sum(increase(llamacloud_collector_history_resets_total{{{J}}}[$__range]))"),
        series("Poll duration", "Duration of the last poll cycle per instance.", "s",
               q(f"max by (instance) (llamacloud_collector_poll_duration_seconds{{{J}}})", "{{instance}}")),
        series("Polls by result", "Poll cycles per minute by result.", "cpm",
               q(f"sum by (result) (rate(llamacloud_collector_polls_total{{{J}}}[{RI}])) * 60", "{{result}}")),
        series("API requests by endpoint and code", "Requests per second to the LlamaCloud API.", "reqps",
               q(f"sum by (endpoint, code) (rate({a}{{{J}}}[{RI}]))", "{{endpoint}} {{code}}")),
        series("API latency p95", "p95 API request latency by endpoint.", "s",
               q(f"histogram_quantile(0.95, sum by (le, endpoint) "
                 f"(rate(llamacloud_collector_api_request_duration_seconds_bucket{{{J}}}[{RI}])))", "{{endpoint}}")),
        series("Retries and 429s", "Retried requests by reason, and 429 answers.", "reqps",
               q(f"sum by (endpoint, reason) (rate(llamacloud_collector_api_retries_total{{{J}}}[{RI}]))",
                 "retry {{endpoint}} {{reason}}"),
               q(f'sum(rate({a}{{{J}, code="429"}}[{RI}]))', "429")),
        series("Sessions fetched and unchanged", "Sessions retrieved (new, changed) and skipped as unchanged.",
               "short",
               q(f"sum by (reason) (increase(llamacloud_collector_session_fetches_total{{{J}}}[{RI}]))", "{{reason}}"),
               q(f"sum(increase(llamacloud_collector_sessions_unchanged_total{{{J}}}[{RI}]))", "unchanged")),
        series("Sessions watched", "Sessions watched per instance.", "short",
               q(f"sum by (instance) (llamacloud_collector_sessions_watched{{{J}}})", "{{instance}}")),
        series("Invalid payloads and history resets", "Schema drift and rewritten histories.", "short",
               q(f"sum by (endpoint) (increase(llamacloud_collector_invalid_payloads_total{{{J}}}[{RI}]))",
                 "invalid {{endpoint}}"),
               q(f"sum(increase(llamacloud_collector_history_resets_total{{{J}}}[{RI}]))", "history resets")),
        series("Dropped series", "Sessions and label values over a limit, not exposed as their own series.", "short",
               q(f"sum by (family) (llamacloud_collector_series_dropped{{{J}}})", "{{family}}")),
        series("Process CPU", "CPU seconds per second used by each collector.", "percentunit",
               q(f"rate(process_cpu_seconds_total{{{J}}}[{RI}])", "{{instance}}")),
        series("Process memory", "Resident memory of each collector.", "bytes",
               q(f"process_resident_memory_bytes{{{J}}}", "{{instance}}")),
    ]
    return dashboard("llamacloud-collector-health", "LlamaCloud chat / Collector health",
                     "Is the collector polling, how the API answers, and what it costs.", panels)


DASHBOARDS = {"chat-overview.json": overview, "chat-session.json": session, "collector-health.json": health}
