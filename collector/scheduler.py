"""APScheduler wiring only: an interval job that runs now, then every interval."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger


def jitter_for(interval: float) -> float:
    """A small jitter, so a fleet of collectors does not poll in lockstep."""
    return min(interval * 0.1, 5.0)


def start_scheduler(job: Callable[[], Awaitable[None]], interval: float) -> AsyncIOScheduler:
    """Start on the running loop: first run immediately, one at a time, missed runs coalesced."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        job,
        IntervalTrigger(seconds=interval, jitter=jitter_for(interval), timezone=UTC),
        id="poll",
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval)),
    )
    scheduler.start()
    return scheduler
