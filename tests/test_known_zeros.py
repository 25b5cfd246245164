"""Every label value known in advance is exposed at 0 from the first sync (DESIGN §5, issue 29): the first
failure of a kind is then a step from 0 that ``increase()`` sees, not a new series it cannot."""

from __future__ import annotations

import pytest

from collector.derive import DEFAULT_ERROR_RULES, OTHER_ERROR
from collector.families import EVENT_TYPES
from collector.simulator.world import World, populate
from tests.helpers import assert_matches_truth, collecting, family, run_async, scrape, simulating, value

pytestmark = pytest.mark.tier("unit")


def labelled(samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for key in family(samples, name)}


def test_error_types_events_outcomes_of_every_index_and_tool_are_at_zero_from_the_first_sync():
    async def scenario():
        world = populate(World(seed=11, error_rate=0.0), 12, 2)  # no run has failed yet
        async with simulating(world=world) as sim, collecting(sim) as collector:
            assert value(await scrape(collector.port), "llamacloud_chat_runs_total", outcome="error") is None  # not synced
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            types = [t for t, _ in DEFAULT_ERROR_RULES] + [OTHER_ERROR]
            for error_type in types:
                assert value(samples, "llamacloud_chat_run_errors_total", error_type=error_type) == 0, error_type
            assert labelled(samples, "llamacloud_chat_events_total", "event_type") == set(EVENT_TYPES)
            indexes = labelled(samples, "llamacloud_chat_index_runs_total", "index_id")
            assert indexes and all(
                value(samples, "llamacloud_chat_index_runs_total", index_id=i, outcome="error") == 0 for i in indexes
            )
            assert all(
                value(samples, "llamacloud_chat_index_run_errors_total", index_id=i, error_type=t) == 0
                for i in indexes
                for t in types
            )
            tools = labelled(samples, "llamacloud_chat_tool_calls_total", "tool")
            assert tools and all(
                value(samples, "llamacloud_chat_tool_calls_total", tool=t, outcome=o) is not None
                for t in tools
                for o in ("result", "no_result")
            )
            assert_matches_truth(samples, sim)  # zeros are no count
            session = next(iter(world.sessions.values()))
            world.add_run(session, True, error_type="auth")
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert value(samples, "llamacloud_chat_run_errors_total", error_type="auth") == 1
            assert value(samples, "llamacloud_chat_run_errors_total", error_type="timeout") == 0
            assert_matches_truth(samples, sim)

    run_async(scenario())


def test_a_configured_error_type_is_at_zero_too_and_the_zeros_are_not_stored():
    async def scenario():
        rules = [{"type": "quota", "pattern": "quota"}]
        async with simulating(sessions=4) as sim, collecting(sim, cycle=True, error_rules=rules) as collector:
            samples = await scrape(collector.port)
            shown = labelled(samples, "llamacloud_chat_run_errors_total", "error_type")
            stored = collector.poller.state.aggregates.counters["errors"]
            assert shown == {"quota", OTHER_ERROR} | set(stored), "the configured types, and what was counted"
            assert "quota" not in stored, "a zero shown is not a zero stored"

    run_async(scenario())
