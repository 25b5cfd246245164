"""One poll cycle: discover -> detect change -> fetch changed (bounded) -> derive -> commit.

The cycle works on a copy of the state and commits it whole at the end, then
persists it and publishes an immutable snapshot for the scrapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from collector.aggregates import Aggregates
from collector.derive import ErrorClassifier
from collector.errors import AuthError, FetchError, NotFound, PayloadError, StateError
from collector.llamacloud.client import LlamaCloudClient
from collector.metrics import SelfMetrics
from collector.runlog import log_runs
from collector.selection import Found, PollConfig, older, shard_of, wanted
from collector.state import (
    CollectorState,
    PollStatus,
    Snapshot,
    StateStore,
    is_unchanged,
    take_snapshot,
    update_session,
)


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
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)


class Poller:
    def __init__(self, client: LlamaCloudClient, store: StateStore, config: PollConfig,
                 classifier: ErrorClassifier, metrics: SelfMetrics, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client, self.store, self.config = client, store, config
        self.classifier, self.metrics = classifier, metrics
        self.clock, self.monotonic = clock, monotonic
        self.log = structlog.get_logger("collector.poller")
        self.runs_log = structlog.get_logger("collector.runs")
        self.state = store.load() or CollectorState(Aggregates(config.buckets, config.label_limit))
        self.poll = PollStatus()
        self.cycle_started: float | None = None
        self.cycle_finished: float | None = None
        self.snapshot: Snapshot = take_snapshot(self.state, self.poll, config.series_limit)

    async def discover(self, deadline: float | None = None,
                       report: CycleReport | None = None) -> tuple[list[Found], set[str]]:
        """The sessions to watch, and the IDs known to be gone."""
        report = report or CycleReport()
        if self.config.discover:
            listing = await self.client.list_sessions(deadline)
            if listing.unreadable:
                report.invalid += len(listing.unreadable)
                self.log.warning("unreadable sessions in the listing, skipped this cycle",
                                 count=len(listing.unreadable), session_ids=listing.unreadable[:10])
            watched = [s for s in listing.sessions if wanted(self.config, s)]
            return watched, set(self.state.sessions) - {s.session_id for s in watched}

        found: list[Found] = []
        gone: set[str] = set()
        answered = False

        async def one(session_id: str) -> None:
            nonlocal answered
            try:
                summary = await self.client.summary(session_id, deadline)
            except NotFound:
                answered = True
                gone.add(session_id)
                return
            except (FetchError, PayloadError) as exc:
                if isinstance(exc, AuthError):
                    raise
                report.failed += 1
                report.errors.append(str(exc))
                return
            answered = True
            if wanted(self.config, summary):
                found.append(summary)

        ids = [i for i in self.config.session_ids
               if self.config.total_shards == 1 or shard_of(i, self.config.total_shards) == self.config.shard]
        await self._pool(one, [(i,) for i in ids])
        if ids and not answered:  # every one failed, and said why
            raise FetchError(report.errors[0], operation="summary")
        return found, gone

    async def cycle(self) -> CycleReport:
        started, wall_start = self.monotonic(), self.clock()
        self.cycle_started = started
        deadline = started + self.config.interval * 0.9
        report = CycleReport()
        work = self.state.begin()
        counted: list | None = [] if self.config.log_runs != "none" and work.synced else None
        try:
            async with asyncio.timeout(max(0.0, deadline - started)):
                targets, gone = await self.discover(deadline, report)
        except (FetchError, PayloadError) as exc:
            return self._failed(report, str(exc), started, wall_start)
        except TimeoutError:
            return self._failed(report, "discovery did not finish by the cycle deadline", started, wall_start)
        except Exception as exc:  # noqa: BLE001 - whatever the listing does, the loop goes on
            return self._failed(report, f"discovery failed: {type(exc).__name__}: {str(exc)[:200]}",
                                started, wall_start)

        changed: list[tuple[Found, str]] = []
        for summary in targets:
            prev = work.known(summary.session_id)
            if is_unchanged(prev, summary):
                report.unchanged += 1
                if summary.session_id not in work.sessions:
                    work.put(prev)  # back in the listing, unchanged: watched again as it was
            else:
                changed.append((summary, "new" if prev is None else "changed"))
        self.metrics.unchanged.inc(report.unchanged)
        runs_before = sum(work.aggregates.runs.values())
        await self._fetch_all(changed, work, deadline, report, counted)
        for session_id in gone:
            report.removed += work.drop(session_id)
        report.runs_added = sum(work.aggregates.runs.values()) - runs_before
        if report.failed or report.invalid:
            report.result = "partial"
        if report.failed == 0:
            work.mark_synced()
        self._finish(report, work, started, wall_start, up=True)
        if counted:  # committed and persisted: a restart cannot count these again
            log_runs(self.runs_log, self.config.log_runs, counted)
        return report

    def _failed(self, report: CycleReport, error: str, started: float, wall_start: float) -> CycleReport:
        report.result = "failure"
        report.errors.append(error)
        self._finish(report, None, started, wall_start, up=False)
        return report

    async def _fetch_all(self, changed: list[tuple[Found, str]], work: CollectorState,
                         deadline: float, report: CycleReport, counted: list | None) -> None:
        pending = {summary.session_id for summary, _ in changed}

        async def one(summary: Found, reason: str) -> None:
            sid = summary.session_id
            try:
                session = await self.client.retrieve(sid, deadline)
                self.metrics.fetches.labels(reason).inc()
                report.fetched += 1
                prev = work.known(sid)
                if prev is not None and older(session.last_updated_at, prev):
                    self.log.info("stale read ignored; refetched next cycle", session_id=sid)
                else:
                    work.put(update_session(prev, session, work.aggregates, self.classifier, self.clock(),
                                            listed_at=summary.last_updated_at, counted=counted))
            except NotFound:
                report.removed += work.drop(sid)
            except PayloadError as exc:
                report.invalid += 1
                self.log.warning("invalid payload, session skipped this cycle", session_id=sid, error=str(exc))
            except FetchError as exc:
                report.failed += 1
                report.errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - one session's answer must never stop the others
                report.invalid += 1
                self.metrics.invalid_payload("retrieve")
                self.log.error("session not counted this cycle", session_id=sid,
                               error=f"{type(exc).__name__}: {str(exc)[:200]}")
            pending.discard(sid)  # not on cancellation: an unfinished fetch counts as failed

        try:
            async with asyncio.timeout(max(0.0, deadline - self.monotonic())):
                await self._pool(one, changed)
        except TimeoutError:
            report.failed += len(pending)
            report.errors.append(f"cycle deadline reached with {len(pending)} sessions not fetched; "
                                 "they are fetched next cycle")

    async def _pool(self, work: Callable, items: list) -> None:
        """Run ``work(*item)`` for every item, ``max_concurrency`` at a time, with that many tasks."""
        shared = iter(items)

        async def worker() -> None:
            for item in shared:  # each item is taken once; asyncio switches only at awaits
                await work(*item)

        try:
            async with asyncio.TaskGroup() as group:  # an error (or a cancel) stops every worker
                for _ in range(min(self.config.max_concurrency, len(items))):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    def persist(self) -> None:
        """Write the committed state; a failure is logged and counted, and retried next cycle."""
        try:
            self.store.save(self.state)
        except StateError as exc:
            self.metrics.state_write_failures.inc()
            self.log.error("state not saved; will retry next cycle", error=str(exc))

    def _finish(self, report: CycleReport, work: CollectorState | None, started: float,
                wall_start: float, *, up: bool) -> None:
        if work is not None:
            self.state = work
            self.persist()
        now = self.clock()
        report.duration = self.monotonic() - started
        report.watched = len(self.state.sessions)
        self.metrics.polls.labels(report.result).inc()
        self.poll = PollStatus(
            up=up, result=report.result, started_at=wall_start, finished_at=now, duration=report.duration,
            last_success=now if report.result == "success" else self.poll.last_success,
            message=report.errors[0] if report.errors else "",
        )
        self.snapshot = take_snapshot(self.state, self.poll, self.config.series_limit)
        self.cycle_finished = self.monotonic()
        log = self.log.info if report.result == "success" else self.log.warning
        log("poll cycle", result=report.result, sessions_watched=report.watched, fetched=report.fetched,
            unchanged=report.unchanged, runs_added=report.runs_added, failed=report.failed,
            invalid=report.invalid, removed=report.removed, duration_seconds=round(report.duration, 3),
            error=report.errors[0] if report.errors else None)
