"""The counting core in-process, on a fake API client and injected clocks: each test names one behaviour
that a planted bug once broke without any test noticing (issue "Tests that catch every counting bug")."""

from __future__ import annotations

import json

import pytest

from collector.aggregates import OTHER_LABEL, Aggregates
from collector.derive import RunRecord, ToolCall
from collector.errors import FetchError, NotFound
from tests.fakes import BUCKETS, FakeApi, cycle, poller, run_events, total_runs

pytestmark = pytest.mark.tier("unit")


def test_a_lagging_replica_is_ignored_and_the_run_it_hid_is_counted_next_cycle():
    api = FakeApi()
    api.put("s", "2026-01-01T00:00:00+00:00", run_events() * 2)
    p = poller(api)
    cycle(p)
    stale = json.loads(json.dumps(api.sessions["s"]))
    api.put("s", "2026-01-01T00:05:00+00:00", run_events() * 3)
    cycle(p)
    api.put("s", "2026-01-01T00:10:00+00:00", run_events() * 4)  # a fourth run, listed at 00:10
    api.answers["s"] = [stale]  # ... but one replica still answers with the 00:00 history
    cycle(p)
    assert total_runs(p) == 3 and p.state.aggregates.history_resets == 0
    cycle(p)  # still listed as changed: fetched again, and this time the replica has caught up
    assert total_runs(p) == 4 and api.retrieved["s"] == 4


@pytest.mark.parametrize("distinct,admitted", [(2, {"t0", "t1"}), (3, {"t0", "t1", OTHER_LABEL})])
def test_the_tool_label_limit_admits_exactly_its_number_of_values(distinct, admitted):
    aggregates = Aggregates(BUCKETS, label_limit=2)
    runs = [RunRecord(False, None, 1.0, 1, 1, 1, (ToolCall(f"t{i}", True),), (f"i{i}",)) for i in range(distinct)]
    aggregates.add_runs(runs)
    assert {tool for tool, _ in aggregates.tool_calls} == admitted
    assert set(aggregates.skipped_index_queries) == {a.replace("t", "i") if a != OTHER_LABEL else a for a in admitted}
    assert aggregates.tools.dropped == distinct - 2


def test_a_cut_in_progress_tail_that_comes_back_is_not_counted_twice():
    api = FakeApi()
    history = run_events() * 3  # 6 events
    tail = [{"type": "user_input", "content": "q"}, {"type": "text", "content": "partial"}]
    api.put("s", "2026-01-01T00:00:00+00:00", history + tail)
    p = poller(api)
    cycle(p)
    api.put("s", "2026-01-01T00:01:00+00:00", history)  # a short read: the unfinished run is cut off
    cycle(p)
    api.put("s", "2026-01-01T00:02:00+00:00", history + tail + [{"type": "text", "content": "more"}])
    cycle(p)
    assert sum(p.state.aggregates.events.values()) == 9  # 6 + 2 + 1: the tail once, not twice
    assert p.state.aggregates.history_resets == 1 and total_runs(p) == 3
    assert p.snapshot.runs_in_progress == 1  # resumed at the counted position: the run is still open
    finished = history + tail + [{"type": "text", "content": "more"}] + run_events()[1:] + run_events()
    api.put("s", "2026-01-01T00:03:00+00:00", finished)  # the open run ends, and one more runs
    cycle(p)
    api.put("s", "2026-01-01T00:04:00+00:00", finished + run_events())
    cycle(p)
    assert total_runs(p) == 6 and sum(p.state.aggregates.events.values()) == len(finished) + 2
    assert p.state.aggregates.history_resets == 1 and p.state.sessions["s"].high_water is None


def test_a_session_failing_on_its_own_does_not_hold_back_the_first_sync():
    api = FakeApi()
    for i in range(3):
        api.put(f"s{i}", "2026-01-01T00:00:00+00:00", run_events())
    api.answers["s1"] = [FetchError("retrieve: HTTP 502", operation="retrieve")]
    p = poller(api)
    report = cycle(p)
    assert report.result == "partial" and p.state.synced and p.snapshot.ready and total_runs(p) == 2
    assert p.snapshot.poll.sessions_failing == 1
    cycle(p)
    assert total_runs(p) == 3 and p.snapshot.poll.sessions_failing == 0


def test_a_cycle_in_which_every_fetch_fails_is_an_outage_not_a_sync():
    api = FakeApi()
    for i in range(3):
        api.put(f"s{i}", "2026-01-01T00:00:00+00:00", run_events())
        api.answers[f"s{i}"] = [FetchError("retrieve: HTTP 503", operation="retrieve")]
    p = poller(api)
    report = cycle(p)
    assert not p.state.synced and not p.snapshot.ready and p.snapshot.poll.sessions_failing == 0
    assert report.carried == 3  # retried next cycle, with no backoff
    cycle(p)
    assert p.state.synced and total_runs(p) == 3


def test_a_floor_is_raised_at_the_sync_and_a_late_session_counts_only_its_new_runs():
    from collector.derive import ErrorClassifier
    from collector.llamacloud.models import parse_session
    from collector.state import SessionTable, update_session

    api = FakeApi()
    api.put("a", "2026-01-01T00:00:00+00:00", run_events())
    api.put("b", "2026-01-01T00:00:00+00:00", run_events() * 4)
    p = poller(api)
    floor = Aggregates(BUCKETS, 50)
    floor.runs["success"] = 5  # stored counters from before the buckets changed: a's run and b's four
    p.state.floor = floor
    counted_b = update_session(
        None, parse_session(json.dumps(api.sessions["b"]).encode()), Aggregates(BUCKETS, 50), ErrorClassifier(), 1.0
    ).state
    p.state.prior = SessionTable({"b": counted_b})
    api.answers["b"] = [FetchError("retrieve: timed out", operation="retrieve")]
    cycle(p)  # b fails on its own: the sync goes on without it, raised to the floor
    assert p.state.synced and p.state.floor is None and p.state.aggregates.runs["success"] == 5
    assert "b" in p.state.retired  # where b's counting stood when the floor was saved
    api.put("b", "2026-01-01T00:05:00+00:00", run_events() * 5)
    cycle(p)  # b recovers with one run more: only that one is new
    cycle(p)
    assert p.state.aggregates.runs["success"] == 6


def test_a_session_back_in_the_listing_unchanged_is_watched_again_at_once():
    api = FakeApi()
    for sid in ("a", "b"):
        api.put(sid, "2026-01-01T00:00:00+00:00", run_events())
    p = poller(api)
    cycle(p)
    api.listed = ["a"]
    cycle(p)
    assert set(p.state.sessions) == {"a", "b"}  # one pass without it: unconfirmed, still watched
    cycle(p)
    assert set(p.state.sessions) == {"a"}
    api.listed = None
    report = cycle(p)
    assert set(p.state.sessions) == {"a", "b"} and report.unchanged == 2 and api.retrieved["b"] == 1
    assert p.snapshot.sessions_watched == 2 and total_runs(p) == 2


def test_when_every_configured_session_fails_the_cycle_is_a_failure():
    api = FakeApi()
    for sid in ("a", "b"):
        api.put(sid, "2026-01-01T00:00:00+00:00", run_events())
        api.summary_errors[sid] = FetchError("summary: HTTP 503", operation="summary")
    p = poller(api, discover=False, session_ids=("a", "b"))
    report = cycle(p)
    assert report.result == "failure" and not p.snapshot.poll.up
    del api.summary_errors["a"]
    report = cycle(p)
    assert report.result == "partial" and p.snapshot.poll.up and total_runs(p) == 1
    api.summary_errors["b"] = NotFound("summary: HTTP 404", operation="summary", status=404)
    assert cycle(p).result == "success"  # a deleted session is an answer, not a failure


def test_an_unfinished_run_keeps_the_time_it_was_first_seen_across_refetches():
    api = FakeApi()
    unfinished = [*run_events(), {"type": "user_input", "content": "q"}]
    api.put("s", "2026-01-01T00:00:00+00:00", unfinished)
    api.put("other", "2026-01-01T00:00:00+00:00", run_events())
    now = [100.0]
    p = poller(api, now)
    cycle(p)
    assert p.snapshot.oldest_in_progress_since == 100.0
    now[0] = 200.0
    api.put("s", "2026-01-01T00:01:00+00:00", [*unfinished, {"type": "text_delta", "content": "x"}])
    cycle(p)
    assert api.retrieved["s"] == 2  # the in-progress session itself was fetched again
    assert p.snapshot.oldest_in_progress_since == 100.0 and p.snapshot.runs_in_progress == 1
    now[0] = 300.0
    api.put("s", "2026-01-01T00:02:00+00:00", unfinished + run_events()[1:] + [{"type": "user_input", "content": "q"}])
    cycle(p)
    assert p.snapshot.oldest_in_progress_since == 300.0  # that run finished; a new one started
