"""A model of the counting core, checked by hypothesis (issue "Tests that catch what mutation testing cannot").

The rules are what a real upstream and operator do: sessions appear and grow, runs fail or stay open,
histories are cut short and come back, a stop is rewritten, sessions are deleted and return, leave the
index filter, replicas lag, fetches fail, the collector restarts with its state file or without, the
buckets change (twice in a row, before a sync), and a cycle is cut by its deadline mid-pass.

The model is a plain reference that shares no code with ``collector/``: which stops exist upstream, and
which the collector has seen in a watched session. After every step the collector's exposed totals never
exceed the model's and never go backwards; after the upstream settles they equal it (or, after a change of
buckets, at least the stored floor); per-session series exist only for watched sessions; every value is
finite and non-negative; and the state file reads back field for field.

CI runs a fixed number of derandomized examples (profile ``ci``); ``HYPOTHESIS_PROFILE=long`` runs more.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry

from collector.aggregates import Buckets
from collector.cadence import Cadence
from collector.derive import DEFAULT_ERROR_RULES, ErrorClassifier
from collector.errors import FetchError, PayloadError
from collector.metrics import SelfMetrics
from collector.poller import SHORT_PASSES_AGREE, Poller
from collector.state import MemoryStore
from collector.storage.sqlite import SqliteStore
from tests.fakes import FakeApi, poll_config
from tests.helpers import run_async

pytestmark = pytest.mark.tier("model")

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
settings.register_profile(
    "long", max_examples=2000, stateful_step_count=60, deadline=None, suppress_health_check=list(HealthCheck)
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

BUCKET_SETS = [
    Buckets({"duration": (1.0, 10.0), "tokens": (10.0, 100.0), "turns": (1.0, 4.0), "tool_calls": (0.0, 2.0)}),
    Buckets({"duration": (0.5, 5.0), "tokens": (8.0, 80.0), "turns": (2.0,), "tool_calls": (1.0, 3.0)}),
    Buckets({"duration": (2.0,), "tokens": (50.0,), "turns": (1.0, 2.0, 8.0), "tool_calls": (0.0,)}),
]
IDS = [f"s{i}" for i in range(6)]
INDEX = "idx-a"


class Upstream:
    """The model's upstream: each session's finished runs (stop IDs with their outcome) and an open run."""

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[int, bool]]] = {}
        self.open: dict[str, bool] = {}
        self.indexed: dict[str, bool] = {}
        self.deleted: set[str] = set()
        self.version: dict[str, int] = {}
        self.rewritten: dict[str, dict[int, int]] = {}
        self.next_stop = 0

    def body(self, sid: str, version: int | None = None) -> dict:
        events: list[dict] = []
        for stop_id, failed in self.runs[sid]:
            tweak = self.rewritten.get(sid, {}).get(stop_id, 0)
            events += [
                {"type": "user_input", "content": "q"},
                {
                    "type": "stop",
                    "is_error": failed,
                    "error": "boom" if failed else None,
                    "usage": {
                        "duration_ms": 700 + 1000 * stop_id + tweak,
                        "total_input_tokens": 3,
                        "total_output_tokens": 4,
                        "turns": 1,
                    },
                },
            ]
        if self.open[sid]:
            events.append({"type": "user_input", "content": "still thinking"})
        v = self.version[sid] if version is None else version
        return {
            "session_id": sid,
            "last_updated_at": f"2026-01-01T00:{v // 60:02d}:{v % 60:02d}+00:00",
            "index_ids": [INDEX] if self.indexed[sid] else None,
            "events": events,
        }


class CountingCore(RuleBasedStateMachine):
    BUCKET_CHANGES = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="model-"))
        self.up = Upstream()
        self.api = FakeApi()
        self.api.page_size = 2
        self.now = [0.0]
        self.api.on_list = lambda: self.now.__setitem__(0, self.now[0] + 1.0)
        self.shrunk: dict[str, tuple[int, set[int]]] = {}
        self.seen: dict[str, set[int]] = {}
        """Stops the collector may count: those that existed in a session while it was watched."""
        self.errors_seen: set[int] = set()
        self.buckets = BUCKET_SETS[0]
        self.filtered = False
        self.persistent = True
        self.floor_runs = 0
        self.relaxed = False
        self.last_exposed: tuple[int, int] | None = None
        self.pass_watched: set[str] = set()
        self.was_ready = False
        self.pass_began_with = 0
        self.last_pass_watched: set[str] = set()
        self.earlier_passes_watched: list[set[str]] = []
        self.poller = self._start()

    # -- wiring ---------------------------------------------------------------------------------------

    def _start(self) -> Poller:
        store = (
            SqliteStore(self.dir / "state.db", self.buckets, list(DEFAULT_ERROR_RULES), 50) if self.persistent else MemoryStore()
        )
        config = poll_config(interval=60.0, buckets=self.buckets, page_size=2, index_ids=(INDEX,) if self.filtered else ())
        return Poller(
            self.api,
            store,
            config,
            ErrorClassifier(),
            SelfMetrics(CollectorRegistry()),
            clock=lambda: 1000.0 + self.now[0],
            monotonic=lambda: self.now[0],
        )

    def _publish(self, sid: str) -> None:
        if sid in self.up.deleted:
            self.api.sessions.pop(sid, None)
        else:
            self.api.sessions[sid] = self.up.body(sid)
        self.api.listed = [s for s in IDS if s in self.api.sessions]

    def _watched(self, sid: str) -> bool:
        return sid not in self.up.deleted and (not self.filtered or self.up.indexed[sid])

    def _note_watched(self) -> None:
        for sid in self.up.runs:
            if self._watched(sid):
                stops = {stop for stop, _ in self.up.runs[sid]}
                if sid in self.shrunk:
                    length, before = self.shrunk[sid]
                    if len(self.up.body(sid)["events"]) < length:
                        stops &= before  # not owed yet: the history is still shorter than what was counted
                    else:
                        del self.shrunk[sid]
                self.seen.setdefault(sid, set()).update(stops)
                self.errors_seen.update(stop for stop, failed in self.up.runs[sid] if failed and stop in stops)

    def _pick(self, pick: int, candidates) -> str | None:
        """One of ``candidates``, so that every rule acts on a session it applies to."""
        chosen = sorted(candidates)
        return chosen[pick % len(chosen)] if chosen else None

    def _live(self, pick: int) -> str | None:
        return self._pick(pick, [s for s in self.up.runs if s not in self.up.deleted])

    def _touch(self, sid: str) -> None:
        self.up.version[sid] += 1
        self._publish(sid)

    def _cycle(self):
        self._note_watched()
        if self.poller.listing is None:  # a pass begins with this cycle
            self.pass_began_with = sum(len(s) for s in self.seen.values())
        self.pass_watched |= {sid for sid in self.up.runs if self._watched(sid)}
        report = run_async(self.poller.cycle())
        if report.pass_complete:
            self.earlier_passes_watched = [self.last_pass_watched, *self.earlier_passes_watched][:SHORT_PASSES_AGREE]
            self.last_pass_watched, self.pass_watched = self.pass_watched, set()
        return report

    def _settle(self) -> None:
        """No faults, the pass under way finished, then one whole pass more with nothing failing (backoff is
        10 intervals at most): a pass that began before the last upstream change may not have seen it."""
        self.api.answers.clear()
        fresh = self.poller.listing is None
        agreed = 0  # gone takes two passes, and a short pass three in a row (DESIGN §4)
        for _ in range(90):
            report = self._cycle()
            if report.pass_complete:
                if fresh and not self.poller.failing and self.poller.snapshot.ready:
                    agreed += 1
                    if agreed > SHORT_PASSES_AGREE:
                        return
                fresh = True

    def _new_process(self) -> None:
        self.poller.store.close()
        self.poller = self._start()
        self.was_ready = self.poller.snapshot.ready

    # -- rules: upstream ----------------------------------------------------------------------------------

    @initialize(n=st.integers(1, 4))
    def sessions(self, n):
        for sid in IDS[:n]:
            self.new_session(sid, 1, False, True)

    @rule(sid=st.sampled_from(IDS), runs=st.integers(0, 3), open_run=st.booleans(), indexed=st.booleans())
    def new_session(self, sid, runs, open_run, indexed):
        if sid in self.up.runs:
            return
        self.up.runs[sid], self.up.open[sid], self.up.indexed[sid] = [], open_run, indexed
        self.up.version[sid] = 0
        self._append(sid, [False] * runs)
        self._publish(sid)

    def _append(self, sid, outcomes):
        for failed in outcomes:
            self.up.runs[sid].append((self.up.next_stop, failed))
            self.up.next_stop += 1

    @rule(pick=st.integers(0, 1000), outcomes=st.lists(st.booleans(), min_size=1, max_size=3), keep_open=st.booleans())
    def runs_finish(self, pick, outcomes, keep_open):
        sid = self._live(pick)
        if sid is None:
            return
        self._append(sid, outcomes)
        self.up.open[sid] = keep_open
        self._touch(sid)

    @rule(pick=st.integers(0, 1000), cuts=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=2))
    def history_cut_short_then_restored(self, pick, cuts):
        """One or two short reads in a row (a lagging replica, a cut body), then the whole history again."""
        sid = self._live(pick)
        if sid is None or not self.up.runs[sid]:
            return
        for fraction in cuts:
            short = copy.deepcopy(self.api.sessions[sid])
            short["events"] = short["events"][: int(len(short["events"]) * fraction)]
            self._touch(sid)
            self.api.answers[sid] = [dict(short, last_updated_at=self.api.sessions[sid]["last_updated_at"])]
            self._cycle()  # the short read ...
        self._touch(sid)  # ... then the full history again

    @rule(pick=st.integers(0, 1000), keep=st.integers(0, 2))
    def history_shrinks_for_good(self, pick, keep):
        """Upstream loses the last runs for good and leaves a run open: what it lost stays counted, and the
        runs it gets next are owed once the history is as long as what was counted (before that, a short
        history cannot be told from a partial read of the old one)."""
        sid = self._live(pick)
        if sid is None or len(self.up.runs[sid]) <= keep:
            return
        self._settle()
        counted_events = len(self.api.sessions[sid]["events"])
        self.up.runs[sid] = self.up.runs[sid][:keep]
        self.up.open[sid] = True
        self.shrunk[sid] = (counted_events, {stop for stop, _ in self.up.runs[sid]})
        self._touch(sid)
        self._settle()  # the collector reads the short history: a reset (read later, it would be a rewrite)

    @rule(pick=st.integers(0, 1000))
    def stop_rewritten(self, pick):
        sid = self._live(pick)
        if sid is None or not self.up.runs[sid]:
            return
        self._settle()  # everything counted; the rewrite must not count anything again
        last_stop = self.up.runs[sid][-1][0]
        rewrites = self.up.rewritten.setdefault(sid, {})
        rewrites[last_stop] = rewrites.get(last_stop, 0) + 1  # for good: a rewrite is not a transient read
        self._touch(sid)
        self._settle()

    @rule(pick=st.integers(0, 1000))
    def deleted(self, pick):
        self._settle()  # read to its end first: runs nobody could read before the deletion are not owed
        sid = self._live(pick)
        if sid is not None:
            self.up.deleted.add(sid)
            self._publish(sid)

    @rule(pick=st.integers(0, 1000), more=st.integers(0, 2))
    def back(self, pick, more):
        sid = self._pick(pick, self.up.deleted)
        if sid is not None:
            self.up.deleted.discard(sid)
            self._append(sid, [False] * more)
            self._touch(sid)

    @rule(pick=st.integers(0, 1000))
    def index_binding_flips(self, pick):
        self._settle()  # likewise for a session about to leave the filter
        sid = self._live(pick)
        if sid is not None:
            self.up.indexed[sid] = not self.up.indexed[sid]
            self._touch(sid)

    @rule(pick=st.integers(0, 1000))
    def lagging_read(self, pick):
        sid = self._live(pick)
        if sid is not None and self.up.version[sid] > 0:
            self._touch(sid)
            lagging = dict(self.up.body(sid, version=0))
            lagging["events"] = lagging["events"][:2]
            self.api.answers[sid] = [lagging]

    @rule(pick=st.integers(0, 1000), kind=st.sampled_from(["fetch", "payload", "bug"]), times=st.integers(1, 3))
    def fetch_fails(self, pick, kind, times):
        sid = self._live(pick)
        if sid is not None:
            error = {
                "fetch": FetchError("retrieve: HTTP 500", operation="retrieve"),
                "payload": PayloadError("retrieve: invalid payload", operation="retrieve"),
                "bug": RuntimeError("a bug"),
            }[kind]
            self.api.answers[sid] = [error] * times
            self._touch(sid)

    # -- rules: the collector and its operator ----------------------------------------------------------------

    @rule()
    def cycle(self):
        self._cycle()

    @rule()
    def cycle_cut_by_its_deadline(self):
        self.poller.cadence = Cadence(2.0)  # 1.8 s on the fake clock: one or two pages of the pass
        self._cycle()
        self.poller.cadence = Cadence(60.0)

    @rule()
    def settle(self):
        self._settle()

    @rule()
    def restart_with_state(self):
        if self.persistent:
            self._new_process()

    @rule()
    def restart_without_state(self):
        self.persistent = False
        self._new_process()
        self.seen, self.errors_seen, self.shrunk = {}, set(), {}  # a new process re-derives what upstream shows
        self.relaxed, self.floor_runs, self.last_exposed = False, 0, None

    @rule(which=st.integers(0, len(BUCKET_SETS) - 1))
    def buckets_change(self, which):
        if not self.BUCKET_CHANGES or not self.persistent or BUCKET_SETS[which] == self.buckets:
            return
        if self.poller.snapshot.ready:
            self.floor_runs = max(self.floor_runs, self._exposed()[0])
        self.buckets = BUCKET_SETS[which]  # replayed into the new buckets: every count stays exact
        self._new_process()

    @rule()
    def filter_flips(self):
        if not self.persistent:
            return
        self.filtered = not self.filtered
        self._new_process()

    # -- invariants ---------------------------------------------------------------------------------------

    def _exposed(self) -> tuple[int, int]:
        runs = self.poller.snapshot.aggregates.runs
        return runs["success"] + runs["error"], runs["error"]

    @invariant()
    def values_are_finite_and_non_negative(self):
        agg = self.poller.state.aggregates
        numbers = [*agg.runs.values(), *agg.errors.values(), *agg.tokens_total.values(), *agg.events.values()]
        numbers += [h.total for _, h in agg.histograms()]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers)

    @invariant()
    def never_counted_twice_and_never_backwards(self):
        if not self.poller.snapshot.ready:
            return
        total, errors = self._exposed()
        possible = sum(len(s) for s in self.seen.values())
        assert total <= possible, (total, possible)
        assert errors <= len(self.errors_seen)
        if self.last_exposed is not None:
            assert total >= self.last_exposed[0] and errors >= self.last_exposed[1]
        self.last_exposed = (total, errors)

    @invariant()
    def the_first_sync_shows_every_run(self):
        """Ready means every watched session was read (none fails here once settled): no partial total."""
        ready = self.poller.snapshot.ready
        if ready and not self.was_ready and not self.api.answers and not self.relaxed and not self.poller.failing:
            total, _ = self._exposed()  # at least every run that existed when the synced pass began
            assert total >= self.pass_began_with, ("exposed before the first full sync", total, self.pass_began_with)
        self.was_ready = ready

    @invariant()
    def per_session_series_only_for_watched_sessions(self):
        snap = self.poller.snapshot
        if snap.ready:  # gone after two complete passes without it, three when they list under half
            shown = {s.session_id for s in snap.sessions}
            assert shown <= self.last_pass_watched.union(self.pass_watched, *self.earlier_passes_watched), shown

    @invariant()
    def state_file_reads_back_field_for_field(self):
        if not self.persistent:
            return
        store = SqliteStore(self.dir / "state.db", self.buckets, list(DEFAULT_ERROR_RULES), 50)
        loaded = store.load()
        store.close()
        state = self.poller.state
        if loaded is None or state.floor is not None or loaded.floor is not None:
            return
        assert loaded.sessions == state.sessions
        assert loaded.retired == state.retired == {}  # saved: on disk, read when one comes back
        assert loaded.replay == state.replay
        assert (loaded.histogram_floor is None) == (state.histogram_floor is None)
        assert loaded.prior == state.prior and loaded.synced == state.synced
        assert json.dumps(loaded.aggregates.to_dict(), sort_keys=True) == json.dumps(state.aggregates.to_dict(), sort_keys=True)

    @rule()
    def settled_counts_are_exact(self):
        self._settle()
        if not self.poller.snapshot.ready:
            return
        total, errors = self._exposed()
        possible = sum(len(s) for s in self.seen.values())
        lost = any(not self._watched(sid) for sid in self.seen)  # its history cannot be re-derived
        if self.relaxed and lost:  # re-derived: at least the stored floor, never more than happened
            assert self.floor_runs <= total <= possible, (self.floor_runs, total, possible)
        else:
            assert (total, errors) == (possible, len(self.errors_seen))
            # Each session has one index or none, so the index runs add up to the runs; after a re-derivation
            # they may add up to more (a run re-counted under the index its session has now; none goes back).
            agg = self.poller.snapshot.aggregates
            by_index = {o: sum(v for (_, outcome), v in agg.index_runs.items() if outcome == o) for o in agg.runs}
            index_errors = sum(agg.index_errors.values())
            if self.relaxed:
                assert all(by_index[o] >= n for o, n in agg.runs.items()) and index_errors >= errors
            else:
                assert by_index == dict(agg.runs) and index_errors == errors, (by_index, agg.runs)
        shown = {s.session_id for s in self.poller.snapshot.sessions}
        assert shown == {sid for sid in self.up.runs if self._watched(sid)}, shown  # every watched one, only

    def teardown(self):
        self.poller.store.close()
        shutil.rmtree(self.dir)


class CountingCoreWithBucketChanges(CountingCore):
    BUCKET_CHANGES = True


CountingCore.TestCase.settings = settings.get_profile(PROFILE)
CountingCoreWithBucketChanges.TestCase.settings = settings.get_profile(PROFILE)
test_counting_core_model = CountingCore.TestCase
test_counting_core_model_with_bucket_changes = CountingCoreWithBucketChanges.TestCase


def test_each_example_removes_its_state_directory():
    """The long profile runs tens of thousands of examples; each must leave nothing behind in /tmp."""
    machine = CountingCore()
    assert machine.dir.is_dir()
    machine.teardown()
    assert not machine.dir.exists()
