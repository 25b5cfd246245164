"""APScheduler wiring only: an interval job that runs now, then every interval."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from collector.cadence import Cadence


def start_scheduler(job: Callable[[], Awaitable[None]], cadence: Cadence) -> AsyncIOScheduler:
    """Start on the running loop: first run immediately, one at a time, missed runs coalesced."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        job,
        IntervalTrigger(seconds=cadence.interval, jitter=cadence.jitter, timezone=UTC),
        id="poll",
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(cadence.interval)),
    )
    scheduler.start()
    return scheduler
