"""What every API request spends before it is sent: a place in the request rate, and any pause a 429 asked for.

The rate is ``aiolimiter``'s leaky bucket of capacity 1 that drains at ``--max-requests-per-second``
(divided among the shards): requests go out at most that often, evenly spaced, with no burst, so over
any window of ``w`` seconds at most ``w × rate`` requests leave (plus the one at the window's start).

Two kinds of request share it and take turns: the listing (one page after another) and the fetches of
sessions (``--max-concurrency`` at once). Each kind has one request at a time waiting at the limiter,
behind a FIFO lock of its own, and the limiter serves its waiters in order: while both kinds wait, they
alternate. The listing then gets at least half the budget, which it needs to finish passes, and the
fetches of changed sessions get at least the other half, whatever the listing wants.

A 429 with ``Retry-After`` (or ``retry-after-ms``, as the vendor's SDKs read it) pauses the whole client
for that long, not only the request that got it. A wait never goes past the caller's deadline: a pause
that outlasts it gives up at once, a place in the rate at the deadline (``BudgetTimeout``), and the cycle
carries its work on as a cut cycle does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from aiolimiter import AsyncLimiter

from collector.cadence import Deadline

MAX_PAUSE = 300.0
"""The longest pause one 429 may ask for: a hostile or mistaken ``Retry-After: 999999999`` must not stop the
collector for good. After it, one request finds out whether the API still refuses."""

LISTING = "list"

HELD: ContextVar[list[float] | None] = ContextVar("held", default=None)
"""Where the caller's task adds up the seconds its requests waited for the budget: a fetch held by the budget
or a 429's pause is not a fetch that hangs (the poller sets a box per session it fetches)."""


class BudgetTimeout(TimeoutError):
    """The request was not sent: the caller's deadline comes before its place in the budget or a pause's end."""

    def __init__(self, message: str, *, paused: bool) -> None:
        super().__init__(message)
        self.paused = paused


class RequestBudget:
    def __init__(
        self,
        per_second: float | None,
        *,
        waited: Callable[[float], None] = lambda seconds: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_second is not None and not (math.isfinite(per_second) and per_second > 0):
            raise ValueError("a request budget is a finite rate above 0")
        self.per_second = per_second
        self._limiter = None if per_second is None else AsyncLimiter(1, 1.0 / per_second)
        self._turns = {LISTING: asyncio.Lock(), "fetch": asyncio.Lock()}
        self._paused_until = -math.inf
        self._waited, self._clock, self._sleep = waited, clock, sleep

    def pause(self, seconds: float) -> float:
        """A 429 asked every request to wait ``seconds`` (at most ``MAX_PAUSE``): the pause now in force, from now."""
        seconds = min(max(0.0, seconds), MAX_PAUSE)
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        return self.paused_for()

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def spend(self, operation: str, deadline: Deadline | None) -> None:
        """Wait for the pause to end and for this request's place in the rate. Raises ``BudgetTimeout`` when
        ``deadline`` comes first: at once for a pause that outlasts it, at the deadline for the rate. Whatever
        time it waited is reported to ``waited``, given or not."""
        started = self._clock()
        try:
            await self._spend(operation, deadline, started)
        finally:
            if (seconds := self._clock() - started) > 0:
                self._waited(seconds)
                held = HELD.get()
                if held is not None:
                    held[0] += seconds

    async def _spend(self, operation: str, deadline: Deadline | None, started: float) -> None:
        await self._wait_pause(deadline)
        if self._limiter is None:
            return
        remaining = None if deadline is None or math.isinf(deadline.remaining()) else deadline.remaining()
        try:  # the deadline bounds the wait for the turn too, not only for the limiter
            async with asyncio.timeout(remaining), self._turns[LISTING if operation == LISTING else "fetch"]:
                await self._limiter.acquire()
                while self.paused_for() > 0:  # a 429 came while it waited for its place: the pause, then a new place
                    await self._wait_pause(deadline)
                    await self._limiter.acquire()
        except BudgetTimeout:
            raise
        except TimeoutError:
            raise BudgetTimeout(
                f"waited {self._clock() - started:.1f} s for the request budget "
                f"({self.per_second:g} a second) until the deadline",
                paused=False,
            ) from None

    async def _wait_pause(self, deadline: Deadline | None) -> None:
        """Until the pause in force ends (a pause made longer meanwhile, too); at once past the deadline."""
        until = self._paused_until
        while (left := until - self._clock()) > 0:
            if deadline is not None and left >= deadline.remaining():
                raise BudgetTimeout(f"the API asked every request to wait {left:.0f} s, past the deadline", paused=True)
            await self._sleep(left)
            if self._paused_until == until:  # slept the whole pause (a 429 meanwhile made it longer: again)
                break
            until = self._paused_until
