"""The poll loop never goes dark (DESIGN §3, §4): sessions that fail on their own, outages, a listing pass
that spans cycles, gone detection, sessions that move between pages. In-process on the fake client, with
deadlines on an injected clock that the fake API moves, so nothing here depends on the machine's speed."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import structlog

from collector import logs
from collector.errors import FetchError, PayloadError
from tests.fakes import FakeApi, cycle, poller, run_events, total_runs
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

T0, T1 = "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00"


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    yield lambda event: [e for e in map(json.loads, stream.getvalue().splitlines()) if e["event"] == event]
    structlog.reset_defaults()


def project(n: int, runs: int = 2) -> FakeApi:
    api = FakeApi()
    for i in range(n):
        api.put(f"s{i}", T0, run_events() * runs)
    return api


class Hang:
    """A retrieve that never answers: the fake API waits until the cycle gives up on it."""


def always(api: FakeApi, sid: str, error) -> None:
    api.answers[sid] = [error] * 1000


def test_three_broken_sessions_among_nine_never_hide_the_six_others(captured):
    api = project(9)
    always(api, "s0", FetchError("retrieve: HTTP 500", operation="retrieve"))
    always(api, "s1", FetchError("retrieve: transport error: ServerDisconnectedError", operation="retrieve"))
    always(api, "s2", PayloadError("retrieve: invalid payload at events", operation="retrieve"))
    api.slow, api.retrieve_delay = {"s3"}, 30.0  # hangs far past the cycle's deadline
    p = poller(api, interval=0.5, monotonic=None)
    first = cycle(p)  # the hang waited the whole cycle: it fails on its own at once
    assert first.result == "partial" and first.carried == 0 and p.snapshot.ready
    assert total_runs(p) == 5 * 2 and p.snapshot.poll.sessions_failing == 4
    assert set(p.failing) == {"s0", "s1", "s2", "s3"}
    for _ in range(6):
        cycle(p)
    assert len(captured("session failing")) == 4  # one line each when it starts failing, not per cycle
    api.answers.clear()
    api.slow, api.retrieve_delay = set(), 0.0
    for _ in range(12):  # the longest backoff is 10 intervals
        cycle(p)
    assert total_runs(p) == 9 * 2 and p.snapshot.poll.sessions_failing == 0  # each counted once on recovery
    assert sorted(e["session_id"] for e in captured("session recovered")) == ["s0", "s1", "s2", "s3"]
    assert len(captured("session failing")) == 4


def test_a_failing_session_is_retried_with_doubling_backoff_up_to_ten_intervals():
    api = project(2)
    always(api, "s1", FetchError("retrieve: HTTP 500", operation="retrieve"))
    p = poller(api)
    tried = []
    for n in range(1, 40):
        before = api.retrieved["s1"]
        cycle(p)
        if api.retrieved["s1"] > before:
            tried.append(n)
    assert tried == [1, 2, 4, 8, 16, 26, 36]  # 1, 2, 4, 8 cycles apart, then every 10
    api.answers.clear()
    api.put("s0", T1, run_events() * 3)  # another session answers in the same cycle
    while p.failing:
        cycle(p)
    assert total_runs(p) == 5 and api.retrieved["s1"] == len(tried) + 1


def test_a_listing_that_fails_is_an_outage_not_a_sync():
    api = project(3)
    api.list_errors = [FetchError("list: HTTP 503", operation="list")]
    p = poller(api)
    report = cycle(p)
    assert report.result == "failure" and not p.snapshot.ready and p.snapshot.poll.up is False
    assert cycle(p).result == "success" and p.snapshot.ready and total_runs(p) == 6


def paced(api: FakeApi, seconds_per_page: float):
    """An injected monotonic clock that each listing page moves on by ``seconds_per_page``."""
    now = [0.0]
    api.on_list = lambda: now.__setitem__(0, now[0] + seconds_per_page)
    return lambda: now[0]


def test_a_pass_longer_than_a_cycle_commits_its_progress_and_resumes_where_it_stopped():
    api = project(20)
    api.page_size = 2  # 10 pages of 1 s each, 9 s of budget per cycle
    p = poller(api, interval=10.0, monotonic=paced(api, 1.0))
    first = cycle(p)
    assert first.result == "partial" and not first.pass_complete and 0 < total_runs(p) < 40
    assert not p.snapshot.ready and p.snapshot.poll.up  # committed, but not exposed before the first sync
    second = cycle(p)
    assert second.pass_complete and p.snapshot.ready and total_runs(p) == 40
    assert api.pages_listed == 10  # resumed from the saved page token: no page read twice
    assert p.snapshot.poll.listing_pass_duration == 10.0
    assert p.poll.result == "success"


def test_a_session_is_gone_only_when_a_complete_pass_did_not_list_it():
    api = project(6)
    api.page_size = 2
    p = poller(api, interval=2.0, monotonic=paced(api, 1.0))  # one page a cycle, after the first sync
    while not p.snapshot.ready:
        cycle(p)
    counted = total_runs(p)
    del api.sessions["s0"]  # deleted upstream, from the first page
    cycle(p)
    assert "s0" in p.state.sessions  # the pass is not done: nothing is known to be gone yet
    while not cycle(p).pass_complete:
        assert "s0" in p.state.sessions
    assert "s0" in p.state.sessions and "s0" in p.unconfirmed  # one complete pass without it: unconfirmed
    while not cycle(p).pass_complete:
        assert "s0" in p.state.sessions
    assert "s0" not in p.state.sessions and "s0" in p.state.retired and total_runs(p) == counted


def test_a_session_that_moves_between_pages_mid_pass_is_counted_once():
    api = project(6)
    api.page_size = 2
    p = poller(api, interval=2.0, monotonic=paced(api, 1.0))
    while not p.snapshot.ready:
        cycle(p)
    assert total_runs(p) == 12
    api.put("s5", T1, run_events() * 3)  # a run more, and the listing (newest last) moves it ...
    cycle(p)  # page 1 read
    order = [f"s{i}" for i in range(6)]
    api.listed = ["s5", *[s for s in order if s != "s5"]]  # ... to the first page, already read this pass
    while not cycle(p).pass_complete:
        pass
    api.put("s4", T1, run_events() * 3)
    api.listed = ["s4", *[s for s in order if s != "s4"]]  # ... and s4 moves to a page not yet read: seen twice
    for _ in range(8):
        cycle(p)
    assert total_runs(p) == 14 and set(p.state.sessions) == set(order)
    assert p.state.sessions["s5"].runs_success == 3 and p.state.sessions["s4"].runs_success == 3


def test_a_session_listed_twice_in_one_page_is_fetched_once():
    api = project(3)
    api.listed = ["s0", "s1", "s1", "s2"]
    p = poller(api)
    cycle(p)
    assert api.retrieved["s1"] == 1 and total_runs(p) == 6


def test_configured_ids_failing_on_their_own_do_not_hold_back_the_sync():
    api = project(3)
    api.summary_errors = {"s1": FetchError("summary: HTTP 500", operation="summary")}
    p = poller(api, discover=False, session_ids=("s0", "s1", "s2"))
    report = cycle(p)
    assert report.result == "partial" and p.snapshot.ready and total_runs(p) == 4
    assert p.snapshot.poll.sessions_failing == 1
    del api.summary_errors["s1"]
    cycle(p)
    assert total_runs(p) == 6 and not p.failing


def test_every_configured_id_failing_is_an_outage():
    api = project(2)
    api.summary_errors = {s: FetchError("summary: HTTP 503", operation="summary") for s in ("s0", "s1")}
    p = poller(api, discover=False, session_ids=("s0", "s1"))
    assert cycle(p).result == "failure" and not p.snapshot.ready and not p.failing


def test_cancelled_at_shutdown_a_cycle_commits_nothing():
    api = project(3)
    api.retrieve_delay = 5.0

    async def scenario():
        p = poller(api)
        task = asyncio.ensure_future(p.cycle())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return p

    p = run_async(scenario())
    assert total_runs(p) == 0 and not p.state.sessions


def test_over_loopback_a_listing_longer_than_the_interval_still_gets_ready_and_counts_exactly():
    from collector.simulator.service import SimulatorService
    from tests.helpers import assert_matches_truth, running, scrape, value

    async def scenario():
        sim = SimulatorService(sessions=1500, runs=2, seed=3, rate=0, latency=0.01)  # 10 ms from the API
        async with running(sim, interval=1.0, page_size=50) as (sim, collector):  # 30 pages, 1,500 fetches: > 0.9 s
            results = []
            for _ in range(200):  # as many cycles as this machine needs; each ends by its deadline
                results.append((await collector.poller.cycle()).result)
                if collector.poller.snapshot.ready:
                    break
            assert collector.poller.snapshot.ready and "partial" in results and "failure" not in results
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            pass_duration = value(samples, "llamacloud_collector_listing_pass_duration_seconds")
            assert pass_duration is not None and pass_duration > 0.9
            # the pass resumed from its page token every cycle (a page cut off by a deadline is read again)
            assert 30 <= sim.api.calls["list"] < 30 + len(results)
            last = list(sim.world.sessions.values())[-1]
            sim.world.add_run(last, fail=True)  # a new failed run on the last page ...
            for _ in range(3):
                await collector.poller.cycle()  # ... is counted within a pass plus a cycle
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_a_fetch_the_cycle_deadline_times_out_is_carried_not_failing():
    api = project(4)
    now = [0.0]

    class Slow(FakeApi):
        async def retrieve(self, sid, deadline=None, off_loop=None):
            if sid == "s3" and now[0] < 100:
                now[0] = 100.0  # the client gave up because the cycle's deadline came: no fault of s3
                raise FetchError("retrieve: timed out", operation="retrieve")
            return await super().retrieve(sid, deadline)

    slow = Slow()
    slow.sessions = api.sessions
    p = poller(slow, interval=60.0, monotonic=lambda: now[0], max_concurrency=1)
    first = cycle(p)
    assert first.carried == 1 and first.failed == 0 and not p.failing and not p.snapshot.ready
    cycle(p)
    assert p.snapshot.ready and total_runs(p) == 8 and not p.failing


def test_a_cycle_cancelled_after_some_fetches_leaves_the_state_exactly_as_it_was():
    """Counting is all or nothing per cycle too: a cycle cut off after counting some sessions is rolled back
    field for field (sessions, retired sessions and every aggregate), and the next cycle counts it all once."""
    import copy

    api = project(4)
    p = poller(api)
    cycle(p)
    before = (copy.deepcopy(p.state.sessions), dict(p.state.retired), json.dumps(p.state.aggregates.to_dict()))
    for sid in ("s0", "s1"):
        api.put(sid, "2026-01-02T00:00:00Z", run_events() * 3)
    del api.sessions["s3"]
    api.slow, api.retrieve_delay = {"s1"}, 5.0

    async def cancelled():
        task = asyncio.ensure_future(p.cycle())
        while api.retrieved["s0"] < 2:  # noqa: ASYNC110 - s0 fetched and counted in this cycle; s1 on its way
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(cancelled())
    assert (p.state.sessions, dict(p.state.retired), json.dumps(p.state.aggregates.to_dict())) == before
    api.retrieve_delay = 0.0
    cycle(p)  # ends the pass the cancelled cycle began (its fetches were not carried: they start over)
    cycle(p)
    assert total_runs(p) == 8 + 2  # s0 and s1 gained one run each; s3's two runs stay counted


def test_the_listing_pass_duration_is_the_wall_time_from_its_first_page_to_its_end():
    api = project(6)
    api.page_size = 2
    clock = [100.0]
    api.on_list = lambda: clock.__setitem__(0, clock[0] + 2.0)  # each page takes 2 s
    p = poller(api, monotonic=lambda: clock[0])
    cycle(p)
    assert p.last_pass_duration == pytest.approx(6.0)  # three pages of 2 s; the fetches take no time here
    assert p.snapshot.poll.listing_pass_duration == pytest.approx(6.0)


def test_eight_hanging_sessions_cost_at_most_two_cycles_with_nothing_fetched():
    """Issue 27: as many hangs as workers. A hang is carried once, then fails on its own; its retries (and
    the carried) take at most half of the workers, and a retry cut again hangs at once."""
    api = project(9)
    api.slow, api.retrieve_delay = {f"s{i}" for i in range(8)}, 30.0
    p = poller(api, interval=0.5, monotonic=None)
    idle = 0
    for n in range(25):
        api.put("s8", f"2026-01-01T00:{n + 1:02}:00+00:00", run_events() * (n + 3))  # a new run every cycle
        before = api.retrieved["s8"]
        cycle(p)
        idle += api.retrieved["s8"] == before
    assert idle <= 2, idle
    assert p.state.sessions["s8"].runs_success >= 26  # its runs counted as they came, at most a cycle late
