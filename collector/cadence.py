"""The cycle's time, in one place: a ``Deadline`` value on one clock, and the ``Cadence`` built from the interval.

A ``Deadline`` carries its own clock, as httpx's ``Timeout`` carries its values:
whoever receives one asks it how much time is left, and never compares a raw
number against a clock of its own. ``Cadence`` holds every ratio derived from
``--interval``: the cycle's budget, the scheduler's jitter and the liveness window
of ``/healthz``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in time on ``clock`` (monotonic seconds)."""

    at: float
    clock: Clock = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + max(0.0, seconds), clock)

    @classmethod
    def never(cls, clock: Clock = time.monotonic) -> Deadline:
        return cls(math.inf, clock)

    def remaining(self) -> float:
        """Seconds left, never below 0; ``inf`` for a deadline that never comes."""
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.at

    def within(self, seconds: float) -> float:
        """``seconds``, cut to what is left: the timeout of one exchange under this deadline."""
        return min(seconds, self.remaining())


BUDGET_RATIO = 0.9
"""A cycle may use this share of the interval; the rest is room for the scheduler's jitter (checked by
``Cadence``: budget + jitter never overruns the interval). The README's percentages are checked against it."""
LIVENESS_INTERVALS = 3
"""``/healthz`` fails when no cycle has started or finished for this many intervals (plus a grace)."""
LIVENESS_GRACE = 5.0
JITTER_RATIO, JITTER_MAX = 0.1, 5.0


@dataclass(frozen=True, slots=True)
class Cadence:
    """Everything the poll loop derives from ``--interval``."""

    interval: float

    def __post_init__(self) -> None:
        if not self.budget + self.jitter <= self.interval:  # a cycle and its jitter fit between two runs
            raise ValueError(f"a cycle's budget ({self.budget:g} s) and jitter ({self.jitter:g} s) overrun the interval")

    @property
    def budget(self) -> float:
        """How long one cycle may run before it commits what it finished: ``BUDGET_RATIO`` of the interval, one
        float step less where rounding would take it and the jitter past the interval (``--interval 37``:
        33.300000000000004 + 3.7 is over 37)."""
        budget, jitter = self.interval * BUDGET_RATIO, self.jitter
        while budget + jitter > self.interval:
            budget = math.nextafter(budget, 0.0)
        return budget

    @property
    def jitter(self) -> float:
        """A small random delay per run, so a fleet of collectors does not poll in lockstep."""
        return min(self.interval * JITTER_RATIO, JITTER_MAX)

    @property
    def liveness(self) -> float:
        """Seconds without a cycle starting or finishing after which the loop is stuck."""
        return LIVENESS_INTERVALS * self.interval + LIVENESS_GRACE

    def deadline(self, clock: Clock = time.monotonic) -> Deadline:
        return Deadline.after(self.budget, clock)
