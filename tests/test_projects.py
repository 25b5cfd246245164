"""Several projects (issue 31, DESIGN §5): every project's runs equal its truth, under its own ``project_id``; a
project whose listing fails fails on its own, heals exactly, and never holds back or hides the others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.app import build_client
from collector.cadence import Deadline
from collector.errors import Deferred
from collector.llamacloud.budget import HELD
from collector.settings import Settings
from collector.simulator.api import Fault, project_id
from collector.simulator.service import SimulatorService
from collector.simulator.world import World, populate
from tests.helpers import Samples, assert_samples_match, collecting, run_async, scrape, simulating

pytestmark = pytest.mark.tier("unit")

FAST: dict[str, Any] = {"interval": 30.0, "read_timeout": 2.0, "connect_timeout": 1.0}


def of_project(samples: Samples, project: str) -> Samples:
    """One project's series, its ``project_id`` left out: what a one-project collector would show."""
    out: Samples = {}
    for (name, labels), v in samples.items():
        kept = dict(labels)
        if kept.pop("project_id", None) == project:
            out[(name, frozenset(kept.items()))] = v
    return out


def worlds(sim: SimulatorService) -> dict[str, World]:
    return dict(sim.api.projects)


def assert_each_exact(samples: Samples, sim: SimulatorService, projects: Iterable[str]) -> None:
    for project in projects:
        world = sim.api.projects[project]
        assert_samples_match(of_project(samples, project), world.runs, world.events)


def labelled(samples: Samples, name: str) -> dict[str, float]:
    """``name``'s value by project (a family with no other label)."""
    return {dict(labels).get("project_id", ""): v for (n, labels), v in samples.items() if n == name}


async def ready(port: int) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code


def test_three_projects_one_failing_listing_the_others_never_held_back_and_it_heals_exactly():
    async def scenario():
        sim = SimulatorService(sessions=12, runs=3, seed=5, rate=0, projects=3)
        first, second, third = (project_id(i) for i in range(3))
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            sim.faults.add(Fault("status", endpoint="list", status=403, project=third), times=1000)
            for _ in range(4):
                await collector.run_slot()
            samples = await scrape(collector.port, projects=True)
            assert_each_exact(samples, sim, (first, second))
            assert labelled(samples, "llamacloud_collector_up") == {first: 1, second: 1, third: 0}
            assert not [k for k in samples if k[0].startswith("llamacloud_chat_") and ("project_id", third) in k[1]]
            assert {
                dict(labels)["project_id"]: dict(labels)["project_name"]
                for (n, labels) in samples
                if n == "llamacloud_project_info"
            } == {
                first: "Default",
                second: "project-1",
                third: "project-2",
            }
            assert await ready(collector.port) == 200, "a project failing on its own does not hold back readiness"
            for world in worlds(sim).values():  # new runs everywhere while one project still fails
                for session in list(world.sessions.values())[:3]:
                    world.add_run(session, fail=True)
            await collector.run_slot()
            assert_each_exact(await scrape(collector.port, projects=True), sim, (first, second))
            sim.faults.queue.clear()  # the third project's listing heals
            await collector.run_slot()
            samples = await scrape(collector.port, projects=True)
            assert_each_exact(samples, sim, (first, second, third))
            assert labelled(samples, "llamacloud_collector_up") == {first: 1, second: 1, third: 1}
            assert labelled(samples, "llamacloud_collector_sessions_watched") == {first: 12, second: 12, third: 12}

    run_async(scenario())


def test_projects_added_and_removed_are_picked_up_and_one_listing_never_removes_one():
    async def scenario():
        sim = SimulatorService(sessions=5, runs=2, seed=9, rate=0, projects=2)
        first, second, added = project_id(0), project_id(1), project_id(7)
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            await collector.run_slot()
            sim.api.projects[added] = populate(World(seed=77), 4, 2)
            await collector.run_slot()
            samples = await scrape(collector.port, projects=True)
            assert_each_exact(samples, sim, (first, second, added))
            gone = sim.api.projects.pop(second)
            await collector.run_slot()  # one listing without it: still watched
            samples = await scrape(collector.port, projects=True)
            assert second in labelled(samples, "llamacloud_collector_up")
            sim.api.projects[second] = gone  # back: nothing counted twice
            await collector.run_slot()
            del sim.api.projects[second]
            await collector.run_slot()
            await collector.run_slot()  # two listings in a row without it: no longer watched, its series gone
            samples = await scrape(collector.port, projects=True)
            assert set(labelled(samples, "llamacloud_collector_up")) == {first, added}
            assert not [k for k in samples if ("project_id", second) in k[1]]
            assert_each_exact(samples, sim, (first, added))

    run_async(scenario())


def test_an_empty_projects_listing_removes_nothing():
    async def scenario():
        sim = SimulatorService(sessions=4, runs=2, seed=3, rate=0, projects=2)
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            await collector.run_slot()
            kept = dict(sim.api.projects)
            sim.api.projects.clear()
            for _ in range(2):  # twice, as a real removal would need: an empty answer is not taken at its word
                await collector.run_slot()
            sim.api.projects.update(kept)
            samples = await scrape(collector.port, projects=True)
            assert set(labelled(samples, "llamacloud_collector_up")) == set(kept)

    run_async(scenario())


def test_configured_projects_each_with_its_own_state_file_and_a_restart_counts_nothing_twice(tmp_path: Path):
    async def scenario():
        sim = SimulatorService(sessions=6, runs=2, seed=4, rate=0, projects=3)
        chosen = (project_id(2), project_id(0))
        state = tmp_path / "state.db"
        async with simulating(sim):
            async with collecting(sim, **FAST, project_id=list(chosen), state_path=str(state)) as collector:
                await collector.run_slot()
                samples = await scrape(collector.port, projects=True)
                assert_each_exact(samples, sim, chosen)
                assert set(labelled(samples, "llamacloud_collector_up")) == set(chosen)
            files = sorted(p.name for p in list(tmp_path.iterdir()) if not p.name.endswith(("-wal", "-shm")))  # noqa: ASYNC240
            assert files[0] == "state.db" and len(files) == 2 and files[1].startswith("state.db.project-")
            for world in (sim.api.projects[p] for p in chosen):
                world.add_run(next(iter(world.sessions.values())))
            async with collecting(sim, **FAST, project_id=list(chosen), state_path=str(state)) as collector:
                fetched = sim.api.calls["retrieve"]
                await collector.run_slot()
                assert sim.api.calls["retrieve"] - fetched == 2, "only the changed session of each project"
                assert_each_exact(await scrape(collector.port, projects=True), sim, chosen)

    run_async(scenario())


def test_a_state_file_of_another_project_is_refused_with_one_line(tmp_path: Path):
    async def scenario():
        sim = SimulatorService(sessions=3, runs=1, seed=2, rate=0, projects=2)
        state = tmp_path / "state.db"
        async with simulating(sim):
            async with collecting(sim, **FAST, project_id=project_id(1), state_path=str(state)) as collector:
                await collector.run_slot()
            from collector.errors import ConfigError

            with pytest.raises(ConfigError, match=f"holds project {project_id(1)}'s state"):
                async with collecting(sim, **FAST, project_id=project_id(0), state_path=str(state)):
                    pass

    run_async(scenario())


def test_the_default_project_is_named_by_the_listing_and_a_file_of_before_projects_is_its_own(tmp_path: Path):
    """No project configured: the key's default project, named by the projects listing before its first count."""

    async def scenario():
        sim = SimulatorService(sessions=5, runs=2, seed=6, rate=0, projects=2)
        async with simulating(sim), collecting(sim, **FAST, state_path=str(tmp_path / "state.db")) as collector:
            await collector.run_slot()
            samples = await scrape(collector.port, projects=True)
            assert set(labelled(samples, "llamacloud_collector_up")) == {project_id(0)}
            assert_each_exact(samples, sim, (project_id(0),))
            assert collector.poller.store.project_id == project_id(0)

    run_async(scenario())


def test_one_projects_budget_is_shared_fairly():
    """One request budget for every project: projects of many sessions do not starve a small one's pass, and
    together they spend one budget."""

    async def scenario():
        big = populate(World(seed=1), 200, 1)
        sim = SimulatorService(world=big, rate=0, projects=1)
        small = project_id(1)
        sim.api.projects[small] = populate(World(seed=2), 3, 1)
        sim.api.projects[project_id(2)] = populate(World(seed=3), 200, 1)  # two big ones: a budget each would show
        async with (
            simulating(sim),
            collecting(sim, interval=30.0, all_projects=True, max_requests_per_second=40.0, max_concurrency=4) as collector,
        ):
            await collector.fleet.discover()
            report = await collector.run_cycle(budget=3.0)  # about 120 requests: not enough for the big pass
            samples = await scrape(collector.port, projects=True)
            assert report.result != "success"
            assert_each_exact(samples, sim, (small,))  # the small project synced within the same cycle
            asked = list(sim.api.projects_asked)
            last = max(i for i, p in enumerate(asked) if p == small)
            assert last < 20 < len(asked), f"the small project's 4 requests took turns with the big ones': {last}"
            assert len(asked) <= 40 * 3 + 2, "one budget for every project, not one each"

    run_async(scenario())


def test_a_request_waits_its_turn_for_a_connection_as_the_caller_s_wait_not_its_own_timeout():
    """Every project's poller has its workers, and the pool has ``--max-concurrency`` + 1 connections for all of
    them: a request waits its turn for one, and that wait is the caller's (``HELD``: not a hang of its session);
    a wait that reaches the deadline gives up as the budget's does (``Deferred``: the cycle carries its work on),
    never as a timeout of the request."""

    async def scenario():
        release, both = asyncio.Event(), asyncio.Event()
        empty: dict[str, Any] = {"items": [], "next_page_token": None}
        sent: list[str] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            sent.append(request.url.params["project_id"])
            if len(sent) == 2:
                both.set()
            await release.wait()
            return httpx.Response(200, json=empty)

        client = build_client(
            Settings(base_url="https://api.test", max_concurrency=1), "llx-key", transport=httpx.MockTransport(handler)
        )
        busy = [asyncio.create_task(client.for_project(p).list_page()) for p in ("a", "b")]  # both connections
        await both.wait()
        held = [0.0]
        token = HELD.set(held)
        try:
            with pytest.raises(Deferred, match="waited for a connection"):
                await client.for_project("c").list_page(deadline=Deadline.after(0.2))
        finally:
            HELD.reset(token)
        assert held[0] >= 0.15, "the wait for a connection is the caller's, not its session's"
        assert sent == ["a", "b"], "nothing of the third was sent"
        waiting = asyncio.create_task(client.for_project("c").list_page(deadline=Deadline.after(30)))
        release.set()
        assert [(await t).items for t in (*busy, waiting)] == [(), (), ()]
        await client.aclose()

    run_async(scenario())


def test_a_listing_that_makes_up_projects_holds_a_bounded_number_of_pollers(monkeypatch: pytest.MonkeyPatch):
    """A hostile projects listing, new IDs every time: at most ``MAX_PROJECTS`` watched, and the ones let go are
    let go (no poller kept), so memory stays bounded."""
    monkeypatch.setattr("collector.projects.MAX_PROJECTS", 5)

    async def scenario():
        sim = SimulatorService(sessions=2, runs=1, seed=1, rate=0, projects=1)
        default = sim.api.projects[project_id(0)]
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            for round_ in range(6):
                sim.api.projects.clear()
                sim.api.projects[project_id(0)] = default
                for i in range(8):
                    sim.api.projects[f"made-up-{round_}-{i}"] = populate(World(seed=i), 1, 1)
                await collector.run_slot()
                assert sum(1 for w in collector.fleet.active()) <= 5
                assert len(list(collector.fleet.pollers())) <= 5 + 5  # watched, and those let go this slot
            samples = await scrape(collector.port, projects=True)
            assert len(labelled(samples, "llamacloud_collector_up")) <= 5
            assert len({dict(labels)["project_id"] for (n, labels) in samples if n == "llamacloud_project_info"}) <= 5

    run_async(scenario())


# -- found by the red team (issue 31): each pinned --------------------------------------------------------


def runs_of(samples: Samples, project: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == "llamacloud_chat_runs_total" and ("project_id", project) in labels)


@pytest.mark.parametrize("state", [False, True])
def test_a_default_named_late_never_takes_over_a_project_already_counting(state: bool, tmp_path: Path):
    """A listing that names no default, then does: the project already watched on its own goes on (before, the home
    poller took it over from zero, and runs of sessions deleted since were lost)."""

    async def scenario():
        sim = SimulatorService(sessions=6, runs=3, seed=5, rate=0, projects=2)
        named, listing = [False], sim.api.project_list

        def project_list(organization_id: str | None) -> list[dict[str, Any]]:
            return [{**p, "is_default": p["is_default"] and named[0]} for p in listing(organization_id)]

        sim.api.project_list = project_list  # type: ignore[method-assign]
        flags: dict[str, Any] = {"state_path": str(tmp_path / "s.db")} if state else {}
        async with simulating(sim), collecting(sim, **FAST, all_projects=True, **flags) as collector:
            await collector.run_slot()
            sim.api.projects[project_id(0)].delete_oldest(3)
            await collector.run_slot()
            before = runs_of(await scrape(collector.port, projects=True), project_id(0))
            named[0] = True
            await collector.run_slot()
            assert runs_of(await scrape(collector.port, projects=True), project_id(0)) == before > 0

    run_async(scenario())


def test_a_project_let_go_without_a_state_file_comes_back_where_it_was():
    async def scenario():
        sim = SimulatorService(sessions=6, runs=3, seed=5, rate=0, projects=3)
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            await collector.run_slot()
            sim.api.projects[project_id(1)].delete_oldest(3)
            await collector.run_slot()
            before = runs_of(await scrape(collector.port, projects=True), project_id(1))
            gone = sim.api.projects.pop(project_id(1))
            for _ in range(2):
                await collector.run_slot()
            assert runs_of(await scrape(collector.port, projects=True), project_id(1)) == 0, "let go"
            sim.api.projects[project_id(1)] = gone
            await collector.run_slot()
            assert runs_of(await scrape(collector.port, projects=True), project_id(1)) == before > 0

    run_async(scenario())


def test_readiness_once_reached_stays_when_a_failing_project_is_added():
    async def scenario():
        sim = SimulatorService(sessions=3, runs=1, seed=5, rate=0, projects=2)
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            await collector.run_slot()
            assert await ready(collector.port) == 200
            sim.api.projects["refused"] = populate(World(seed=1), 2, 1)
            sim.faults.add(Fault("status", endpoint="list", status=403, project="refused"), times=100)
            await collector.run_slot()
            assert await ready(collector.port) == 200
            assert labelled(await scrape(collector.port, projects=True), "llamacloud_collector_up")["refused"] == 0

    run_async(scenario())


def test_one_project_s_state_file_that_cannot_be_opened_holds_back_only_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A file SQLite cannot open now (file handles, permissions) is that project's failure, shown as up 0, and is
    left as it is: not moved aside as damaged; it is read again next slot, and nothing was lost."""
    import sqlite3

    from collector.projects import project_state_path

    async def scenario():
        sim = SimulatorService(sessions=4, runs=2, seed=5, rate=0, projects=3)
        state = tmp_path / "s.db"
        async with simulating(sim):
            async with collecting(sim, **FAST, all_projects=True, state_path=str(state)) as collector:
                await collector.run_slot()
                before = runs_of(await scrape(collector.port, projects=True), project_id(2))
            bad, real, fails = str(project_state_path(state, project_id(2))), sqlite3.connect, [1]

            def connect(path: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
                if str(path).startswith(bad) and fails[0]:
                    fails[0] -= 1
                    raise sqlite3.OperationalError("unable to open database file")
                return real(path, *args, **kwargs)

            monkeypatch.setattr(sqlite3, "connect", connect)
            async with collecting(sim, **FAST, all_projects=True, state_path=str(state)) as collector:
                await collector.run_slot()
                samples = await scrape(collector.port, projects=True)
                assert labelled(samples, "llamacloud_collector_up") == {project_id(0): 1, project_id(1): 1, project_id(2): 0}
                await collector.run_slot()
                assert runs_of(await scrape(collector.port, projects=True), project_id(2)) == before > 0
            assert not [p for p in list(tmp_path.iterdir()) if "corrupt" in p.name]  # noqa: ASYNC240

    run_async(scenario())


def test_a_429_on_the_projects_listing_never_pauses_the_projects():
    async def scenario():
        sim = SimulatorService(sessions=3, runs=1, seed=5, rate=0, projects=2)
        async with simulating(sim), collecting(sim, **FAST, all_projects=True) as collector:
            await collector.run_slot()
            sim.faults.add(Fault("status", endpoint="projects", status=429, retry_after="300"), times=100)
            for world in sim.api.projects.values():
                world.add_run(next(iter(world.sessions.values())))
            fetched = sim.api.calls["retrieve"]
            await collector.run_slot()
            assert sim.api.calls["retrieve"] - fetched == 2, "each project's new run fetched: no pause from the listing"
            assert_each_exact(await scrape(collector.port, projects=True), sim, (project_id(0), project_id(1)))

    run_async(scenario())


def test_a_configured_project_s_locked_state_file_holds_back_neither_the_start_nor_the_others(tmp_path: Path):
    """Another process holds a project's file (an exclusive lock): that project shows up 0 and is read again next
    slot; the start and the other project go on (found by the second red team: it was exit 1 for all)."""
    import sqlite3

    from collector.projects import project_state_path

    async def scenario():
        sim = SimulatorService(sessions=4, runs=2, seed=3, rate=0, projects=2)
        chosen, state = [project_id(0), project_id(1)], tmp_path / "s.db"
        async with simulating(sim):
            async with collecting(sim, **FAST, project_id=chosen, state_path=str(state)) as collector:
                await collector.run_slot()
            holder = sqlite3.connect(project_state_path(state, project_id(1)), isolation_level=None)
            holder.execute("PRAGMA locking_mode=EXCLUSIVE")
            holder.execute("BEGIN EXCLUSIVE")
            try:
                async with collecting(sim, **FAST, project_id=chosen, state_path=str(state)) as collector:
                    await collector.run_slot()
                    samples = await scrape(collector.port, projects=True)
                    assert labelled(samples, "llamacloud_collector_up") == {project_id(0): 1, project_id(1): 0}
                    assert_each_exact(samples, sim, (project_id(0),))
                    holder.rollback()
                    holder.close()
                    await collector.run_slot()
                    assert_each_exact(await scrape(collector.port, projects=True), sim, chosen)
            finally:
                holder.close()

    run_async(scenario())
