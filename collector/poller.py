"""One poll cycle: page the listing while fetching what changed (bounded), derive, commit.

A **listing pass** (every page, first to last, or every configured ID) may span
cycles. Each cycle works on a copy of the committed state; at its deadline it
commits what it finished, and the pass carries on next cycle from the saved
page token, with the sessions it listed but did not fetch yet fetched first.
Only a complete pass tells which sessions are gone.

A session whose fetch fails while the API answers others **fails on its own**:
it is retried with per-session backoff and shown in ``sessions_failing``, and it
never holds back the first sync (DESIGN §4). A cycle in which the API answered
nothing is an outage: its failures are retried next cycle, with no backoff.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from collector.aggregates import Aggregates
from collector.cadence import Cadence, Deadline
from collector.derive import ErrorClassifier, RunRecord, history_intact
from collector.errors import AuthError, Deferred, FetchError, NotFound, PayloadError, StateError
from collector.llamacloud.budget import HELD
from collector.llamacloud.listing import PAGE_STRIKES, KnownPage, ListingLoop, PageMemo, Step, Strikes
from collector.llamacloud.models import Body, Session, SessionPage, Summary
from collector.runlog import MAX_LINES_PER_CYCLE, log_runs
from collector.runlog import wanted as log_wanted
from collector.selection import Found, PollConfig, filters_nothing, in_shard, is_unchanged, older, same_instant, wanted
from collector.state import (
    CollectorState,
    Key,
    PollStatus,
    SessionState,
    Shown,
    Snapshot,
    StateStore,
    Update,
    key_id,
    key_ids,
    row_stamps,
    table_key,
    take_snapshot,
    update_session,
)

HANG_SHARE = 0.9
"""A fetch still running at the deadline is carried to the next cycle; once it has waited this share of a
cycle's budget in all (over the cycles that cut it), it hangs on its own: one cut of a fetch that had (nearly)
the whole cycle is enough, while one cut of a fetch that started late, or waited on a busy loop, is only
carried (issue 27)."""
GONE_SLICE = 20_000
SHORT_PASSES_AGREE = 3
"""Complete passes in a row that list under half of the watched sessions before that is taken as the truth."""
LOGGED_BACKWARDS = 10_000
"""Sessions whose backwards ``last_updated_at`` was logged (once each); past this it is only counted."""
MAX_BACKOFF_INTERVALS = 10
"""A session that keeps failing on its own is retried at most this many intervals apart."""
ERROR_TEXT = 200
ID_TEXT = 80
"""A session ID in a log line is cut to this (an ID is the API's: hostile until checked)."""


@dataclass
class CycleReport:
    result: str = "success"
    watched: int = 0
    fetched: int = 0
    unchanged: int = 0
    runs_added: int = 0
    failed: int = 0
    invalid: int = 0
    removed: int = 0
    pages: int = 0
    carried: int = 0
    """Sessions listed but not fetched by the deadline: fetched first next cycle."""
    backing_off: int = 0
    """Failing sessions skipped this cycle, waiting for their next retry."""
    pass_complete: bool = False
    pass_spanned: bool = False
    """The pass this cycle completed had started in an earlier cycle: a pass longer than a cycle."""
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass
class Failing:
    """A session that fails on its own: how often in a row, and the cycle of its next try."""

    failures: int
    retry_cycle: int


@dataclass
class Job:
    """A session to fetch: its listing item, or (configured IDs) only its ID, read with ``summary`` first."""

    session_id: str
    found: Found | None = None
    reason: str = "changed"
    cuts: int = 0
    waited: float = 0.0
    suspect: bool = False
    """Cut by a deadline before, or a failing session's retry: such fetches take at most half of the
    workers, so sessions that hang never starve the others (issue 27)."""
    """Cycles whose deadline cut this fetch off, and how long it had been waiting for its answer by then:
    ``HANG_SHARE`` of a cycle's budget of waiting makes it a hang of the session's own."""


@dataclass
class ListingPass:
    """Every page of the listing (or every configured ID) once, over as many cycles as it takes: its pages are
    one ``ListingLoop`` (the loop ``check`` runs too), carried from cycle to cycle."""

    started: float
    """Monotonic time of the first page, for ``listing_pass_duration_seconds``."""
    loop: ListingLoop
    todo: deque[Job] = field(default_factory=deque)
    suspects: deque[Job] = field(default_factory=deque)
    """Jobs that may hang (``Job.suspect``), fetched first but by at most half of the workers."""
    queued: set[str] = field(default_factory=set)
    """IDs in ``todo`` or being fetched: a session listed twice in a pass is fetched once at a time."""
    some_fetched: bool = False
    """A session's history was read in this pass."""
    some_failed: bool = False
    """A session failed on its own in this pass (or waited for its retry): a pass in which every fetch
    failed is an outage, not a sync."""

    def push(self, job: Job, *, front: bool = False) -> None:
        if job.session_id in self.queued and not front:
            return
        self.queued.add(job.session_id)
        queue = self.suspects if job.suspect or job.cuts else self.todo
        (queue.appendleft if front else queue.append)(job)

    @property
    def waiting(self) -> int:
        return len(self.todo) + len(self.suspects)

    @property
    def token(self) -> str | None:
        return self.loop.token

    @property
    def pages(self) -> int:
        return self.loop.pages

    @property
    def listed_all(self) -> bool:
        return self.loop.ended

    @property
    def truncated(self) -> bool:
        """The pass ended at a page that keeps failing (or a listing that goes round): it retires nothing."""
        return self.loop.truncated

    @property
    def seen(self) -> set[Hashable]:
        """Wanted sessions this pass listed (or configured IDs that answered or failed on their own), by their
        ``table_key``."""
        return self.loop.seen


@dataclass
class _Run:
    """What one cycle carries while it runs."""

    work: CollectorState
    report: CycleReport
    deadline: Deadline
    listing: ListingPass
    counted: list[tuple[str, RunRecord]] | None
    brought: list[float] | None
    """The ``last_updated_at`` (epoch) of each answer that brought new runs, for the count lag; None during
    the first sync, whose runs are not new."""
    left_out: int = 0
    """Runs counted but not kept for the run log (large histories keep at most what it writes)."""
    answered: bool = False
    """The API answered at least one request this cycle."""
    session_answered: bool = False
    """The API answered for a session (a history, or 404): failures beside it are the sessions' own."""
    inflight: dict[str, Job] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    held: dict[str, list[float]] = field(default_factory=dict)
    """Seconds each fetch in flight waited for the request budget or a 429's pause: not its own hang."""
    suspects: int = 0
    """Suspect jobs being fetched now."""
    failures: dict[str, tuple[Job, str]] = field(default_factory=dict)
    listing_error: str | None = None
    """The listing failed this cycle: the pass waits where it is."""
    listing_problem: str | None = None
    """Something the listing did that makes the cycle partial without stopping the pass (DESIGN §4)."""
    listing_ended: bool = False
    cut: bool = False
    """The deadline came before the pass was done (while the listing was still read, if not ``listed_all``)."""
    deferred: str | None = None
    """Why the API asked every request to wait past the deadline (a 429's ``Retry-After``): the cycle ends now, cut."""
    hung: set[str] = field(default_factory=set)
    """Sessions cut off at the deadline after waiting ``HANG_SHARE`` of a budget: they hang on their own."""


def _paused(exc: BaseException) -> str | None:
    """What a 429 said when it paused every request past the cycle's deadline (``Deferred``); else None."""
    return str(exc) if isinstance(exc, Deferred) and exc.status == 429 else None


SEED_WAIT = 60.0
"""Seconds the parse thread waits for the loop to seed a large history's ``Aggregates``."""
MAX_CARRIED = 8
"""Large histories counted apart after their cycle's deadline, kept for their session's next fetch."""


@dataclass(frozen=True)
class Apart:
    """A large history counted in the parse thread (``Poller._apart``), for the loop to merge."""

    last_updated_at: str
    intact: bool
    """``prev``'s counted prefix is in this history (``history_intact``)."""
    update: Update
    delta: Aggregates


@dataclass(frozen=True)
class Carried:
    """What a parse thread gave after its fetch was cut off: kept for the session's next fetch."""

    ticket: object
    """The fetch it was started for: that fetch, if it saw the answer after all, takes it out."""
    prev: SessionState | None
    """The state it was counted from: used only while the session is still in that one."""
    outcome: Apart | str
    """What it counted, or why the history was refused."""
    listed: str
    """The version the listing showed: a refusal holds only while it still does (a count holds whatever the
    version: it counted an intact prefix, and the rest is read next cycle)."""


async def _seed(work: CollectorState) -> Aggregates:
    return work.aggregates.seeded()


def total_runs(state: SessionState) -> int:
    return state.runs_success + state.runs_error


def listed_at(session: Session, found: Found) -> str | None:
    """An answer of another version than the listing showed is keyed on its own time: read again next cycle."""
    return found.last_updated_at if same_instant(session.last_updated_at, found.last_updated_at) else None


class SessionSource(Protocol):
    """What the poller reads: pages of the listing, a configured ID's summary, a session's history."""

    async def list_page(
        self, token: str | None, deadline: Deadline | None, recall: Callable[[Body], KnownPage | None] | None
    ) -> SessionPage | KnownPage: ...
    async def summary(self, session_id: str, deadline: Deadline | None) -> Summary: ...
    async def retrieve(
        self, session_id: str, deadline: Deadline | None, off_loop: Callable[[Callable[[], Session]], Apart] | None = None
    ) -> Session | Apart: ...


class PollObserver(Protocol):
    """What the poller reports as it goes (``metrics.SelfMetrics`` in the collector)."""

    def poll(self, result: str) -> None: ...
    def fetched(self, reason: str) -> None: ...
    def unchanged(self, count: int) -> None: ...
    def state_write_failed(self) -> None: ...
    def invalid_payload(self, operation: str) -> None: ...
    def anomaly(self, kind: str) -> None: ...
    def counted_late(self, lags: Iterable[float]) -> None: ...


class Poller:
    def __init__(
        self,
        client: SessionSource,
        store: StateStore,
        config: PollConfig,
        classifier: ErrorClassifier,
        metrics: PollObserver,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        load: bool = True,
    ) -> None:
        self.client, self.store, self.config = client, store, config
        self.classifier, self.metrics = classifier, metrics
        self.cadence = Cadence(config.interval)
        self.clock, self.monotonic = clock, monotonic
        self.log = structlog.get_logger("collector.poller")
        self.runs_log = structlog.get_logger("collector.runs")
        self.state = CollectorState(Aggregates(config.buckets, config.label_limit))
        self.poll = PollStatus()
        self.cycles = 0
        self.listing: ListingPass | None = None
        self.failing: dict[str, Failing] = {}
        self.unconfirmed: set[str] = set()
        """Watched sessions the last complete pass did not list: gone if the next one does not either."""
        self.short_passes = 0
        self.short_missing: set[str] = set()
        """Watched sessions that no pass listed since the run of short passes began: the only ones its third
        pass may retire (short passes agree only on what none of them listed)."""
        self.strikes = Strikes()
        """The page of the pass that failed last and how often in a row, across cycles and passes."""
        self.backwards: set[str] = set()
        self.listing_only = 0
        """Cycles in a row in which only the listing answered and every fetch failed (``_api_answers``)."""
        self.carried: dict[str, Carried] = {}
        """Large histories counted apart while the deadline cut their cycle (``_apart``), by session."""
        self.stale: dict[str, str] = {}
        """Sessions whose last answer was ignored as stale, with its ``last_updated_at``."""
        self.last_pass_duration: float | None = None
        self.cycle_started: float | None = None
        self.cycle_finished: float | None = None
        self._saving = threading.Lock()
        self.loaded = False
        """The store has been read. Until then nothing is written: a refused file keeps its bytes."""
        self.loaded_at: float | None = None
        """When the load finished (monotonic): liveness counts from then, not from the start."""
        self._wanted = None if filters_nothing(config) else functools.partial(wanted, config)
        """Which listed sessions are this collector's (None: all of them, no call per session)."""
        self.memo = PageMemo()
        """The listing's pages whose sessions were all unchanged: read again byte for byte, taken unparsed."""
        self.shown = Shown()
        """The sessions with per-session series, kept from snapshot to snapshot (no scan of every session)."""
        self.snapshot: Snapshot = take_snapshot(self.state, self.poll, config.series_limit, self.shown)
        self.prepare: Callable[[Deadline], Awaitable[None]] | None = None
        """Run before each cycle's pass; a ``FetchError`` or ``PayloadError`` from it fails the cycle."""
        if load:
            self.load_state()

    def load_state(self) -> None:
        """The stored state, once, before the first cycle; a service runs it in a thread, off the loop."""
        loaded = self.store.load()
        if loaded is not None:
            self.state = loaded
            self.snapshot = take_snapshot(self.state, self.poll, self.config.series_limit, self.shown)
        self.loaded = True
        self.loaded_at = self.monotonic()

    # -- the cycle --------------------------------------------------------------------------------------

    async def cycle(self, budget: float | None = None) -> CycleReport:
        """One cycle, within the cadence's budget (or ``budget`` seconds: the rest of a slot, when a pass that
        spans cycles ends early and the next starts at once)."""
        started = self.monotonic()
        self.cycle_started = started
        self.cycles += 1
        work = self.state.begin()  # journaled in place: a cycle touches only what changes
        counted: list[tuple[str, RunRecord]] | None = [] if self.config.log_runs != "none" and work.synced else None
        if self.listing is None:
            self.listing = self._new_pass()
        brought: list[float] | None = [] if work.synced else None
        deadline = self.cadence.deadline(self.monotonic) if budget is None else Deadline.after(budget, self.monotonic)
        run = _Run(work, CycleReport(), deadline, self.listing, counted, brought)
        run.report.pass_spanned = self.listing.started < started
        runs_before = sum(work.aggregates.runs.values())
        if self.prepare is not None:  # the project is named first (``projects.Fleet``): no count without its label
            try:
                await self.prepare(deadline)
            except (FetchError, PayloadError) as exc:
                return self._failed(run, str(exc), started)
        try:
            await self._run_pass(run)
        except AuthError as exc:
            return self._failed(run, str(exc), started)
        except Exception as exc:  # noqa: BLE001 - whatever a bug does, the loop goes on
            return self._failed(run, f"cycle failed: {type(exc).__name__}: {str(exc)[:ERROR_TEXT]}", started)
        except BaseException:  # cancelled at shutdown: nothing of this cycle is kept
            work.rollback()
            raise
        fresh = [error for sid, (_, error) in run.failures.items() if sid not in self.failing and sid not in run.hung]
        listing_cut = run.cut and not run.listing.listed_all
        if (
            not run.answered
            and fresh
            and self.config.discover
            and not (run.listing_error or listing_cut)
            and await self._api_answers(run)
        ):
            run.answered = True  # the API is up: one failure is its session's own (``_settle_failures``)
            self.listing_only += 1
            if self.listing_only >= PAGE_STRIKES:  # a few cycles in a row: so are several (else the pass wedges)
                run.session_answered = True
        if run.session_answered:
            self.listing_only = 0
        if not run.answered and (run.listing_error or fresh or listing_cut or run.deferred):  # an outage: nothing answered
            reason = run.listing_error or (fresh[0] if fresh else run.deferred or "no answer from the API by the cycle deadline")
            return self._failed(run, reason, started)
        self._settle_failures(run)
        try:
            await self._maybe_complete(run)  # yields between slices of a big removal
        except BaseException:  # cancelled there at shutdown: nothing of this cycle is kept
            work.rollback()
            raise
        report = run.report
        report.runs_added = sum(work.aggregates.runs.values()) - runs_before
        report.carried = run.listing.waiting
        if run.cut:
            why = "paused by the API (429) past the cycle deadline" if run.deferred else "cycle deadline reached"
            report.errors.append(
                f"{why} at page {run.listing.pages} of the listing pass with "
                f"{report.carried} sessions not fetched; the pass carries on next cycle"
            )
        clean = not (report.failed or report.invalid or run.listing_error or run.listing_problem)
        report.result = "success" if report.pass_complete and clean else "partial"
        for problem in (run.listing_problem, run.listing_error):
            if problem:
                report.errors.insert(0, problem)
        self.metrics.unchanged(report.unchanged)
        work.commit()
        self.state = work
        await asyncio.to_thread(self.persist)  # a save of a million removed rows takes seconds: off the loop
        if run.brought:  # counted from this commit on
            now = self.clock()
            self.metrics.counted_late(now - updated for updated in run.brought)
        self._finish(report, started, up=True)
        if counted or run.left_out:  # committed and persisted: a restart cannot count these again
            log_runs(self.runs_log, self.config.log_runs, counted or (), left_out=run.left_out)
        return report

    def _new_pass(self) -> ListingPass:
        listing = ListingPass(started=self.monotonic(), loop=ListingLoop(self.strikes, keys=self._listed_keys))
        self.memo.new_pass()
        self.state.sessions.end_pass()
        if not self.config.discover:
            for session_id in (i for i in self.config.session_ids if in_shard(self.config, i)):
                listing.push(Job(session_id))
            listing.loop.ended = True
        return listing

    def _listed_keys(self, session_ids: Iterable[str]) -> tuple[Key, ...]:
        """The keys a pass holds of a page's wanted sessions: the watched table's own objects."""
        return self.state.sessions.canonical(session_ids)

    async def _run_pass(self, run: _Run) -> None:
        """List and fetch at once, ``max_concurrency`` fetches at a time, until done or the deadline."""
        listing = run.listing
        room = asyncio.Event()
        idle: deque[asyncio.Future[None]] = deque()
        backlog = max(2 * self.config.page_size, 4 * self.config.max_concurrency)

        def wake(n: int) -> None:
            """Wake ``n`` idle workers, not all of them: 64 workers woken per page cost a core at 100 ms."""
            while n > 0 and idle:
                waiter = idle.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    n -= 1

        async def lister() -> None:
            try:
                while not listing.listed_all:
                    if run.deadline.expired() or run.deferred:  # checked between pages, on the deadline's own clock
                        run.cut = True
                        return
                    while len(listing.todo) >= backlog:  # the fetches set the pace; memory stays bounded
                        room.clear()
                        await room.wait()
                    if not await self._next_page(run):
                        return
                    wake(listing.waiting)
            finally:
                run.listing_ended = True
                wake(len(idle))

        half = max(1, self.config.max_concurrency // 2)

        def take() -> Job | None:
            """The next job: one that may hang first, while they hold under half of the workers."""
            if listing.suspects and run.suspects < half:
                run.suspects += 1
                return listing.suspects.popleft()
            return listing.todo.popleft() if listing.todo else None

        async def worker() -> None:
            while True:
                if run.deadline.expired() or run.deferred:
                    run.cut = run.cut or bool(listing.waiting) or run.deferred is not None
                    return
                job = take()
                if job is not None:
                    suspect = job.suspect or job.cuts > 0
                    room.set()
                    run.inflight[job.session_id] = job
                    run.started[job.session_id] = self.monotonic()
                    held = run.held[job.session_id] = [0.0]
                    token = HELD.set(held)
                    try:
                        requeued = await self._work(run, job)
                    finally:
                        HELD.reset(token)
                        if suspect:  # its slot is free: the next that may hang, or the end for the idle
                            run.suspects -= 1
                            wake(1 if listing.suspects else len(idle))
                    del run.inflight[job.session_id]
                    if not requeued:
                        listing.queued.discard(job.session_id)
                elif (run.listing_ended or listing.listed_all) and not listing.suspects:
                    return
                else:
                    waiter = asyncio.get_running_loop().create_future()
                    idle.append(waiter)
                    await waiter

        try:
            async with asyncio.timeout(run.deadline.remaining()):
                async with asyncio.TaskGroup() as group:
                    if not listing.listed_all:
                        group.create_task(lister())
                    for _ in range(self.config.max_concurrency):
                        group.create_task(worker())
        except TimeoutError:
            run.cut = True
            now = self.monotonic()
            for job in reversed(list(run.inflight.values())):  # cut off mid-fetch: nothing of it counted
                job.cuts += 1
                job.waited += max(0.0, now - run.started[job.session_id] - run.held[job.session_id][0])
                failed_before = job.session_id in self.failing  # cuts survive a backoff: hung at its first
                if failed_before or job.waited >= HANG_SHARE * self.cadence.budget:  # it hangs
                    listing.queued.discard(job.session_id)
                    run.hung.add(job.session_id)
                    run.report.failed += 1
                    run.failures[job.session_id] = (
                        replace(job, cuts=0, waited=0.0),
                        f"retrieve: no answer in {job.waited:.1f} s, over {job.cuts} cycles",
                    )
                else:
                    listing.push(job, front=True)
            run.inflight.clear()
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _next_page(self, run: _Run) -> bool:
        """Read the next page into the pass (``ListingLoop``); False when the listing cannot go on this cycle.
        A page that fails waits (page 1, or a first failure), starts the pass over from page 1 (a resumed token
        refused, a page that is invalid), or, when the same page keeps failing, ends the pass there without a
        verdict on the sessions behind it."""
        listing, token, sessions = run.listing, run.listing.token, run.work.sessions
        recall = functools.partial(self.memo.recall, token, table=sessions, blocked=functools.partial(self._blocked, run))
        try:
            page = await self.client.list_page(token, run.deadline, recall)
        except AuthError:
            raise
        except (FetchError, PayloadError) as exc:
            if run.deadline.expired() or isinstance(exc, Deferred):  # a deadline mid-page is no error: the pass resumes there
                run.deferred = run.deferred or _paused(exc)
                run.cut = True
                return False
            step = listing.loop.failed(exc)
        else:
            run.answered = True
            if isinstance(page, KnownPage):
                step = listing.loop.take_known(page)
                self._take_known(run, step)
            else:
                step = listing.loop.take(page, self._wanted)
                self._take_page(run, page, step, token)
        if step.waits is not None:
            run.listing_error = step.waits
        if step.problem is not None:
            self._restarted(run, step.problem)
        return step.goes_on

    def _restarted(self, run: _Run, why: str) -> None:
        self.metrics.anomaly("pass_restarted")
        self.log.warning("listing pass restarted", reason=why)
        run.listing_problem = why

    def _blocked(self, run: _Run, page: KnownPage) -> bool:
        """One of the page's sessions may not be taken as unchanged by its stamp alone: failing, or replayed."""
        failing, replay = self.failing, run.work.replay
        if not (failing or replay):
            return False
        ids = list(key_ids(page.keys))  # type: ignore[arg-type]  # ``SessionTable.canonical``
        return not (failing.keys().isdisjoint(ids) and replay.isdisjoint(ids))

    def _take_known(self, run: _Run, step: Step) -> None:
        """A ``KnownPage``: every wanted session on it unchanged, as ``_take_page`` would find them."""
        run.report.pages += 1
        run.report.unchanged += len(step.keys)
        if self.unconfirmed or self.short_missing:
            for sid in map(key_id, step.keys):  # type: ignore[arg-type]
                self.unconfirmed.discard(sid)  # listed, by any pass: confirmed
                self.short_missing.discard(sid)

    def _take_page(self, run: _Run, page: SessionPage, step: Step, token: str | None = None) -> None:
        """Decide for every wanted item of ``page`` at once (the loop has moved the pass on): a page is taken
        whole. One whose every wanted session is unchanged is kept (``PageMemo``) for the next pass."""
        report = run.report
        report.pages += 1
        if page.unreadable:
            report.invalid += len(page.unreadable)
            self.log.warning(
                "unreadable sessions in the listing, skipped this cycle",
                count=len(page.unreadable),
                session_ids=[i[:ID_TEXT] for i in page.unreadable[:10]],
            )
        unconfirmed, short_missing, failing, replay = self.unconfirmed, self.short_missing, self.failing, run.work.replay
        keys: tuple[Key, ...] = step.keys  # type: ignore[assignment]  # ``SessionTable.canonical``
        rows = run.work.sessions.rows_at(keys)
        stamps = row_stamps(rows)
        unchanged = 0
        for item, stamp in zip(step.items, stamps, strict=True):
            sid = item.session_id
            if unconfirmed:
                unconfirmed.discard(sid)  # listed, by any pass: confirmed
            if short_missing:
                short_missing.discard(sid)
            if stamp == item.last_updated_at and sid not in failing and sid not in replay:
                unchanged += 1  # ``_consider``'s first answer, without its calls: most of a million each cycle
            elif (job := self._consider(run, item)) is not None:
                run.listing.push(job)
        report.unchanged += unchanged
        if unchanged == len(step.items):
            self.memo.record(token, page, keys, rows, run.work.sessions.version)

    def _backing_off(self, run: _Run, sid: str) -> bool:
        """A failing session whose next retry is not due yet: it counts as failed in this pass."""
        failing = self.failing.get(sid)
        if failing is None or failing.retry_cycle <= self.cycles:
            return False
        run.report.backing_off += 1
        run.listing.some_failed = True
        return True

    def _consider(self, run: _Run, found: Found) -> Job | None:
        """The fetch ``found`` needs (None: unchanged, or a failing session not due yet)."""
        sid = found.session_id
        work = run.work
        if self._backing_off(run, sid):
            return None
        if work.sessions.stamp(sid) == found.last_updated_at and sid not in work.replay:  # read from the packed row
            run.report.unchanged += 1
            self._recovered(sid)
            return None
        prev = work.known(sid)
        if prev is not None and is_unchanged(prev, found) and sid not in work.replay:
            run.report.unchanged += 1
            work.put(prev)  # back in the listing, unchanged: watched again as it was
            self._recovered(sid)
            return None
        return Job(sid, found, "new" if prev is None else "changed", suspect=sid in self.failing)

    async def _work(self, run: _Run, job: Job) -> bool:
        """One session: its summary first when it was configured by ID, then its history if it changed.
        True when it went back to the front of the queue (the deadline cut it off)."""
        sid = job.session_id
        try:
            found = job.found
            if found is None:
                summarised = await self._summarised(run, sid)
                if summarised is None:
                    return False
                job, found = summarised
            await self._fetch(run, job, found)
        except NotFound:
            run.answered = True
            run.session_answered = True
            run.report.removed += run.work.drop(sid)
            self.failing.pop(sid, None)
        except AuthError:
            raise
        except PayloadError as exc:  # not an answer: an HTML error page from a proxy is one too
            run.report.invalid += 1
            run.failures[sid] = (job, str(exc))
        except FetchError as exc:
            run.deferred = run.deferred or _paused(exc)  # every request must wait past the deadline
            if run.deadline.expired() or run.deferred:  # cut off by the cycle's deadline, not by the session: carried
                run.listing.push(job, front=True)  # still in ``queued``: never fetched twice at once
                return True  # the worker then finds the deadline passed with work left: the cycle was cut
            run.report.failed += 1
            run.failures[sid] = (job, str(exc))
        except Exception as exc:  # noqa: BLE001 - one session's answer must never stop the others
            run.report.invalid += 1
            self.metrics.invalid_payload("retrieve")
            run.failures[sid] = (job, f"{type(exc).__name__}: {str(exc)[:ERROR_TEXT]}")
        if sid in run.failures:
            run.listing.seen.add(table_key(sid))  # a configured ID whose summary fails is still watched
        return False

    async def _summarised(self, run: _Run, sid: str) -> tuple[Job, Summary] | None:
        """A configured ID: its summary, and the fetch it needs (None: waiting for its retry, not wanted
        here, or unchanged)."""
        if self._backing_off(run, sid):
            run.listing.seen.add(table_key(sid))
            return None
        summary = await self.client.summary(sid, run.deadline)
        run.answered = True
        if not wanted(self.config, summary):
            return None
        run.listing.seen.add(table_key(sid))
        fetch = self._consider(run, summary)
        return None if fetch is None else (fetch, summary)

    async def _fetch(self, run: _Run, job: Job, found: Found) -> None:
        """The history of a session as ``found`` in the listing (or by its summary). A large one is parsed
        and counted in a thread, into its own ``Aggregates`` (``_apart``), then merged here on the loop."""
        sid, work = job.session_id, run.work
        prev = work.known(sid)
        replay = work.histogram_floor if sid in work.replay else None  # a replay reads the floor: on the loop
        carried = self.carried.pop(sid, None)
        answer: Session | Apart
        if (
            carried is not None
            and carried.prev == prev
            and replay is None
            and (isinstance(carried.outcome, Apart) or carried.listed == found.last_updated_at)
        ):
            if isinstance(carried.outcome, Apart):
                answer = carried.outcome  # counted apart after the deadline cut its cycle: not read again
            else:  # refused apart after the deadline cut its cycle (a history over the event limit)
                self.metrics.invalid_payload("retrieve")
                raise PayloadError(f"retrieve: invalid payload: {carried.outcome}", operation="retrieve")
        else:
            ticket = object()
            apart = (
                None
                if replay is not None
                else functools.partial(self._apart, asyncio.get_running_loop(), run.work, sid, prev, found, self.clock(), ticket)
            )
            try:
                answer = await self.client.retrieve(sid, run.deadline, apart)
            except asyncio.CancelledError:  # cut off: what its thread gives stays for the next fetch
                raise
            except Exception:
                self._uncarry(sid, ticket)
                raise
            self._uncarry(sid, ticket)
            self.metrics.fetched(job.reason)
            run.report.fetched += 1
        run.answered = True
        run.session_answered = True
        run.listing.some_fetched = True
        answered_at = answer.last_updated_at
        backwards = prev is not None and older(answered_at, prev)
        if (
            backwards
            and prev is not None
            and self._stale(sid, answered_at)
            and not (
                answer.intact
                if isinstance(answer, Apart)
                else history_intact(answer.events, prev.cursor, prev.events_seen, prev.stop_signature)
            )
        ):
            self.log.info("stale read ignored; refetched next cycle", session_id=sid[:ID_TEXT])
        else:
            self.stale.pop(sid, None)
            if backwards:  # the counted prefix is intact: a clock put back, not a lagging replica
                self._went_backwards(sid)
            if isinstance(answer, Apart):
                work.aggregates.merge(answer.delta)
                update = answer.update
            else:
                update = update_session(
                    prev,
                    answer,
                    work.aggregates,
                    self.classifier,
                    self.clock(),
                    listed_at=listed_at(answer, found),
                    replay_into=replay,
                )
            work.replayed(sid)
            work.put(update.state)
            new_runs = total_runs(update.state) - (0 if prev is None else total_runs(prev))
            if run.brought is not None and new_runs > 0 and update.state.updated_ts is not None:
                run.brought.append(update.state.updated_ts)
            if run.counted is not None:  # kept only when runs are logged
                run.counted.extend((sid, r) for r in update.runs)
                run.left_out += update.left_out
        self._recovered(sid)

    def _apart(
        self,
        loop: asyncio.AbstractEventLoop,
        work: CollectorState,
        sid: str,
        prev: SessionState | None,
        found: Found,
        now: float,
        ticket: object,
        read: Callable[[], Session],
    ) -> Apart:
        """In the parse thread: a large history read and counted into its own ``Aggregates``, seeded on the loop
        with the label values admitted so far. Touches nothing the loop does. What it gives (or the refusal
        of the history) is also left for the session's next fetch (``carried``), in case the deadline cut
        this one while it ran: a history that takes longer than a cycle is still counted, or refused, once."""
        try:
            session = read()
        except Exception as exc:  # only its text is kept: its traceback holds the body and what was parsed
            refusal = Carried(ticket, prev, str(exc)[:ERROR_TEXT], found.last_updated_at)
            loop.call_soon_threadsafe(self._carry, sid, refusal)
            raise
        delta = asyncio.run_coroutine_threadsafe(_seed(work), loop).result(SEED_WAIT)
        intact = prev is None or history_intact(session.events, prev.cursor, prev.events_seen, prev.stop_signature)
        mode = self.config.log_runs
        update = update_session(
            prev,
            session,
            delta,
            self.classifier,
            now,
            listed_at=listed_at(session, found),
            stream=(lambda r: log_wanted(mode, r), MAX_LINES_PER_CYCLE),
        )
        result = Apart(session.last_updated_at, intact, update, delta)
        loop.call_soon_threadsafe(self._carry, sid, Carried(ticket, prev, result, found.last_updated_at))
        return result

    def _uncarry(self, sid: str, ticket: object) -> None:
        """The fetch saw its thread's outcome after all: it is not kept for the next one (never merged twice)."""
        if getattr(self.carried.get(sid), "ticket", None) is ticket:
            del self.carried[sid]

    def _carry(self, sid: str, carried: Carried) -> None:
        self.carried[sid] = carried
        while len(self.carried) > MAX_CARRIED:
            del self.carried[next(iter(self.carried))]

    def _stale(self, sid: str, answered: str) -> bool:
        """An older answer than was counted, over a shorter history, is a lagging replica's the first time;
        the same answer again is the upstream's truth (a clock put back), taken as a reset: a stale read is
        never trusted to hide a session for good either."""
        if self.stale.get(sid) == answered or len(self.stale) >= LOGGED_BACKWARDS:
            return False
        self.stale[sid] = answered
        return True

    def _went_backwards(self, sid: str) -> None:
        """A ``last_updated_at`` older than the one counted, over a history that still holds what was counted:
        counted (DESIGN §4), logged once per session."""
        self.metrics.anomaly("timestamp_backwards")
        if sid not in self.backwards and len(self.backwards) < LOGGED_BACKWARDS:
            self.backwards.add(sid)
            self.log.warning("last_updated_at went backwards; the history is counted all the same", session_id=sid[:ID_TEXT])

    # -- failing sessions and the end of a pass ---------------------------------------------------------

    def _settle_failures(self, run: _Run) -> None:
        """Failures while the API answered other sessions back off; those of an outage are simply retried."""
        on_their_own = run.session_answered or (run.answered and len(run.failures) == 1)
        for sid, (job, error) in run.failures.items():
            if on_their_own or sid in self.failing or sid in run.hung:
                self._mark_failing(sid, error)
                run.listing.some_failed = True
            else:
                run.listing.push(job)
        run.report.errors.extend(error for _, error in list(run.failures.values())[:5])

    def _mark_failing(self, sid: str, error: str) -> None:
        before = self.failing.get(sid)
        if before is None:
            self.log.warning(
                "session failing",
                session_id=sid[:ID_TEXT],
                error=error[:500],
                note="retried with backoff; the other sessions go on",
            )
        failures = 1 if before is None else before.failures + 1
        self.failing[sid] = Failing(failures, self.cycles + min(2 ** (failures - 1), MAX_BACKOFF_INTERVALS))

    def _recovered(self, sid: str) -> None:
        failing = self.failing.pop(sid, None)
        if failing is not None:
            self.log.info("session recovered", session_id=sid[:ID_TEXT], failures=failing.failures)

    async def _maybe_complete(self, run: _Run) -> None:
        """A pass whose every page was read and every listed session attempted: gone sessions, first sync."""
        listing = run.listing
        if not listing.listed_all or listing.waiting or (run.listing_error and self.config.discover):
            return
        work = run.work
        if not listing.truncated:  # a pass that ended at a failing page knows nothing of what lies behind it
            for start, gone in enumerate(self._gone(run)):  # a million gone never stalls the endpoints
                run.report.removed += work.drop_many(gone)
                if start:
                    await asyncio.sleep(0)
            for sid in [sid for sid in self.failing if table_key(sid) not in listing.seen]:
                del self.failing[sid]
            self.last_pass_duration = self.monotonic() - listing.started
        if listing.some_fetched or not listing.some_failed:
            work.mark_synced()
        work.end_replay()
        run.report.pass_complete = True
        self.listing = None
        work.sessions.end_pass()

    def _gone(self, run: _Run) -> list[list[str]]:
        """The watched sessions a complete pass shows gone, in slices: those the last complete pass did not
        list either. A pass that lists under half of the watched sessions retires nothing, until
        ``SHORT_PASSES_AGREE`` passes in a row say so, and then only the sessions none of them listed (DESIGN §4:
        one listing is never trusted alone; an unstable listing's short passes each list others)."""
        sessions, seen = run.work.sessions, run.listing.seen
        missing = sessions.not_in(seen)
        short = self.config.discover and 2 * (len(sessions) - len(missing)) < len(sessions)
        self.short_passes = self.short_passes + 1 if short else 0
        if not short:
            self.short_missing = set()
        elif self.short_passes == 1:
            self.short_missing = set(missing)
        else:  # what a pass listed left it in ``_take_page``; what is no longer watched leaves it here
            self.short_missing.intersection_update(missing)
        if short and self.short_passes < SHORT_PASSES_AGREE:
            self.metrics.anomaly("short_pass")
            run.listing_problem = (
                f"list: a complete pass listed {len(sessions) - len(missing)} of the "
                f"{len(sessions)} sessions watched; none is retired on its word"
            )
            self.log.warning(
                "listing pass short; nothing retired",
                listed=len(sessions) - len(missing),
                watched=len(sessions),
                passes_in_a_row=self.short_passes,
            )
            return []
        agreed = self.short_missing if short else self.unconfirmed
        gone = [sid for sid in missing if sid in agreed]
        self.unconfirmed = set(missing) - set(gone)  # missed by a complete pass taken at its word: unconfirmed
        if short:  # accepted: the next short pass starts its own count again
            self.short_passes = 0
            self.short_missing = set()
        return [gone[start : start + GONE_SLICE] for start in range(0, len(gone), GONE_SLICE)]

    # -- committing -------------------------------------------------------------------------------------

    async def _api_answers(self, run: _Run) -> bool:
        """A second look before a cycle whose only requests failed is called an outage: the listing's first page.
        If it answers, one failing session fails on its own, and several do once ``PAGE_STRIKES`` cycles in a
        row saw the same (a retrieve endpoint down for a cycle or two is still an outage). Without it, sessions
        that fail on their own, left last in a pass that lists nothing more, were retried as an outage every
        cycle, and the pass never ended (found by tests/test_hostile_history)."""
        try:
            await self.client.list_page(None, run.deadline, None)
        except Exception:  # noqa: BLE001 - any failure: the outage it looked like
            return False
        return True

    def _failed(self, run: _Run, error: str, started: float) -> CycleReport:
        report = run.report
        for job in reversed(list(run.inflight.values())):
            run.listing.push(job, front=True)
        for job, _error in run.failures.values():
            run.listing.push(job)
        report.result = "failure"
        report.errors.append(error)  # the first: a failed cycle has settled nothing
        run.work.rollback()
        self._finish(report, started, up=False)
        return report

    def persist(self) -> None:
        """Write the committed state; a failure is logged and counted, and retried next cycle. A state never
        loaded is never written: a shutdown after a refused load would replace the file with nothing."""
        if not self.loaded:
            return
        with self._saving:  # the cycle saves in a thread; a shutdown save waits for it
            self._save()

    def _save(self) -> None:
        try:
            self.store.save(self.state)
        except StateError as exc:
            self.metrics.state_write_failed()
            self.log.error("state not saved; will retry next cycle", error=str(exc))

    def _finish(self, report: CycleReport, started: float, *, up: bool) -> None:
        """The cycle's status, snapshot and log line, once its work is committed (or rolled back)."""
        now = self.clock()
        report.duration = self.monotonic() - started
        report.watched = len(self.state.sessions)
        self.metrics.poll(report.result)
        self.poll = PollStatus(
            up=up,
            result=report.result,
            finished_at=now,
            duration=report.duration,
            last_success=now if report.result == "success" else self.poll.last_success,
            message=report.errors[0] if report.errors else "",
            sessions_failing=len(self.failing),
            listing_pass_duration=self.last_pass_duration,
        )
        self.snapshot = take_snapshot(self.state, self.poll, self.config.series_limit, self.shown)
        self.cycle_finished = self.monotonic()
        log = self.log.info if report.result == "success" else self.log.warning
        log(
            "poll cycle",
            result=report.result,
            sessions_watched=report.watched,
            fetched=report.fetched,
            unchanged=report.unchanged,
            runs_added=report.runs_added,
            failed=report.failed,
            invalid=report.invalid,
            removed=report.removed,
            pages=report.pages,
            carried=report.carried,
            sessions_failing=len(self.failing),
            pass_complete=report.pass_complete,
            duration_seconds=round(report.duration, 3),
            error=report.errors[0][:ERROR_TEXT] if report.errors else None,
        )
