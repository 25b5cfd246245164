"""Rule files from deploy/prometheus/rules.spec.yaml: plain Prometheus, and the Helm template."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from collector.families import HISTOGRAMS
from collector.metrics import COUNT_LAG_BUCKETS

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "deploy" / "prometheus" / "rules.spec.yaml"
PLACEHOLDER = re.compile(r"\$\{(?:(le):)?(\w+)\}")
"""``${name}``: the param ``name``. ``${le:name}``: the param ``name`` as the ``le`` label value of a bucket
bound, written as the collector writes it (``32`` -> ``"32.0"``): ``name`` is a histogram's bucket setting
(``buckets.<name>``, the chart's ``config.buckets.<name>``) and its value one of that histogram's bounds."""
DEFAULT_BOUNDS: dict[str, tuple[float, ...]] = {f.bucket: f.buckets for f in HISTOGRAMS}
"""Each histogram's default bucket bounds, by bucket setting: what an ``${le:...}`` param must be one of."""


GLOBAL_FAMILIES = frozenset(
    {
        "llamacloud_collector_poll_interval_seconds",
        "llamacloud_collector_shard",
        "llamacloud_collector_total_shards",
        "llamacloud_collector_build_info",
        "llamacloud_collector_invalid_payloads",
        "llamacloud_collector_scrape_auth_refusals",
        "llamacloud_collector_otlp_exports",
        "llamacloud_project_info",
    }
)
"""The collector's families without ``project_id`` (DESIGN §5, "Several projects"; a counter without its
``_total``), besides every
``llamacloud_collector_api_*`` family and ``process_*``: one series per collector, not per project.
``llamacloud_project_info`` carries ``project_id`` but names every watched project: the dashboards' ``project``
variable reads it whole. tests/test_rules.py holds this list to the collector's exposition."""
PROJECT = "project_id"
"""The label that names the project of every per-project series."""
SAMPLE_SUFFIX = re.compile(r"_(total|created|bucket|count|sum)$")


def per_project(series: str) -> bool:
    """Whether ``series`` (a family, a histogram's ``_bucket``, ``_count`` or ``_sum``, or a recorded
    ``level:family:operation``) carries ``project_id``: every chat family and the collector's per-project
    self-metrics, and what the recording rules keep of them."""
    if series.count(":") == 2:  # a recorded series: the project_id of the family it is recorded from
        series = series.split(":")[1].split("_per_")[0]
    if not series.startswith(("llamacloud_chat_", "llamacloud_collector_")):
        return False
    if series.startswith("llamacloud_collector_api_"):
        return False
    return series not in GLOBAL_FAMILIES and SAMPLE_SUFFIX.sub("", series) not in GLOBAL_FAMILIES


def _agg(fn: str, series: str, by: str, matchers: list[str], window: str) -> str:
    selector = f"{series}{{{', '.join(matchers)}}}" if matchers else series
    return f"sum{f' by ({by}) ' if by else ''}({fn}({selector}[{window}]))"


def _by(*labels: str) -> str:
    return ", ".join(label for label in labels if label)


def _either(classic: str, native: str) -> str:
    """The ``or`` form of a histogram query: the classic series first (``_bucket``, ``_count``, ``_sum``: what
    Prometheus 2 and a plain scrape store), then the same on the native histogram ``family`` itself (what a
    Prometheus 3 with ``convert_classic_histograms_to_nhcb`` stores instead, as a native histogram with custom
    buckets). The native branch selects nothing where the classic series exist (no series is named plain
    ``family`` then), and ``or`` drops its elements whose labels a classic one has (a Prometheus that keeps
    both, with ``always_scrape_classic_histograms``), so each query answers once, from whichever is stored."""
    return f"({classic} or {native})"


def hist_quantile(quantile: float | str, family: str, by: str = "", matchers: list[str] | None = None, window: str = "5m") -> str:
    """The ``quantile`` of histogram ``family`` per ``by`` labels, over ``window``: classic or native."""
    m = matchers or []
    return _either(
        f"histogram_quantile({quantile}, {_agg('rate', f'{family}_bucket', _by(by, 'le'), m, window)})",
        f"histogram_quantile({quantile}, {_agg('rate', family, by, m, window)})",
    )


def hist_count(family: str, by: str = "", matchers: list[str] | None = None, window: str = "5m", fn: str = "rate") -> str:
    """The observations of histogram ``family`` (``fn``: rate or increase) per ``by``: classic or native."""
    m = matchers or []
    return _either(_agg(fn, f"{family}_count", by, m, window), f"histogram_count({_agg(fn, family, by, m, window)})")


def hist_mean(family: str, by: str = "", matchers: list[str] | None = None, window: str = "5m") -> str:
    """The mean observation of histogram ``family`` per ``by`` labels, over ``window``: classic or native."""
    m = matchers or []
    return _either(
        f"{_agg('rate', f'{family}_sum', by, m, window)} / {_agg('rate', f'{family}_count', by, m, window)}",
        f"histogram_sum({_agg('rate', family, by, m, window)}) / histogram_count({_agg('rate', family, by, m, window)})",
    )


def hist_share_above(
    family: str, bound: str, by: str = "", matchers: list[str] | None = None, window: str = "5m", fn: str = "rate"
) -> str:
    """The share of the observations of histogram ``family`` above ``bound`` (one of its bucket bounds, as its
    ``le`` label: "32.0", which PromQL also reads as the number): 1 - the ``le`` bucket over the count on the
    classic series; 1 - ``histogram_fraction(-Inf, bound, ...)`` on the native one, exact at a bucket bound
    (custom buckets keep the classic inclusive upper bounds, so no interpolation applies there)."""
    m = matchers or []
    at_or_below = [*m, f'le="{bound}"']
    return _either(
        f"1 - {_agg(fn, f'{family}_bucket', by, at_or_below, window)} / {_agg(fn, f'{family}_count', by, m, window)}",
        f"1 - histogram_fraction(-Inf, {bound}, {_agg(fn, family, by, m, window)})",
    )


def hist_buckets(family: str, matchers: list[str] | None = None, window: str = "5m", fn: str = "increase") -> str:
    """The buckets of histogram ``family`` (for a heatmap): the classic ``le`` series, or the native histogram
    (which Grafana's heatmap reads as buckets too)."""
    m = matchers or []
    return _either(_agg(fn, f"{family}_bucket", "le", m, window), _agg(fn, family, "", m, window))


MACRO = re.compile(r"@(quantile|count|share_above)\(([^()]*)\)")
"""The histogram queries of ``rules.spec.yaml``, written there as macros so that each has the ``or`` form:
``@quantile(q, by, family, window)``, ``@count(fn, by, family, window)`` and
``@share_above(fn, by, family, bound, window)`` (``by``: labels separated by spaces; ``bound`` an ``le``,
``${le:name}``); the other placeholders are filled after."""


def _macro(m: re.Match[str]) -> str:
    args = [a.strip() for a in m[2].split(",")]
    if m[1] == "quantile":
        q, by, family, window = args
        return hist_quantile(q, family, _by(*by.split()), window=window)
    if m[1] == "count":
        fn, by, family, window = args
        return hist_count(family, _by(*by.split()), window=window, fn=fn)
    fn, by, family, bound, window = args
    return hist_share_above(family, bound, _by(*by.split()), window=window, fn=fn)


def expand(text: str) -> str:
    """``text`` with its histogram macros (``MACRO``) written out."""
    return MACRO.sub(_macro, text)


def load_spec() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    for a in spec["alerts"]:
        a["expr"] = expand(a["expr"])
    return spec


def anchor(name: str) -> str:
    return name.lower()


def le(value: float) -> str:
    """A bucket bound as the ``le`` label the collector writes (``prometheus_client``'s ``floatToGoString``,
    also what Prometheus 3 normalises ``le`` to): a matcher spelled otherwise selects nothing, silently."""
    return str(floatToGoString(value))


def _bound(name: str, value: Any) -> str:
    if name not in DEFAULT_BOUNDS:
        raise ValueError(f"${{le:{name}}}: {name} is not a histogram's bucket setting ({', '.join(DEFAULT_BOUNDS)})")
    if float(value) not in DEFAULT_BOUNDS[name]:  # the plain rule files are for the default buckets
        raise ValueError(f"${{le:{name}}}: {value} is not a default bound of buckets.{name} {DEFAULT_BOUNDS[name]}")
    return le(float(value))


def _fill(text: str, values: dict[str, Any], bounds: dict[str, str] | None = None) -> str:
    """``text`` with its placeholders replaced: ``${name}`` by ``values[name]``, ``${le:name}`` by
    ``bounds[name]`` (the Helm template's) or else by ``values[name]`` spelled as an ``le``."""

    def one(m: re.Match[str]) -> str:
        if not m[1]:
            return str(values[m[2]])
        return bounds[m[2]] if bounds is not None else _bound(m[2], values[m[2]])

    return PLACEHOLDER.sub(one, text)


def bound_params(alert: dict[str, Any]) -> list[str]:
    """The params of ``alert`` that are bucket bounds (read as ``${le:name}``), in order of first use."""
    return list(dict.fromkeys(m[2] for m in PLACEHOLDER.finditer(alert["expr"]) if m[1]))


def alert_rules(
    spec: dict[str, Any], for_override: str | None = None, params: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The alerting rule file with defaults filled in; overrides are for fast end-to-end tests."""
    rules = []
    for a in spec["alerts"]:
        values = {"objective": spec["objective"], **a["params"], **(params or {}).get(a["alert"], {})}
        rules.append(
            {
                "alert": a["alert"],
                "expr": _fill(a["expr"], values).strip() + "\n"
                if "\n" in a["expr"].strip()
                else _fill(a["expr"], values).strip(),
                "for": for_override or a["for"],
                "labels": {"severity": a["severity"]},
                "annotations": {
                    "summary": _fill(a["summary"], values),
                    "description": _fill(a["description"].strip(), values),
                    "runbook_url": f"{spec['runbook']}#{anchor(a['alert'])}",
                    **({"dashboard_url": _fill(a["dashboard"], values)} if "dashboard" in a else {}),
                },
            }
        )
    return {"groups": [{"name": "llamacloud-collector.alerts", "rules": rules}]}


RATIO = "job:llamacloud_chat_run_errors_per_llamacloud_chat_runs:ratio_rate"


def ratio_rule(window: str) -> dict[str, str]:
    """``level:metric_per_metric:ratio_rate<window>``: the failed share of each project's finished runs (the
    name keeps its ``job:`` level, as before projects, so that queries of one's own still read it)."""
    return {
        "record": f"{RATIO}{window}",
        "expr": f'sum by (job, project_id) (rate(llamacloud_chat_runs_total{{outcome="error"}}[{window}]))\n/\n'
        f"sum by (job, project_id) (rate(llamacloud_chat_runs_total[{window}]))\n",
    }


INDEX_RATIO = "job_index_id:llamacloud_chat_index_run_errors_per_llamacloud_chat_index_runs:ratio_rate"


def index_ratio_rule(window: str) -> dict[str, str]:
    """The failed share of each index's finished runs (a run counts under each index of its session); an
    index without runs in the window has no ratio rather than NaN, so the table shows no 0/0."""
    return {
        "record": f"{INDEX_RATIO}{window}",
        "expr": f"sum by (job, project_id, index_id) "
        f'(rate(llamacloud_chat_index_runs_total{{outcome="error"}}[{window}]))\n/\n'
        f"(sum by (job, project_id, index_id) (rate(llamacloud_chat_index_runs_total[{window}])) > 0)\n",
    }


LAG = "job:llamacloud_collector_count_lag_seconds:p"


def lag_rule(quantile: float, window: str) -> dict[str, str]:
    """How late a share of each project's new runs was counted over ``window``: absent while no new run was
    counted."""
    return {
        "record": f"{LAG}{round(quantile * 100):d}_rate{window}",
        "expr": hist_quantile(quantile, "llamacloud_collector_count_lag_seconds", "job, project_id", window=window) + "\n",
    }


def lag_floor_rule(window: str) -> dict[str, str]:
    """The bound of the count lag histogram just below the recorded p99: the lag 1 in 100 new runs surely
    exceeded. histogram_quantile interpolates within a bucket and reads lags of 170 s, all in (120, 300], as
    a p99 near 300 s (bench/lag.py); the alert holds this floor to its objective instead, so it never fires on
    interpolation alone. 0 while the p99 is within the first bucket."""
    p99, terms, below = f"{LAG}99_rate{window}", [], None
    for bound in COUNT_LAG_BUCKETS:
        if below is not None:
            terms.append(f"({p99} > bool {below:g}) * ({p99} <= bool {bound:g}) * {below:g}")
        below = bound
    terms.append(f"({p99} > bool {below:g}) * {below:g}")
    return {"record": f"{LAG}99_floor_rate{window}", "expr": "\n+ ".join(terms) + "\n"}


def recording_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [
        {"name": f"llamacloud-collector.slo-{interval}", "interval": interval, "rules": [ratio_rule(w) for w in windows]}
        for interval, windows in spec["windows"].items()
    ]
    groups[0]["rules"].append(index_ratio_rule(spec["index_ratio_window"]))
    groups[0]["rules"] += [lag_rule(q, spec["lag_window"]) for q in spec["lag_quantiles"]]
    groups[0]["rules"].append(lag_floor_rule(spec["lag_window"]))  # after the p99 it reads: same evaluation
    return groups


def recording_rules(spec: dict[str, Any]) -> dict[str, Any]:
    return {"groups": recording_groups(spec)}


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def dump(document: Any) -> str:
    """YAML with multi-line strings (PromQL) as literal blocks."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=False)


def _helm_escape(text: str) -> str:
    """Prometheus' own {{ }} templates, kept literal through Helm."""
    return re.sub(r"\{\{(.*?)\}\}", lambda m: "{{`{{" + m.group(1) + "}}`}}", text)


def _indent(text: str, spaces: int) -> str:
    return "\n".join((" " * spaces + line) if line else line for line in text.splitlines())


LE_HELPER = [
    "{{- /* A bucket bound as the collector writes its le label (Python's floatToGoString, and what Prometheus 3",
    "       normalises le to): 32 -> 32.0, 0.5 -> 0.5, 1e6 -> 1e+06. */}}",
    '{{- define "llamacloud-collector.le" -}}',
    '{{- if and (eq . (floor .)) (lt . 1e6) }}{{ printf "%.1f" . }}{{ else }}{{ . }}{{ end }}',
    "{{- end }}",
]


def _helm_bound(alert: str, param: str, default: Any) -> tuple[list[str], str]:
    """The lines that check an ``${le:param}`` value of the chart against the collector's buckets (its
    ``config.buckets.<param>``, else the defaults), failing the install on a bound no series has; and the
    variable that holds its ``le``."""
    bounds = " ".join(le(b).removesuffix(".0") for b in DEFAULT_BOUNDS[param])
    var = f"$le_{param}"
    return [
        f'{{{{- $bounds_{param} := index ($.Values.config.buckets | default dict) "{param}" | default (list {bounds}) }}}}',
        # hasKey, not default: 0 is a bound (no tool calls) that `default` would take for unset
        f'{{{{- $bound_{param} := float64 (ternary (get $a "{param}") {default} (hasKey $a "{param}")) }}}}',
        f"{{{{- $found_{param} := false }}}}",
        f"{{{{- range $bounds_{param} }}}}{{{{ if eq (float64 .) $bound_{param} }}}}{{{{ $found_{param} = true }}}}"
        "{{ end }}{{ end }}",
        f"{{{{- if not $found_{param} }}}}",
        f'{{{{- fail (printf "prometheusRule.alerts.{alert}.{param} is %v, not a bound of config.buckets.{param} %v: '
        f'the alert would match no series" $bound_{param} $bounds_{param}) }}}}',
        "{{- end }}",
        f'{{{{- {var} := include "llamacloud-collector.le" $bound_{param} }}}}',
    ], f"{{{{ {var} }}}}"


def helm_rules(spec: dict[str, Any]) -> str:
    """templates/prometheusrule.yaml: every alert switchable, its params, for and severity from values."""
    out = [
        "{{- /* Generated by scripts/generate.py from deploy/prometheus/rules.spec.yaml. Do not edit. */}}",
        *LE_HELPER,
        "{{- if .Values.prometheusRule.enabled }}",
        "{{- $alerts := .Values.prometheusRule.alerts | default dict }}",
        "{{- $objective := .Values.slo.objective }}",
        "{{- $a := dict }}",
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PrometheusRule",
        "metadata:",
        '  name: {{ include "llamacloud-collector.fullname" . }}',
        "  namespace: {{ .Values.prometheusRule.namespace | default .Release.Namespace }}",
        "  labels:",
        '    {{- include "llamacloud-collector.labels" . | nindent 4 }}',
        "    {{- with .Values.prometheusRule.labels }}",
        "    {{- toYaml . | nindent 4 }}",
        "    {{- end }}",
        "spec:",
        "  groups:",
        _indent(dump(recording_groups(spec)), 4),
        "    - name: llamacloud-collector.alerts",
        "      rules:",
    ]
    for a in spec["alerts"]:
        name = a["alert"]
        values = {k: f"{{{{ $a.{k} | default {v!r} }}}}".replace("'", '"') for k, v in a["params"].items()}
        values["objective"] = "{{ $objective }}"
        checks: list[str] = []
        bounds: dict[str, str] = {}
        for param in bound_params(a):
            _bound(param, a["params"][param])  # the spec's default is a default bound
            lines, bounds[param] = _helm_bound(name, param, a["params"][param])
            checks += lines
            values[param] = f"{{{{ $bound_{param} }}}}"  # as the chart sets it, in the description too
        expr = _fill(a["expr"].strip(), values, bounds)
        out += [
            f'{{{{- $a = index $alerts "{name}" | default dict }}}}',
            '{{- if ne (toString $a.enabled) "false" }}',
            *checks,
            f"        - alert: {name}",
            "          expr: |",
            _indent(expr, 12),
            f'          for: {{{{ $a.for | default "{a["for"]}" }}}}',
            "          labels:",
            f'            severity: {{{{ $a.severity | default "{a["severity"]}" }}}}',
            "            {{- with $.Values.prometheusRule.additionalAlertLabels }}",
            "            {{- toYaml . | nindent 12 }}",
            "            {{- end }}",
            "          annotations:",
            "            summary: "
            + _fill(_helm_escape(yaml.safe_dump(a["summary"], width=1000).splitlines()[0]), values, bounds),
            "            description: "
            + _fill(_helm_escape(yaml.safe_dump(a["description"].strip(), width=1000).splitlines()[0]), values, bounds),
            f"            runbook_url: {{{{ $.Values.prometheusRule.runbookBaseUrl }}}}#{anchor(name)}",
            *([f"            dashboard_url: {_fill(_helm_escape(a['dashboard']), values)}"] if "dashboard" in a else []),
            "{{- end }}",
        ]
    out.append("{{- end }}")
    return "\n".join(out) + "\n"


def rule_names(spec: dict[str, Any]) -> list[str]:
    return [a["alert"] for a in spec["alerts"]]
