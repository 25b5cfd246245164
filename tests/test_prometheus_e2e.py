"""End to end with a real Prometheus and Alertmanager: dashboards return data, alerts fire and are delivered."""

import json

import httpx
import pytest

from scripts.dashboards import DASHBOARDS
from scripts.rules import INDEX_RATIO, RATIO, alert_rules, dump, load_spec, recording_rules
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
        yield {"prom": prom, "sim": sim, "procs": procs, "hook": hook}
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
    truth = httpx.get(sim + "/_sim/truth").json()["runs"]
    httpx.get(sim + "/_sim/touch", params={"fraction": 1, "fail": 1})  # every index gets failing runs
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


def test_every_dashboard_query_answers_the_same_as_with_a_plain_scrape(stack):
    prom = stack["prom"]
    wait_until(lambda: query(prom, "rate(llamacloud_chat_runs_total[1m])"), 30, "two scrapes")
    wait_until(lambda: recorded_for_both_jobs(prom), 90, "recording rules evaluated for both jobs")
    session_id = query(prom, "llamacloud_chat_session_info")[0]["metric"]["session_id"]

    def shape(expr: str, job: str) -> list[frozenset]:
        result = query(prom, substitute(expr, session_id, job))
        if result and not isinstance(result[0], dict):  # a scalar: no series at all
            return [frozenset()]
        return sorted((frozenset((k, v) for k, v in r["metric"].items() if k not in TARGET_LABELS) for r in result), key=sorted)

    compared = 0
    for build in DASHBOARDS.values():
        for panel in build()["panels"]:
            for target in panel["targets"]:
                if ":ratio_rate" in target["expr"]:  # recorded per job, at one evaluation: the two jobs' scrapes
                    # of a change may fall on either side of it (an index's ratio is filtered at > 0)
                    continue
                compared += 1
                operator, plain = shape(target["expr"], OPERATOR_JOB), shape(target["expr"], PLAIN_JOB)
                if "topk" in target["expr"]:  # which series top a ranking depends on when each job scraped,
                    # and among ties topk picks any: the same label names
                    operator, plain = ([sorted(k for k, _ in s) for s in shapes] for shapes in (operator, plain))
                assert operator == plain, (panel["title"], target["expr"])
    print(f"\n{compared} dashboard queries give the same series under the Operator's labels and a plain scrape")


def test_every_panel_query_is_valid_and_core_panels_return_data(stack):
    prom = stack["prom"]
    wait_until(lambda: query(prom, "rate(llamacloud_chat_runs_total[1m])"), 30, "two scrapes")
    wait_until(lambda: recorded_for_both_jobs(prom), 90, "recording rules evaluated for both jobs")
    session_id = query(prom, "llamacloud_chat_session_info")[0]["metric"]["session_id"]
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
