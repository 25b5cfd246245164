"""Red team, round 2 (issues 29 and 31): what held under attack of ``--semconv`` and the fixes for several projects.

Each test pins a behaviour that holds: hostile index IDs and tool names under the GenAI names (text and
OpenMetrics, promtool), a bad ``--semconv`` refused with one line and exit 2, one project whose projects
listing or sessions listing fails from the start never reported ready (sticky readiness hides nothing never
reached), the dormant projects bounded, and a home state file held under an exclusive lock by another process
refused at start with one line and exit 1, the file left as it is."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from collector.cli import main
from collector.families import GEN_AI_CONSTANTS
from collector.simulator.api import Fault, project_id
from collector.simulator.service import SimulatorService
from collector.simulator.world import World, populate
from tests.helpers import Samples, collecting, parse, run_async, running, scrape, simulating
from tests.tools import require

pytestmark = pytest.mark.tier("unit")

FAST: dict[str, Any] = {"interval": 30.0, "read_timeout": 2.0, "connect_timeout": 1.0}
KEY = {"LLAMA_CLOUD_API_KEY": "llx-test-key-0123456789"}
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
HOSTILE_TOOLS = ('q"uote', "back\\slash", "new\nline", "üñí☃ code", "tab\tx", "}{,=")
HOSTILE_INDEXES = ('i"dx', "i\\dx", "i\ndx", "ünï☃", "a,b=c}")


def hostile_world() -> World:
    world = World(seed=3)
    for k in range(12):
        session = world.new_session(0)
        session.index_ids = sorted({HOSTILE_INDEXES[k % 5], HOSTILE_INDEXES[(k + 2) % 5]})
        for _ in range(4):
            world.add_run(session)
    return world


def data_sources(samples: Samples) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    for (name, labels), value in samples.items():
        if name == "gen_ai_invoke_agent_data_source_invocations_total":
            got = dict(labels)
            assert frozenset(GEN_AI_CONSTANTS) <= labels
            out[(got["gen_ai_data_source_id"], got.get("error_type"))] = value
    return out


def ours_by_index(samples: Samples) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    for (name, labels), value in samples.items():
        got = dict(labels)
        if name == "llamacloud_chat_index_runs_total" and got["outcome"] == "success":
            out[(got["index_id"], None)] = value
        elif name == "llamacloud_chat_index_run_errors_total":
            out[(got["index_id"], got["error_type"])] = value
    return out


def test_hostile_index_ids_and_tool_names_are_escaped_under_the_gen_ai_names(monkeypatch: pytest.MonkeyPatch):
    """Quotes, backslashes, newlines, tabs, unicode and label syntax in index IDs and tool names: the text and the
    OpenMetrics scrapes both parse back to the very values, the data source counts equal ours, and promtool
    accepts the text format."""
    monkeypatch.setattr("collector.simulator.world.TOOLS", HOSTILE_TOOLS)

    async def scenario():
        async with running(world=hostile_world(), semconv="both") as (_sim, collector):
            await collector.run_slot()
            async with httpx.AsyncClient() as http:
                url = f"http://127.0.0.1:{collector.port}/metrics"
                text = (await http.get(url)).text
                om = (await http.get(url, headers=OPENMETRICS)).text
            samples = parse(text)
            sources = data_sources(samples)
            assert sources and sources == ours_by_index(samples)
            assert {i for i, _ in sources} == set(HOSTILE_INDEXES)
            tools = {dict(labels)["tool"] for (n, labels) in samples if n == "llamacloud_chat_tool_calls_total"}
            assert tools <= set(HOSTILE_TOOLS) and len(tools) >= 4
            om_samples: Samples = {}
            for family in parse_openmetrics(om):
                for sample in family.samples:
                    labels = {k: v for k, v in sample.labels.items() if k != "project_id"}
                    om_samples[(sample.name, frozenset(labels.items()))] = sample.value
            assert data_sources(om_samples) == sources

    run_async(scenario())


@pytest.mark.tier("tools")
def test_promtool_accepts_the_gen_ai_names_with_hostile_label_values(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("collector.simulator.world.TOOLS", HOSTILE_TOOLS)
    promtool = require("promtool")

    async def scrape_text() -> str:
        async with running(world=hostile_world(), semconv="both") as (_sim, collector):
            await collector.run_slot()
            async with httpx.AsyncClient() as http:
                return (await http.get(f"http://127.0.0.1:{collector.port}/metrics")).text

    text = run_async(scrape_text())
    assert "gen_ai_invoke_agent_data_source_invocations_total" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("value", ["bogus", "GEN_AI", "", "gen_ai,llamacloud"])
def test_a_bad_semconv_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], value: str):
    code = main(["check", "--semconv", value, "--base-url", "http://127.0.0.1:9"], KEY)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("llamacloud-collector: error: semconv"), err


async def ready(port: int) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code


def test_one_project_whose_projects_listing_fails_from_the_start_is_never_ready():
    """Sticky readiness hides nothing never reached: the key's default project, never named (its listing refused
    from the start), stays 503 and shows no chat series."""

    async def scenario():
        sim = SimulatorService(sessions=3, runs=1, seed=5, rate=0, projects=1)
        sim.faults.add(Fault("status", endpoint="projects", status=500), times=1000)
        async with simulating(sim), collecting(sim, **FAST) as collector:
            for _ in range(4):
                await collector.run_slot()
                assert await ready(collector.port) == 503
            samples = await scrape(collector.port, projects=True)
            assert not [n for n, _ in samples if n.startswith("llamacloud_chat_")]

    run_async(scenario())


def test_one_configured_project_whose_sessions_listing_fails_from_the_start_is_never_ready():
    async def scenario():
        sim = SimulatorService(sessions=3, runs=1, seed=5, rate=0, projects=1)
        sim.faults.add(Fault("status", endpoint="list", status=403), times=1000)
        async with simulating(sim), collecting(sim, **FAST, project_id=project_id(0)) as collector:
            for _ in range(5):  # past SETTLE_FAILURES: no other project synced, so it holds readiness back
                await collector.run_slot()
                assert await ready(collector.port) == 503
            up = [v for (n, labels), v in (await scrape(collector.port, projects=True)).items() if n == "llamacloud_collector_up"]
            assert up == [0]

    run_async(scenario())


def test_projects_let_go_without_a_state_file_are_kept_at_most_max_projects(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("collector.projects.MAX_PROJECTS", 3)

    async def scenario():
        sim = SimulatorService(sessions=2, runs=1, seed=1, rate=0, projects=1)
        default = sim.api.projects[project_id(0)]
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            for round_ in range(8):
                sim.api.projects.clear()
                sim.api.projects[project_id(0)] = default
                for i in range(2):
                    sim.api.projects[f"made-up-{round_ // 2}-{i}"] = populate(World(seed=i), 1, 1)
                await collector.run_slot()
                assert len(collector.fleet.dormant) <= 3
                assert sum(1 for _ in collector.fleet.active()) <= 3

    run_async(scenario())


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE"); db.execute("CREATE TABLE IF NOT EXISTS held (x)"); db.execute("COMMIT")
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.tier("process")
def test_a_home_state_file_locked_by_another_process_is_one_line_and_exit_1_and_left_as_it_is(tmp_path: Path):
    state = tmp_path / "s.db"
    with closing(sqlite3.connect(state)) as db:
        db.execute("CREATE TABLE other (x)")
        db.commit()
    before = state.read_bytes()
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        env = {**os.environ, **KEY, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--base-url",
                "http://127.0.0.1:9",
                "--listen",
                "127.0.0.1:0",
                "--state-path",
                str(state),
                "--project-id",
                "p1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert time.monotonic() - started < 40
    finally:
        locker.kill()
        locker.wait()
        if locker.stdout is not None:
            locker.stdout.close()
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr[-2000:]
    assert last == f"llamacloud-collector: cannot open state file {state}: database is locked; left as it is"
    assert "Traceback" not in result.stderr
    assert not [p for p in tmp_path.iterdir() if "corrupt" in p.name]
    with closing(sqlite3.connect(state)) as db:  # untouched: what it held, it holds
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {"other"}
    assert before[:16] == state.read_bytes()[:16]
