"""What one poll cycle reports and logs, on the in-memory client: the report's every field, the deadline
handed to each API call, the log lines an operator searches for, and the run log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import replace

import pytest
import structlog

from collector import logs
from collector.cadence import BUDGET_RATIO
from collector.errors import FetchError, NotFound, PayloadError
from collector.poller import Poller
from tests.fakes import FakeApi, cycle, poller, run_events, self_metrics, total_runs
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

T0 = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    yield lambda event=None: [e for e in map(json.loads, stream.getvalue().splitlines()) if event is None or e["event"] == event]
    structlog.reset_defaults()


def populated(n: int = 4) -> FakeApi:
    api = FakeApi()
    for i in range(n):
        api.put(f"s{i}", T0, run_events() + run_events(failed=True))
    return api


def test_the_report_counts_every_kind_of_outcome(captured):
    api = populated(5)
    p = poller(api, monotonic=lambda: 100.0, interval=10.0)
    first = cycle(p)
    assert (first.result, first.fetched, first.unchanged, first.runs_added, first.watched) == ("success", 5, 0, 10, 5)
    assert api.deadlines and {d.at for d in api.deadlines} == {100.0 + BUDGET_RATIO * 10.0}  # on the injected clock
    api.put("s0", "2026-01-01T00:01:00+00:00", run_events() * 3)
    api.put("s1", "2026-01-01T00:01:00+00:00", run_events() * 3)
    api.put("s2", "2026-01-01T00:01:00+00:00", run_events() * 3)
    api.put("s3", "2026-01-01T00:01:00+00:00", run_events() * 3)
    api.answers = {
        "s0": [FetchError("retrieve: HTTP 502", operation="retrieve")],
        "s1": [PayloadError("retrieve: invalid payload at events", operation="retrieve")],
        "s2": [NotFound("retrieve: HTTP 404", operation="retrieve", status=404)],
        "s3": [RuntimeError("a bug in one session")],
    }
    report = cycle(p)
    assert report.result == "partial" and report.fetched == 0 and report.unchanged == 1
    assert (report.failed, report.invalid, report.removed, report.runs_added) == (1, 2, 1, 0)
    assert report.errors[0] == "retrieve: HTTP 502" and report.watched == 4
    failing = {e["session_id"]: e for e in captured("session failing")}
    assert set(failing) == {"s0", "s1", "s3"} and p.snapshot.poll.sessions_failing == 3
    assert failing["s1"]["error"] == "retrieve: invalid payload at events"
    assert failing["s3"]["error"] == "RuntimeError: a bug in one session"
    assert failing["s3"]["level"] == "warning" and "exception" not in failing["s3"]  # no traceback
    (line,) = [e for e in captured("poll cycle") if e["result"] == "partial"]
    assert (line["fetched"], line["failed"], line["invalid"], line["removed"]) == (0, 1, 2, 1)
    assert line["error"] == "retrieve: HTTP 502" and line["level"] == "warning"


def test_a_stale_read_is_logged_with_its_session(captured):
    api = populated(1)
    p = poller(api)
    cycle(p)
    stale = dict(api.sessions["s0"], last_updated_at="2025-12-31T00:00:00+00:00", events=run_events())
    api.put("s0", "2026-01-01T00:05:00+00:00", run_events() * 3)  # a lagging replica answers an older prefix
    api.answers["s0"] = [stale]
    report = cycle(p)
    assert report.fetched == 1 and report.runs_added == 0
    (line,) = captured("stale read ignored; refetched next cycle")
    assert line["session_id"] == "s0"


def test_unreadable_listing_items_are_counted_and_named(captured):
    api = populated(2)
    p = poller(api)

    async def listing(token=None, deadline=None, recall=None):
        from collector.llamacloud.models import parse_page

        return parse_page(
            json.dumps(
                {
                    "items": [api._summary("s0"), {"session_id": "..", "last_updated_at": T0}]
                    + [{"session_id": f"bad{i}", "last_updated_at": None} for i in range(11)]
                }
            ).encode()
        )

    api.list_page = listing  # type: ignore[method-assign]  # this test's listing, in place of the fake's
    report = cycle(p)
    assert report.result == "partial" and report.invalid == 12 and report.watched == 1
    (line,) = captured("unreadable sessions in the listing, skipped this cycle")
    assert line["count"] == 12 and line["session_ids"] == [".."] + [f"bad{i}" for i in range(9)]


def test_a_listing_that_never_answers_by_the_deadline_fails_the_cycle():
    api = populated(1)
    api.list_delay = 0.3
    p = poller(api, interval=0.001)  # a deadline of 0.9 ms: the listing takes 300 ms
    report = cycle(p)
    assert report.result == "failure" and report.errors[0] == "no answer from the API by the cycle deadline"
    assert p.snapshot.poll.up is False and p.snapshot.poll.finished_at == 1000.0 and not p.snapshot.ready


def test_a_bug_in_discovery_fails_the_cycle_with_one_line():
    api = populated(1)

    async def broken(token=None, deadline=None, recall=None):
        raise KeyError("i" * 300)

    api.list_page = broken  # type: ignore[method-assign]  # this test's listing, in place of the fake's
    p = poller(api)
    report = cycle(p)
    assert report.result == "failure" and report.errors == ["cycle failed: KeyError: '" + "i" * 199]
    assert p.snapshot.poll.finished_at == 1000.0


def test_configured_sessions_are_read_one_by_one_within_this_shard():
    from collector.selection import shard_of

    api = populated(6)
    ids = tuple(api.sessions)
    mine = {i for i in ids if shard_of(i, 2) == 1}
    p = poller(api, discover=False, session_ids=ids, shard=1, total_shards=2, monotonic=lambda: 5.0)
    report = cycle(p)
    assert set(p.state.sessions) == mine and report.watched == len(mine) and 0 < len(mine) < 6
    assert {d.at for d in api.deadlines} == {5.0 + BUDGET_RATIO * 60.0}
    api.summary_errors = {i: NotFound("summary: HTTP 404", operation="summary", status=404) for i in mine}
    report = cycle(p)
    assert report.result == "success" and report.removed == len(mine) and p.state.sessions == {}


def test_when_no_configured_session_answers_the_first_error_is_the_reason():
    api = populated(2)
    api.summary_errors = {
        "s0": FetchError("summary: HTTP 503", operation="summary"),
        "s1": PayloadError("summary: invalid", operation="summary"),
    }
    report = cycle(poller(api, discover=False, session_ids=("s0", "s1"), max_concurrency=1))
    assert report.result == "failure" and report.errors[0] == "summary: HTTP 503"


def test_failed_runs_are_logged_once_after_the_first_sync(captured):
    api = populated(2)
    p = poller(api)
    cycle(p)
    assert captured("chat run failed") == []  # history of the first sync: counted, not logged
    api.put("s0", "2026-01-01T00:01:00+00:00", api.sessions["s0"]["events"] + run_events(failed=True))
    cycle(p)
    cycle(p)
    (line,) = captured("chat run failed")
    assert line["session_id"] == "s0" and line["error"] == "boom" and line["duration_seconds"] == 0.5
    quiet_api = populated(1)
    quiet = poller(quiet_api, log_runs="none")
    cycle(quiet)
    quiet_api.put("s0", "2026-01-01T00:01:00+00:00", quiet_api.sessions["s0"]["events"] + run_events(True))
    cycle(quiet)
    assert len(captured("chat run failed")) == 1
    everything_api = populated(1)
    everything = poller(everything_api, log_runs="all")
    cycle(everything)
    everything_api.put(
        "s0", "2026-01-01T00:01:00+00:00", everything_api.sessions["s0"]["events"] + run_events() * 3 + run_events(True)
    )
    cycle(everything)
    assert len(captured("chat run finished")) == 3 and len(captured("chat run failed")) == 2


def test_the_published_poll_status_and_the_cycle_line(captured):
    api = populated(3)
    mono, wall = [100.0], [1000.0]
    p = poller(api, now=wall, monotonic=lambda: mono[0])
    api.on_list = lambda: mono.__setitem__(0, 100.123456)
    cycle(p)
    poll = p.snapshot.poll
    assert poll.result == "success" and poll.up is True and poll.last_success == 1000.0 and poll.message == ""
    assert poll.finished_at == 1000.0
    wall[0] = 2000.0
    assert poll.duration is not None
    assert abs(poll.duration - 0.123456) < 1e-9 and p.cycle_started == 100.0 and p.cycle_finished == 100.123456
    (line,) = captured("poll cycle")
    assert line["level"] == "info" and line["duration_seconds"] == 0.123 and line["sessions_watched"] == 3
    assert (line["fetched"], line["unchanged"], line["runs_added"], line["error"]) == (3, 0, 6, None)
    api.answers["s0"] = [FetchError("retrieve: HTTP 502", operation="retrieve")]
    api.put("s0", "2026-01-01T00:09:00+00:00", run_events())
    mono[0] = 200.0
    api.on_list = lambda: mono.__setitem__(0, 200.5)
    cycle(p)
    poll = p.snapshot.poll
    assert poll.result == "partial" and poll.last_success == 1000.0 and poll.message == "retrieve: HTTP 502"
    assert poll.finished_at == 2000.0  # a partial cycle is not a success: last_success stays
    later = captured("poll cycle")[-1]
    assert later["level"] == "warning" and later["unchanged"] == 2 and later["duration_seconds"] == 0.5


def test_every_failure_of_a_kind_is_counted(captured):
    api = populated(7)
    p = poller(api)
    cycle(p)
    for i in range(7):
        api.put(f"s{i}", "2026-01-01T00:01:00+00:00", run_events())
    api.answers = {
        "s0": [NotFound("gone", operation="retrieve", status=404)],
        "s1": [NotFound("gone", operation="retrieve", status=404)],
        "s2": [PayloadError("bad", operation="retrieve")],
        "s3": [PayloadError("bad", operation="retrieve")],
        "s4": [FetchError("down", operation="retrieve")],
        "s5": [RuntimeError("x" * 500)],
        "s6": [FetchError("down too", operation="retrieve")],
    }
    report = cycle(p)
    assert (report.removed, report.invalid, report.failed) == (2, 3, 2)
    assert self_metrics(p).invalid_payloads.labels("retrieve")._value.get() == 1  # the bug is an invalid payload
    (bug,) = [e for e in captured("session failing") if e["session_id"] == "s5"]
    assert bug["error"] == "RuntimeError: " + "x" * 200


def synced_then_one_more_run_each(n: int, interval: float):
    """A synced poller, each session one run further upstream, and a poller on the same state with a short
    deadline (``interval``)."""
    api = populated(n)
    p = poller(api)
    cycle(p)
    for i in range(n):
        api.put(f"s{i}", "2026-01-01T00:01:00+00:00", api.sessions[f"s{i}"]["events"] + run_events())
    fast = poller(api, interval=interval)
    fast.state, fast.snapshot = p.state, p.snapshot
    return api, p, fast


def test_fetches_that_outlast_the_deadline_are_carried_and_fetched_first_next_cycle(monkeypatch):
    monkeypatch.setattr("collector.poller.HANG_SHARE", 100.0)  # the carry alone: no cut is a hang here
    # 90 ms for the cycle: the listing fits in it, the fetches (500 ms each) do not
    api, _p, fast = synced_then_one_more_run_each(3, interval=0.1)
    api.retrieve_delay = 0.5
    report = cycle(fast)
    assert report.result == "partial" and report.carried == 3 and report.fetched == 0 and report.failed == 0
    assert report.errors == [
        "cycle deadline reached at page 1 of the listing pass with 3 sessions not fetched; the pass carries on next cycle"
    ]
    api.retrieve_delay = 0.0
    pages = api.pages_listed
    report = cycle(fast)
    assert report.fetched == 3 and report.runs_added == 3 and fast.state.aggregates.history_resets == 0
    assert api.pages_listed == pages and report.pass_complete  # the listing was done: only the fetches were left


def test_the_deadline_line_names_the_page_the_pass_had_reached(monkeypatch):
    monkeypatch.setattr("collector.poller.HANG_SHARE", 100.0)  # the carry alone: no cut is a hang here
    api, _p, fast = synced_then_one_more_run_each(3, interval=0.5)  # 3 pages listed in microseconds, of 0.45 s
    api.page_size, api.retrieve_delay = 1, 5.0  # no fetch ends in time
    report = cycle(fast)
    assert report.pages == 3 and report.errors == [
        "cycle deadline reached at page 3 of the listing pass with 3 sessions not fetched; the pass carries on next cycle"
    ]


def test_only_the_fetches_still_running_at_the_deadline_count_as_failed(monkeypatch):
    monkeypatch.setattr("collector.poller.HANG_SHARE", 100.0)  # the carry alone: no cut is a hang here
    api, _, fast = synced_then_one_more_run_each(4, interval=0.2)
    api.answers["s0"] = [FetchError("down", operation="retrieve")]
    api.retrieve_delay, api.slow = 0.5, {"s3"}
    report = cycle(fast)
    assert report.failed == 1 and report.fetched == 2 and report.carried == 1  # s3 still running: carried
    assert report.errors[0] == "down" and report.errors[-1].startswith("cycle deadline reached at page 1")


def test_configured_ids_of_other_shards_are_never_asked_for():
    from collector.selection import shard_of

    api = populated(8)
    ids = tuple(api.sessions)
    cycle(poller(api, discover=False, session_ids=ids, shard=0, total_shards=2))
    assert set(api.summaries) == {i for i in ids if shard_of(i, 2) == 0}
    api.summaries.clear()
    cycle(poller(api, discover=False, session_ids=ids))
    assert set(api.summaries) == set(ids)


def test_a_refused_key_stops_the_cycle_with_its_own_message():
    from collector.errors import AuthError

    api = populated(3)
    api.summary_errors = {"s1": AuthError("summary: HTTP 401: the API key was refused", operation="summary", status=401)}
    report = cycle(poller(api, discover=False, session_ids=tuple(api.sessions)))
    assert report.result == "failure" and report.errors == ["summary: HTTP 401: the API key was refused"]


def test_fetches_in_flight_when_the_key_is_refused_go_back_and_are_read_once_it_works():
    """Otherwise the pass would end without them, and a first sync show their runs as never there."""
    from collector.errors import AuthError

    api = populated(3)
    api.answers["s0"] = [AuthError("retrieve: HTTP 401: the API key was refused", operation="retrieve", status=401)]
    api.retrieve_delay, api.slow = 0.05, {"s1", "s2"}
    p = poller(api)
    report = cycle(p)
    assert report.result == "failure" and report.errors == ["retrieve: HTTP 401: the API key was refused"]
    assert not p.state.synced and total_runs(p) == 0
    api.retrieve_delay = 0.0
    again = cycle(p)
    assert again.fetched == 3 and again.pass_complete and p.state.synced and total_runs(p) == 6


def test_failures_of_configured_sessions_are_each_counted():
    api = populated(3)
    api.summary_errors = {"s0": FetchError("a", operation="summary"), "s1": FetchError("b", operation="summary")}
    report = cycle(poller(api, discover=False, session_ids=tuple(api.sessions), max_concurrency=1))
    assert report.result == "partial" and report.failed == 2 and report.errors == ["a", "b"]


def test_a_cycle_reports_every_count_exactly_and_logs_the_same_line():
    """Three pages (one unreadable item), a fetch that fails on its own, then an idle cycle: the report and
    its "poll cycle" log line hold each count exactly (mutation testing found each unpinned)."""
    api = FakeApi()
    api.page_size = 3
    for i in range(6):
        api.put(f"s{i}", f"2026-01-01T00:00:0{i}Z", run_events(failed=i == 0))
    api.sessions["bad"] = {"session_id": "bad", "last_updated_at": 5}  # listed, but not a session
    api.listed = ["s0", "s1", "bad", "s2", "s3", "s4", "s5"]
    api.answers["s5"] = [FetchError("retrieve: HTTP 500", operation="retrieve")]
    p = poller(api)
    with structlog.testing.capture_logs() as captured:
        first = cycle(p)
    assert (
        first.result,
        first.watched,
        first.fetched,
        first.unchanged,
        first.runs_added,
        first.failed,
        first.invalid,
        first.removed,
        first.pages,
        first.carried,
        first.backing_off,
        first.pass_complete,
    ) == ("partial", 5, 5, 0, 5, 1, 1, 0, 3, 0, 0, True)
    assert first.errors[0].startswith("retrieve: HTTP 500")
    line = next(e for e in captured if e["event"] == "poll cycle")
    assert {
        k: line[k]
        for k in (
            "result",
            "sessions_watched",
            "fetched",
            "unchanged",
            "runs_added",
            "failed",
            "invalid",
            "removed",
            "pages",
            "carried",
            "sessions_failing",
            "pass_complete",
        )
    } == {
        "result": "partial",
        "sessions_watched": 5,
        "fetched": 5,
        "unchanged": 0,
        "runs_added": 5,
        "failed": 1,
        "invalid": 1,
        "removed": 0,
        "pages": 3,
        "carried": 0,
        "sessions_failing": 1,
        "pass_complete": True,
    }
    assert line["error"].startswith("retrieve: HTTP 500") and line["log_level"] == "warning"
    failing = next(e for e in captured if e["event"] == "session failing")
    assert failing["session_id"] == "s5" and failing["note"] == "retried with backoff; the other sessions go on"
    assert p.failing["s5"].failures == 1 and p.failing["s5"].retry_cycle == p.cycles + 1
    with structlog.testing.capture_logs() as captured:
        second = cycle(p)  # s5 retried at once (backoff 1), answers now
    assert (second.result, second.watched, second.fetched, second.unchanged, second.runs_added, second.pages, second.invalid) == (
        "partial",
        6,
        1,
        5,
        1,
        3,
        1,
    )  # still partial: the unreadable item
    assert next(e for e in captured if e["event"] == "session recovered")["failures"] == 1
    assert not p.failing


def test_a_failing_session_is_said_once_cut_to_size_and_a_cycle_reports_five_errors(captured):
    api = FakeApi()
    long_id = "s" * 100
    for sid in (long_id, *(f"b{i}" for i in range(6))):
        api.put(sid, "2026-01-01T00:00:00Z", run_events())
        api.answers[sid] = [FetchError(f"retrieve: HTTP 500 {sid} " + "e" * 600, operation="retrieve")] * 2
    api.put("fine", "2026-01-01T00:00:00Z", run_events())
    p = poller(api)
    report = cycle(p)
    assert report.failed == 7 and len(report.errors) == 5 and report.errors[0].startswith("retrieve: HTTP 500 s")
    cycle(p)  # failing again, backing off after: no second line
    lines = [e for e in captured() if e["event"] == "session failing"]
    assert len(lines) == 7 and {len(e["error"]) for e in lines} == {500}
    (first,) = [e for e in lines if e["session_id"].startswith("s")]
    assert first["session_id"] == long_id[:80]


def test_a_pass_in_which_every_fetch_failed_or_waited_is_not_the_first_sync():
    """Synced with no history read, the families would show 0 runs for a session that has one, then jump."""
    api = FakeApi()
    api.put("only", "2026-01-01T00:00:00Z", run_events())
    api.answers["only"] = [FetchError("retrieve: HTTP 500", operation="retrieve")] * 3
    p = poller(api)
    reports = [cycle(p) for _ in range(7)]  # fails in cycles 1, 2 and 4; waits for its retry in 3, 5 to 7
    assert [r.failed for r in reports] == [1, 1, 0, 1, 0, 0, 0] and reports[2].backing_off == 1
    assert all(r.pass_complete for r in reports) and not p.state.synced and not p.snapshot.ready
    assert cycle(p).failed == 0  # the retry of cycle 8 reads it
    assert p.state.synced and p.snapshot.ready and total_runs(p) == 1
    api.put("broken", "2026-01-01T00:00:00Z", run_events())
    api.answers["broken"] = [FetchError("retrieve: HTTP 500", operation="retrieve")] * 9
    beside = poller(api)
    assert cycle(beside).failed == 1 and beside.state.synced  # one read beside it: the pass is a sync


def test_a_lone_session_that_fails_while_the_listing_answers_fails_on_its_own_and_backing_off_is_counted():
    api = FakeApi()
    api.put("only", "2026-01-01T00:00:00Z", run_events())
    api.answers["only"] = [FetchError("retrieve: HTTP 500", operation="retrieve")] * 3
    p = poller(api)
    first = cycle(p)
    assert p.cycles == 1 and first.failed == 1  # the listing answered: it fails on its own, not an outage
    assert (p.failing["only"].failures, p.failing["only"].retry_cycle) == (1, 2)
    cycle(p)
    assert (p.failing["only"].failures, p.failing["only"].retry_cycle) == (2, 4)
    third = cycle(p)
    assert (third.result, third.backing_off, third.failed) == ("success", 1, 0)
    cycle(p)
    assert (p.failing["only"].failures, p.failing["only"].retry_cycle) == (3, 8)
    many = FakeApi()
    for sid in ("a", "b", "c", "d"):
        many.put(sid, "2026-01-01T00:00:00Z", run_events())
        if sid != "d":
            many.answers[sid] = [FetchError("retrieve: HTTP 500", operation="retrieve")] * 2
    q = poller(many)
    cycle(q)
    cycle(q)
    assert cycle(q).backing_off == 3 and set(q.failing) == {"a", "b", "c"}


class Paged(FakeApi):
    """A listing whose page tokens are ``links`` (token to the next one): an endless or a looping listing."""

    def __init__(self, links: dict[str | None, str]) -> None:
        super().__init__()
        self.links = links

    async def list_page(self, token=None, deadline=None, recall=None):
        from collector.llamacloud.models import parse_page

        self.pages_listed += 1
        ids = sorted(self.sessions)
        item = ids[self.pages_listed % len(ids)]
        body = {"items": [self._summary(item)], "next_page_token": self.links.get(token, f"{token}+")}
        return parse_page(json.dumps(body).encode())


def test_an_endless_listing_ends_where_it_goes_round_says_so_and_starts_over():
    from collector.llamacloud.listing import IDLE_PAGES

    api = Paged({None: "p"})  # p, p+, p++, ...: never the same token twice, and the same two sessions
    api.put("a", T0, run_events())
    api.put("b", T0, run_events())
    p = poller(api)
    first = cycle(p)
    assert (first.result, first.pages, first.fetched) == ("partial", IDLE_PAGES + 2, 2)
    assert first.errors[0].startswith(f"list: {IDLE_PAGES} pages in a row listed no session new to the pass")
    assert p.listing is None and p.state.synced  # synced on what it read; no verdict on who is gone
    assert self_metrics(p).listing_anomalies.labels("", "pass_restarted")._value.get() == 1
    second = cycle(p)
    assert (second.pages, second.fetched, api.pages_listed) == (IDLE_PAGES + 2, 0, 2 * IDLE_PAGES + 4)


def test_a_listing_whose_tokens_loop_ends_at_the_first_repeat():
    api = Paged({None: "x", "x": "y", "y": "x"})
    api.put("a", T0, run_events())
    p = poller(api)
    report = cycle(p)
    assert (report.result, report.pages, report.errors) == ("success", 3, []) and p.state.synced


def test_unreadable_items_on_every_page_are_all_counted():
    api = FakeApi()
    api.page_size = 2
    for sid in ("s0", "s1"):
        api.put(sid, T0, run_events())
    for bad in ("bad0", "bad1"):
        api.sessions[bad] = {"session_id": bad, "last_updated_at": 5}
    api.listed = ["s0", "bad0", "s1", "bad1"]
    report = cycle(poller(api))
    assert (report.pages, report.invalid, report.fetched) == (2, 2, 2)


def test_a_failing_session_whose_change_is_withdrawn_recovers():
    """It failed to fetch a newer history; the listing then shows the one already counted: nothing to fetch,
    and no longer failing."""
    api = FakeApi()
    api.put("s", T0, run_events())
    p = poller(api)
    cycle(p)
    api.put("s", "2026-01-01T00:05:00+00:00", run_events() + run_events())
    api.answers["s"] = [FetchError("retrieve: HTTP 500", operation="retrieve")]
    cycle(p)
    assert set(p.failing) == {"s"}
    api.put("s", T0, run_events())
    report = cycle(p)  # its retry is due: the listing shows what was counted
    assert report.unchanged == 1 and report.fetched == 0 and not p.failing and total_runs(p) == 1


def test_a_fetch_cut_off_mid_answer_goes_first_next_cycle_before_the_ones_that_waited(monkeypatch):
    monkeypatch.setattr("collector.poller.HANG_SHARE", 100.0)  # the carry alone: no cut is a hang here
    api, _p, fast = synced_then_one_more_run_each(3, interval=0.2)
    fast.config = replace(fast.config, max_concurrency=1)  # s0 in flight at the deadline, s1 and s2 queued
    api.retrieve_delay, api.slow = 5.0, {"s0"}
    assert cycle(fast).carried == 3
    api.retrieve_delay, api.fetch_order = 0.0, []
    cycle(fast)
    assert api.fetch_order == ["s0", "s1", "s2"]


def test_a_configured_session_that_fails_beside_answering_ones_backs_off_and_stays_watched():
    api = populated(2)
    p = poller(api, discover=False, session_ids=("s0", "s1"))
    cycle(p)
    api.summary_errors = {"s1": FetchError("summary: HTTP 500", operation="summary")}
    failed = cycle(p)  # s0's summary answered (unchanged, not fetched): s1 fails on its own, no outage
    assert (failed.result, failed.failed, failed.unchanged, failed.fetched) == ("partial", 1, 1, 0)
    assert set(p.failing) == {"s1"}
    cycle(p)  # retried at once, fails again: next retry two cycles on
    asked = api.summaries["s1"]
    waiting = cycle(p)
    assert (waiting.backing_off, waiting.invalid, waiting.failed, api.summaries["s1"]) == (1, 0, 0, asked)
    assert waiting.pass_complete and set(p.state.sessions) == {"s0", "s1"}  # waiting is not gone


def test_a_failing_session_that_is_then_deleted_is_no_longer_failing():
    api = populated(2)
    p = poller(api)
    cycle(p)
    api.put("s1", "2026-01-01T00:05:00+00:00", run_events())
    api.answers["s1"] = [
        FetchError("retrieve: HTTP 500", operation="retrieve"),
        NotFound("retrieve: HTTP 404", operation="retrieve", status=404),
    ]
    cycle(p)
    assert set(p.failing) == {"s1"}
    report = cycle(p)
    assert report.removed == 1 and not p.failing and set(p.state.sessions) == {"s0"}


class GivesUpAtTheDeadline(FakeApi):
    """The client's own deadline ends a request (a FetchError as the deadline passes), before the cycle's
    timer: the ``at``-th page, or the retrieve of ``sid``, moves the clock past the deadline and fails."""

    def __init__(self, clock: list[float], page: int | None = None, sid: str | None = None) -> None:
        super().__init__()
        self.clock, self.page, self.sid = clock, page, sid
        self.answered = asyncio.Event()

    def _give_up(self, operation: str):
        self.clock[0] += 3600.0
        raise FetchError(f"{operation}: no answer by the deadline", operation=operation)

    async def list_page(self, token=None, deadline=None, recall=None):
        if self.pages_listed + 1 == self.page:
            while len(self.retrieved) < self.pages_listed:  # every session listed so far fetched: none waits
                self.answered.clear()
                await self.answered.wait()
            self.pages_listed += 1
            self._give_up("list")
        return await super().list_page(token, deadline)

    async def retrieve(self, sid: str, deadline=None, off_loop=None):
        if sid == self.sid:
            self._give_up("retrieve")
        try:
            return await super().retrieve(sid, deadline)
        finally:
            self.answered.set()


def deadline_api(**where) -> tuple[GivesUpAtTheDeadline, Poller]:
    clock = [0.0]
    api = GivesUpAtTheDeadline(clock, **where)
    api.page_size = 1
    for i in range(3):
        api.put(f"s{i}", T0, run_events())
    return api, poller(api, monotonic=lambda: clock[0], max_concurrency=1)


def test_a_listing_that_gives_up_at_the_deadline_is_cut_not_failed_and_resumes():
    _, p = deadline_api(page=2)
    report = cycle(p)
    assert (report.result, report.failed, report.fetched) == ("partial", 0, 1)
    assert report.errors == [
        "cycle deadline reached at page 1 of the listing pass with 0 sessions not fetched; the pass carries on next cycle"
    ]
    assert p.listing is not None and not p.listing.listed_all and p.listing.token == "1"  # the next cycle reads page 2 again
    _, first = deadline_api(page=1)
    outage = cycle(first)  # nothing answered by the deadline: an outage
    assert (outage.result, outage.errors) == ("failure", ["no answer from the API by the cycle deadline"])


def test_a_fetch_that_gives_up_at_the_deadline_is_carried_not_failed():
    _, p = deadline_api(sid="s0")
    report = cycle(p)
    assert (report.result, report.failed, report.fetched) == ("partial", 0, 0) and not p.failing
    assert report.errors[-1].startswith("cycle deadline reached at page ")
    assert p.listing is not None and p.listing.todo[0].session_id == "s0" and "s0" in p.listing.queued  # first next cycle, once


@pytest.mark.parametrize("page_size,concurrency,pages", [(10, 1, 3), (1, 4, 20)])
def test_the_listing_runs_at_most_a_backlog_ahead_of_the_fetches(page_size, concurrency, pages):
    """The backlog is the larger of two pages and four fetches per worker: with every fetch stuck, the lister
    reads until that many wait, then waits itself (the queue, and memory, stay bounded)."""
    api = FakeApi()
    api.page_size, api.retrieve_delay = page_size, 3600.0
    for i in range(100):
        api.put(f"s{i:03}", T0, run_events())
    p = poller(api, page_size=page_size, max_concurrency=concurrency)

    async def scenario():
        task = asyncio.create_task(p.cycle())
        for _ in range(10_000):  # turns of the event loop, not time: the lister needs a few per page
            await asyncio.sleep(0)
            if api.pages_listed >= pages:
                break
        for _ in range(1_000):  # and would read on within a few more, were it not waiting
            await asyncio.sleep(0)
        listed = api.pages_listed
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return listed

    assert run_async(scenario()) == pages


def test_a_listing_error_comes_first_before_the_sessions_that_failed():
    api = FakeApi()
    api.page_size = 1
    for sid in ("s0", "s1", "s2"):
        api.put(sid, T0, run_events())
    api.answers["s0"] = [FetchError("retrieve: HTTP 502", operation="retrieve")]
    api.answers["s1"] = [FetchError("retrieve: HTTP 503", operation="retrieve")]

    def third_page_fails():
        if api.pages_listed == 3:
            api.list_errors.append(FetchError("list: HTTP 500", operation="list"))

    api.on_list = third_page_fails
    report = cycle(poller(api))
    assert report.result == "partial"
    assert report.errors == ["list: HTTP 500", "retrieve: HTTP 502", "retrieve: HTTP 503"]


class Stuck(FakeApi):
    """Fetches that follow a script per session: a number moves the clock on by that much, then the fetch
    never answers; an exception is raised; None (or an empty script) answers."""

    def __init__(self, clock: list[float], scripts: dict[str, list]) -> None:
        super().__init__()
        self.clock, self.scripts = clock, scripts

    async def retrieve(self, sid: str, deadline=None, off_loop=None):
        step = self.scripts[sid].pop(0) if self.scripts.get(sid) else None
        if isinstance(step, Exception):
            raise step
        if step is not None:
            self.clock[0] += step
            await asyncio.Event().wait()
        return await super().retrieve(sid, deadline)


def stuck(*sids: str) -> tuple[Stuck, Poller]:
    clock = [0.0]
    api = Stuck(clock, {})
    for sid in sids:
        api.put(sid, T0, run_events())
    return api, poller(api, interval=0.2, monotonic=lambda: clock[0])


@pytest.mark.parametrize("shares,hung_at", [((0.9,), 1), ((0.5, 0.5), 2), ((0.25, 0.5, 0.25), 3)])
def test_a_fetch_hangs_once_it_waited_nearly_a_budget_in_all(shares, hung_at):
    """Cut off at the deadline, a fetch is carried; it hangs on its own (failed, backing off) once it has
    waited, over the cycles that cut it, ``HANG_SHARE`` of a cycle's budget (exactly that, first)."""
    api, p = stuck("s0")
    api.scripts["s0"] = [share * p.cadence.budget for share in shares]  # halves and quarters: sums exact
    reports = [cycle(p) for _ in range(hung_at)]
    assert [r.failed for r in reports] == [0] * (hung_at - 1) + [1]
    assert [r.carried for r in reports] == [1] * (hung_at - 1) + [0]
    assert reports[-1].errors[0].startswith("retrieve: no answer in ") and set(p.failing) == {"s0"}


@pytest.mark.parametrize("after", [(0.5,), (0.25, 0.25)])
def test_a_hung_fetch_put_back_by_a_failed_cycle_starts_its_count_again(after):
    """A cycle that is an outage puts its failures back in the queue: the hung fetch among them starts
    counting its cuts and its waiting again, so it is carried again, not hung at once."""
    api, p = stuck("s0", "s1")
    budget = p.cadence.budget
    api.scripts = {"s0": [0.5 * budget, 0.5 * budget] + [share * budget for share in after], "s1": [0.0]}
    first = cycle(p)  # the listing answers; both fetches cut
    assert (first.carried, first.failed) == (2, 0)
    api.scripts["s1"] = [FetchError("retrieve: HTTP 500", operation="retrieve")]
    api.list_errors = [FetchError("list: HTTP 503", operation="list")]  # the second look at the listing too
    second = cycle(p)  # nothing answers: s1 fails, s0 hangs (two cuts, a budget): an outage
    assert (second.result, second.failed, second.errors) == ("failure", 2, ["retrieve: HTTP 500"])
    later = [cycle(p) for _ in after]  # one cut of half a budget, or two of a quarter: not a hang yet
    assert [(r.failed, r.carried) for r in later] == [(0, 1)] * len(after) and "s0" not in p.failing


class LateAnswers(FakeApi):
    """Each fetch answers, once the deadline's clock has moved on by ``step``: a slow API, as the deadline
    sees it, that the cycle's own timer has not caught yet."""

    def __init__(self, clock: list[float], step: float) -> None:
        super().__init__()
        self.clock, self.step = clock, step

    async def retrieve(self, sid: str, deadline=None, off_loop=None):
        self.clock[0] += self.step
        return await super().retrieve(sid, deadline)


def test_the_deadline_between_two_fetches_cuts_the_cycle_and_says_so():
    clock = [0.0]
    api = LateAnswers(clock, 0.0)
    for sid in ("s0", "s1", "s2"):
        api.put(sid, T0, run_events())
    p = poller(api, interval=60.0, monotonic=lambda: clock[0], max_concurrency=1)
    api.step = p.cadence.budget  # the first answer comes as the deadline passes: the others wait
    report = cycle(p)
    assert (report.result, report.fetched, report.carried) == ("partial", 1, 2)
    assert report.errors == [
        "cycle deadline reached at page 1 of the listing pass with 2 sessions not fetched; the pass carries on next cycle"
    ]


def test_sessions_failing_on_their_own_last_in_a_pass_do_not_make_every_cycle_an_outage():
    """Two new sessions whose answers are refused (over the size cap, say), the only fetches of a cycle that lists
    nothing more, were retried as an outage every cycle: the pass never ended and no other change was counted.
    A look at the listing's first page shows the API is up: they fail on their own (tests/test_hostile_history)."""
    from collector.errors import PayloadError
    from tests.fakes import FakeApi, cycle, poller, run_events, total_runs

    api = FakeApi()
    for i in range(3):
        api.put(f"s{i}", "2026-01-01T00:00:00Z", run_events())
    now = [1000.0]
    p = poller(api, now=now)
    cycle(p)
    for sid in ("big1", "big2"):
        api.put(sid, "2026-01-01T00:00:01Z", run_events())
        api.answers[sid] = [PayloadError("retrieve: too large", operation="retrieve")] * 100
    api.page_size = 2  # the pass carries over: the new ones are fetched in a cycle that lists nothing more
    results = []
    for _ in range(6):
        now[0] += 60
        results.append(cycle(p).result)
    api.put("s0", "2026-01-01T00:00:05Z", run_events() + run_events())
    for _ in range(3):
        now[0] += 60
        results.append(cycle(p).result)
    assert "failure" not in results, results
    assert total_runs(p) == 4 and set(p.failing) == {"big1", "big2"}
