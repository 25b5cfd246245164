"""End to end with a real Prometheus and Alertmanager: dashboards return data, alerts fire and are delivered."""

import json
import re
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest

from scripts.dashboards import DASHBOARDS
from scripts.rules import INDEX_RATIO, RATIO, alert_rules, dump, load_spec, recording_rules
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


def recorded_for_both_jobs(prom: str) -> bool:
    """The recording rules (evaluated every 30 s) have written their series for both jobs."""
    return all(
        query(prom, f'{name}{{job="{job}"}}') for job in (OPERATOR_JOB, PLAIN_JOB) for name in (f"{RATIO}1h", f"{INDEX_RATIO}30m")
    )


def substitute(expr: str, session_id: str, job: str = OPERATOR_JOB) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
        .replace("$slo", "0.99")
        .replace('"$job"', f'"{job}"')
        .replace('"$instance"', '".*"')
        .replace("$session_id", session_id)
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    procs, hook = Processes(folder), Webhook()
    rules = folder / "alerts.yaml"
    fast = {"LlamaCloudChatErrorRatioHigh": {"min_runs": 5}, "LlamaCloudChatIndexErrorRatioHigh": {"min_runs": 2}}
    rules.write_text(dump(alert_rules(load_spec(), for_override="0s", params=fast)))
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
            if var["type"] == "query":
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


def test_api_outage_fires_up_and_stale_alerts(stack):
    prom, procs = stack["prom"], stack["procs"]
    procs.stop("simulator")
    wait_until(lambda: query(prom, "llamacloud_collector_up == 0"), 60, "collector_up to drop")
    want = {"LlamaCloudCollectorApiErrors", "LlamaCloudCollectorPollStale"}
    wait_until(lambda: want <= firing(prom).get("firing", set()), 60, f"{want} firing")
    assert query(prom, "llamacloud_chat_runs_total"), "chat metrics still served during the outage"
    assert json.loads(httpx.get(prom + "/api/v1/targets").text)["data"]["activeTargets"][0]["health"] == "up"
