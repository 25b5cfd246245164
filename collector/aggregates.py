"""Aggregated chat-run counters and histograms, bounded in their label values.

Aggregates only ever grow: a session that disappears keeps its contribution
here, so the exposed counters never decrease.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from collector.derive import RunRecord

OTHER_LABEL = "_other"
MAX_LABEL_LENGTH = 128
"""A tool name or index ID longer than this is not a name but a payload; it counts as ``_other``."""


EXEMPLAR_LABEL = "session_id"
EXEMPLAR_LIMIT = 128
"""OpenMetrics: an exemplar's label names and values together hold at most 128 characters."""


@dataclass(frozen=True, slots=True)
class Mark:
    """An exemplar: the most recent run that landed in a bucket or series, and which session it was."""

    session_id: str
    value: float
    timestamp: float

    @classmethod
    def of(cls, session_id: str, value: float, timestamp: float) -> Mark | None:
        """None when the ID would break the 128-character limit: left out, never cut."""
        if len(EXEMPLAR_LABEL) + len(session_id) > EXEMPLAR_LIMIT:
            return None
        return cls(session_id, float(value), float(timestamp))


class Histogram:
    """Counts per bucket (not cumulative), the sum, and each bucket's latest exemplar; ``le`` is inclusive."""

    __slots__ = ("bounds", "counts", "total", "marks")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.marks: list[Mark | None] = [None] * (len(self.bounds) + 1)

    def observe(self, value: float, session_id: str | None = None, now: float = 0.0) -> None:
        index = bisect.bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.total += value
        if session_id is not None:
            self.marks[index] = Mark.of(session_id, value, now) or self.marks[index]

    def cumulative(self) -> list[tuple[str, int, Mark | None]]:
        """``(le, count, exemplar)`` as the exposition wants them, ending with +Inf.

        A bucket's exemplar is the latest run whose value fell in that bucket alone
        (above the previous bound), so its value always lies inside the bucket."""
        out, running = [], 0
        for bound, count, mark in zip((*self.bounds, float("inf")), self.counts, self.marks, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running, mark))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class BoundedLabels:
    """Admits the first ``limit`` distinct values of a label; the rest become ``_other``."""

    __slots__ = ("limit", "admitted", "dropped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: set[str] = set()
        self.dropped: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.admitted:
            return value
        if len(value) > MAX_LABEL_LENGTH:  # never kept, not even as a dropped value
            return OTHER_LABEL
        if len(self.admitted) < self.limit:
            self.admitted.add(value)
            return value
        self.dropped.add(value)
        return OTHER_LABEL


@dataclass(frozen=True)
class Buckets:
    duration: tuple[float, ...]
    tokens: tuple[float, ...]
    turns: tuple[float, ...]
    tool_calls: tuple[float, ...]


@dataclass
class Aggregates:
    """Totals over every session ever watched, in the shape of the chat families."""

    buckets: Buckets
    label_limit: int
    runs: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    tokens_total: Counter = field(default_factory=Counter)
    tool_calls: Counter = field(default_factory=Counter)
    skipped_index_queries: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    invalid_values: Counter = field(default_factory=Counter)
    history_resets: int = 0
    run_marks: dict[str, Mark] = field(default_factory=dict)
    """The latest run of each ``outcome``, as the exemplar of ``llamacloud_chat_runs_total``."""
    duration: Histogram = field(init=False)
    tokens: dict[str, Histogram] = field(init=False)
    turns: Histogram = field(init=False)
    tool_calls_per_run: Histogram = field(init=False)
    tools: BoundedLabels = field(init=False)
    indexes: BoundedLabels = field(init=False)

    def __post_init__(self) -> None:
        self.duration = Histogram(self.buckets.duration)
        self.tokens = {"input": Histogram(self.buckets.tokens), "output": Histogram(self.buckets.tokens)}
        self.turns = Histogram(self.buckets.turns)
        self.tool_calls_per_run = Histogram(self.buckets.tool_calls)
        self.tools = BoundedLabels(self.label_limit)
        self.indexes = BoundedLabels(self.label_limit)
        for outcome in ("success", "error"):
            self.runs[outcome] += 0
        for kind in ("input", "output"):
            self.tokens_total[kind] += 0

    def add_runs(self, runs: Iterable[RunRecord], session_id: str | None = None, now: float = 0.0) -> None:
        """Count ``runs``; with ``session_id``, each also becomes the exemplar of what it landed in."""
        sid = session_id
        for run in runs:
            self.invalid_values.update(run.refused)
            outcome = "error" if run.failed else "success"
            self.runs[outcome] += 1
            mark = Mark.of(sid, 1.0, now) if sid is not None else None
            if mark is not None:
                self.run_marks[outcome] = mark
            if run.failed:
                self.errors[run.error_type] += 1
            if run.duration_seconds is not None:
                self.duration.observe(run.duration_seconds, sid, now)
            for kind, value in (("input", run.input_tokens), ("output", run.output_tokens)):
                if value is not None:
                    self.tokens[kind].observe(value, sid, now)
                    self.tokens_total[kind] += value
            if run.turns is not None:
                self.turns.observe(run.turns, sid, now)
            self.tool_calls_per_run.observe(len(run.tool_calls), sid, now)
            for call in run.tool_calls:
                outcome = "result" if call.has_result else "no_result"
                self.tool_calls[(self.tools(call.name), outcome)] += 1
            for index_id in run.skipped_index_ids:
                self.skipped_index_queries[self.indexes(index_id)] += 1

    def add_events(self, counts: dict[str, int]) -> None:
        self.events.update(counts)

    def copy(self) -> Aggregates:
        return copy.deepcopy(self)

    def raise_to(self, floor: Aggregates) -> None:
        """Make every counter at least ``floor``'s (after a re-derivation: counters never go back)."""
        for name in COUNTERS:
            mine, theirs = getattr(self, name), getattr(floor, name)
            for key, value in theirs.items():
                mine[key] = max(mine[key], value)
        self.history_resets = max(self.history_resets, floor.history_resets)
        pairs = [(self.duration, floor.duration), (self.turns, floor.turns),
                 (self.tool_calls_per_run, floor.tool_calls_per_run)]
        pairs += [(self.tokens[k], floor.tokens[k]) for k in self.tokens if k in floor.tokens]
        for mine, theirs in pairs:
            if mine.bounds == theirs.bounds and theirs.count > mine.count:
                mine.counts, mine.total = list(theirs.counts), max(mine.total, theirs.total)
        for labels, old in ((self.tools, floor.tools), (self.indexes, floor.indexes)):
            labels.admitted |= old.admitted
            labels.dropped |= old.dropped

    def to_dict(self) -> dict:
        hist = lambda h: {"bounds": list(h.bounds), "counts": h.counts, "total": h.total,  # noqa: E731
                          "marks": [_mark_out(m) for m in h.marks]}
        return {
            **{name: [[list(k) if isinstance(k, tuple) else k, v] for k, v in getattr(self, name).items()]
               for name in COUNTERS},
            "history_resets": self.history_resets,
            "duration": hist(self.duration), "turns": hist(self.turns),
            "tool_calls_per_run": hist(self.tool_calls_per_run),
            "tokens": {k: hist(h) for k, h in self.tokens.items()},
            "tools": [sorted(self.tools.admitted), sorted(self.tools.dropped)],
            "indexes": [sorted(self.indexes.admitted), sorted(self.indexes.dropped)],
            "run_marks": {k: _mark_out(m) for k, m in self.run_marks.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, buckets: Buckets, label_limit: int) -> Aggregates:
        """Rebuild stored aggregates; histograms keep their stored bounds."""
        agg = cls(buckets, label_limit)
        for name in COUNTERS:
            target = getattr(agg, name)
            for key, value in data.get(name, ()):  # a family added since the file was written starts at 0
                target[tuple(key) if isinstance(key, list) else key] = value
        agg.history_resets = data["history_resets"]
        _check_counts(data)

        def hist(d: dict) -> Histogram:
            h = Histogram(d["bounds"])
            h.counts, h.total = list(d["counts"]), d["total"]
            marks = [_mark_in(m) for m in d.get("marks", ())]  # none in a 0.1.0 file: absent until the next run
            if len(marks) == len(h.counts):
                h.marks = marks
            return h
        agg.duration, agg.turns = hist(data["duration"]), hist(data["turns"])
        agg.tool_calls_per_run = hist(data["tool_calls_per_run"])
        agg.tokens = {k: hist(v) for k, v in data["tokens"].items()}
        for labels, (admitted, dropped) in ((agg.tools, data["tools"]), (agg.indexes, data["indexes"])):
            labels.admitted, labels.dropped = set(admitted), set(dropped)
        agg.run_marks = {k: m for k, m in ((k, _mark_in(v)) for k, v in data.get("run_marks", {}).items()) if m}
        return agg


def _mark_out(mark: Mark | None) -> list | None:
    return None if mark is None else [mark.session_id, mark.value, mark.timestamp]


def _mark_in(data: list | None) -> Mark | None:
    return None if data is None else Mark.of(str(data[0]), float(data[1]), float(data[2]))


def _check_counts(data: dict) -> None:
    """A stored count that is negative or not finite is a corrupt file (or one written before values
    were checked): raise, so the store is moved aside and rebuilt from the API."""
    numbers = [v for name in COUNTERS for _, v in data.get(name, ())] + [data["history_resets"]]
    for h in (data["duration"], data["turns"], data["tool_calls_per_run"], *data["tokens"].values()):
        numbers += [*h["counts"], h["total"]]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers):
        raise ValueError("stored aggregates hold a negative or non-finite count")


COUNTERS = ("runs", "errors", "tokens_total", "tool_calls", "skipped_index_queries", "events", "invalid_values")
