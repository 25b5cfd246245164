"""A whole organization end to end (issue 31): the collector with ``--all-projects`` against a simulator of three
projects, one of them with a listing that is refused, scraped by a real Prometheus with the shipped rules; a second
collector of the same organization with ``--semconv gen_ai`` (issue 29) beside it.

Every dashboard query answers for each project picked in its ``project`` variable, with that project's series
only; each project's runs in Prometheus equal its truth; a project whose runs fail fires the chat alerts under
its own ``project_id`` and no other; the refused project shows as failing and its alert names it."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from collector.simulator.api import project_id
from scripts.dashboards import DASHBOARDS
from scripts.rules import alert_rules, dump, load_spec, recording_rules
from tests.stack import Processes, free_port, query, start_prometheus, wait_until
from tests.test_prometheus_e2e import substitute

pytestmark = pytest.mark.tier("tools", "process")

KEY = "llx-e2e-projects"
JOB = "llamacloud-collector"
WAIT = 180.0
HEALTHY, FAILING, REFUSED = (project_id(i) for i in range(3))
"""The simulator's projects: the default one, one whose runs will fail, and one whose listing is refused."""
PARAMS = {"LlamaCloudChatErrorRatioHigh": {"min_runs": 5, "threshold": 0.3}}
"""Over 30% of the runs failing: only the project whose runs all fail (the others' new runs fail about one in
ten, over the burn-rate alerts' 1% budget but under this)."""
GLOBAL_PANELS = re.compile(r"llamacloud_collector_(api_|poll_interval|shard|total_shards|build_info|scrape_auth)|process_")
"""Panels over the whole collector's families: the same whichever project is picked."""


@pytest.fixture(scope="module")
def organization(tmp_path_factory):
    folder = tmp_path_factory.mktemp("organization")
    procs = Processes(folder)
    rules = folder / "alerts.yaml"
    rules.write_text(dump(alert_rules(load_spec(), for_override="0s", params=PARAMS)))
    recording = folder / "recording.yaml"
    recording.write_text(dump(recording_rules(load_spec())))
    sim_port, col_port, gen_ai_port = free_port(), free_port(), free_port()
    argv = ["simulate", "--port", str(sim_port), "--sessions", "12", "--projects", "3", "--rate", "0", "--seed", "5"]
    procs.collector("simulator", *argv, env={"LLAMA_CLOUD_API_KEY": KEY})
    sim = f"http://127.0.0.1:{sim_port}"
    wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
    fault = {
        "kind": "status",
        "endpoint": "list",
        "status": "403",
        "times": "5000",
        "project": REFUSED,
    }  # its one request a second, for longer than the module runs (faults are scanned per request: not millions)
    httpx.get(sim + "/_sim/fault", params=fault).raise_for_status()
    for name, port, names in (("collector", col_port, "llamacloud"), ("gen_ai", gen_ai_port, "gen_ai")):
        procs.collector(
            name,
            *("--listen", f"127.0.0.1:{port}", "--interval", "1", "--all-projects", "--semconv", names),
            env={"LLAMA_CLOUD_API_KEY": KEY, "LLAMA_CLOUD_BASE_URL": sim},
        )
    prom = start_prometheus(procs, [col_port, gen_ai_port], [rules, recording], None)
    try:
        wait_until(lambda: len(query(prom, "llamacloud_project_info")) == 6, 60, "the three projects of both scraped")
        yield {"prom": prom, "sim": sim, "gen_ai": f"127.0.0.1:{gen_ai_port}"}
    finally:
        procs.stop_all()


def truth_runs(sim: str, project: str) -> dict[str, int]:
    runs = httpx.get(sim + "/_sim/truth", params={"project": project}, timeout=30).json()["runs"]
    return {"error": sum(r["failed"] for r in runs), "success": sum(not r["failed"] for r in runs)}


def runs_in_prometheus(prom: str, project: str) -> dict[str, int]:
    result = query(prom, f'llamacloud_chat_runs_total{{job="{JOB}", project_id="{project}"}}')
    return {r["metric"]["outcome"]: int(float(r["value"][1])) for r in result}


def test_each_project_s_runs_equal_its_truth_and_the_refused_one_shows_as_failing(organization):
    prom, sim = organization["prom"], organization["sim"]
    for project in (HEALTHY, FAILING):
        want = truth_runs(sim, project)
        wait_until(lambda p=project, w=want: runs_in_prometheus(prom, p) == w, WAIT, f"{project}'s runs as the truth")
    assert runs_in_prometheus(prom, REFUSED) == {}, "a project never synced shows no chat series"
    up = {r["metric"]["project_id"]: r["value"][1] for r in query(prom, f'llamacloud_collector_up{{job="{JOB}"}}')}
    assert up == {HEALTHY: "1", FAILING: "1", REFUSED: "0"}
    names = {r["metric"]["project_id"]: r["metric"]["project_name"] for r in query(prom, "llamacloud_project_info")}
    assert names == {HEALTHY: "Default", FAILING: "project-1", REFUSED: "project-2"}

    def alerted() -> dict[str, set[str]]:  # the collector's own alerts (the chat ones follow the runs), by project
        out: dict[str, set[str]] = {}
        for a in alerts(prom):
            if a["state"] == "firing" and not a["labels"]["alertname"].startswith("LlamaCloudChat"):
                out.setdefault(a["labels"].get("project_id", ""), set()).add(a["labels"]["alertname"])
        return out

    fired = wait_until(lambda: alerted().get(REFUSED), WAIT, "an alert that names the refused project")
    print(f"\nthe refused project's alerts: {sorted(fired)}; all: {alerted()}")
    assert not alerted().keys() & {HEALTHY, FAILING}, alerted()


def alerts(prom: str) -> list[dict[str, Any]]:
    body = httpx.get(prom + "/api/v1/alerts", timeout=30).json()
    return list(body["data"]["alerts"])


def test_every_dashboard_query_answers_for_each_project_with_that_project_s_series_only(organization):
    prom, sim = organization["prom"], organization["sim"]
    for project in (HEALTHY, FAILING):
        httpx.get(sim + "/_sim/touch", params={"fraction": 1, "project": project}).raise_for_status()
    wait_until(lambda: all(runs_in_prometheus(prom, p) == truth_runs(sim, p) for p in (HEALTHY, FAILING)), WAIT, "new runs")
    wait_until(lambda: query(prom, "rate(llamacloud_chat_runs_total[1m]) > 0"), WAIT, "two scrapes of the new runs")
    answered: dict[str, int] = {}
    for project in (HEALTHY, FAILING):
        session_id = query(prom, f'llamacloud_chat_session_info{{project_id="{project}"}}')[0]["metric"]["session_id"]
        queries = with_data = 0
        for build in DASHBOARDS.values():
            for panel in build()["panels"]:
                for target in panel["targets"]:
                    result = query(prom, substitute(target["expr"], session_id, JOB, project))
                    queries += 1
                    series = [r for r in result if isinstance(r, dict)]
                    others = {r["metric"].get("project_id") for r in series} - {project, None}
                    assert not others, (panel["title"], target["expr"], others)
                    if series and not GLOBAL_PANELS.search(target["expr"]):
                        with_data += 1
        answered[project] = with_data
        assert with_data >= queries // 2, (project, with_data, queries)
    print(f"\nper-project dashboard queries with data: {answered}")


def test_a_project_whose_runs_fail_fires_the_chat_alerts_under_its_own_id_only(organization):
    prom, sim = organization["prom"], organization["sim"]
    httpx.get(sim + "/_sim/touch", params={"fraction": 1, "fail": 1, "project": FAILING}).raise_for_status()
    want = {"LlamaCloudChatErrorRatioHigh"}

    def by_project() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for a in alerts(prom):
            if a["state"] == "firing" and a["labels"]["alertname"] in want:
                out.setdefault(a["labels"].get("project_id", ""), set()).add(a["labels"]["alertname"])
        return out

    fired = wait_until(lambda: want <= by_project().get(FAILING, set()) and by_project(), WAIT, f"{want} for {FAILING}")
    assert set(fired) == {FAILING}, fired


def test_the_gen_ai_names_equal_the_truth_and_every_gen_ai_dashboard_query_answers(organization):
    """``--semconv gen_ai``: each project's invocations equal its truth, and every query of the GenAI dashboard
    answers for each project from that collector alone."""
    prom, sim, instance = organization["prom"], organization["sim"], organization["gen_ai"]

    def total(project: str, *matchers: str) -> int:
        selector = ", ".join([f'instance="{instance}"', f'project_id="{project}"', *matchers])
        result = query(prom, f"sum(gen_ai_invoke_agent_invocations_total{{{selector}}})")
        return int(float(result[0]["value"][1])) if result else -1

    def counted(project: str) -> dict[str, int]:
        failed = total(project, 'error_type!=""')
        return {"error": failed, "success": total(project) - failed}

    for project in (HEALTHY, FAILING):
        httpx.get(sim + "/_sim/touch", params={"fraction": 1, "project": project}).raise_for_status()
    for project in (HEALTHY, FAILING):
        wait_until(lambda p=project: counted(p) == truth_runs(sim, p), WAIT, f"{project}'s invocations as the truth")
    wait_until(
        lambda: query(prom, f'rate(gen_ai_invoke_agent_invocations_total{{instance="{instance}"}}[1m]) > 0'), WAIT, "two scrapes"
    )
    board = DASHBOARDS["chat-genai.json"]()
    for project in (HEALTHY, FAILING):
        empty = []
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = substitute(target["expr"], "", JOB, project).replace('instance=~".*"', f'instance="{instance}"')
                if not query(prom, expr):
                    empty.append((panel["title"], expr))
        assert not empty, (project, empty)
