"""Large histories are parsed and counted in a thread, into their own ``Aggregates``, and merged on the loop
(issue 27, item 5): the same counts, labels, exemplars and states as counting them on the loop, whatever the
histories do; a count cut off by the cycle's deadline is carried to the session's next fetch, merged once.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.aggregates import Aggregates, Buckets
from tests.fakes import BUCKETS, FakeApi, cycle, poller, run_events, total_runs
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

TOOLS = ("search", "sql", "fetch", "calc", "mail")
INDEXES = ("i1", "i2", "i3", "i4")


def a_run(failed: bool, tool: str | None, tokens: int, skipped: str | None) -> list[dict]:
    events = run_events(failed, tool)
    stop = events[-1]
    stop["usage"]["total_input_tokens"] = tokens
    stop["usage"]["duration_ms"] = tokens * 37
    if skipped:
        stop["skipped_index_ids"] = [skipped]
    return events


runs = st.lists(
    st.tuples(st.booleans(), st.none() | st.sampled_from(TOOLS), st.integers(0, 500), st.none() | st.sampled_from(INDEXES)),
    max_size=4,
)
steps = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(("append", "open", "rewrite", "nothing")),
        runs,
        st.lists(st.sampled_from(INDEXES), max_size=3),
    ),
    min_size=1,
    max_size=8,
)


def rounded(value):
    """Histogram sums to 12 significant digits: a float sum's last bit depends on the order of its terms (a
    session's are summed apart, then added), as it already does on the order fetches finish in."""
    if isinstance(value, dict):
        return {k: float(f"{v:.12g}") if k == "total" else rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def play(script, large: bool):
    api = FakeApi()
    api.large = True if large else set()
    now = [1000.0]
    p = poller(api, now=now, max_concurrency=1, label_limit=3, log_runs="all")
    histories: dict[str, list[dict]] = {}
    for second, (which, what, specs, indexes) in enumerate(script, 1):
        sid = f"s{which}"
        history = histories.setdefault(sid, [])
        new = [e for spec in specs for e in a_run(*spec)]
        if what == "append":
            history.extend(new)
        elif what == "open":
            history.extend([*new, {"type": "user_input", "content": "q"}])
        elif what == "rewrite":  # a shorter, different history: a reset
            history[:] = new
        api.put(sid, f"2026-01-01T00:00:{second:02d}Z", list(history))
        api.sessions[sid]["index_ids"] = list(indexes)
        now[0] += 60
        cycle(p)
    return p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_a_history_counted_apart_and_merged_is_counted_as_on_the_loop(script):
    on_loop, apart = play(script, large=False), play(script, large=True)
    assert rounded(apart.state.aggregates.to_dict()) == rounded(on_loop.state.aggregates.to_dict())
    for sid in (f"s{i}" for i in range(4)):
        assert apart.state.known(sid) == on_loop.state.known(sid)


def test_merge_admits_labels_while_there_is_room_and_counts_the_rest_as_other():
    main = Aggregates(BUCKETS, 2)
    main.tools("a")
    delta = main.seeded()
    for name in ("b", "c"):
        delta.tool_calls[(delta.tools(name), "result")] += 1
    main.tools("d")  # the room went to another session meanwhile
    main.merge(delta)
    assert dict(main.tool_calls) == {("_other", "result"): 2}
    assert main.tools.admitted == {"a", "d"} and main.tools.dropped == 2


def test_a_count_cut_off_by_the_deadline_is_merged_at_the_next_fetch_once():
    """The parse thread cannot be stopped: when the cycle's deadline cuts the fetch waiting for it, what it
    counted is kept, and the session's next fetch merges it without reading the history again."""
    api = FakeApi()
    api.large = True
    api.put("s0", "2026-01-01T00:00:00Z", run_events() * 3)
    clock = [0.0]
    p = poller(api, monotonic=lambda: clock[0], interval=2.0)
    started, gate, done = threading.Event(), threading.Event(), threading.Event()
    real = p._apart

    def slow(*args):
        started.set()
        gate.wait(60)  # the cycle's deadline passes while the thread counts
        try:
            return real(*args)
        finally:
            done.set()

    p._apart = slow  # type: ignore[method-assign]

    async def cut_then_release():
        task = asyncio.ensure_future(p.cycle())
        await asyncio.to_thread(started.wait, 60)
        clock[0] += 1000.0  # the deadline is gone
        report = await task  # cut off at the deadline, with the thread still counting
        gate.set()
        await asyncio.to_thread(done.wait, 60)  # what it gave was posted to the loop before this resumes
        return report

    first = run_async(cut_then_release())
    assert total_runs(p) == 0 and first.result != "success"
    clock[0] += 10.0
    cycle(p)
    assert total_runs(p) == 3 and api.retrieved["s0"] == 1, "merged from the carried count, not read again"
    assert not p.carried
    clock[0] += 10.0
    cycle(p)
    assert total_runs(p) == 3


def test_a_carried_count_of_another_state_is_not_merged():
    from collector.poller import Apart, Carried

    api = FakeApi()
    api.put("s0", "2026-01-01T00:00:00Z", run_events())
    p = poller(api)
    cycle(p)
    stale = Apart("2026-01-01T00:00:00Z", True, None, Aggregates(BUCKETS, 5))  # type: ignore[arg-type]
    p.carried["s0"] = Carried(object(), None, stale, "")  # counted from no state: the session has one now
    api.put("s0", "2026-01-01T00:00:09Z", run_events() * 2)
    cycle(p)
    assert total_runs(p) == 2 and api.retrieved["s0"] == 2 and not p.carried


def test_a_refusal_in_the_thread_after_the_deadline_is_kept_for_the_next_fetch():
    from collector.llamacloud.models import TooManyEvents
    from collector.poller import Carried

    api = FakeApi()
    api.put("s0", "2026-01-01T00:00:00Z", run_events())
    p = poller(api)
    cycle(p)
    api.put("s0", "2026-01-01T00:00:09Z", run_events() * 2)
    refused = str(TooManyEvents("a history of over 9 events"))
    p.carried["s0"] = Carried(object(), p.state.known("s0"), refused, "2026-01-01T00:00:09Z")
    report = cycle(p)
    assert report.invalid == 1 and api.retrieved["s0"] == 1 and "over 9 events" in report.errors[0]
    assert total_runs(p) == 1 and "s0" in p.failing and not p.carried


def test_buckets_are_the_aggregates_own():
    other = Buckets({"duration": (5.0,), "tokens": (5.0,), "turns": (5.0,), "tool_calls": (5.0,)})
    main = Aggregates(other, 5)
    delta = main.seeded()
    assert delta.duration.bounds == (5.0,) and delta.tools.admitted == set()
