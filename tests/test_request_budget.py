"""``--max-requests-per-second`` and a 429's pause (issue 30): the budget every API request spends.

The unit cases drive ``RequestBudget`` and the client on a frozen or stepped clock; the process cases run the
real CLI against the simulator over loopback and read what the simulator saw arrive (``/_sim/arrivals``).
Nothing here asserts how long a thing took, only what bounds it from below (a budget never lets requests
out faster) or what it counted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from collector.app import build_client
from collector.cadence import Deadline
from collector.llamacloud.budget import MAX_PAUSE, BudgetTimeout, RequestBudget
from collector.llamacloud.client import rate_limit_remaining, retry_after
from collector.metrics import SelfMetrics
from collector.settings import Settings, load_settings
from collector.wiring import wire
from tests.helpers import assert_samples_match, parse, remote_truth, run_async
from tests.stack import Processes, free_port, wait_until

pytestmark = pytest.mark.tier("unit")

KEY = "llx-budget-key"


class SteppedClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, list[float]()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- the budget on its own ------------------------------------------------------------------------------


def test_the_listing_and_the_fetches_take_turns_while_both_wait():
    """Eight fetches and one listing all waiting: they alternate, so the listing gets half the budget (not a
    ninth, as one queue for all would give it) and the fetches the other half."""
    order: list[str] = []

    async def scenario():
        budget = RequestBudget(200.0)

        async def ask(kind: str, times: int) -> None:
            for _ in range(times):
                await budget.spend(kind, None)
                order.append(kind)

        await asyncio.gather(ask("list", 12), *(ask("retrieve", 3) for _ in range(8)))

    run_async(scenario())
    both = order[1 : 1 + 2 * 11]  # after the first (the bucket starts empty), both kinds wait until the listing is done
    assert all(a != b for a, b in itertools.pairwise(both)), order
    assert order.count("list") == 12 and order.count("retrieve") == 24


def test_a_pause_holds_every_request_and_is_counted_as_waiting():
    clock, waited = SteppedClock(), list[float]()
    budget = RequestBudget(None, waited=waited.append, clock=clock, sleep=clock.sleep)
    assert budget.pause(3.0) == 3.0
    run_async(budget.spend("retrieve", Deadline(clock.now + 10, clock)))
    assert clock.sleeps == [3.0] and waited == [3.0]
    run_async(budget.spend("list", None))  # the pause is over: no wait, nothing counted
    assert clock.sleeps == [3.0] and waited == [3.0]


def test_a_pause_made_longer_meanwhile_is_waited_out_too():
    clock = SteppedClock()
    budget = RequestBudget(None, clock=clock, sleep=clock.sleep)
    budget.pause(2.0)

    async def sleep(seconds: float) -> None:  # a second 429 arrives while the first pause runs
        await SteppedClock.sleep(clock, seconds)
        if len(clock.sleeps) == 1:
            budget.pause(5.0)

    budget._sleep = sleep
    run_async(budget.spend("retrieve", None))
    assert clock.sleeps == [2.0, 5.0]


def test_a_pause_past_the_deadline_gives_up_at_once_and_a_hostile_one_is_capped():
    clock = SteppedClock()
    budget = RequestBudget(None, clock=clock, sleep=clock.sleep)
    assert budget.pause(1e12) == MAX_PAUSE  # Retry-After: 999999999999 stops nothing for good
    with pytest.raises(BudgetTimeout) as caught:
        run_async(budget.spend("retrieve", Deadline(clock.now + 60, clock)))
    assert caught.value.paused and clock.sleeps == []
    assert budget.pause(-5) == MAX_PAUSE  # a negative pause shortens nothing


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_budget_is_a_finite_rate_above_zero(rate):
    with pytest.raises(ValueError):
        RequestBudget(rate)


def test_requests_wait_for_their_place_at_the_rate():
    """Six requests at 20 a second: the first goes at once, then one every 50 ms at the earliest (a busy
    machine only makes it slower); the time waited is counted."""
    waited: list[float] = []

    async def scenario() -> float:
        budget = RequestBudget(20.0, waited=waited.append)
        started = time.monotonic()
        await asyncio.gather(*(budget.spend("retrieve", None) for _ in range(6)))
        return time.monotonic() - started

    assert run_async(scenario()) >= 5 / 20 * 0.99
    assert sum(waited) >= (1 + 2 + 3 + 4 + 5) / 20 * 0.99


def test_a_place_in_the_rate_after_the_deadline_is_given_up_at_the_deadline():
    async def scenario():
        budget = RequestBudget(0.1)  # one request every 10 s
        await budget.spend("retrieve", None)
        with pytest.raises(BudgetTimeout) as caught:
            await budget.spend("retrieve", Deadline.after(0.05))
        assert not caught.value.paused

    run_async(scenario())


# -- the budget in the client -----------------------------------------------------------------------------


def client_with(handler, clock: SteppedClock, **settings):
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry)
    client = build_client(
        Settings(base_url="https://api.test", **settings),
        "llx-key",
        metrics,
        httpx.MockTransport(handler),
        clock=clock,
        sleep=clock.sleep,
        wall_clock=lambda: 1_000_000.0,
        rng=lambda: 1.0,
    )
    return client, registry


SUMMARY: dict[str, object] = {"session_id": "s1", "last_updated_at": "2026-01-01T00:00:00+00:00"}


def test_a_429_pauses_the_next_request_of_any_kind_and_the_pause_is_counted():
    clock, seen = SteppedClock(), []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((clock.now, request.url.path))
        if len(seen) == 1:
            return httpx.Response(429, json={}, headers={"Retry-After": "3", "X-RateLimit-Remaining": "0"})
        body: dict[str, object] = {"items": [], "next_page_token": None} if request.url.path == "/api/v1/chat" else SUMMARY
        return httpx.Response(200, json=body, headers={"X-RateLimit-Remaining": "41"})

    client, registry = client_with(handler, clock)

    async def scenario():
        await client.summary("s1", Deadline(clock.now + 30, clock))  # 429, then sent again 3 s on
        await client.list_page(None)  # the pause is over: at once

    run_async(scenario())
    assert [t - 1000.0 for t, _ in seen] == [0.0, 3.0, 3.0]
    assert registry.get_sample_value("llamacloud_collector_api_budget_wait_seconds_total") == 3.0
    assert registry.get_sample_value("llamacloud_collector_api_rate_limit_remaining") == 41.0


def test_the_pause_a_429_asks_for_is_read_as_the_vendors_sdks_read_it():
    assert retry_after(None, 0.0, "1500") == 1.5  # retry-after-ms first
    assert retry_after("2.5", 0.0) == 2.5 and retry_after("7", 0.0) == 7.0
    assert retry_after("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    for hostile in ("-3", "nan", "inf", "1e9999", "1_0", "9" * 40, "٣"):
        assert retry_after(hostile, 0.0) is None, hostile


def test_the_remaining_requests_header_is_read_where_apis_put_it():
    assert rate_limit_remaining(httpx.Headers({"X-RateLimit-Remaining": "12"})) == 12.0
    assert rate_limit_remaining(httpx.Headers({"x-ratelimit-remaining-requests": "99"})) == 99.0
    assert rate_limit_remaining(httpx.Headers({"RateLimit-Remaining": "3"})) == 3.0
    assert rate_limit_remaining(httpx.Headers({"X-RateLimit-Remaining": "lots"})) is None
    assert rate_limit_remaining(httpx.Headers({})) is None


def test_the_rate_is_shared_by_the_shards():
    settings = load_settings({"max_requests_per_second": 12, "total_shards": 3, "shard": 1}, {})
    assert wire(settings).client.max_requests_per_second == 4.0
    assert wire(load_settings({}, {})).client.max_requests_per_second is None


def test_a_budget_that_leaves_a_cycle_under_two_requests_is_refused_as_a_cliff():
    from collector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"fewer than 2 requests; raise it to at least 1.33 or the interval"):
        load_settings({"max_requests_per_second": 1, "total_shards": 3, "interval": 5}, {})
    load_settings({"max_requests_per_second": 1.34, "total_shards": 3, "interval": 5}, {})  # 2.01 a cycle


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "fast"])
def test_a_bad_budget_is_one_line_naming_the_setting(value):
    from collector.errors import ConfigError

    with pytest.raises(ConfigError, match="max-requests-per-second"):
        load_settings({}, {"COLLECTOR_MAX_REQUESTS_PER_SECOND": value})


# -- the real CLI against the simulator ---------------------------------------------------------------


def worst_window(arrivals: list[float], seconds: float) -> int:
    """The most requests that arrived within any ``seconds``-long window (half-open)."""
    arrivals = sorted(arrivals)
    return max((bisect.bisect_left(arrivals, t + seconds) - i for i, t in enumerate(arrivals)), default=0)


@contextlib.contextmanager
def pair(tmp_path, sessions: int, *flags: str) -> Iterator[tuple[str, str]]:
    """The simulator and a collector of it (with ``flags``) as processes over loopback: their base URLs. Both are
    stopped whatever the test does, a simulator that never came up too."""
    procs = Processes(tmp_path)
    try:
        sim_port, col_port = free_port(), free_port()
        procs.collector(
            "simulator", "simulate", "--port", str(sim_port), "--sessions", str(sessions), "--rate", "0", "--seed", "5",
            env={"LLAMA_CLOUD_API_KEY": KEY},
        )  # fmt: skip
        sim = f"http://127.0.0.1:{sim_port}"
        wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
        procs.collector(
            "collector", "--listen", f"127.0.0.1:{col_port}", *flags,
            env={"LLAMA_CLOUD_API_KEY": KEY, "LLAMA_CLOUD_BASE_URL": sim},
        )  # fmt: skip
        yield sim, f"http://127.0.0.1:{col_port}"
    finally:
        procs.stop_all()


def metrics_of(collector: str) -> dict:
    return parse(httpx.get(collector + "/metrics").text)


def exact(sim: str, collector: str) -> bool:
    runs, events = remote_truth(sim)
    try:
        assert_samples_match(metrics_of(collector), runs, events)
    except AssertionError:
        return False
    return True


def arrivals(sim: str) -> list[tuple[float, str, int]]:
    return [tuple(a) for a in httpx.get(sim + "/_sim/arrivals").json()["arrivals"]]


@pytest.mark.tier("process")
def test_five_requests_a_second_hold_over_any_ten_seconds_and_counts_stay_exact(tmp_path):
    with pair(tmp_path, 80, "--interval", "5", "--page-size", "20", "--max-requests-per-second", "5") as (sim, collector):
        wait_until(lambda: httpx.get(collector + "/readyz").status_code == 200, 120, "the first sync at 5/s")
        wait_until(lambda: exact(sim, collector), 60, "counts equal to the simulator's truth")
        httpx.get(sim + "/_sim/touch", params={"fraction": 0.25, "fail": 1})
        wait_until(lambda: exact(sim, collector), 60, "the new runs counted")
        seen = [t for t, _, _ in arrivals(sim)]
        # 5 a second, evenly spaced: at most 50 in any 10 s, and one more where loopback jitter moves a
        # request across the window's edge
        assert len(seen) > 100 and worst_window(seen, 10.0) <= 51, worst_window(seen, 10.0)
        samples = metrics_of(collector)
        assert samples[("llamacloud_collector_api_budget_wait_seconds_total", frozenset())] > 0
        lag_count = samples[("llamacloud_collector_count_lag_seconds_count", frozenset())]
        lag_sum = samples[("llamacloud_collector_count_lag_seconds_sum", frozenset())]
        print(f"\nrequests {len(seen)}, worst 10 s window {worst_window(seen, 10.0)}, mean lag {lag_sum / lag_count:.1f} s")


@pytest.mark.tier("process")
def test_a_429_with_retry_after_pauses_the_whole_client_which_stays_up_exact_and_ready(tmp_path):
    with pair(tmp_path, 40, "--interval", "10", "--max-concurrency", "8") as (sim, collector):
        wait_until(lambda: exact(sim, collector), 60, "the first sync")
        before = len(arrivals(sim))
        httpx.get(sim + "/_sim/fault", params={"kind": "status", "status": 429, "retry_after": 3, "endpoint": "retrieve"})
        httpx.get(sim + "/_sim/touch", params={"fraction": 1})  # 40 fetches wanted at once
        wait_until(lambda: exact(sim, collector), 60, "every new run counted after the pause")
        new = arrivals(sim)[before:]
        refused = [t for t, _, status in new if status == 429]
        assert len(refused) == 1
        # requests already sent when the 429 came back may still arrive just after it; none is sent during
        # the pause: the next ones come 3 s on
        during = [t for t, _, _ in new if refused[0] + 0.5 < t < refused[0] + 2.9]
        assert during == [], f"{len(during)} requests during the pause"
        assert httpx.get(collector + "/readyz").status_code == 200
        samples = metrics_of(collector)
        assert samples[("llamacloud_collector_up", frozenset())] == 1.0
        assert samples[("llamacloud_collector_api_budget_wait_seconds_total", frozenset())] >= 2.5


@pytest.mark.tier("process")
def test_an_upstream_rate_limit_is_followed_counted_exactly_and_its_header_exported(tmp_path):
    with pair(tmp_path, 60, "--interval", "5", "--page-size", "20") as (sim, collector):
        httpx.get(sim + "/_sim/ratelimit", params={"limit": 15, "window": 1})
        wait_until(lambda: httpx.get(collector + "/readyz").status_code == 200, 120, "the first sync under the limit")
        wait_until(lambda: exact(sim, collector), 60, "counts equal to the truth")
        refused = httpx.get(sim + "/_sim/ratelimit").json()["refused"]
        samples = metrics_of(collector)
        assert refused > 0, "the limit was never reached: the test proves nothing"
        assert ("llamacloud_collector_api_rate_limit_remaining", frozenset()) in samples
        assert samples[("llamacloud_collector_up", frozenset())] == 1.0


def test_a_pause_past_the_cycle_is_a_cut_cycle_not_sessions_failing_on_their_own():
    """Every fetch of the cycle is deferred by a 429 whose pause outlasts the cycle: none of those sessions is
    put on its own backoff, the cycle is cut, and the next one after the pause counts them all exactly."""
    from collector.simulator.api import Fault
    from tests.helpers import assert_matches_truth, collecting, scrape, simulating

    async def scenario():
        async with simulating(sessions=12) as sim, collecting(sim, cycle=True, interval=2.0) as collector:
            poller = collector.poller
            for session in list(sim.world.sessions.values()):
                sim.world.add_run(session, False)
            sim.faults.add(Fault("status", "retrieve", 429, "3"))  # a pause of 3 s; a cycle has 1.8
            await poller.cycle()
            assert not poller.failing, "a 429's pause is no session's fault"
            await asyncio.sleep(collector.client._budget.paused_for())  # the rest of the pause (one 429 only)
            await poller.cycle()
            assert not poller.failing
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_a_fetch_held_by_the_budget_is_not_a_fetch_that_hangs():
    """Under a tight budget, the workers wait at the limiter for longer than a cycle: the time a fetch waited
    for the budget is not its session hanging, so none is put on its own backoff, and all are counted. (Found
    with the real CLI at 2 a second: seven sessions were 'failing' with 'no answer in 4.5 s'.)"""
    from tests.helpers import assert_matches_truth, collecting, scrape, simulating

    async def scenario():
        async with (
            simulating(sessions=16) as sim,
            collecting(sim, interval=2.0, max_requests_per_second=4.0, page_size=8) as collector,
        ):
            poller = collector.poller
            cycles = 0
            while not poller.state.synced:  # 18 requests at 4 a second, cycles of 1.8 s: the sync spans cycles
                await poller.cycle()
                cycles += 1
                assert not poller.failing, "a fetch held by the budget was taken for a hang"
                assert cycles < 40, "the first sync never ended"
            assert cycles > 2, "the budget held nothing back: the test proves nothing"
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_requests_waiting_for_their_place_when_a_429_comes_wait_out_its_pause_too():
    """Red team, B1: the pause was checked once, before the limiter, so the requests queued there went out
    during it (7 of 8 at 5 a second). Only what bounds the sending from below is asserted."""

    async def scenario() -> list[float]:
        budget, sent = RequestBudget(20.0), list[float]()
        started = time.monotonic()

        async def fetch(first: bool) -> None:
            await budget.spend("retrieve", None)
            sent.append(time.monotonic() - started)
            if first:
                budget.pause(0.5)  # its answer: a 429 with Retry-After

        await asyncio.gather(fetch(True), *(fetch(False) for _ in range(5)))
        return sorted(sent)

    sent = run_async(scenario())
    assert all(t >= 0.5 * 0.99 for t in sent[1:]), sent


def test_a_429_without_retry_after_pauses_the_client_for_its_backoff_and_the_header_gone_is_absent():
    """Red team, B4 and B5: a bare 429 slows every request (DESIGN §6: "a 429 slows it further"), and a
    remaining-requests header that stops coming no longer shows its last value."""
    clock, answers = SteppedClock(), iter([(429, {"X-RateLimit-Remaining": "0"}), (200, {})])

    def handler(request: httpx.Request) -> httpx.Response:
        status, headers = next(answers)
        return httpx.Response(status, json=SUMMARY if status == 200 else {}, headers=headers)

    client, registry = client_with(handler, clock)
    run_async(client.summary("s1", Deadline(clock.now + 60, clock)))
    assert clock.sleeps and clock.sleeps[0] > 0, "the client paused for its backoff"
    assert registry.get_sample_value("llamacloud_collector_api_budget_wait_seconds_total") == clock.sleeps[0]
    assert registry.get_sample_value("llamacloud_collector_api_rate_limit_remaining") is None


def test_a_cycle_a_429_pause_keeps_from_sending_anything_is_an_outage():
    """Red team, B2: with the listing done, a pause that outlasted the cycle reported partial and up 1."""
    from collector.simulator.api import Fault
    from tests.helpers import collecting, simulating

    async def scenario():
        async with simulating(sessions=6) as sim, collecting(sim, cycle=True, interval=2.0) as collector:
            poller = collector.poller
            for session in list(sim.world.sessions.values()):
                sim.world.add_run(session, False)
            sim.faults.add(Fault("status", "retrieve", 429, "60"))
            await poller.cycle()  # the listing answered: up; the fetches wait for the pause, carried
            assert poller.snapshot.poll.up is True and poller.listing is not None and poller.listing.listed_all
            await poller.cycle()  # the pass is listed: only fetches, all held by the pause: nothing answered
            assert poller.snapshot.poll.up is False and not poller.failing

    run_async(scenario())
