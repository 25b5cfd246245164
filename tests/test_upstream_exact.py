"""Issue 26: each of the eight upstream answers that miscounted or stalled the collector, at the size that
shows it, on the real poller (DESIGN §4 "One listing is never trusted alone", timestamps as a hint, values
bounded at the boundary, configuration changes). ``tests/test_large_body.py`` has the sixth (a body over
1 MiB), ``tests/test_durability.py`` the fifth's bucket and rule change over loopback."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from prometheus_client import CollectorRegistry

from collector import logs
from collector.derive import ErrorClassifier
from collector.errors import FetchError, PayloadError
from collector.llamacloud.listing import PAGE_STRIKES
from collector.llamacloud.models import MAX_MEASURE
from collector.metrics import SelfMetrics
from collector.poller import SHORT_PASSES_AGREE, Poller
from collector.state import MAX_TITLE
from collector.storage.sqlite import SqliteStore
from tests.fakes import BUCKETS, FakeApi, cycle, poll_config, poller, run_events, total_runs

pytestmark = pytest.mark.tier("unit")

T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-01T00:01:00+00:00"
RULES = [("timeout", "timed out")]


def anomalies(p: Poller, kind: str) -> float:
    return p.metrics.listing_anomalies.labels("", kind)._value.get()  # type: ignore[attr-defined]


def project(n: int, runs: int = 1) -> FakeApi:
    api = FakeApi()
    for i in range(n):
        api.put(f"s{i:05}", T0, run_events() * runs)
    return api


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    yield lambda event: [e for e in map(json.loads, stream.getvalue().splitlines()) if e["event"] == event]
    structlog.reset_defaults()


# 1. one empty listing ---------------------------------------------------------------------------------------


def test_one_empty_listing_retires_nothing_and_counts_nothing_twice():
    api = project(10_500)
    p = poller(api)
    assert cycle(p).result == "success" and total_runs(p) == 10_500
    api.listed = []  # {"items": [], "next_page_token": null}: a failover, a misrouted project
    empty = cycle(p)
    assert (empty.result, empty.removed, empty.pass_complete) == ("partial", 0, True)
    assert empty.errors[0] == "list: a complete pass listed 0 of the 10500 sessions watched; none is retired on its word"
    assert len(p.state.sessions) == 10_500 and anomalies(p, "short_pass") == 1
    api.listed = None
    back = cycle(p)
    assert (back.result, back.fetched, back.unchanged) == ("success", 0, 10_500) and total_runs(p) == 10_500


def test_a_listing_that_loops_back_early_is_a_short_pass_too():
    api = project(3000)
    api.page_size = 100
    p = poller(api)
    cycle(p)
    api.listed = list(api.sessions)[:1000]  # the token loops back after ten pages
    assert cycle(p).removed == 0 and anomalies(p, "short_pass") == 1
    api.listed = None
    assert cycle(p).fetched == 0 and total_runs(p) == 3000


def test_a_real_mass_deletion_is_accepted_after_passes_agree_and_a_return_counts_nothing_again(tmp_path):
    api = project(12_000)
    store = SqliteStore(tmp_path / "state.db", BUCKETS, RULES, 50)
    p = Poller(
        api, store, poll_config(buckets=BUCKETS), ErrorClassifier(RULES), SelfMetrics(CollectorRegistry()), clock=lambda: 1000.0
    )
    cycle(p)
    everyone = dict(api.sessions)
    api.sessions = {k: v for k, v in everyone.items() if k < "s00100"}  # 11,900 deleted for real
    for _ in range(SHORT_PASSES_AGREE - 1):
        assert cycle(p).removed == 0
    assert cycle(p).removed == 11_900 and len(p.state.sessions) == 100 and total_runs(p) == 12_000
    assert p.state.retired == {}  # the cursors are on disk, not in memory
    store.close()
    store = SqliteStore(tmp_path / "state.db", BUCKETS, RULES, 50)
    again = Poller(
        api, store, poll_config(buckets=BUCKETS), ErrorClassifier(RULES), SelfMetrics(CollectorRegistry()), clock=lambda: 1000.0
    )
    api.sessions = everyone  # restored upstream (a misrouted project after all)
    report = cycle(again)
    assert (report.fetched, report.unchanged) == (0, 12_000) and total_runs(again) == 12_000
    store.close()


def test_memory_only_forgets_no_cursor_either():
    api = project(10_500)
    p = poller(api)
    cycle(p)
    everyone = dict(api.sessions)
    api.sessions = {}
    for _ in range(SHORT_PASSES_AGREE):
        cycle(p)
    assert len(p.state.sessions) == 0 and len(p.state.retired) == 10_500
    api.sessions = everyone
    assert cycle(p).fetched == 0 and total_runs(p) == 10_500


def test_short_passes_that_disagree_retire_nothing_one_of_them_listed():
    """Found by the loop model's long profile: an unstable listing (shuffled at every page) gave three short
    passes in a row, each listing another session; the third was taken as the truth and retired the session the
    pass before it had listed. Short passes agree only on what none of them listed (DESIGN §4)."""
    api = project(SHORT_PASSES_AGREE)
    p = poller(api)
    cycle(p)
    everyone = list(api.sessions)
    for sid in everyone:  # each short pass lists another one: they agree on nothing
        api.listed = [sid]
        report = cycle(p)
        assert report.pass_complete and report.removed == 0
    assert set(p.state.sessions) == set(everyone) and anomalies(p, "short_pass") == SHORT_PASSES_AGREE - 1
    last = everyone[-1]
    for _ in range(SHORT_PASSES_AGREE):  # now they agree: the others are gone, counted once
        cycle(p)
    assert set(p.state.sessions) == {last} and total_runs(p) == SHORT_PASSES_AGREE
    api.listed = None  # they come back: nothing counted again
    assert cycle(p).fetched == 0 and total_runs(p) == SHORT_PASSES_AGREE


# 2. a refused page token -----------------------------------------------------------------------------------


class Forgetful(FakeApi):
    """Page tokens are offsets tagged with a generation; after ``forget()`` older tokens get HTTP 400."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.bad_page: int | None = None
        """Offset of a page whose next_page_token is 5,000 characters (over the 4,096 bound)."""

    def forget(self) -> None:
        self.generation += 1

    async def list_page(self, token=None, deadline=None, recall=None):
        if token is not None:
            generation, offset = token.split(":")
            if int(generation) != self.generation:
                self.pages_listed += 1
                raise FetchError("list: HTTP 400", operation="list", status=400)
            token = offset
        if self.bad_page is not None and int(token or 0) == self.bad_page:
            self.pages_listed += 1
            raise PayloadError("list: invalid payload at next_page_token: too long", operation="list")
        page = await super().list_page(token, deadline)
        if page.next_page_token is None:
            return page
        return page.model_copy(update={"next_page_token": f"{self.generation}:{page.next_page_token}"})


def paced(api: FakeApi, seconds_per_page: float):
    now = [0.0]
    api.on_list = lambda: now.__setitem__(0, now[0] + seconds_per_page)
    return lambda: now[0]


def test_a_refused_resumed_token_starts_the_pass_over_and_counting_goes_on():
    api = Forgetful()
    for i in range(20):
        api.put(f"s{i:02}", T0, run_events())
    api.page_size = 2
    p = poller(api, interval=10.0, monotonic=paced(api, 1.0))  # 9 pages a cycle: a pass spans two
    while not p.snapshot.ready:
        cycle(p)
    first = cycle(p)  # a new pass, cut mid-way: it resumes from a saved token
    assert not first.pass_complete and p.listing is not None and p.listing.token is not None
    api.forget()  # a deploy that forgets cursors
    api.put("s00", T1, run_events() * 3)  # new runs on page 1
    results = [cycle(p).result for _ in range(4)]
    assert "failure" not in results and anomalies(p, "pass_restarted") >= 1
    assert total_runs(p) == 22 and p.snapshot.poll.up


def test_a_page_that_is_always_invalid_ends_the_pass_there_and_the_first_sync_happens():
    api = Forgetful()
    for i in range(10):
        api.put(f"s{i:02}", T0, run_events())
    api.page_size = 2
    api.bad_page = 4  # the third page carries a token over the bound
    p = poller(api)
    reports = [cycle(p) for _ in range(PAGE_STRIKES)]
    assert p.snapshot.ready and total_runs(p) == 4  # the two pages before it, counted and exposed
    assert all(r.result == "partial" for r in reports) and anomalies(p, "pass_restarted") >= 1
    assert len(p.state.sessions) == 4  # nothing behind the page retired or counted
    api.bad_page = None  # healed
    for _ in range(2):
        cycle(p)
    assert total_runs(p) == 10


def test_a_page_that_fails_cycle_after_cycle_ends_the_pass_there():
    api = project(6)
    api.page_size = 2
    p = poller(api)
    cycle(p)
    original = api.list_page

    async def third_page_down(token=None, deadline=None, recall=None):
        if token == "4":
            raise FetchError("list: HTTP 503", operation="list", status=503)
        return await original(token, deadline)

    api.list_page = third_page_down  # type: ignore[method-assign]
    api.put("s00000", T1, run_events() * 2)
    reports = [cycle(p) for _ in range(PAGE_STRIKES)]
    assert [r.pass_complete for r in reports] == [False] * (PAGE_STRIKES - 1) + [True]
    assert reports[-1].result == "partial" and len(p.state.sessions) == 6  # none retired
    assert total_runs(p) == 7 and p.snapshot.ready
    steady = [cycle(p) for _ in range(3)]  # each pass now ends at the failing page: partial, never stuck
    assert all(r.result == "partial" and r.pass_complete for r in steady)


# 3. a clock put back -----------------------------------------------------------------------------------------


def test_a_timestamp_that_went_backwards_hides_no_run_and_is_logged_once(captured):
    api = FakeApi()
    api.put("s", "2026-01-01T01:00:00+00:00", run_events() * 6)  # an upstream clock an hour fast
    p = poller(api)
    cycle(p)
    for n, when in enumerate(("2026-01-01T00:10:00+00:00", "2026-01-01T00:05:00+00:00"), start=1):
        api.put("s", when, run_events() * (6 + 5 * n))  # corrected: new runs, earlier times
        report = cycle(p)
        assert report.result == "success" and total_runs(p) == 6 + 5 * n
    assert anomalies(p, "timestamp_backwards") == 2
    assert len(captured("last_updated_at went backwards; the history is counted all the same")) == 1
    assert cycle(p).fetched == 0  # keyed on what the listing shows: unchanged now


def test_the_same_older_shorter_answer_twice_is_the_truth_not_a_lagging_replica():
    api = FakeApi()
    api.put("s", "2026-01-01T01:00:00+00:00", run_events() * 6)
    p = poller(api)
    cycle(p)
    api.put("s", "2026-01-01T00:10:00+00:00", run_events() * 2)  # re-created, on a clock put back
    assert cycle(p).runs_added == 0 and p.state.aggregates.history_resets == 0  # once: a lagging replica
    cycle(p)  # twice: the upstream's truth, re-synced (DESIGN §4: what it shows now is taken as counted)
    assert p.state.aggregates.history_resets == 1 and "s" not in p.stale
    api.put("s", "2026-01-01T00:11:00+00:00", run_events() * 3)
    cycle(p)
    assert total_runs(p) == 6  # the high-water mark holds until the history passes what was counted
    assert cycle(p).fetched == 0  # and it is no longer read every cycle


# 4. values the state file would refuse --------------------------------------------------------------------


def test_the_extremes_the_api_may_send_round_trip_through_the_state_file(tmp_path):
    api = FakeApi()
    longest = "x" * 256
    huge: list[dict] = [
        {"type": "user_input", "content": "q"},
        {
            "type": "stop",
            "is_error": False,
            "usage": {"total_input_tokens": 2**53, "total_output_tokens": 2**53, "duration_ms": 2**53, "turns": 2**53},
        },
    ]
    api.put(longest, "0001-01-01T00:00:00Z", huge * 2)
    api.sessions[longest]["generated_title"] = "t" * (70 * 1024)
    api.put("ok", T0, run_events())
    db = tmp_path / "state.db"

    def start() -> Poller:
        return Poller(
            api,
            SqliteStore(db, BUCKETS, RULES, 50),
            poll_config(buckets=BUCKETS),
            ErrorClassifier(RULES),
            SelfMetrics(CollectorRegistry()),
            clock=lambda: 1000.0,
        )

    p = start()
    cycle(p)
    kept = p.state.sessions[longest]
    assert kept.updated_ts is None and len(kept.title or "") == MAX_TITLE and kept.tokens_input == MAX_MEASURE
    assert p.state.aggregates.tokens_total["input"] == MAX_MEASURE
    assert p.state.aggregates.invalid_values["last_updated_at"] == 1
    before = total_runs(p)
    p.store.close()
    again = start()
    assert list(tmp_path.glob("*.corrupt-*")) == []  # read back whole: nothing was saved it refuses
    assert again.state.sessions == p.state.sessions and total_runs(again) == before == 3
    again.store.close()


# 5. configuration changes ------------------------------------------------------------------------------------


def test_a_new_label_limit_applies_to_the_runs_counted_from_then_on(tmp_path):
    api = FakeApi()
    for i, tool in enumerate(("search", "fetch", "sql")):
        api.put(f"s{i}", T0, run_events(tool=tool))
    db = tmp_path / "state.db"

    def start(limit: int, rules) -> Poller:
        return Poller(
            api,
            SqliteStore(db, BUCKETS, rules, limit),
            poll_config(buckets=BUCKETS, label_limit=limit),
            ErrorClassifier(rules),
            SelfMetrics(CollectorRegistry()),
            clock=lambda: 1000.0,
        )

    p = start(50, RULES)
    cycle(p)
    calls = sum(p.state.aggregates.tool_calls.values())
    p.store.close()
    q = start(1, [*RULES, ("boom", "boom")])  # a lower limit and a new rule: nothing re-derived
    assert cycle(q).fetched == 0 and sum(q.state.aggregates.tool_calls.values()) == calls == 3
    api.put("s3", T0, run_events(failed=True, tool="new-tool"))
    cycle(q)
    assert q.state.aggregates.tool_calls[("_other", "result")] == 1  # over the new limit
    assert q.state.aggregates.errors == {"boom": 1}  # the new rule, for the run counted since
    q.store.close()


# 7. a long listing --------------------------------------------------------------------------------------------


def test_a_listing_of_ten_thousand_pages_and_more_completes_its_first_sync():
    api = project(10_010)
    api.page_size = 1
    p = poller(api)
    report = cycle(p)
    assert (report.result, report.pages, report.pass_complete) == ("success", 10_010, True)
    assert p.snapshot.ready and total_runs(p) == 10_010


# 8. busy sessions in a newest-first listing ----------------------------------------------------------------


def test_a_busy_session_that_moves_to_a_page_already_read_keeps_its_series():
    api = project(400)
    api.page_size = 20
    p = poller(api)
    cycle(p)
    newest_first = sorted(api.sessions, reverse=True)
    api.listed = newest_first
    moved = newest_first[-1]

    def move_once():
        if api.pages_listed == 3:  # after page 1 was read: the session jumps to it
            api.put(moved, T1, run_events() * 2)
            api.listed = [moved, *[s for s in newest_first if s != moved]]

    api.on_list = move_once
    api.pages_listed = 0
    report = cycle(p)
    assert report.pass_complete and moved in p.state.sessions and report.removed == 0
    assert moved in {s.session_id for s in p.snapshot.sessions} or len(p.snapshot.sessions) == 400
    api.on_list = None
    cycle(p)
    assert total_runs(p) == 401 and len(p.state.sessions) == 400


def test_a_session_listed_by_a_pass_that_ended_early_is_not_gone_after_the_next_miss():
    """Found by the loop model's long profile: a pass that ended at a failing page listed s3 between two
    complete passes that missed it; "two consecutive complete passes" must not skip the pass that saw it."""
    api = project(4)
    api.page_size = 1
    p = poller(api)
    cycle(p)
    everyone = list(api.sessions)
    api.listed = everyone[:3]
    while not cycle(p).pass_complete:
        pass
    assert "s00003" in p.unconfirmed
    original = api.list_page

    async def second_page_invalid(token=None, deadline=None, recall=None):
        if token == "1":
            raise PayloadError("list: invalid payload at items", operation="list")
        return await original(token, deadline)

    api.list_page = second_page_invalid  # type: ignore[method-assign]
    api.listed = ["s00003", *everyone[:3]]
    for _ in range(PAGE_STRIKES):
        cycle(p)
    assert "s00003" not in p.unconfirmed  # listed on page 1 of a pass that ended at page 2
    api.list_page = original  # type: ignore[method-assign]
    api.listed = everyone[:3]
    while not cycle(p).pass_complete:
        pass
    assert "s00003" in p.state.sessions  # one complete pass without it: unconfirmed again, not gone
    while not cycle(p).pass_complete:
        pass
    assert "s00003" not in p.state.sessions and total_runs(p) == 4
