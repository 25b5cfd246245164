"""The counterexamples the model of the counting core (tests/test_model.py) shrank to, kept as plain tests:
each a sequence that went wrong before its fix in collector/, on the fake client."""

from __future__ import annotations

import pytest

from collector.aggregates import Aggregates, Buckets
from collector.derive import RunRecord
from tests.fakes import BUCKETS, FakeApi, cycle, poll_config, poller, run_events, total_runs

pytestmark = pytest.mark.tier("unit")

T = [f"2026-01-01T00:00:{i:02d}+00:00" for i in range(60)]


def stop(duration: int) -> list[dict]:
    return [{"type": "user_input"}, {"type": "stop", "is_error": False, "usage": {"duration_ms": duration}}]


def test_an_exemplar_value_reads_back_as_it_was_stored():
    agg = Aggregates(BUCKETS, 5)
    agg.add_runs([RunRecord(False, None, 2.0, 20, 30, 2, (), ())], "s", 7)
    again = Aggregates.from_dict(agg.to_dict(), BUCKETS, 5)
    assert again.to_dict() == agg.to_dict()  # 20 stored as a float read back as a float, not 20 vs 20.0


def test_a_lagging_first_read_of_a_new_session_does_not_hide_its_newer_runs():
    api = FakeApi()
    api.put("s", T[2], stop(1) + stop(2))
    api.answers["s"] = [{"session_id": "s", "last_updated_at": T[0], "events": stop(1)}]  # an old replica
    p = poller(api)
    cycle(p)
    assert total_runs(p) == 1
    cycle(p)  # keyed on the answer's own time, so the newer history is fetched next cycle
    assert total_runs(p) == 2


def test_a_rewrite_then_a_short_read_never_counts_a_run_twice():
    api = FakeApi()
    api.put("s", T[0], stop(1))
    p = poller(api)
    cycle(p)
    api.put("s", T[1], stop(9))  # the stop rewritten: a reset, taken as counted
    cycle(p)
    api.put("s", T[2], stop(9))
    api.answers["s"] = [{"session_id": "s", "last_updated_at": T[2], "events": stop(9)[:1]}]  # a short read
    cycle(p)
    api.put("s", T[3], stop(9))
    cycle(p)
    assert total_runs(p) == 1


def test_a_read_between_a_short_and_the_whole_history_counts_nothing_again():
    api = FakeApi()
    whole = stop(1) + stop(2) + stop(3)
    api.put("s", T[0], [*whole, {"type": "user_input"}])
    p = poller(api)
    cycle(p)
    assert total_runs(p) == 3
    for length, t in ((3, T[1]), (6, T[2])):  # a short read, then a longer one still short of what was counted
        api.put("s", t, whole)
        api.answers["s"] = [{"session_id": "s", "last_updated_at": t, "events": whole[:length]}]
        cycle(p)
        assert total_runs(p) == 3
    api.put("s", T[3], whole + stop(4))  # the whole history again, and one run more
    cycle(p)
    assert total_runs(p) == 4


def test_a_short_read_during_a_re_derivation_is_not_counted_again_over_the_floor(tmp_path):
    from prometheus_client import CollectorRegistry

    from collector.derive import ErrorClassifier
    from collector.metrics import SelfMetrics
    from collector.poller import Poller
    from collector.storage.sqlite import SqliteStore

    api = FakeApi()
    api.put("s", T[0], run_events() * 2)
    db = tmp_path / "state.db"

    def start(buckets):
        return Poller(
            api,
            SqliteStore(db, buckets, [], 50),
            poll_config(interval=60.0, buckets=buckets),
            ErrorClassifier([]),
            SelfMetrics(CollectorRegistry()),
        )

    p = start(BUCKETS)
    cycle(p)
    p.store.close()
    other = Buckets({"duration": (2.0,), "tokens": (50.0,), "turns": (1.0, 2.0), "tool_calls": (0.0,)})
    p = start(other)  # the buckets changed: a re-derivation, with the stored totals as the floor
    api.put("s", T[1], run_events() * 2)
    api.answers["s"] = [{"session_id": "s", "last_updated_at": T[1], "events": run_events()[:1]}]
    cycle(p)  # re-derived from a short read; the sync raises the counters to the floor
    assert total_runs(p) == 2 and p.state.synced
    api.put("s", T[2], run_events() * 2)
    cycle(p)  # the whole history again: its runs are under the floor already
    assert total_runs(p) == 2
    p.store.close()
