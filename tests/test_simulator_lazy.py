"""The simulator's lazy world (a million sessions): a session generated from its seed is the session materialized,
byte for byte, and its truth the same; the collector counts a lazy world exactly."""

import json
import random
import uuid

import pytest

from collector.simulator.api import Request, SimulatorApi, totals
from collector.simulator.world import World, fast_uuid, lazy_history, populate
from tests.helpers import assert_matches_truth, run_async, running, scrape

pytestmark = pytest.mark.tier("unit")

KEY = "k"


def lazy_world(sessions: int = 40, runs: int = 5, seed: int = 11) -> World:
    return populate(World(seed=seed, clock=lambda: 1_790_000_000.0, lazy=True), sessions, runs)  # a fixed clock: twins


def get(api: SimulatorApi, path: str, **query: object) -> bytes:
    request = Request.of(path, {k: str(v) for k, v in query.items()}, {"authorization": f"Bearer {KEY}"})
    response = run_async(api(request))
    assert response.status == 200, response.body
    return response.body


def test_fast_uuid_is_the_uuid_module_s():
    a, b = random.Random(3), random.Random(3)
    for _ in range(2000):
        assert fast_uuid(a) == str(uuid.UUID(int=b.getrandbits(128), version=4))


def test_a_lazy_session_is_byte_identical_materialized_and_its_truth_the_same():
    lazy, other = lazy_world(), lazy_world()  # the same seed: the same world
    assert list(lazy.sessions) == list(other.sessions)
    first = next(iter(lazy.sessions.values()))
    assert first.pending is not None and first.events, "populate leaves the first unfinished: its open run held"
    before = totals(lazy)
    assert before["runs"] == 40 * 5 and before == totals(other) and not lazy.runs
    for session_id, session in lazy.sessions.items():
        twin = other.sessions[session_id]
        assert session.lazy is not None
        body = session.detail_bytes()
        assert body == session.detail_bytes(), "generated again: the same bytes"
        assert json.loads(body)["events"] and (session.events == [] or session is first), "no event held"
        generated_truths = lazy_history(twin)[1]
        other.materialize(twin)
        assert twin.lazy is None and twin.events and twin.detail_bytes() == body
        assert other.runs[-len(generated_truths) :] == generated_truths
    assert totals(other) == before, "every session materialized: the same sums, exactly"
    assert other.events == lazy.events and other.lazy_truth["runs"] == 0 and len(other.runs) == before["runs"]


def test_a_changed_lazy_session_holds_only_what_came_after_and_reads_as_materialized():
    lazy, other = lazy_world(seed=5), lazy_world(seed=5)
    session_id = list(lazy.sessions)[7]
    for world in (lazy, other):
        session = world.sessions[session_id]
        world.add_run(session, fail=True, error_type="timeout")
        world.add_unknown_event(session_id)
        world.start_run(session)
    session, twin = lazy.sessions[session_id], other.sessions[session_id]
    assert session.lazy is not None and session.events[-1]["type"] != "stop"
    other.materialize(twin)
    assert twin.lazy is None and session.detail_bytes() == twin.detail_bytes()
    assert totals(lazy) == totals(other) and totals(lazy)["errors"] >= 1
    lazy.finish_pending(session)
    other.finish_pending(twin)
    assert session.detail_bytes() == twin.detail_bytes() and totals(lazy) == totals(other)


def test_the_api_serves_a_lazy_world():
    api = SimulatorApi(lazy_world(sessions=30, runs=3), KEY)
    listed = json.loads(get(api, "/api/v1/chat", page_size=10))
    assert len(listed["items"]) == 10 and listed["next_page_token"]
    session_id = listed["items"][4]["session_id"]
    body = json.loads(get(api, f"/api/v1/chat/{session_id}"))
    assert body["job_metadata"] == listed["items"][4]["job_metadata"] and sum(e["type"] == "stop" for e in body["events"]) == 3
    stats = json.loads(get(api, "/_sim/stats"))
    assert stats["runs"] == 90 and json.loads(get(api, "/_sim/totals"))["runs"] == 90
    assert json.loads(get(api, "/_sim/touch", fraction=0.5))["changed"] == 15
    assert json.loads(get(api, "/_sim/touch", last=1, fail=1))["changed"] == 1
    sessions = json.loads(get(api, "/_sim/sessions"))["sessions"]
    runs = json.loads(get(api, "/_sim/totals"))["runs"]
    assert sum(s["runs"] for s in sessions) == runs and runs - 90 in (16, 17)  # one more: the open run finished
    assert json.loads(get(api, "/_sim/truth"))["lazy"]["runs"] == 90


def test_the_collector_counts_a_lazy_world_exactly():
    async def scenario():
        world = lazy_world(sessions=25, runs=4, seed=9)
        async with running(world=world) as (sim, collector):
            await collector.poller.cycle()
            for session in list(world.sessions.values())[:5]:
                world.add_run(session)
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            for session in list(world.sessions.values()):
                world.materialize(session)  # every run's truth listed: the bodies are the same
            assert_matches_truth(samples, sim)

    run_async(scenario())
