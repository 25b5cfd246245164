"""``llamacloud_collector_count_lag_seconds`` (DESIGN §5): from the ``last_updated_at`` of the answer that brought a
session's new runs to the commit that counted them, on the fake API with a frozen clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fakes import FakeApi, cycle, poller, run_events, self_metrics

pytestmark = pytest.mark.tier("unit")

T0 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def observed(p) -> list[tuple[str, float]]:
    """(le, cumulative count) of the histogram, and its sum and count."""
    registry_samples = [s for m in self_metrics(p).count_lag.collect() for s in m.samples]
    return [(s.labels.get("le", s.name), s.value) for s in registry_samples]


def lag_sum_count(p) -> tuple[float, float]:
    samples = {s.name: s.value for m in self_metrics(p).count_lag.collect() for s in m.samples if "le" not in s.labels}
    return samples["llamacloud_collector_count_lag_seconds_sum"], samples["llamacloud_collector_count_lag_seconds_count"]


def test_the_first_sync_is_not_lag_then_each_session_with_new_runs_is_one_observation():
    api, now = FakeApi(), [T0 + 5000.0]
    api.put("a", at(0), run_events())
    api.put("b", at(0), run_events())
    p = poller(api, now)
    cycle(p)
    assert lag_sum_count(p) == (0.0, 0.0), "the first sync's runs are history, not late"
    api.put("a", at(5030), run_events() + run_events(failed=True) + run_events())  # two new runs, one session
    now[0] = T0 + 5042.0
    cycle(p)
    assert lag_sum_count(p) == (12.0, 1.0)
    cycle(p)  # nothing new: nothing observed
    assert lag_sum_count(p) == (12.0, 1.0)


def test_a_timestamp_ahead_of_the_clock_counts_as_zero():
    api, now = FakeApi(), [T0 + 100.0]
    api.put("a", at(0), run_events())
    p = poller(api, now)
    cycle(p)
    api.put("a", at(400), run_events() + run_events())  # upstream's clock 5 minutes ahead
    cycle(p)
    assert lag_sum_count(p) == (0.0, 1.0)
    assert dict(observed(p))["1.0"] == 1.0


def test_a_session_whose_runs_did_not_grow_is_not_observed():
    """A changed timestamp with no new finished run (a run still in progress) is no lag."""
    api, now = FakeApi(), [T0 + 100.0]
    api.put("a", at(0), run_events())
    p = poller(api, now)
    cycle(p)
    api.put("a", at(50), [*run_events(), {"type": "user_input", "content": "next"}])
    cycle(p)
    assert lag_sum_count(p) == (0.0, 0.0)


def test_a_pass_longer_than_a_cycle_is_followed_at_once_by_the_next_in_the_same_slot():
    """bench/lag.py found it: a slot whose cycle ended a carried pass early idled until the next slot, so new
    runs waited two intervals and more. Now the rest of the slot starts the next pass."""
    from tests.helpers import collecting, run_async, simulating

    async def scenario():
        async with (
            simulating(sessions=30) as sim,
            collecting(sim, interval=2.0, page_size=5, project_id="p1") as collector,  # named: no listing first
        ):
            sim.api.latency = 0.4  # 6 pages one after another: about 2.4 s, over a cycle's 1.8 s
            await collector.run_slot()
            assert collector.poller.cycles == 1 and collector.poller.listing is not None  # cut mid-pass
            await collector.run_slot()  # ends the pass, then starts the next in what is left of the slot
            assert collector.poller.cycles == 3
            sim.api.latency = 0.0
            await collector.run_slot()  # ends the pass the last slot started, and the next one fits: two cycles
            assert collector.poller.cycles == 5
            await collector.run_slot()  # a pass within one cycle: one cycle a slot, as before
            assert collector.poller.cycles == 6

    run_async(scenario())
