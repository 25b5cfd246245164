"""End to end with a real Prometheus and Alertmanager: dashboards return data, alerts fire and are delivered."""

import json
import re
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest

from scripts.dashboards import DASHBOARDS
from scripts.rules import INDEX_RATIO, LAG, RATIO, alert_rules, dump, load_spec, recording_rules
from tests.helpers import assert_samples_match, family, parse, remote_truth
from tests.stack import (
    OPERATOR_LABELS,
    Processes,
    Webhook,
    firing,
    free_port,
    query,
    start_alertmanager,
    start_prometheus,
    wait_until,
)

pytestmark = pytest.mark.tier("tools", "process")

KEY = "llx-e2e-key"
CORE = {
    "Runs per minute by outcome",
    "Error ratio against the SLO",
    "Run duration p50 / p95 / p99",
    "Tokens per minute",
    "Tokens per run",
    "Turns per run",
    "Tool calls by tool",
    "Errors by type",
    "Runs (range)",
    "Up",
    "Sessions watched",
    "API requests by operation and code",
    "Poll duration",
    "Session info",
    "Last run duration",
    "Runs over time",
    "Process memory",
    "Error budget burn (1h)",
    "Since last successful poll, in intervals",
    "By index",
}
OPERATOR_JOB, PLAIN_JOB = "llamacloud-collector", "plain"
TARGET_LABELS = {"job", "instance", *OPERATOR_LABELS}
WAIT = 180.0
"""A generous bound on any wait for a condition (nothing here asserts how long a thing took)."""
APPENDED = 5.0
"""Seconds back from now at which a frozen comparison is evaluated: every scrape that started before then has
been written (a scrape times out after the 1 s interval), so what the queries read there no longer moves."""
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\{")
"""A recording rule's series (``level:metric:operations``) that a query reads."""
SELECTOR = re.compile(r"\b((?:llamacloud|process)_[a-z0-9_]+)\{[^}]*\}(?:\[([0-9a-z]+)\])?")
"""A metric a dashboard query reads, and the range it reads it over (none: an instant vector)."""
LAG_ALERT = "LlamaCloudCollectorCountLagHigh"
LAG_INTERVALS = 1
"""The count lag's objective here: 1 poll interval (1 s) plus one listing pass. The alert holds the recorded p99's
floor (the lag bucket bound just below the p99: 0, 1, 2, 5, 10 s...) to it, not the interpolated p99:

- normal (latency 0): a change is counted by the next cycle, at most an interval and its jitter (1.1 s) later, and
  its 25 fetches end well inside the cycle's 0.9 s. Every lag is under 2 s, with two busy loops on 2 cores too
  (measured over 500 changes: 85% in [0, 1], the rest in (1, 2]; the p99 reads 0.99), so the p99 is at most 2
  and its floor at most 1, under the objective of 1 s plus a pass of a few milliseconds.
- slow (``SLOW``): 8 fetches end per cycle (each takes most of one), so 25 changed sessions take 4 or 5 cycles
  and 17 to 21 of their 25 lags fall in (2, 5], a few over 5 (measured, loaded and not): the p99 reads 4.7 or
  more, its floor 2 or 5, over the objective of 1 s plus a pass of one page (0.6 s).

With 2 intervals the slow floor (2) would meet the objective (2.6) only when a few lags pass 5 s, which is luck."""
SLOW = 0.6
"""Seconds the simulator adds to every answer while the collector is made slow: over half the cycle's budget
(0.9 s), so one fetch per worker ends per cycle and the next is cut and carried; under it by enough that a fetch
started with the cycle ends on a loaded machine too (a fetch cut after waiting 0.81 s in all hangs on its own).
At 0.4 s two fetches per worker end per cycle and only a third of the lags pass 2 s (measured): a lower p99, less
margin."""
FAST = {
    "LlamaCloudChatErrorRatioHigh": {"min_runs": 5},
    "LlamaCloudChatIndexErrorRatioHigh": {"min_runs": 2},
    LAG_ALERT: {"intervals": LAG_INTERVALS},
}
"""Alert params for a stack of 25 sessions polled every second (``for`` is 0s)."""


def recorded_for_both_jobs(prom: str) -> bool:
    """The recording rules (evaluated every 30 s) have written their series for both jobs."""
    return all(
        query(prom, f'{name}{{job="{job}"}}') for job in (OPERATOR_JOB, PLAIN_JOB) for name in (f"{RATIO}1h", f"{INDEX_RATIO}30m")
    )


def substitute(expr: str, session_id: str, job: str = OPERATOR_JOB, project: str = ".+") -> str:
    """A dashboard query as Grafana sends it; ``project``: every project (``.+``: the series all carry one), or
    the one picked."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
        .replace("$slo", "0.99")
        .replace('"$job"', f'"{job}"')
        .replace('"$instance"', '".*"')
        .replace('"$project"', f'"{project}"')
        .replace("$session_id", session_id)
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    procs, hook = Processes(folder), Webhook()
    rules = folder / "alerts.yaml"
    rules.write_text(dump(alert_rules(load_spec(), for_override="0s", params=FAST)))
    recording = folder / "recording.yaml"
    recording.write_text(dump(recording_rules(load_spec())))
    sim_port, col_port = free_port(), free_port()
    procs.collector(
        "simulator",
        "simulate",
        "--port",
        str(sim_port),
        "--sessions",
        "25",
        "--rate",
        "0",
        "--seed",
        "9",
        env={"LLAMA_CLOUD_API_KEY": KEY},
    )
    sim = f"http://127.0.0.1:{sim_port}"
    wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
    procs.collector(
        "collector",
        "--listen",
        f"127.0.0.1:{col_port}",
        "--interval",
        "1",
        env={"LLAMA_CLOUD_API_KEY": KEY, "LLAMA_CLOUD_BASE_URL": sim},
    )
    am = start_alertmanager(procs, hook.port)
    prom = start_prometheus(procs, [col_port], [rules, recording], am, plain_job=PLAIN_JOB)
    try:
        wait_until(lambda: query(prom, "llamacloud_chat_runs_total"), 60, "first scrape with chat families")
        yield {"prom": prom, "sim": sim, "collector": f"http://127.0.0.1:{col_port}", "procs": procs, "hook": hook}
    finally:
        procs.stop_all()
        hook.close()


def test_the_first_error_of_a_type_shows_in_increase(stack):
    """Every error type is exposed at 0 from the first sync (DESIGN §5), so the first failure of a type is a step
    that increase() sees; a series born at 1 would show no increase at all. Runs first: the simulator's seed
    leaves tool_error unseen until here."""
    prom, sim = stack["prom"], stack["sim"]
    series = f'llamacloud_chat_run_errors_total{{job="{OPERATOR_JOB}", error_type="tool_error"}}'
    zero = wait_until(lambda: query(prom, series), 60, "tool_error exposed before any such run")
    assert float(zero[0]["value"][1]) == 0, "the seed has a tool_error already: pick another unseen type"
    httpx.get(sim + "/_sim/touch", params={"first": 1, "error_type": "tool_error"})
    wait_until(lambda: query(prom, f"increase({series}[1m]) > 0"), 60, "increase() of the first tool_error")


def test_failing_runs_fire_error_alerts_and_alertmanager_delivers(stack):
    prom, sim = stack["prom"], stack["sim"]
    assert not firing(prom).get("firing", set()) & {"LlamaCloudChatErrorRatioHigh"}
    wait_until(lambda: query(prom, "sum(llamacloud_chat_runs_total)"), 30, "runs counted")
    httpx.get(sim + "/_sim/touch", params={"fraction": 1, "fail": 1})  # every session gets a failing run
    want = {"LlamaCloudChatErrorRatioHigh", "LlamaCloudChatErrorBudgetBurnFast", "LlamaCloudChatSessionLastRunFailed"}
    wait_until(lambda: want <= firing(prom).get("firing", set()), 60, f"{want} firing")

    def delivered() -> list[dict]:  # each job's alert is its own notification: wait for the Operator job's
        return [
            a
            for m in stack["hook"].received
            for a in m["alerts"]
            if a["labels"]["alertname"] == "LlamaCloudChatErrorRatioHigh" and a["labels"]["job"] == OPERATOR_JOB
        ]

    sample = wait_until(delivered, 60, "webhook delivery of the Operator job's alert")[0]
    alerts = [a for m in stack["hook"].received for a in m["alerts"]]
    assert sample["labels"]["severity"] == "warning" and "runbook_url" in sample["annotations"]
    assert not any(k.startswith("exported_") for a in alerts for k in a["labels"])


def test_a_failing_index_fires_its_alert_and_the_by_index_table_names_it(stack):
    prom, sim = stack["prom"], stack["sim"]
    wait_until(lambda: query(prom, "sum(llamacloud_chat_index_runs_total)"), 30, "index runs counted")
    httpx.get(sim + "/_sim/touch", params={"fraction": 1, "fail": 1})  # every index gets failing runs
    truth = httpx.get(sim + "/_sim/truth").json()["runs"]  # after the change: the state compared with (no traffic)
    bound = {i for r in truth for i in (r["index_ids"] or ["_none"])}

    def firing_indexes() -> set[str]:
        alerts = query(
            prom, f'ALERTS{{alertname="LlamaCloudChatIndexErrorRatioHigh", alertstate="firing", job="{OPERATOR_JOB}"}}'
        )
        return {a["metric"]["index_id"] for a in alerts}

    fired = wait_until(firing_indexes, 90, "LlamaCloudChatIndexErrorRatioHigh firing")
    wait_until(
        lambda: fired <= {r["metric"]["index_id"] for r in query(prom, f'{INDEX_RATIO}30m{{job="{OPERATOR_JOB}"}}')},
        90,
        "the index ratio recorded for the firing indexes",
    )
    assert fired <= bound, fired - bound
    panel = next(p for p in DASHBOARDS["chat-overview.json"]()["panels"] if p["title"] == "By index")
    runs, ratio, top = (query(prom, substitute(t["expr"], "")) for t in panel["targets"])
    assert {r["metric"]["index_id"] for r in runs} == bound  # every index, and _none, has a row
    ratio_of = {r["metric"]["index_id"]: float(r["value"][1]) for r in ratio}
    assert fired <= set(ratio_of) and all(0 <= v <= 1 for v in ratio_of.values())
    assert all(len([t for t in top if t["metric"]["index_id"] == i]) == 1 for i in fired)  # one top error type


def test_prometheus_stores_exemplars_that_name_the_failing_sessions(stack):
    prom, sim = stack["prom"], stack["sim"]
    failed = {r["session_id"] for r in httpx.get(sim + "/_sim/truth").json()["runs"] if r["failed"]}

    def found() -> set[str]:
        body = httpx.get(
            prom + "/api/v1/query_exemplars",
            params={
                "query": f'llamacloud_chat_runs_total{{job="{OPERATOR_JOB}", outcome="error"}}',
                "start": "0",
                "end": "9999999999",
            },
        ).json()
        assert body["status"] == "success", body
        return {e["labels"]["session_id"] for series in body["data"] for e in series["exemplars"]}

    seen = wait_until(found, 60, "exemplars of failed runs")
    assert seen <= failed, seen - failed
    body = httpx.get(
        prom + "/api/v1/query_exemplars",
        params={
            "query": f'llamacloud_chat_run_duration_seconds_bucket{{job="{OPERATOR_JOB}"}}',
            "start": "0",
            "end": "9999999999",
        },
    ).json()
    assert any(e["labels"]["session_id"] for series in body["data"] for e in series["exemplars"])


def test_operator_target_labels_clash_with_no_exported_label(stack):
    prom = stack["prom"]
    series = httpx.get(prom + "/api/v1/series", params={"match[]": '{__name__=~"llamacloud_.+"}'}).json()["data"]
    names = {k for s in series for k in s}
    assert not {n for n in names if n.startswith("exported_")}, names
    operator = [s for s in series if s["job"] == OPERATOR_JOB]
    assert operator and all(s["endpoint"] == "http-metrics" and s["pod"] == "llamacloud-collector-0" for s in operator)


def final_poll(sim: str, collector: str) -> int:
    """Stop the simulator's traffic and wait until the collector has counted all of it, exactly; the poll count
    of that exposition. The snapshot changes only as a cycle ends, with its count, so every scrape that shows
    at least this count shows the final state."""
    httpx.get(sim + "/_sim/traffic", params={"pause": "1"}, timeout=30).raise_for_status()
    runs, events = remote_truth(sim)

    def counted() -> int:
        samples = parse(httpx.get(collector + "/metrics", timeout=30).text)
        assert_samples_match(samples, runs, events)  # retried until it holds
        return int(sum(family(samples, "llamacloud_collector_polls_total").values()))

    return wait_until(counted, WAIT, "the collector to count the final state exactly")


def series_keys(result: list[dict]) -> set[frozenset]:
    """Each series of a query result, without the labels its target adds."""
    return {frozenset((k, v) for k, v in r["metric"].items() if k not in TARGET_LABELS) for r in result}


def frozen_at(prom: str, poll: int, reads: set[tuple[str, str]]) -> float | None:
    """A time at which both jobs have scraped the final state (``poll`` or later) at least twice, and read
    the same series: for each metric and range a dashboard reads, the same series have two samples or more
    in the range (what ``rate`` and ``increase`` need) and the same are present at that instant. None: not yet."""
    at = time.time() - APPENDED
    for job in (OPERATOR_JOB, PLAIN_JOB):
        # the poll count each scrape of the last minute showed, by its timestamp
        scrapes: defaultdict[Any, float] = defaultdict(float)
        for series in query(prom, f'llamacloud_collector_polls_total{{job="{job}"}}[1m]', at):
            for ts, v in series["values"]:
                scrapes[ts] += float(v)
        if sum(1 for v in scrapes.values() if v >= poll) < 2:
            return None
    for name, window in sorted(reads):
        selector = {job: f'{name}{{job="{job}"}}' for job in (OPERATOR_JOB, PLAIN_JOB)}
        exprs = {job: f"count_over_time({sel}[{window}]) >= 2" if window else sel for job, sel in selector.items()}
        if series_keys(query(prom, exprs[OPERATOR_JOB], at)) != series_keys(query(prom, exprs[PLAIN_JOB], at)):
            return None
    return at


def test_every_dashboard_query_answers_the_same_as_with_a_plain_scrape(stack):
    """Frozen, then compared exactly: the traffic stopped, the collector has counted it all, both jobs have
    scraped that final state, and every query of both jobs is evaluated at the same instant. The series must
    be the same; a query that reads only the chat families at an instant (no range, no clock) must also give
    the same values."""
    prom = stack["prom"]
    httpx.get(stack["sim"] + "/_sim/touch", params={"fraction": 1}).raise_for_status()  # new runs, perhaps new series
    targets = [
        (panel["title"], target["expr"])
        for build in DASHBOARDS.values()
        for panel in build()["panels"]
        for target in panel["targets"]
        if not RECORDED.search(target["expr"])
        # a recorded ratio or quantile is evaluated per job every 30 s over 10 minutes to an hour of each job's
        # own scrapes, so where a change fell between two scrapes differs by job long before any freeze
    ]
    reads = {(name, window) for _, expr in targets for name, window in SELECTOR.findall(substitute(expr, "x"))}
    assert reads and all(window in ("", "1m", "10m") for _, window in reads), reads
    poll = final_poll(stack["sim"], stack["collector"])
    at = wait_until(lambda: frozen_at(prom, poll, reads), WAIT, "both jobs to scrape the final state")
    session_id = query(prom, f'llamacloud_chat_session_info{{job="{OPERATOR_JOB}"}}', at)[0]["metric"]["session_id"]

    def answer(expr: str, job: str) -> list[tuple[frozenset, str]]:
        result = query(prom, substitute(expr, session_id, job), at)
        if result and not isinstance(result[0], dict):  # a scalar: no series at all
            return [(frozenset(), result[1])]
        return sorted(
            ((frozenset((k, v) for k, v in r["metric"].items() if k not in TARGET_LABELS), r["value"][1]) for r in result),
            key=lambda kv: (sorted(kv[0]), kv[1]),
        )

    compared = valued = 0
    for title, expr in targets:
        compared += 1
        operator, plain = answer(expr, OPERATOR_JOB), answer(expr, PLAIN_JOB)
        names = [name for name, _ in SELECTOR.findall(expr)]
        if "[" not in expr and "time()" not in expr and all(n.startswith("llamacloud_chat_") for n in names):
            valued += 1
            assert operator == plain, (title, expr)
            continue
        shapes: list[list[Any]] = [[labels for labels, _ in answers] for answers in (operator, plain)]
        if "topk" in expr:  # a ranking compares increases over 10 minutes, which reach back before the freeze,
            # where the two jobs' scrapes of a change fell differently; among ties topk keeps any: the label names
            shapes = [sorted(sorted(k for k, _ in labels) for labels in shape) for shape in shapes]
        assert shapes[0] == shapes[1], (title, expr)
    print(
        f"\n{compared} dashboard queries give the same series under the Operator's labels and a plain scrape "
        f"({valued} the same values too)"
    )


def test_every_panel_query_is_valid_and_core_panels_return_data(stack):
    prom = stack["prom"]
    httpx.get(stack["sim"] + "/_sim/touch", params={"fraction": 1}).raise_for_status()  # runs, so ratios are recorded
    wait_until(lambda: query(prom, "rate(llamacloud_chat_runs_total[1m])"), WAIT, "two scrapes")
    wait_until(lambda: recorded_for_both_jobs(prom), WAIT, "recording rules evaluated for both jobs")
    # a session whose last run has a duration (one run in 20 has none): its dashboard has every panel's data
    session_id = query(prom, "llamacloud_chat_session_last_run_duration_seconds")[0]["metric"]["session_id"]
    total, with_data, empty = 0, 0, []
    for build in DASHBOARDS.values():
        board = build()
        for var in board["templating"]["list"]:
            if var["type"] == "query" and var["query"]["query"].startswith("query_result("):
                check_query_result_variable(prom, var)
            elif var["type"] == "query":
                values = httpx.get(
                    prom + "/api/v1/series",
                    params={"match[]": substitute(var["query"]["query"].split("(", 1)[1].rsplit(",", 1)[0], session_id)},
                ).json()
                assert values["status"] == "success" and values["data"], var["name"]
        for panel in board["panels"]:
            got = False
            for target in panel["targets"]:
                total += 1
                result = query(prom, substitute(target["expr"], session_id))
                got = got or bool(result)
                with_data += bool(result)
            if not got:
                empty.append(panel["title"])
    print(f"\npanel queries: {total}, returned data: {with_data}; empty panels: {empty}")
    assert not CORE & set(empty), f"core panels without data: {CORE & set(empty)}"


def check_query_result_variable(prom: str, var: dict[str, Any]) -> None:
    """A ``query_result`` variable (``project``): its query answers, and its regex takes each answer, written as
    Grafana writes it (``name{label="value",...} value timestamp``), to the project's ID and name."""
    from tests.test_dashboards import js_regex

    result = query(prom, substitute(var["query"]["query"].removeprefix("query_result(").removesuffix(")"), ""))
    assert result, var["name"]
    for r in result:
        labels = {k: v for k, v in r["metric"].items() if k != "__name__"}
        pairs = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        line = f"{r['metric']['__name__']}{{{pairs}}} 1 0"
        m = js_regex(var["regex"]).search(line)
        assert m is not None and m["value"] == labels["project_id"], line
        assert m["text"] == labels.get("project_name"), line


def lag_alert_expr() -> str:
    """The count-lag alert's condition as the stack's Prometheus evaluates it."""
    rules = alert_rules(load_spec(), for_override="0s", params=FAST)["groups"][0]["rules"]
    return next(r["expr"] for r in rules if r["alert"] == LAG_ALERT)


def test_the_count_lag_alert_stays_quiet_normally_and_fires_when_the_collector_is_slow(stack):
    """After the dashboard tests (nothing they compare is slowed or carried across cycles) and before the outage:
    normal changes keep the lag's p99 under the objective, and a slow API makes it fire. The p99 reads 10 minutes,
    so the alert still fires when this test ends (no later test minds: the outage only adds alerts)."""
    prom, sim = stack["prom"], stack["sim"]
    p99 = f'{LAG}99_rate{load_spec()["lag_window"]}{{job="{OPERATOR_JOB}"}}'
    lag_count = f'llamacloud_collector_count_lag_seconds_count{{job="{OPERATOR_JOB}"}}'

    def counted() -> float:
        result = query(prom, lag_count)
        return float(result[0]["value"][1]) if result else 0.0

    def newest(expr: str) -> float:
        result = query(prom, f"timestamp({expr})")
        return float(result[0]["value"][1]) if result else 0.0

    # Quiet: new runs in every session, counted at the normal pace, and the p99 recorded after them.
    before = counted()
    changed = httpx.get(sim + "/_sim/touch", params={"fraction": 1}).json()["changed"]
    wait_until(lambda: counted() >= before + changed, WAIT, "the new runs counted, each lag observed")
    seen = newest(lag_count)  # the scrape that showed them: written APPENDED seconds after it started
    wait_until(lambda: newest(p99) >= seen + APPENDED, WAIT, "the p99 recorded from that scrape on")
    value = float(query(prom, p99)[0]["value"][1])
    assert value <= 2, f"normal operation: p99 {value} s, over the bucket of 2 s"
    assert not query(prom, lag_alert_expr()), "the alert's condition holds for a job"
    assert not any(LAG_ALERT in names for names in firing(prom).values())
    try:
        # Slow: every answer SLOW seconds late, every session changed; the pass carries its fetches over cycles.
        httpx.get(sim + "/_sim/latency", params={"seconds": SLOW}).raise_for_status()
        httpx.get(sim + "/_sim/touch", params={"fraction": 1}).raise_for_status()
        wait_until(
            lambda: query(prom, f'ALERTS{{alertname="{LAG_ALERT}", alertstate="firing", job="{OPERATOR_JOB}"}}'),
            WAIT,
            f"{LAG_ALERT} firing for the Operator job",
        )
        print(f"\ncount lag p99: {value:.2f} s normally, {float(query(prom, p99)[0]['value'][1]):.2f} s slow")
    finally:
        httpx.get(sim + "/_sim/latency", params={"seconds": 0}).raise_for_status()


def test_api_outage_fires_up_and_stale_alerts(stack):
    prom, procs = stack["prom"], stack["procs"]
    procs.stop("simulator")
    wait_until(lambda: query(prom, "llamacloud_collector_up == 0"), 60, "collector_up to drop")
    want = {"LlamaCloudCollectorApiErrors", "LlamaCloudCollectorPollStale"}
    wait_until(lambda: want <= firing(prom).get("firing", set()), 60, f"{want} firing")
    assert query(prom, "llamacloud_chat_runs_total"), "chat metrics still served during the outage"
    assert json.loads(httpx.get(prom + "/api/v1/targets").text)["data"]["activeTargets"][0]["health"] == "up"
