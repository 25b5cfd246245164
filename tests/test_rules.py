"""Alert and recording rules: promtool, unit-test coverage per alert, runbook, one source of truth."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.generate import drifted
from scripts.rules import DEFAULT_BOUNDS, alert_rules, anchor, bound_params, load_spec
from tests.tools import require

pytestmark = pytest.mark.tier("tools", "process")

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = [PROM / "alerts.yaml", PROM / "recording.yaml"]


def test_generated_copies_match_their_sources():
    assert drifted() == [], "run: python scripts/generate.py"


def test_promtool_check_rules():
    result = subprocess.run([require("promtool"), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass():
    result = subprocess.run(
        [require("promtool"), "test", "rules", str(PROM / "tests" / "alerts_test.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yaml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        for case in group["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {a["alert"] for a in load_spec()["alerts"]}
    assert names - fires == set() and names - quiet == set()


def test_alerts_carry_severity_summary_description_runbook_and_prefix():
    rules = yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"][0]["rules"]
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    sections = {anchor(h) for h in re.findall(r"^## (\w+)$", runbook, re.M)}
    for rule in rules:
        assert re.fullmatch(r"LlamaCloud[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("/docs/runbook.md#" + anchor(rule["alert"])) and anchor(rule["alert"]) in sections


def recorded() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "recording.yaml").read_text())["groups"] for r in g["rules"]]


def test_every_recording_rule_is_read_by_an_alert_or_a_panel():
    alerts = (PROM / "alerts.yaml").read_text()
    panels = "".join(p.read_text() for p in (ROOT / "grafana" / "dashboards").glob("*.json"))
    for rule in recorded():
        assert rule["record"] in alerts or rule["record"] in panels, f"{rule['record']} is never read"


def test_ratio_rules_follow_the_naming_convention_and_cover_the_burn_rate_windows():
    names = [r["record"] for r in recorded() if ":ratio_rate" in r["record"]]
    for name in names:
        assert re.fullmatch(r"job(_index_id)?:llamacloud_\w+_per_llamacloud_\w+:ratio_rate\d+[mhd]", name), name
    windows = {n.rsplit("ratio_rate", 1)[1] for n in names if n.startswith("job:")}
    assert windows == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}


def test_every_recording_rule_is_a_ratio_or_a_quantile_named_by_convention():
    for rule in recorded():
        name = rule["record"]
        assert (
            re.fullmatch(r"job(_index_id)?:llamacloud_\w+_per_llamacloud_\w+:ratio_rate\d+[mhd]", name)
            or (re.fullmatch(r"job:llamacloud_\w+_seconds:p\d+_rate\d+[mhd]", name) and "histogram_quantile(" in rule["expr"])
            or (  # a quantile's floor: the bucket bound below it, read from the recorded quantile
                re.fullmatch(r"job:llamacloud_\w+_seconds:p\d+_floor_rate\d+[mhd]", name)
                and name.replace("_floor", "") in rule["expr"]
            )
        ), name


def test_day_long_windows_are_evaluated_seldom_but_inside_prometheus_3s_lookback():
    groups = yaml.safe_load((PROM / "recording.yaml").read_text())["groups"]
    seconds = {"30s": 30, "2m": 120, "5m": 300}
    for group in groups:
        for rule in group["rules"]:
            if rule["record"].endswith(("1d", "3d")):
                # not every 30 s (a rate[3d] is expensive); under half the 5 m lookback, so that with
                # Prometheus 3's left-open ranges a reader always finds a sample, even after a late run
                assert 30 < seconds[group["interval"]] <= 150, rule["record"]


def test_the_four_burn_rate_alerts_of_the_sre_workbook():
    spec = {a["alert"]: a for a in load_spec()["alerts"]}
    want = {
        "LlamaCloudChatErrorBudgetBurnFast": (14.4, "1h", "5m", "critical"),
        "LlamaCloudChatErrorBudgetBurnHigh": (6, "6h", "30m", "critical"),
        "LlamaCloudChatErrorBudgetBurnMedium": (3, "1d", "2h", "warning"),
        "LlamaCloudChatErrorBudgetBurnSlow": (1, "3d", "6h", "warning"),
    }
    for name, (burn, long, short, severity) in want.items():
        alert = spec[name]
        assert alert["params"]["burn"] == burn and alert["severity"] == severity
        assert f"ratio_rate{long} >" in alert["expr"] and f"ratio_rate{short} >" in alert["expr"]
        assert "${burn}" in alert["description"] and "${objective}" in alert["description"]


def test_interval_dependent_alerts_read_the_interval_metric():
    rules = {r["alert"]: r for r in yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"][0]["rules"]}
    assert "llamacloud_collector_poll_interval_seconds" in rules["LlamaCloudCollectorPollStale"]["expr"]


def rule_exprs() -> list[tuple[str, str]]:
    """Every recording and alerting rule's name and expression, as the rule files hold them."""
    return [
        (r.get("record") or r["alert"], r["expr"])
        for f in RULE_FILES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    ]


@pytest.mark.tier("unit")
def test_every_rule_over_a_project_family_keeps_the_project():
    """DESIGN §5, "Several projects": an alert names the project that fails, and a recorded series is one per
    project, so no rule over a per-project family aggregates project_id away or matches across projects; the
    global families (shards, interval, the API's) are read by job and joined to a project's series."""
    from tests.test_dashboards import _reads_a_project_family, project_problems

    rules = rule_exprs()
    assert sum(_reads_a_project_family(expr) for _, expr in rules) >= 25
    wrong = [(name, problems) for name, expr in rules if (problems := project_problems(expr, dashboard=False))]
    assert wrong == []
    for name in ("LlamaCloudCollectorShardsMissing", "LlamaCloudCollectorShardingMismatch", "LlamaCloudCollectorDown"):
        assert not _reads_a_project_family(dict(rules)[name]), name  # per job: the shard gauges and up are global


@pytest.mark.tier("unit")
def test_every_alert_over_a_project_family_names_the_project():
    from tests.test_dashboards import _reads_a_project_family

    rules = yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"][0]["rules"]
    for rule in rules:
        if _reads_a_project_family(rule["expr"]):
            assert "$labels.project_id" in rule["annotations"]["description"], rule["alert"]
    failed = next(r for r in rules if r["alert"] == "LlamaCloudChatSessionLastRunFailed")
    assert "var-project={{ $labels.project_id }}" in failed["annotations"]["dashboard_url"]


@pytest.mark.tier("unit")
def test_the_promtool_cases_fire_for_one_project_of_two():
    """At least one case per kind (a chat alert, a collector alert) feeds two projects and expects the alert for
    the failing one only."""
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yaml").read_text())["tests"]
    named: set[str] = set()
    for case in tests:
        projects = {m for s in case.get("input_series", []) for m in re.findall(r'project_id="([^"]+)"', s["series"])}
        if len(projects) < 2:
            continue
        for check in case["alert_rule_test"]:
            fired = {a["exp_labels"].get("project_id") for a in check["exp_alerts"]}
            if len(fired) == 1 and fired < projects:
                named.add(check["alertname"])
    assert {"LlamaCloudChatErrorRatioHigh", "LlamaCloudCollectorPollStale"} <= named, named


@pytest.mark.tier("unit")
def test_the_global_families_are_those_the_collector_exposes_without_project_id():
    """scripts.rules.per_project, which the checks above read, against the collector's own exposition with one
    named project: every family with project_id is per project, every other is global."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from collector.aggregates import Aggregates
    from collector.metrics import ProjectObserver, SelfMetrics, SnapshotCollector
    from collector.settings import Settings
    from collector.state import CollectorState, PollStatus, one_project, take_snapshot
    from collector.wiring import arguments, wire
    from scripts.rules import GLOBAL_FAMILIES, SAMPLE_SUFFIX, per_project

    settings = Settings()
    state = CollectorState(Aggregates(settings.buckets.as_buckets(), 5))
    state.mark_synced()
    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(
            lambda: one_project(take_snapshot(state, PollStatus(), 5), "proj-a"), **arguments(wire(settings).exposition)
        )
    )
    metrics = SelfMetrics(registry)
    metrics.project("proj-a")
    ProjectObserver(metrics, "proj-a").counted_late([1.0])
    metrics.request("list", "200", 0.1)
    metrics.retry("list", "429")
    metrics.budget_wait(0.1)
    metrics.rate_limit_remaining(10)
    with_project: dict[str, bool] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            has = "project_id" in sample.labels
            assert with_project.setdefault(sample.name, has) == has, sample.name
    assert with_project.pop("llamacloud_project_info") and "llamacloud_project_info" in GLOBAL_FAMILIES
    wrong = {name for name, has in with_project.items() if name.startswith("llamacloud_") and per_project(name) != has}
    assert wrong == set()
    assert {"llamacloud_chat_runs_total", "llamacloud_collector_up", "llamacloud_collector_count_lag_seconds_bucket"} <= {
        n for n, has in with_project.items() if has
    }
    assert {"llamacloud_collector_shard", "llamacloud_collector_api_requests_total"} <= {
        n for n, has in with_project.items() if not has
    }
    families = {SAMPLE_SUFFIX.sub("", name) for name in with_project} | set(with_project)
    assert GLOBAL_FAMILIES - {"llamacloud_project_info"} <= families  # none is a name the collector lost


def test_session_alert_keeps_session_id():
    rule = next(
        r
        for r in yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"][0]["rules"]
        if r["alert"] == "LlamaCloudChatSessionLastRunFailed"
    )
    assert "session_id" in rule["expr"]


def test_compose_configs_are_valid():
    compose = ROOT / "deploy" / "compose"
    result = subprocess.run(
        [require("promtool"), "check", "config", str(compose / "prometheus" / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    amtool = subprocess.run(
        [require("amtool"), "check-config", str(compose / "alertmanager" / "alertmanager.yml")], capture_output=True, text=True
    )
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr
    stack = yaml.safe_load((compose / "docker-compose.yml").read_text())
    assert set(stack["services"]) == {"collector", "prometheus", "alertmanager", "grafana"}
    for service in stack["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (compose / source).exists(), f"compose mounts a missing path: {source}"
    for path in (compose / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
    datasource = yaml.safe_load((compose / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    (link,) = datasource["datasources"][0]["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "session_id"
    assert link["url"].startswith("/d/llamacloud-chat-session/") and "var-session_id=$${__value.raw}" in link["url"]
    assert "--enable-feature=exemplar-storage" in stack["services"]["prometheus"]["command"]


def exposed_les() -> dict[str, set[str]]:
    """The ``le`` values of each chat histogram in the collector's own exposition (default buckets, one run)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from collector.aggregates import Aggregates
    from collector.derive import RunRecord
    from collector.metrics import SnapshotCollector
    from collector.settings import Settings
    from collector.state import CollectorState, PollStatus, one_project, take_snapshot
    from collector.wiring import arguments, wire

    settings = Settings()
    state = CollectorState(Aggregates(settings.buckets.as_buckets(), 5))
    run = RunRecord(
        failed=False,
        error_type=None,
        duration_seconds=1.0,
        input_tokens=1,
        output_tokens=1,
        turns=40,
        tool_calls=(),
        skipped_index_ids=(),
    )
    state.aggregates.add_runs([run])
    state.mark_synced()
    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(lambda: one_project(take_snapshot(state, PollStatus(), 5)), **arguments(wire(settings).exposition))
    )
    les: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                les.setdefault(sample.name.removesuffix("_bucket"), set()).add(sample.labels["le"])
    return les


BUCKET_MATCHER = re.compile(r"\b(llamacloud_chat_\w+)_bucket\{([^}]*)\}")


def le_matchers(text: str) -> set[tuple[str, str]]:
    """Each ``(family, le)`` a ``_bucket{..., le="..."}`` selector or series names in ``text``."""
    found = set()
    for family, labels in BUCKET_MATCHER.findall(text):
        found |= {(family, le) for le in re.findall(r'\ble="([^"]*)"', labels)}
    return found


def test_every_le_the_rules_panels_and_alert_tests_name_is_one_the_collector_writes():
    """A bound spelled otherwise than the collector writes it (``32`` for ``32.0``) matches no series, and an
    alert reading it never fires, silently. The promtool tests' input series are held to it too, so a rule
    spelled wrong fails them."""
    les = exposed_les()
    assert {"llamacloud_chat_run_turns", "llamacloud_chat_run_tool_calls"} <= set(les)
    assert "32.0" in les["llamacloud_chat_run_turns"] and "32" not in les["llamacloud_chat_run_turns"]
    rules = le_matchers((PROM / "alerts.yaml").read_text() + (PROM / "recording.yaml").read_text())
    boards = {
        (family, le)
        for path in (ROOT / "grafana" / "dashboards").glob("*.json")
        for p in json.loads(path.read_text())["panels"]
        for t in p["targets"]
        for family, le in le_matchers(t["expr"])
    }
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yaml").read_text())["tests"]
    inputs = {m for case in tests for s in case.get("input_series", []) for m in le_matchers(s["series"])}
    for where, found in (("rules", rules), ("dashboards", boards), ("promtool inputs", inputs)):
        wrong = {(family, le) for family, le in found if family in les and le not in les[family]}
        assert wrong == set(), f"{where}: le values the collector never writes: {sorted(wrong)}"
    runaway = {("llamacloud_chat_run_turns", "32.0"), ("llamacloud_chat_run_tool_calls", "64.0")}
    assert runaway <= rules and runaway <= boards and runaway <= inputs


def test_the_runaway_alert_reads_bounds_of_both_histograms_with_every_param_shown():
    spec = next(a for a in load_spec()["alerts"] if a["alert"] == "LlamaCloudChatRunawayAgents")
    assert bound_params(spec) == ["turns", "tool_calls"] and spec["severity"] == "warning"
    assert set(spec["params"]) == {"threshold", "min_runs", "window", "turns", "tool_calls"}
    for param in spec["params"]:
        assert f"${{{param}}}" in spec["description"], param  # the parameters in force
    assert "{{ $labels.measure }}" in spec["description"]
    for param, bounds in (("turns", DEFAULT_BOUNDS["turns"]), ("tool_calls", DEFAULT_BOUNDS["tool_calls"])):
        assert spec["params"][param] in bounds  # a default bound: the plain rule files match a series
    # generation refuses a bound the collector has no bucket for, and a placeholder that names no histogram
    with pytest.raises(ValueError, match="not a default bound of buckets.turns"):
        alert_rules(load_spec(), params={"LlamaCloudChatRunawayAgents": {"turns": 30}})
    with pytest.raises(ValueError, match="not a histogram's bucket setting"):
        alert_rules({**load_spec(), "alerts": [{**spec, "expr": 'x{le="${le:window}"}'}]})
    tuned = alert_rules(load_spec(), params={"LlamaCloudChatRunawayAgents": {"turns": 64, "tool_calls": 0}})
    rule = next(r for r in tuned["groups"][0]["rules"] if r["alert"] == "LlamaCloudChatRunawayAgents")
    assert 'turns_bucket{le="64.0"}' in rule["expr"] and 'tool_calls_bucket{le="0.0"}' in rule["expr"]
    assert "over 64 turns, or over 0 tool calls" in rule["annotations"]["description"]


def test_every_histogram_query_of_the_rules_answers_on_classic_and_native_histograms():
    """The alerts and recording rules read the classic series or else the native histogram (issue 29): the
    spec's macros write the ``or`` form, and no family's _bucket, _count or _sum is written there by hand."""
    from tests.test_dashboards import histogram_families, missing_native_forms

    exprs = [r["expr"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]
    families = histogram_families(exprs)
    checked = [e for e in exprs if any(f"{f}_" in e for f in families)]
    assert len(checked) >= 4  # the duration and runaway alerts, the count lag quantiles
    for expr in checked:
        assert missing_native_forms(expr, families) == [], expr
    raw = [a["expr"] for a in yaml.safe_load((PROM / "rules.spec.yaml").read_text())["alerts"]]
    assert not [e for e in raw if re.search(r"_(bucket|count|sum)\b", e)], "write histogram queries as @macros"


def test_the_native_branch_is_valid_promql_for_promtool_and_classic_comes_first():
    """Prometheus 2.42 (promtool, the end-to-end test) parses histogram_count and histogram_fraction, and
    evaluates the classic branch; the native one selects nothing there."""
    from scripts.rules import hist_count, hist_quantile, hist_share_above

    q = hist_quantile(0.9, "x", "job", ['job="a"'], "5m")
    assert q == (
        '(histogram_quantile(0.9, sum by (job, le) (rate(x_bucket{job="a"}[5m]))) or '
        'histogram_quantile(0.9, sum by (job) (rate(x{job="a"}[5m]))))'
    )
    assert hist_count("x", "job", window="1h", fn="increase") == (
        "(sum by (job) (increase(x_count[1h])) or histogram_count(sum by (job) (increase(x[1h]))))"
    )
    assert hist_share_above("x", "32.0", "job", window="1h") == (
        '(1 - sum by (job) (rate(x_bucket{le="32.0"}[1h])) / sum by (job) (rate(x_count[1h])) or '
        "1 - histogram_fraction(-Inf, 32.0, sum by (job) (rate(x[1h]))))"
    )
