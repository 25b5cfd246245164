"""Upstream faults from the simulator over loopback: the collector keeps serving, reports, recovers exactly."""

import asyncio
import socket
from typing import Any

import pytest

from collector.simulator.api import Fault
from collector.simulator.world import World, populate
from tests.helpers import assert_matches_truth, run_async, running, scrape, value

pytestmark = pytest.mark.tier("unit")

FAST: dict[str, Any] = {"interval": 3.0, "read_timeout": 0.5, "connect_timeout": 0.5}


def synced(sessions=8, runs=2, seed=31, **flags):
    """The pair after its first cycle, with fast timeouts."""
    return running(world=populate(World(seed=seed), sessions, runs), cycle=True, **{**FAST, **flags})


def change_one(sim):
    session = next(s for s in sim.world.sessions.values() if s.pending is None)
    sim.world.add_run(session)
    return session


# (fault, endpoint, times, result of the faulted cycle, up, counter that must move)
CASES = [
    (
        Fault("status", "list", 429, retry_after="1"),
        1,
        "success",
        1,
        ("llamacloud_collector_api_retries_total", {"operation": "list", "reason": "429"}),
    ),
    (
        Fault("status", "list", 500),
        1,
        "failure",
        0,
        ("llamacloud_collector_api_requests_total", {"operation": "list", "code": "500"}),
    ),
    (
        Fault("status", "retrieve", 502),
        1,
        "success",
        1,
        ("llamacloud_collector_api_retries_total", {"operation": "retrieve", "reason": "502"}),
    ),
    (
        Fault("status", "retrieve", 503),
        20,
        "partial",
        1,
        ("llamacloud_collector_api_requests_total", {"operation": "retrieve", "code": "503"}),
    ),
    (
        Fault("status", "list", 504),
        1,
        "success",
        1,
        ("llamacloud_collector_api_retries_total", {"operation": "list", "reason": "504"}),
    ),
    (
        Fault("slow", "retrieve", delay=1.5),
        1,
        "success",
        1,
        ("llamacloud_collector_api_retries_total", {"operation": "retrieve", "reason": "timeout"}),
    ),
    # A reset on a pooled keep-alive connection is retried once by the transport, as a stale connection.
    (Fault("reset", "list"), 1, "success", 1, ("llamacloud_collector_api_requests_total", {"operation": "list", "code": "200"})),
    (
        Fault("reset", "list"),
        3,
        "success",
        1,
        ("llamacloud_collector_api_retries_total", {"operation": "list", "reason": "transport"}),
    ),
    (
        Fault("cut", "retrieve"),
        1,
        "success",
        1,
        ("llamacloud_collector_api_retries_total", {"operation": "retrieve", "reason": "transport"}),
    ),
    (Fault("bad_json", "retrieve"), 1, "partial", 1, ("llamacloud_collector_invalid_payloads_total", {"operation": "retrieve"})),
    (Fault("html", "list"), 1, "failure", 0, ("llamacloud_collector_invalid_payloads_total", {"operation": "list"})),
    (
        Fault("content_type", "retrieve"),
        1,
        "partial",
        1,
        ("llamacloud_collector_invalid_payloads_total", {"operation": "retrieve"}),
    ),
]


@pytest.mark.parametrize("fault,times,result,up,moved", CASES, ids=[f"{c[0].kind}-{c[0].status}-{c[0].endpoint}" for c in CASES])
def test_fault_is_reported_and_recovered_exactly(fault, times, result, up, moved):
    async def scenario():
        async with synced() as (sim, collector):
            change_one(sim)
            sim.faults.add(fault, times)
            name, labels = moved
            before = await scrape(collector.port)
            polls = value(before, "llamacloud_collector_polls_total", result=result)
            assert polls is not None
            report = await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert 0 < sim.faults.injected[fault.kind] <= times  # the fault really happened
            assert report.result == result, report
            assert value(samples, "llamacloud_collector_up") == up
            assert value(samples, "llamacloud_collector_polls_total", result=result) == polls + 1
            # The counter moved in this cycle (not merely at some point since the first sync). A single
            # reset of a pooled connection is retried by aiohttp itself: only the 200 that followed shows.
            assert (value(samples, name, **labels) or 0) > (value(before, name, **labels) or 0), (name, labels)
            sim.faults.queue.clear()
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            assert value(samples, "llamacloud_collector_up") == 1

    run_async(scenario())


def test_scrapes_answer_while_a_cycle_waits_on_a_slow_api():
    async def scenario():
        async with synced(read_timeout=10.0, interval=10.0) as (sim, collector):
            change_one(sim)
            sim.faults.add(Fault("slow", "retrieve", delay=3.0))
            cycle = asyncio.create_task(collector.poller.cycle())
            await asyncio.sleep(0.3)
            samples = await scrape(collector.port)
            assert not cycle.done(), "the scrape was answered while the cycle still waited on the API"
            assert value(samples, "llamacloud_chat_runs_total", outcome="success") is not None
            await cycle
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_connect_timeout_on_a_black_hole():
    async def scenario():
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        fillers = []
        for _ in range(3):  # fill the accept backlog: further SYNs are dropped, connects hang
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(hole.getsockname())
            except BlockingIOError:
                pass
            fillers.append(c)
        try:
            hole_url = f"http://127.0.0.1:{hole.getsockname()[1]}"  # a project named: the listing is the first call
            async with running(sessions=1, **{**FAST, "base_url": hole_url, "project_id": "p1"}) as (
                _sim,
                collector,
            ):
                report = await collector.poller.cycle()
                samples = await scrape(collector.port)
                assert report.result == "failure" and ("timed out" in report.errors[0] or "deadline" in report.errors[0])
                assert value(samples, "llamacloud_collector_up") == 0
                failed = value(samples, "llamacloud_collector_api_requests_total", operation="list", code="error")
                assert failed is not None and failed >= 1
        finally:
            for c in fillers:
                c.close()
            hole.close()

    run_async(scenario())


def test_huge_payload_is_processed():
    async def scenario():
        async with synced(read_timeout=30.0) as (sim, collector):
            session = next(s for s in sim.world.sessions.values() if s.pending is None)
            sim.world.add_huge_run(session, 20 * 1024 * 1024)
            assert len(session.detail_bytes()) > 20 * 1024 * 1024
            report = await collector.poller.cycle()
            assert report.result == "success" and report.runs_added == 1
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_session_deleted_between_list_and_retrieve():
    async def scenario():
        async with synced() as (sim, collector):
            seen_events = sim.world.events.copy()
            session = change_one(sim)
            lost = sim.world.runs[-1]  # deleted before the collector could see it
            sim.faults.add(Fault("gone", "retrieve"))
            report = await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert report.result == "success" and report.removed == 1
            assert value(samples, "llamacloud_collector_sessions_watched") == 7
            sim.world.runs.remove(lost)
            sim.world.events = seen_events
            assert_matches_truth(samples, sim)  # the deleted session's earlier runs stay counted
            assert session.session_id not in collector.poller.state.sessions

    run_async(scenario())


def test_unknown_event_type_is_counted_not_fatal():
    async def scenario():
        async with synced() as (sim, collector):
            change_one(sim)
            sim.faults.add(Fault("unknown_event", "retrieve"))
            report = await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert report.result == "success"
            assert sim.world.events["_unknown"] >= 1
            assert_matches_truth(samples, sim)

    run_async(scenario())


def test_auth_failure_reports_and_recovers():
    async def scenario():
        async with synced() as (sim, collector):
            sim.api.api_key = "rotated"
            report = await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert report.result == "failure" and value(samples, "llamacloud_collector_up") == 0
            assert value(samples, "llamacloud_collector_api_requests_total", operation="list", code="401") == 1
            assert value(samples, "llamacloud_collector_api_retries_total", operation="list", reason="401") is None
            sim.api.api_key = "simulator"
            await collector.poller.cycle()
            assert value(await scrape(collector.port), "llamacloud_collector_up") == 1

    run_async(scenario())


def test_explicit_sessions_with_a_refused_key_fail_the_cycle_cleanly():
    async def scenario():
        world = populate(World(seed=31), 20, 1)
        async with running(world=world, session_ids=list(world.sessions), **FAST) as (sim, collector):
            sim.api.api_key = "rotated"
            report = await collector.poller.cycle()
            calls = sim.api.calls["summary"]
            await asyncio.sleep(0.2)
            assert report.result == "failure" and "401" in report.errors[0]
            assert sim.api.calls["summary"] == calls, "no worker keeps calling after the cycle failed"
            assert calls <= 8  # one round of workers, not all 20 sessions

    run_async(scenario())
