"""Small exact checks on the counting core's building blocks: each pins a boundary or a field that a
mutation test showed no other test would notice changing (see docs/testing.md)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from collector.aggregates import OTHER_LABEL, Aggregates, BoundedLabels, Buckets, Mark
from collector.derive import ErrorClassifier, RunRecord, ToolCall, finished_prefix, history_intact, stop_signature
from collector.errors import FetchError
from collector.llamacloud.models import JobMetadata, PlainEvent, Session, StopEvent
from collector.metrics import SelfMetrics
from collector.poller import Poller
from collector.selection import older, wanted
from collector.state import CollectorState, LastRun, MemoryStore, SessionState, key_ids, parse_timestamp, update_session
from tests.fakes import FakeApi, poll_config
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

BUCKETS = Buckets({"duration": (1.0, 10.0), "tokens": (10.0, 100.0), "turns": (1.0, 4.0), "tool_calls": (0.0, 2.0)})
STOP = StopEvent(type="stop", is_error=False)
USER = PlainEvent(type="user_input")


def test_finished_prefix_and_history_intact_at_their_edges():
    assert finished_prefix([]) == 0 and finished_prefix([USER]) == 0
    assert finished_prefix([STOP]) == 1 and finished_prefix([USER, STOP]) == 2
    assert finished_prefix([USER, STOP, USER]) == 2
    assert history_intact([], 0, 0, None) is True and history_intact([USER], 0, 1, None) is True
    assert history_intact([USER], 1, 1, None) is False  # the counted position is not a stop any more
    assert history_intact([STOP], 1, 1, stop_signature(STOP)) is True
    assert history_intact([STOP], 1, 1, "other") is False
    assert history_intact([USER, STOP], 2, 3, stop_signature(STOP)) is False  # shorter than seen


def test_label_values_at_the_length_limit():
    labels = BoundedLabels(2)
    assert labels("x" * 128) == "x" * 128
    assert labels("y" * 129) == OTHER_LABEL and labels.dropped == 0  # an over-long value is not counted
    assert labels("a") == "a" and labels("b") == OTHER_LABEL and labels.dropped == 1
    assert labels("b") == OTHER_LABEL and labels.dropped == 1  # distinct values, not uses
    assert labels("z" * 128) == OTHER_LABEL and labels.dropped == 2


def test_a_copy_of_the_aggregates_is_independent():
    original = Aggregates(BUCKETS, 5)
    copy = original.copy()
    copy.add_runs([RunRecord(True, "timeout", 2.0, 20, 30, 2, (), ("i",))], "s", 1.0)
    assert original.runs["error"] == 0 and original.duration.count == 0 and not original.skipped_index_queries
    assert not original.indexes.admitted and copy.indexes.admitted == {"i"}


def test_raising_to_a_floor_keeps_the_larger_of_each_and_unions_the_label_sets():
    mine, floor = Aggregates(BUCKETS, 5), Aggregates(BUCKETS, 5)
    mine.add_runs([RunRecord(False, None, 2.0, 20, 30, 2, (), ("a",))])
    floor.add_runs([RunRecord(False, None, 50.0, 50, 60, 3, (), ("b",))] * 2)
    floor.tokens["input"].total = 999.0
    mine.raise_to(floor)
    assert mine.runs["success"] == 2 and mine.duration.count == 2 and mine.tokens["input"].count == 2
    assert mine.tokens["input"].total == 999.0 and mine.indexes.admitted == {"a", "b"}
    same = Aggregates(BUCKETS, 5)
    same.add_runs([RunRecord(False, None, 2.0, 20, 30, 2, (), ())])
    richer = Aggregates(BUCKETS, 5)
    richer.add_runs([RunRecord(False, None, 9.0, 20, 30, 2, (), ())])
    same.raise_to(richer)  # as many runs on both sides: the re-derived histogram stays as it is
    assert same.duration.total == 2.0
    mine.indexes.dropped, floor.indexes.dropped = 1, 3
    mine.raise_to(floor)
    assert mine.indexes.dropped == 3


def stored(**changes) -> dict:
    data = Aggregates(BUCKETS, 5)
    data.add_runs([RunRecord(False, None, 2.0, 20, 30, 2, (ToolCall("t", True),), ())], "s", 7.0)
    out = data.to_dict()
    out.update(changes)
    return out


def test_aggregates_written_by_0_1_0_load_with_the_new_families_at_zero():
    old = stored()
    for key in ("invalid_values", "run_marks"):
        del old[key]
    for hist in (old["duration"], old["turns"], old["tool_calls_per_run"], *old["tokens"].values()):
        del hist["marks"]
    loaded = Aggregates.from_dict(old, BUCKETS, 9)
    assert loaded.invalid_values == {} and loaded.run_marks == {} and loaded.label_limit == 9
    assert loaded.runs["success"] == 1 and all(m is None for m in loaded.duration.marks)
    assert loaded.tools.limit == 9


@pytest.mark.parametrize("where", ["duration", "turns", "tool_calls_per_run"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_stored_count_that_is_negative_or_not_finite_is_refused(where, bad):
    data = stored()
    data[where]["total"] = bad
    with pytest.raises(ValueError, match=f"^{where}: .* is not a finite non-negative number$"):
        Aggregates.from_dict(data, BUCKETS, 5)
    runs = stored(runs=[["success", bad]])
    with pytest.raises(ValueError, match="^runs: .* is not a count$"):
        Aggregates.from_dict(runs, BUCKETS, 5)


def test_stored_exemplars_keep_their_timestamp():
    loaded = Aggregates.from_dict(stored(), BUCKETS, 5)
    assert loaded.run_marks["success"] == Mark("s", 1.0, 7.0)
    assert [m for m in loaded.duration.marks if m] == [Mark("s", 2.0, 7.0)]


def test_sharding_applies_from_two_shards():
    listed = Session(session_id="s1", last_updated_at="x", events=())
    owners = [wanted(poll_config(interval=1, shard=i, total_shards=2), listed) for i in (0, 1)]
    assert sorted(owners) == [False, True]
    assert wanted(poll_config(interval=1, index_ids=("i1",)), listed) is False
    assert wanted(poll_config(interval=1, index_ids=("i1",), session_ids=("s1",)), listed) is True


def test_only_a_strictly_older_answer_is_a_lagging_replica():
    prev = SessionState("s", "2026-01-01T00:00:00+00:00", updated_ts=parse_timestamp("2026-01-01T00:00:00+00:00"))
    assert older("2025-12-31T23:59:59+00:00", prev) is True
    assert older("2026-01-01T00:00:00+00:00", prev) is False
    assert older("not a time", prev) is False


def test_timestamps_without_a_zone_are_utc_whatever_the_machine_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_timestamp("2026-01-01T00:00:00") == 1767225600.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_timestamps_without_a_zone_are_utc():
    assert parse_timestamp("2026-01-01T00:00:00") == parse_timestamp("2026-01-01T00:00:00+00:00") == 1767225600.0
    assert parse_timestamp("2026-01-01T02:00:00+02:00") == 1767225600.0
    assert parse_timestamp("yesterday") is None


def test_job_metadata_becomes_a_checked_last_run():
    session = Session.model_validate(
        {
            "session_id": "s",
            "last_updated_at": "2026-01-01T00:00:00",
            "events": [],
            "job_metadata": {
                "duration_ms": -3,
                "total_input_tokens": 11,
                "total_output_tokens": 12,
                "turns": 2,
                "is_error": True,
            },
        }
    )
    aggregates = Aggregates(BUCKETS, 5)
    state = update_session(None, session, aggregates, ErrorClassifier(), 5.0).state
    assert state.job == LastRun(None, 11, 12, 2, True)
    assert aggregates.invalid_values == {"job_metadata.duration_ms": 1}
    assert LastRun.of(
        JobMetadata(duration_ms=1.0, total_input_tokens=2, total_output_tokens=3, turns=4, is_error=False)
    ) == LastRun(1.0, 2, 3, 4, False)


def test_dropping_retires_a_session_without_its_title_and_forgets_none():
    state = CollectorState(Aggregates(BUCKETS, 5))
    state.put(SessionState("s", "t", title="private", job=LastRun(1.0)))
    assert state.drop("s") is True and state.drop("s") is False and state.drop("never") is False
    assert set(key_ids(state.changed)) == set() and set(key_ids(state.removed)) == {"s"}
    assert state.retired["s"].title is None and state.retired["s"].job is None
    for i in range(20_005):
        state.put(SessionState(f"r{i}", "t"))
    state.drop_many([f"r{i}" for i in range(20_005)])
    assert len(state.retired) == 20_006 and state.known("r0") is not None  # no cap: a cursor is never forgotten


def test_a_failed_cycle_publishes_down_with_its_reason_and_start_time():
    class Down(FakeApi):
        async def list_page(self, token=None, deadline=None, recall=None):
            raise FetchError("list: HTTP 500", operation="list")

    poller = Poller(
        Down(),
        MemoryStore(),
        poll_config(interval=60.0, buckets=BUCKETS),
        ErrorClassifier(),
        SelfMetrics(CollectorRegistry()),
        clock=lambda: 1234.5,
    )
    report = run_async(poller.cycle())
    assert report.result == "failure" and report.errors == ["list: HTTP 500"]
    poll = poller.snapshot.poll
    assert poll.up is False and poll.message == "list: HTTP 500"
    assert poll.finished_at is not None and math.isclose(poll.finished_at, 1234.5)


def test_fresh_aggregates_expose_both_outcomes_and_token_types_at_zero():
    fresh = Aggregates(BUCKETS, 5)
    assert dict(fresh.runs) == {"success": 0, "error": 0} and dict(fresh.tokens_total) == {"input": 0, "output": 0}


def test_counting_runs_records_refused_values_and_exemplar_times():
    aggregates = Aggregates(BUCKETS, 5)
    aggregates.add_runs([RunRecord(False, None, 2.0, 20, 30, 3, (), (), ("turns", "duration_ms"))], "s", 42.0)
    assert aggregates.invalid_values == {"turns": 1, "duration_ms": 1}
    marks = [m for _, h in aggregates.histograms() for m in h.marks if m]
    assert len(marks) == 5 and {m.timestamp for m in marks} == {42.0}


def test_the_stored_count_message_is_exact():
    data = stored()
    data["duration"]["total"] = -1.0
    with pytest.raises(ValueError, match="^duration: '-1.0' is not a finite non-negative number$"):
        Aggregates.from_dict(data, BUCKETS, 5)


def session_of(events: list[dict], **extra) -> Session:
    import json

    from collector.llamacloud.models import parse_session

    return parse_session(
        json.dumps({"session_id": "s", "last_updated_at": "2026-01-01T00:00:00", "events": events, **extra}).encode()
    )


def test_a_history_of_a_lone_stop_is_not_a_reset_when_polled_again():
    lone = session_of([{"type": "stop", "is_error": False}])
    aggregates = Aggregates(BUCKETS, 5)
    state = update_session(None, lone, aggregates, ErrorClassifier(), 1.0).state
    state = update_session(state, lone, aggregates, ErrorClassifier(), 2.0).state
    assert aggregates.history_resets == 0 and aggregates.runs["success"] == 1


def test_only_a_user_input_opens_a_run_in_progress():
    after_stop = session_of([{"type": "user_input"}, {"type": "stop", "is_error": False}, {"type": "text"}])
    state = update_session(None, after_stop, Aggregates(BUCKETS, 5), ErrorClassifier(), 1.0).state
    assert state.in_progress_start is None and state.in_progress_since is None
    opened = session_of([{"type": "user_input"}, {"type": "stop", "is_error": False}, {"type": "text"}, {"type": "user_input"}])
    state = update_session(None, opened, Aggregates(BUCKETS, 5), ErrorClassifier(), 1.0).state
    assert state.in_progress_start == 3 and state.in_progress_since == 1.0


def test_a_run_record_carries_what_derivation_checked():
    from collector.derive import derive

    events = session_of(
        [
            {"type": "user_input"},
            {
                "type": "stop",
                "is_error": False,
                "error": "a warning, not a failure",
                "usage": {"duration_ms": 1500, "total_input_tokens": -1, "turns": 2},
            },
        ]
    ).events
    (run,) = derive(events, 0, 0, ErrorClassifier()).runs
    assert run.error is None and run.failed is False  # error text of a successful run is not kept
    assert run.refused == ("total_input_tokens",) and run.input_tokens is None
    assert run.duration_seconds == 1.5 and run.turns == 2 and run.output_tokens is None


def test_per_session_counters_and_the_exemplar_time_of_an_update():
    events: list[dict] = [
        {"type": "user_input"},
        {"type": "stop", "is_error": False, "usage": {"total_input_tokens": 10, "total_output_tokens": None}},
        {"type": "user_input"},
        {"type": "stop", "is_error": False},
        {"type": "user_input"},
        {"type": "stop", "is_error": True, "error": "boom", "usage": {"total_input_tokens": None, "total_output_tokens": 7}},
    ]
    aggregates = Aggregates(BUCKETS, 5)
    state = update_session(None, session_of(events), aggregates, ErrorClassifier(), 77.0).state
    assert (state.runs_success, state.runs_error, state.tokens_input, state.tokens_output) == (2, 1, 10, 7)
    assert aggregates.run_marks["error"] == Mark("s", 1.0, 77.0)


def test_putting_a_session_back_undoes_its_retirement():
    state = CollectorState(Aggregates(BUCKETS, 5))
    state.put(SessionState("s", "t"))
    state.drop("s")
    state.put(SessionState("s", "t2"))
    assert set(key_ids(state.removed)) == set() and "s" not in state.retired
    assert state.sessions["s"].last_updated_at == "t2" and set(key_ids(state.changed)) == {"s"}


def test_no_series_are_counted_as_dropped_under_the_limit():
    from collector.state import PollStatus, take_snapshot

    state = CollectorState(Aggregates(BUCKETS, 5))
    for i in range(3):
        state.put(SessionState(f"s{i}", "t", updated_ts=float(i)))
    assert take_snapshot(state, PollStatus(), 5).sessions_over_limit == 0
    limited = take_snapshot(state, PollStatus(), 2)
    assert limited.sessions_over_limit == 1 and [s.session_id for s in limited.sessions] == ["s2", "s1"]


def test_a_value_above_the_last_bound_lands_in_the_inf_bucket_only():
    from collector.aggregates import Histogram

    hist = Histogram((1.0, 2.0))
    for value in (0.5, 2.0, 5.0):
        hist.observe(value)
    assert hist.counts == [1, 1, 1] and [(le, n) for le, n, _ in hist.cumulative()] == [("1.0", 1), ("2.0", 2), ("+Inf", 3)]


def test_per_session_counters_add_up_across_updates():
    events: list[dict] = [
        {"type": "user_input"},
        {"type": "stop", "is_error": True, "error": "x", "usage": {"total_input_tokens": 1, "total_output_tokens": 2}},
    ]
    aggregates = Aggregates(BUCKETS, 5)
    state = update_session(None, session_of(events), aggregates, ErrorClassifier(), 1.0).state
    more = session_of(events * 2 + [{"type": "user_input"}, {"type": "stop", "is_error": False}])
    state = update_session(state, more, aggregates, ErrorClassifier(), 2.0).state
    assert (state.runs_error, state.runs_success, state.tokens_input, state.tokens_output) == (2, 1, 2, 4)


def test_per_session_label_values_are_bounded_whatever_the_api_sends():
    from collector.state import MAX_INDEX_IDS

    ids = [f"idx-{i:05d}-" + "x" * 90 for i in range(10_000)] + ["y" * 500]
    run: list[dict] = [{"type": "user_input"}, {"type": "stop", "is_error": False}]
    session = session_of(run, index_ids=ids, shared_access="everyone; drop table")
    state = update_session(None, session, Aggregates(BUCKETS, 5), ErrorClassifier(), 1.0).state
    assert len(state.index_ids) == MAX_INDEX_IDS and all(len(i) <= 128 for i in state.index_ids)
    assert state.shared_access is None  # not one of the API's two values: no label value of its own
    ok = update_session(None, session_of(run, shared_access="read_only"), Aggregates(BUCKETS, 5), ErrorClassifier(), 1.0).state
    assert ok.shared_access == "read_only"


def test_bucket_bounds_are_written_as_prometheus_client_writes_them():
    from prometheus_client.utils import floatToGoString

    from collector.aggregates import Histogram
    from collector.families import DURATION_BUCKETS, TOKEN_BUCKETS, TURN_BUCKETS

    for bounds in (DURATION_BUCKETS, TOKEN_BUCKETS, TURN_BUCKETS, (1e-7, 0.5, 1e21)):
        written = [le for le, _, _ in Histogram(bounds).cumulative()]
        assert written == [floatToGoString(b) for b in bounds] + ["+Inf"]
    assert [le for le, _, _ in Histogram(TOKEN_BUCKETS).cumulative()][10] == "1.048576e+06"


def test_dropped_label_values_are_counted_never_kept_whatever_an_upstream_invents():
    from collector.aggregates import DROPPED_TRACKED, BoundedLabels

    labels = BoundedLabels(2)
    for i in range(3 * DROPPED_TRACKED):
        labels(f"tool-{i:06d}-" + "r" * 100)  # a request ID in every name
    assert len(labels.admitted) == 2 and labels.dropped == DROPPED_TRACKED  # then at least that many
    aggregates = Aggregates(BUCKETS, 2)
    aggregates.tools = labels
    stored = aggregates.to_dict()
    assert stored["tools"] == [sorted(labels.admitted), DROPPED_TRACKED] and len(repr(stored)) < 10_000
    old = dict(stored, tools=[sorted(labels.admitted), ["x", "y", "z"]])  # a 0.1.0 file kept the values
    assert Aggregates.from_dict(old, BUCKETS, 2).tools.dropped == 3


def test_a_run_counts_under_each_index_of_its_session_once_and_unbound_under_none():
    agg = Aggregates(BUCKETS, 3)
    ok, failed = RunRecord(False, None, 2.0, 20, 30, 2, (), ()), RunRecord(True, "timeout", 2.0, 20, 30, 2, (), ())
    agg.add_runs([ok, failed], "s1", 1.0, ("i2", "i1", "i2"))  # listed twice: counted once
    agg.add_runs([ok], "s2", 1.0, ())
    agg.add_runs([failed], "s3", 1.0, ("i3", "i4", "x" * 129))  # past the limit of 3, and not a label value
    assert agg.index_runs == {
        ("i1", "success"): 1,
        ("i1", "error"): 1,
        ("i2", "success"): 1,
        ("i2", "error"): 1,
        ("_none", "success"): 1,
        ("i3", "error"): 1,
        ("_other", "error"): 1,
    }
    assert agg.index_errors == {("i1", "timeout"): 1, ("i2", "timeout"): 1, ("i3", "timeout"): 1, ("_other", "timeout"): 1}
    assert agg.runs == {"success": 2, "error": 2}  # the run total counts each run once
    assert agg.indexes.dropped == 1  # i4; the 129-character one is never a value
    many = Aggregates(BUCKETS, 100)
    many.add_runs([ok], "s4", 1.0, tuple(f"i{n:02d}" for n in range(40)))
    assert sum(many.index_runs.values()) == 33 and many.index_runs[("_other", "success")] == 1
    assert ("i31", "success") in many.index_runs and ("i32", "success") not in many.index_runs
    idle = Aggregates(BUCKETS, 1)
    idle.add_runs([], "s5", 1.0, ("i9",))  # no run: no label admitted
    assert idle.indexes.admitted == set() and idle.index_runs == {}


def test_index_families_round_trip_start_at_zero_from_an_older_file_and_keep_their_floor():
    agg = Aggregates(BUCKETS, 5)
    agg.add_runs([RunRecord(True, "auth", 2.0, 20, 30, 2, (), ())] * 3, "s", 1.0, ("i1",))
    data = agg.to_dict()
    back = Aggregates.from_dict(data, BUCKETS, 5)
    assert back.index_runs == {("i1", "error"): 3} and back.index_errors == {("i1", "auth"): 3}
    older = {k: v for k, v in data.items() if k not in ("index_runs", "index_errors")}  # 0.2.0 wrote neither
    upgraded = Aggregates.from_dict(older, BUCKETS, 5)
    assert upgraded.index_runs == {} and upgraded.runs["error"] == 3
    rederived = Aggregates(BUCKETS, 5)
    rederived.add_runs([RunRecord(True, "auth", 2.0, 20, 30, 2, (), ())], "s", 1.0, ("i1",))
    rederived.raise_to(back)
    assert rederived.index_runs[("i1", "error")] == 3 and rederived.index_errors[("i1", "auth")] == 3


def test_index_ids_kept_per_session_are_the_label_values_at_the_length_edges():
    from collector.state import bounded_index_ids

    assert bounded_index_ids(("", "a", "x" * 128, "y" * 129, "a")) == ("a", "x" * 128)


def test_a_stored_exemplar_with_a_value_or_time_that_is_not_finite_is_dropped():
    from collector.aggregates import _mark_in

    assert _mark_in(["s", 1.0, 2.0]) == Mark("s", 1.0, 2.0)
    for bad in (["s", 1.0, float("nan")], ["s", float("inf"), 2.0], ["s", "1", 2.0], [1, 1.0, 2.0], ["s", 1.0]):
        assert _mark_in(bad) is None, bad
