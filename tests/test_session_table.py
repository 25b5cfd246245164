"""The packed session table (issue 32): every field of a session back as it went in, and the per-session
series and in-progress gauges kept from what changed, never from a scan, equal to a scan of a plain dict
whatever the sequence of puts, removals, clocks put back and rollbacks."""

from __future__ import annotations

import heapq
import math
import sys
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector.aggregates import Aggregates
from collector.llamacloud.models import JobMetadata
from collector.state import (
    CollectorState,
    LastRun,
    PollStatus,
    SessionState,
    SessionTable,
    Shown,
    key_id,
    pack_row,
    parse_timestamp,
    shown_key,
    table_key,
    take_snapshot,
    unpack_row,
)
from tests.test_storage_codec import BUCKETS, assert_same, records

pytestmark = pytest.mark.tier("unit")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records(SessionState),
    st.sampled_from(["short", "long", "unicode", "iso", "iso_z", "almost", "edge", "past_edge", "ts", "ts_z", "ts_near"]),
)
def test_every_field_comes_back_from_its_packed_row(state, stamp):
    """Every field set to other than its default (the state file's own strategy), and a ``last_updated_at``
    past a head's length byte, or beyond ASCII, or written from ``updated_ts`` (``ts``: kept as nothing)."""
    from_ts = {"ts": "2026-12-03T09:18:49.015656+00:00", "ts_z": "2026-12-03T09:18:49.000000Z"}
    if stamp in from_ts:
        state = replace(state, updated_ts=parse_timestamp(from_ts[stamp]))
    elif stamp == "ts_near":  # a stamp one microsecond from updated_ts: kept as its digits
        state = replace(state, updated_ts=parse_timestamp("2026-12-03T09:18:49.015657+00:00"))
    stamps = {
        **from_ts,
        "ts_near": "2026-12-03T09:18:49.015656+00:00",
        "short": state.last_updated_at,
        "long": "9" * 300,
        "unicode": "ü\ud800" * 90,
        "iso": "2026-12-03T09:18:49.015656+00:00",  # the API's: kept as its digits
        "iso_z": "0001-01-01T00:00:00.000000Z",
        "almost": "2026-12-03T09:18:49.15656+00:00",  # five digits of a second: kept as text
        "edge": "x" * 250,  # the longest text in the head
        "past_edge": "x" * 251,
    }
    state = replace(state, last_updated_at=stamps[stamp])
    assert_same(state, unpack_row(state.session_id, pack_row(state)), "row")
    table = SessionTable()
    table[state.session_id] = state
    assert table.stamp(state.session_id) == state.last_updated_at
    assert table.stamps([state.session_id, state.session_id + "?"]) == [state.last_updated_at, None]
    assert table.order_key(state.session_id) == shown_key(state)


def test_a_packed_row_is_a_quarter_of_the_dataclass():
    state = SessionState(
        "7311d8a3-c2ce-4f44-bed4-d57b1e2feb89",
        "2026-12-03T09:18:49.155656+00:00",
        1796289529.155656,
        "Compare the two pricing proposals.",
        "read_only",
        ("idx-04",),
        LastRun(527.1, 3201, 2277, 2, False),
        58,
        63,
        "9b181229d0672c3d",
        5,
        0,
        65093,
        7747,
        58,
        1796289535.6834266,
    )
    assert len(pack_row(state)) < 200


def test_the_counts_and_the_last_run_are_one_text_read_back_each_of_its_type():
    state = SessionState("s", "t", job=LastRun(527.1, 3201.0, None, 2.0, True), cursor=58, tokens_input=2**53, runs_error=0)
    row = pack_row(state)
    assert b"58 " in row and b" 527.1 3201 - 2 T" in row
    assert_same(state, unpack_row("s", row), "row")
    for odd in (LastRun(527.1, 3201, 2277, 2, False), LastRun(1.0, None, None, None, 1)):  # type: ignore[arg-type]  # not floats: kept as they are
        assert_same(replace(state, job=odd), unpack_row("s", pack_row(replace(state, job=odd))), "row")


def test_index_ids_are_kept_once_for_the_process_and_past_the_bound_in_the_row(monkeypatch):
    import collector.state as module

    state = SessionState("s", "t", index_ids=("idx-a", "idx-b"))
    assert unpack_row("s", pack_row(state)) == state and ("idx-a", "idx-b") in module._INDEX_SETS
    monkeypatch.setattr(module, "INDEX_SETS_KEPT", len(module._INDEX_SETS))
    other = replace(state, index_ids=("idx-never-seen",))
    assert unpack_row("s", pack_row(other)) == other and ("idx-never-seen",) not in module._INDEX_SETS
    assert len(pack_row(other)) > len(pack_row(state))
    monkeypatch.setattr(module, "INDEX_SETS_KEPT", len(module._INDEX_SETS) + 10)
    monkeypatch.setattr(module, "INDEX_CHARS_KEPT", module._INDEX_CHARS[0] + 20)
    big, small = replace(state, index_ids=("i" * 21,)), replace(state, index_ids=("j" * 20,))
    assert unpack_row("s", pack_row(big)) == big and big.index_ids not in module._INDEX_SETS
    assert unpack_row("s", pack_row(small)) == small and small.index_ids in module._INDEX_SETS


def test_a_whole_measure_is_packed_as_a_number_and_read_back_a_float_with_its_sign():
    job = LastRun(-0.0, 3201.0, 2.0**31, 0.5, False)
    back = unpack_row("s", pack_row(SessionState("s", "t", job=job))).job
    assert back is not None and back.duration_ms is not None and back.total_input_tokens is not None
    assert [(type(v), math.copysign(1.0, v)) for v in (back.duration_ms, back.total_input_tokens)] == [
        (float, -1.0),
        (float, 1.0),
    ]
    assert back == job and back.total_output_tokens == 2.0**31 and back.is_error is False
    whole, fractional = (
        len(pack_row(SessionState("s", "t", job=LastRun(v, v + 1, v + 2, v + 3, None)))) for v in (3201.0, 3201.5)
    )
    assert whole < fractional


def test_a_stamp_written_from_updated_ts_is_kept_as_nothing_and_any_other_in_full():
    stamp = "2026-12-03T09:18:49.015656+00:00"
    state = SessionState("s", stamp, parse_timestamp(stamp))
    kept = {"ts": pack_row(state), "digits": pack_row(replace(state, updated_ts=state.updated_ts + 1e-6))}  # type: ignore[operator]
    kept["none"] = pack_row(replace(state, updated_ts=None))
    assert len(kept["ts"]) + 12 == len(kept["digits"]) == len(kept["none"])
    for name, row in kept.items():
        back = unpack_row("s", row)
        assert back.last_updated_at == stamp, name
        assert SessionTable([("s", back)]).stamps(["s"]) == [stamp], name
    late = "9999-12-31T23:59:59.999999Z"  # past what a float holds to the microsecond: its digits
    assert unpack_row("s", pack_row(SessionState("s", late, parse_timestamp(late)))).last_updated_at == late


@pytest.mark.parametrize(
    "signature", ["0000000000000000", "0000000000000080", "000000000000f07f", "010000000000f87f", "9b181229d0672c3d"]
)
def test_a_signature_is_packed_as_eight_bytes_and_read_back_as_its_digits(signature):
    """As a float where that comes back bit for bit (0.0, -0.0, inf, a number), as bytes for a NaN."""
    state = SessionState("s", "t", stop_signature=signature, shared_access="query")
    row = pack_row(state)
    assert unpack_row("s", row) == state and bytes.fromhex(signature) in row and signature.encode() not in row
    assert unpack_row("s", pack_row(replace(state, shared_access="read_only"))).shared_access == "read_only"


def test_the_last_run_as_the_api_gives_it_is_floats_folded_into_the_row():
    """Whole measures come as ints; kept as ints, the row held them in a tuple of 27 bytes instead of its text."""
    job = JobMetadata.model_validate(
        {"duration_ms": 552.2, "total_input_tokens": 14944, "total_output_tokens": 2**53, "turns": 6, "is_error": False}
    )
    run = LastRun.of(job)
    assert run == LastRun(552.2, 14944.0, 2.0**53, 6.0, False)
    assert {type(v) for v in (run.duration_ms, run.total_input_tokens, run.total_output_tokens, run.turns)} == {float}
    row = pack_row(SessionState("s", "t", job=run))
    assert b"552.2 14944 9007199254740992.0 6 F" in row and unpack_row("s", row).job == run


def test_a_state_under_another_id_is_refused():
    with pytest.raises(ValueError, match="set to the state of"):
        SessionTable()["a"] = SessionState("b", "t")


# -- the shown sessions and the runs in progress, against a scan of a plain dict -------------------------

IDS = [f"s{i}" for i in range(6)]
TIMES = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 8.0]))
PUT = st.tuples(st.just("put"), st.sampled_from(IDS), TIMES, TIMES)
SNAPSHOT = st.tuples(st.just("snapshot"))
STEP = st.one_of(
    PUT,
    PUT,
    PUT,
    st.tuples(st.just("drop"), st.sampled_from(IDS)),
    st.tuples(st.just("begin")),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("commit")),
    SNAPSHOT,
    SNAPSHOT,
)


def scanned(sessions: dict[str, SessionState], limit: int) -> tuple[SessionState, ...]:
    """What the snapshot showed before the table: every session read, the most recently updated first."""
    return tuple(heapq.nlargest(limit, sessions.values(), key=shown_key))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, max_size=60), st.integers(1, 5))
@example([("put", "s0", 1.0, None), ("put", "s1", 1.0, None), ("snapshot",), ("put", "s1", None, None)], 1)  # moved back
@example([("put", "s0", 1.0, None), ("put", "s1", 2.0, None), ("snapshot",), ("drop", "s1")], 1)  # a shown one retired
@example([("put", "s0", 1.0, None), ("snapshot",), ("begin",), ("put", "s0", 2.0, 1.0), ("rollback",)], 1)
def test_the_shown_sessions_and_runs_in_progress_equal_a_scan(steps, limit):
    state = CollectorState(Aggregates(BUCKETS, 5))
    shown = Shown()
    truth: dict[str, SessionState] = {}
    committed = dict(truth)
    cycle = False
    for step in [*steps, ("snapshot",)]:
        kind = step[0]
        if kind == "put":
            _, sid, updated, since = step
            state.put(SessionState(sid, f"t{updated}", updated_ts=updated, in_progress_since=since))
            truth[sid] = state.sessions[sid]
        elif kind == "drop":
            state.drop(step[1])
            truth.pop(step[1], None)
        elif kind == "begin" and not cycle:
            state.begin()
            committed, cycle = dict(truth), True
        elif kind == "rollback" and cycle:
            state.rollback()
            truth, cycle = dict(committed), False
        elif kind == "commit" and cycle:
            state.commit()
            cycle = False
        elif kind == "snapshot" and not cycle:
            snap = take_snapshot(state, PollStatus(), limit, shown)
            assert snap.sessions == scanned(truth, limit)
            assert take_snapshot(state, PollStatus(), limit).sessions == snap.sessions  # the scan, as tests take it
            since = [s.in_progress_since for s in truth.values() if s.in_progress_since is not None]
            assert snap.runs_in_progress == len(since)
            assert snap.oldest_in_progress_since == (min(since) if since else None)
            assert snap.sessions_watched == len(truth)
        assert dict(state.sessions) == truth


def test_a_snapshot_reads_only_what_changed_until_a_shown_session_moves_back():
    state = CollectorState(Aggregates(BUCKETS, 5))
    for i in range(100):
        state.put(SessionState(f"s{i:03}", "t", updated_ts=float(i)))
    shown = Shown()
    assert [s.session_id for s in take_snapshot(state, PollStatus(), 3, shown).sessions] == ["s099", "s098", "s097"]
    state.put(SessionState("s010", "t", updated_ts=500.0))  # a new run in an old session: to the front
    state.drop("s050")  # not shown
    assert [s.session_id for s in take_snapshot(state, PollStatus(), 3, shown).sessions] == ["s010", "s099", "s098"]
    assert shown.scans == 1
    state.put(SessionState("s099", "t", updated_ts=math.nextafter(0.0, 1.0)))  # a shown one's clock put back
    assert [s.session_id for s in take_snapshot(state, PollStatus(), 3, shown).sessions] == ["s010", "s098", "s097"]
    assert shown.scans == 2
    state.drop("s098")  # a shown one retired
    assert [s.session_id for s in take_snapshot(state, PollStatus(), 3, shown).sessions] == ["s010", "s097", "s096"]
    assert shown.scans == 3


@given(st.text(min_size=1, max_size=40) | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()))
@example("00000000-0000-0000-0000-000000000000")
@example("0000000000000000000000000000000000000000")  # 36 digits: a UUID's length, not its form
@example("0a1b2c3d-0000-4000-8000-00000000000\n")
def test_every_id_is_its_own_key_and_comes_back(session_id):
    table = SessionTable()
    table[session_id] = SessionState(session_id, "t")
    assert list(table) == [session_id] and session_id in table and table[session_id].session_id == session_id
    assert table_key(session_id) != table_key(session_id + "x")
    assert key_id(table_key(session_id)) == session_id
    assert (
        table.stamps([session_id]) == ["t"]
        and table.not_in(set()) == [session_id]
        and table.not_in({table_key(session_id)}) == []
    )


def test_a_tables_version_moves_at_every_change_and_no_two_tables_share_one():
    table, other = SessionTable(), SessionTable()
    seen = {table.version, other.version}
    assert len(seen) == 2
    table["s1"] = SessionState("s1", "t")
    table.set_row("s2", table.row("s1") or b"")
    assert table.version not in seen
    seen.add(table.version)
    assert table.pop_row("nobody") is None and table.version in seen  # nothing removed: nothing changed
    del table["s1"]
    assert table.version not in seen
    seen.add(table.version)
    assert table.copy().version not in seen
    before = table.version
    assert table.rows_at([table_key("s2"), table_key("s1")]) == [table.row("s2"), None] and table.version == before


def test_an_api_id_is_keyed_by_its_number_and_any_other_by_its_bytes():
    """A UUID as the API writes it takes 48 bytes as a key (issue 32: 100,000 sessions in 100 MB); any other text
    keeps its bytes, and a number never equals bytes, so the two kinds never share a key."""
    api = "0a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
    assert table_key(api) == 0x0A1B2C3D4E5F4A6B8C7D0E1F2A3B4C5D and sys.getsizeof(table_key(api)) <= 48
    for other in (api.upper(), api + " ", "{" + api[1:], api.replace("-", "_"), api[:35] + "\u0661"):
        assert isinstance(table_key(other), bytes) and key_id(table_key(other)) == other
    table = SessionTable({api: SessionState(api, "t"), api.upper(): SessionState(api.upper(), "u")})
    assert sorted(table) == sorted([api, api.upper()]) and table.stamps([api, api.upper()]) == ["t", "u"]
