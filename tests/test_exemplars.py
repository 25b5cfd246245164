"""Exemplars: from a spike to the session. OpenMetrics only, each naming a session that really had such a run."""

from __future__ import annotations

import bisect

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from collector.aggregates import Histogram, Mark
from collector.families import FAMILIES, HistogramFamily
from collector.simulator.world import RunTruth, World, populate
from tests.helpers import collecting, record, run_async, running, simulating

pytestmark = pytest.mark.tier("unit")

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
HISTOGRAMS = {family.name: family for family in FAMILIES if isinstance(family, HistogramFamily)}


def observed(family: HistogramFamily, run, labels: dict) -> list[float]:
    """The values ``family`` observes of a simulated run, in the series ``labels`` name."""
    key = labels[family.labels[0]] if family.labels else None
    return [value for k, value in family.observe(record(run)) if k == key]


async def openmetrics(port: int) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", headers=OPENMETRICS)
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        return response.text


def exemplars(text: str) -> list[tuple[str, dict, float, dict, tuple[float, float]]]:
    """(sample name, labels, exemplar value, exemplar labels, (lower, upper] bounds of its bucket)."""
    out = []
    for family in parse_openmetrics(text):
        previous: dict[tuple, float] = {}
        for sample in family.samples:
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            le = float(sample.labels.get("le", "inf"))
            low = previous.get(series, float("-inf"))
            if "le" in sample.labels:
                previous[series] = le
            if sample.exemplar is not None:
                out.append((sample.name, dict(sample.labels), sample.exemplar.value, sample.exemplar.labels, (low, le)))
    return out


def check_against_truth(found, world: World) -> int:
    runs_by_session: dict[str, list[RunTruth]] = {}
    for run in world.runs:
        runs_by_session.setdefault(run.session_id, []).append(run)
    checked = 0
    for name, labels, value, ex_labels, (low, le) in found:
        assert set(ex_labels) == {"session_id"}, ex_labels
        session_runs = runs_by_session.get(ex_labels["session_id"])
        assert session_runs, f"{name}: exemplar names a session with no run: {ex_labels}"
        if name == "llamacloud_chat_runs_total":
            assert value == 1 and any(r.failed == (labels["outcome"] == "error") for r in session_runs)
        else:
            family = name.removesuffix("_bucket")
            values = [v for r in session_runs for v in observed(HISTOGRAMS[family], r, labels)]
            assert value in values, f"{name}{labels}: {value} is not a run of {ex_labels['session_id']}"
            assert low < value <= le, f"{name}{labels}: exemplar {value} outside its bucket ({low}, {le}]"
        checked += 1
    return checked


def test_exemplars_name_real_runs_lie_in_their_bucket_and_stay_out_of_the_text_format():
    async def scenario():
        world = populate(World(seed=44, error_rate=0.3), 30, 3)
        async with running(world=world) as (_sim, collector):
            await collector.poller.cycle()
            for session in list(world.sessions.values())[:10]:
                world.add_run(session, fail=True)
            await collector.poller.cycle()
            text = await openmetrics(collector.port)
            found = exemplars(text)
            names = {n for n, *_ in found}
            assert {
                "llamacloud_chat_runs_total",
                "llamacloud_chat_run_duration_seconds_bucket",
                "llamacloud_chat_run_tokens_bucket",
                "llamacloud_chat_run_turns_bucket",
                "llamacloud_chat_run_tool_calls_bucket",
            } <= names
            assert check_against_truth(found, world) == len(found)
            error = next(ex for n, lbl, _, ex, _ in found if n == "llamacloud_chat_runs_total" and lbl["outcome"] == "error")
            assert error["session_id"] in {s.session_id for s in list(world.sessions.values())[:10]}
            async with httpx.AsyncClient() as http:
                plain = (await http.get(f"http://127.0.0.1:{collector.port}/metrics")).text
            assert " # {" not in plain and "session_id=" not in plain.split("llamacloud_chat_session_")[0]

    run_async(scenario())


def test_an_exemplar_lies_inside_its_own_bucket_and_a_long_id_is_left_out_not_cut():
    hist = Histogram((1.0, 2.0, 4.0))
    hist.observe(1.5, "a", 10.0)
    hist.observe(3.0, "b", 11.0)
    hist.observe(1.7, "x" * 119, 12.0)  # 10 + 119 > 128 characters: no exemplar, the older one stays
    marks = {le: mark for le, _, mark in hist.cumulative()}
    assert marks["2.0"] == Mark("a", 1.5, 10.0) and marks["4.0"] == Mark("b", 3.0, 11.0)
    assert marks["1.0"] is None and marks["+Inf"] is None
    assert Mark.of("y" * 118, 1.0, 0.0) is not None and Mark.of("y" * 119, 1.0, 0.0) is None
    for le, _, mark in hist.cumulative():
        if mark is not None:
            index = bisect.bisect_left(hist.bounds, mark.value)
            assert le == repr(float(hist.bounds[index]))


def test_exemplars_survive_a_restart_with_state(tmp_path):
    async def scenario():
        world = populate(World(seed=45, error_rate=0.3), 12, 2)
        db = tmp_path / "state.db"
        async with simulating(world=world) as sim:
            async with collecting(sim, cycle=True, state_path=str(db)) as first:
                before = sorted(map(repr, exemplars(await openmetrics(first.port))))
            async with collecting(sim, state_path=str(db)) as second:
                after = sorted(map(repr, exemplars(await openmetrics(second.port))))
        assert before and after == before

    run_async(scenario())
