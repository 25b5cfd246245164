"""Attacks on the thread path of large histories (found by a review of 9f61812, fixed since): each test was a bug."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc

import pytest

import collector.poller as poller_module
from collector.errors import FetchError
from collector.llamacloud.bounds import _bare
from collector.llamacloud.models import parse_session
from collector.state import update_session
from tests.fakes import FakeApi, cycle, poller, run_events, total_runs
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")


def tools_exposed(p) -> set[str]:
    return {tool for (tool, _), n in p.state.aggregates.tool_calls.items() if n and tool != "_other"}


# 1. memory: a refused large body stays alive after its failure was dropped ---------------------------------


def test_a_refused_large_body_is_not_kept_alive_by_its_failure():
    """``_bare`` keeps the exception in a local of its own frame, which the raised traceback holds: a cycle.
    The exception's ``__context__`` (``raise ... from None`` in ``_events``) still holds the parse frames,
    i.e. the decoded text and the events parsed so far, until a cyclic collection; the collector freezes
    the GC after each cycle and collects fully every 10 cycles."""
    body = (
        b'{"session_id":"s","last_updated_at":"2026-01-01T00:00:00Z","events":[' + b'{"type":"stop"},' * 100_000 + b" "
    )  # an events array cut short: 1.6 MB, refused
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            _bare(parse_session, bytes(body))
        except ValueError as exc:
            assert "expected a value" in str(exc)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        if enabled:
            gc.enable()
        gc.collect()
    assert held < len(body) // 4, f"{held} bytes kept alive by a dropped failure of a {len(body)}-byte body"


# 2. label bound: a literal "_none" admitted apart is never admitted when merged ------------------------------


def test_a_tool_named_none_counted_apart_does_not_pass_the_label_limit():
    def play(large: bool):
        api = FakeApi()
        api.large = {"big"} if large else set()
        p = poller(api, label_limit=1)
        api.put("big", "2026-01-01T00:00:00Z", run_events(tool="_none"))
        cycle(p)
        api.put("small", "2026-01-01T00:00:01Z", run_events(tool="b"))
        cycle(p)
        return p

    on_loop, apart = play(False), play(True)
    assert tools_exposed(on_loop) == tools_exposed(apart) == {"b"}  # a tool named "_none" is no placeholder: _other
    assert len(tools_exposed(apart)) <= 1, f"label_limit=1 but tools {sorted(tools_exposed(apart))} exposed"


# 3. label race: a value the thread dropped that the loop admitted meanwhile ----------------------------------


def test_a_value_admitted_on_the_loop_while_the_thread_counted_is_not_also_dropped(monkeypatch):
    seeded, small_done = threading.Event(), threading.Event()
    real_update = update_session  # collector/state.py's, which collector/poller.py calls

    def update(prev, session, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():  # the parse thread, after the seed
            seeded.set()
            small_done.wait(10)
            return real_update(prev, session, *args, **kwargs)
        result = real_update(prev, session, *args, **kwargs)
        if session.session_id == "small":
            small_done.set()
        return result

    class Api(FakeApi):
        async def retrieve(self, sid, deadline=None, off_loop=None):
            if sid == "small":
                await asyncio.to_thread(seeded.wait, 10)
            return await super().retrieve(sid, deadline, off_loop)

    api = Api()
    api.large = {"big"}
    p = poller(api, label_limit=2, max_concurrency=2)
    api.put("first", "2026-01-01T00:00:00Z", run_events(tool="a"))
    cycle(p)
    api.put("big", "2026-01-01T00:00:01Z", run_events(tool="b") + run_events(tool="c"))
    api.put("small", "2026-01-01T00:00:02Z", run_events(tool="c"))
    with monkeypatch.context() as patched:
        patched.setattr(poller_module, "update_session", update)
        cycle(p)
    assert seeded.is_set() and small_done.is_set()
    labels = p.state.aggregates.tools
    assert labels.admitted == {"a", "c"}
    # any order on the loop drops one value (b, or c): never the admitted c as well
    assert labels.dropped == 1, f"dropped={labels.dropped}: c counted as dropped while admitted"
    # left alone: the thread's call to c stays under _other (it counted c as dropped before the loop admitted it)
    assert p.state.aggregates.tool_calls[("c", "result")] + p.state.aggregates.tool_calls[("_other", "result")] == 3


# 4. exemplars: a carried count merged later puts the exemplar back in time ------------------------------------


def test_a_carried_count_does_not_move_an_exemplar_back_in_time():
    started, gate, done = threading.Event(), threading.Event(), threading.Event()
    now, clock = [1000.0], [0.0]

    class Api(FakeApi):
        async def retrieve(self, sid, deadline=None, off_loop=None):
            if sid == "small":  # read once the big one's thread runs, and the wall clock moved on
                await asyncio.to_thread(started.wait, 60)
            return await super().retrieve(sid, deadline, off_loop)

    api = Api()
    api.large = {"big"}
    api.put("big", "2026-01-01T00:00:00Z", run_events())
    api.put("small", "2026-01-01T00:00:01Z", run_events())
    p = poller(api, now=now, monotonic=lambda: clock[0], interval=2.0, max_concurrency=2)
    real = p._apart

    def slow(*args):
        now[0] = 1005.0  # the big fetch started at 1000; the small one is counted at 1005
        started.set()
        gate.wait(60)
        try:
            return real(*args)
        finally:
            done.set()

    p._apart = slow  # type: ignore[method-assign]

    async def cut_then_release():
        report = await p.cycle()  # cut at its deadline, the big one's thread still counting
        exposed = p.state.aggregates.run_marks["success"]
        gate.set()
        await asyncio.to_thread(done.wait, 60)
        await asyncio.sleep(0.05)  # the carry posted to the loop
        return report, exposed

    _, first = run_async(cut_then_release())
    assert first.session_id == "small" and first.timestamp == 1005.0
    assert "big" in p.carried
    now[0], clock[0] = 1010.0, clock[0] + 10.0
    cycle(p)
    assert total_runs(p) == 2
    mark = p.state.aggregates.run_marks["success"]
    assert mark.timestamp >= first.timestamp, f"exemplar went back from {first} to {mark}"


# 5. a carried refusal of an old version refuses a newer one unread --------------------------------------------


def test_a_carried_refusal_is_not_applied_to_a_newer_version_of_the_history():
    from collector.poller import Carried

    api = FakeApi()
    api.put("s0", "2026-01-01T00:00:00Z", run_events())
    p = poller(api)
    cycle(p)
    # the thread of a fetch cut off refused the version of 00:05 (say, a body that names another session)
    p.carried["s0"] = Carried(object(), p.state.known("s0"), "the answer names another session", "2026-01-01T00:00:05Z")
    api.put("s0", "2026-01-01T00:00:09Z", run_events() * 2)  # the listing now shows another, valid version
    report = cycle(p)
    assert report.invalid == 0 and total_runs(p) == 2, (report.errors, api.retrieved["s0"])


# 6. second look: the same evidence gives the opposite verdict one cycle later ---------------------------------


def test_every_fetch_failing_while_only_the_listing_answers_is_judged_alike_in_both_cycles():
    api = FakeApi()
    for i in range(4):
        api.put(f"s{i}", "2026-01-01T00:00:00Z", run_events())
    p = poller(api)
    cycle(p)
    for i in range(4):
        api.put(f"s{i}", "2026-01-01T00:01:00Z", run_events() * 2)
    p.listing = None

    def down():  # the retrieve endpoint is down (every fetch 503s); the listing answers
        for i in range(4):
            api.answers[f"s{i}"] = [FetchError("retrieve: HTTP 503", operation="retrieve", status=503)]

    down()
    cycle(p)  # listing answered, every fetch failed: not the sessions' own (retried, no backoff)
    assert not p.failing
    down()
    cycle(p)  # no page left to read; a second look at page 1 answers: the same evidence as the cycle before
    assert not p.failing, f"{len(p.failing)} sessions put in backoff for an outage of the retrieve endpoint"
