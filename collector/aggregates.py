"""Aggregated chat-run counters and histograms, bounded in their label values.

Aggregates only ever grow: a session that disappears keeps its contribution
here, so the exposed counters never decrease.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from collector.derive import RunRecord
from collector.families import COUNTERS, DEFAULT_BUCKETS, HISTOGRAMS, CounterFamily, Key, Run
from collector.llamacloud.models import MAX_MEASURE

OTHER_LABEL = "_other"
NO_INDEX = "_none"
"""The ``index_id`` under which the runs of a session bound to no index count."""
PLACEHOLDERS = frozenset({OTHER_LABEL, NO_INDEX})
"""Label values the collector writes itself: a tool or an index named so upstream counts as ``_other``."""
MAX_RUN_INDEXES = 32
"""A session bound to more indexes than this counts its runs under the first 32 (sorted) and ``_other``."""
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

    __slots__ = ("bounds", "counts", "marks", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.marks: list[Mark | None] = [None] * (len(self.bounds) + 1)

    def observe(self, value: float, session_id: str | None = None, now: float = 0.0) -> None:
        index = bisect.bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.total = min(MAX_MEASURE, self.total + value)  # never a sum the state file would refuse
        if session_id is not None:
            self.marks[index] = Mark.of(session_id, value, now) or self.marks[index]

    def take(self, value: float) -> bool:
        """Take one observation out of these (old) buckets, from ``value``'s own if it holds one, else from
        the nearest that does; False when none is left. The sum stays: it is never moved, only added."""
        index = bisect.bisect_left(self.bounds, value)
        order = sorted(range(len(self.counts)), key=lambda i: abs(i - index))
        for i in order:
            if self.counts[i] > 0:
                self.counts[i] -= 1
                return True
        return False

    def fold(self, old: Histogram) -> None:
        """Add ``old``'s observations as observations above every bound (``+Inf``): ``_count``, ``_sum``
        and ``+Inf`` keep them, whatever bounds they were made with."""
        self.counts[-1] += old.count
        self.total = min(MAX_MEASURE, self.total + old.total)

    def cumulative(self) -> list[tuple[str, int, Mark | None]]:
        """``(le, count, exemplar)`` as the exposition wants them, ending with +Inf.

        ``le`` is written as Prometheus' own clients write it (``1.048576e+06``), which is also what
        Prometheus 3 normalises every ``le`` to on ingestion: a series keeps its identity across 2 -> 3.

        A bucket's exemplar is the latest run whose value fell in that bucket alone
        (above the previous bound), so its value always lies inside the bucket."""
        out, running = [], 0
        for bound, count, mark in zip((*self.bounds, float("inf")), self.counts, self.marks, strict=True):
            running += count
            out.append((floatToGoString(bound), running, mark))  # type: ignore[no-untyped-call]  # untyped upstream
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


DROPPED_TRACKED = 10_000
"""Distinct dropped values told apart (by an 8-byte digest) before the count saturates: memory and the
state file stay bounded whatever names an upstream invents (tool names embedding request IDs)."""


def _digest(value: str) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=8).digest()


class BoundedLabels:
    """Admits the first ``limit`` distinct values of a label; the rest become ``_other``, and only their
    number is kept (``dropped``), never the values."""

    __slots__ = ("_seen", "admitted", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: set[str] = set()
        self.dropped = 0
        """How many distinct values became ``_other`` (exact up to ``DROPPED_TRACKED``, then at least)."""
        self._seen: set[bytes] = set()

    def __call__(self, value: str) -> str:
        if value in self.admitted:
            return value
        if len(value) > MAX_LABEL_LENGTH or value in PLACEHOLDERS:  # never kept, not even as a dropped value
            return OTHER_LABEL
        if len(self.admitted) < self.limit:
            self.admitted.add(value)
            return value
        if len(self._seen) < DROPPED_TRACKED:
            digest = _digest(value)
            if digest not in self._seen:
                self._seen.add(digest)
                self.dropped += 1
        return OTHER_LABEL

    def seeded(self) -> BoundedLabels:
        """An empty copy that admits what this one admitted, and has the same room left."""
        copy_ = BoundedLabels(self.limit)
        copy_.admitted = set(self.admitted)
        return copy_

    def absorb(self, value: str) -> str:
        """``value`` as a ``seeded`` copy counted it, as this one counts it now: a value the copy admitted is
        admitted here too while there is room (else ``_other``); the placeholders stay (a value is never one)."""
        return value if value in PLACEHOLDERS else self(value)

    def absorb_dropped(self, other: BoundedLabels) -> None:
        """The distinct values ``other`` dropped that this one had not, nor admitted since ``other`` was seeded."""
        admitted = {_digest(value) for value in self.admitted}
        for digest in other._seen - admitted:
            if len(self._seen) >= DROPPED_TRACKED:
                return
            if digest not in self._seen:
                self._seen.add(digest)
                self.dropped += 1


def latest(mine: Mark | None, theirs: Mark | None) -> Mark | None:
    """The later exemplar (a session counted apart may have started before one counted here since)."""
    if mine is None or (theirs is not None and theirs.timestamp >= mine.timestamp):
        return theirs
    return mine


class Buckets(Mapping[str, tuple[float, ...]]):
    """The bounds of each histogram, by its bucket setting (``HistogramFamily.bucket``): the defaults of
    ``FAMILIES``, with those given instead. An unknown name is refused."""

    __slots__ = ("_bounds",)

    def __init__(self, bounds: Mapping[str, Sequence[float]] | None = None) -> None:
        given = dict(bounds or {})
        unknown = set(given) - set(DEFAULT_BUCKETS)
        if unknown:
            raise ValueError(f"no histogram has the buckets {sorted(unknown)[0]!r}")
        self._bounds = {name: tuple(given.get(name, default)) for name, default in DEFAULT_BUCKETS.items()}

    def __getitem__(self, name: str) -> tuple[float, ...]:
        return self._bounds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bounds)

    def __len__(self) -> int:
        return len(self._bounds)

    def __getattr__(self, name: str) -> tuple[float, ...]:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._bounds[name]
        except KeyError:
            raise AttributeError(name) from None

    def __deepcopy__(self, memo: dict[int, object]) -> Buckets:
        return self  # immutable

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Buckets) and self._bounds == other._bounds

    def __hash__(self) -> int:
        return hash(tuple(self._bounds.items()))

    def __repr__(self) -> str:
        return f"Buckets({self._bounds!r})"


Series = dict[str | None, Histogram]
"""A histogram family's histograms, by label value (None for an unlabelled family)."""


class Aggregates:
    """Totals over every session ever watched, in the shape of the chat families (``FAMILIES``).

    Each counter family's counts are ``counters[stored]`` and each histogram family's histograms
    ``histos[stored]``; both are also attributes by that name (``a.runs``; an unlabelled histogram is the
    ``Histogram`` itself, ``a.turns``, a labelled one its series, ``a.tokens["input"]``)."""

    def __init__(self, buckets: Buckets, label_limit: int) -> None:
        self.buckets, self.label_limit = buckets, label_limit
        self.counters: dict[str, Counter[Key]] = {f.stored: Counter(dict.fromkeys(f.zeros, 0)) for f in COUNTERS}
        self.histos: dict[str, Series] = {
            f.stored: {k: Histogram(buckets[f.bucket]) for k in f.series_keys()} for f in HISTOGRAMS
        }
        self.history_resets = 0
        self.marks: dict[str, dict[Key, Mark]] = {f.stored: {} for f in COUNTERS if f.exemplars}
        """The latest run of each series of a family with exemplars (``llamacloud_chat_runs_total``)."""
        self.tools = BoundedLabels(label_limit)
        self.indexes = BoundedLabels(label_limit)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        d = self.__dict__
        if name in d.get("counters", ()):
            return d["counters"][name]
        if name in d.get("histos", ()):
            series = d["histos"][name]
            return series.get(None, series)
        raise AttributeError(name)

    @property
    def run_marks(self) -> dict[Key, Mark]:
        """The latest run of each ``outcome``, as the exemplar of ``llamacloud_chat_runs_total``."""
        return self.marks["runs"]

    def labels(self, family: CounterFamily) -> BoundedLabels | None:
        return None if family.bounded is None else getattr(self, family.bounded)

    def add_runs(
        self, runs: Iterable[RunRecord], session_id: str | None = None, now: float = 0.0, index_ids: Iterable[str] = ()
    ) -> None:
        """Count ``runs`` of a session bound to ``index_ids``; with ``session_id``, each also becomes the
        exemplar of what it landed in.

        What ``Histogram.observe`` does for each observation, in the same order, but each bucket's exemplar is
        made once, for the last run of these that landed in it (the one that would be left): a session's runs
        share their ID and time, and a counter's exemplar is one ``Mark`` for them all (it is immutable)."""
        mark = None if session_id is None else Mark.of(session_id, 1.0, now)  # None: an ID too long for one
        counting = [
            (
                family.observe,
                self.counters[family.stored],
                family.saturating,
                self.marks[family.stored] if family.exemplars else None,
            )
            for family in COUNTERS
            if family.observe is not None
        ]
        observing = [(family.observe, self.histos[family.stored]) for family in HISTOGRAMS]
        last: dict[tuple[Histogram, int], float] = {}
        """The value of the last run that landed in each (histogram, bucket)."""
        bisect_left = bisect.bisect_left
        indexes: frozenset[str] | None = None  # bounded on the first run: a session without runs admits no label
        for record in runs:
            if indexes is None:
                indexes = frozenset(self._run_indexes(index_ids))
            run = Run(record, indexes, self.tools, self.indexes)
            for observe, counts, saturating, marks in counting:
                for key, amount in observe(run):
                    counts[key] = min(MAX_MEASURE, counts[key] + amount) if saturating else counts[key] + amount
                    if marks is not None and mark is not None:
                        marks[key] = mark
            for observe_run, series in observing:
                for label, value in observe_run(record):
                    hist = series[label]
                    index = bisect_left(hist.bounds, value)
                    hist.counts[index] += 1
                    hist.total = min(MAX_MEASURE, hist.total + value)  # never a sum the state file would refuse
                    if mark is not None:
                        last[hist, index] = value
        if session_id is not None:
            for (hist, index), value in last.items():
                hist.marks[index] = Mark(session_id, float(value), float(now))

    def _observations(self, run: RunRecord) -> Iterator[tuple[Histogram, float]]:
        """Each histogram a run is observed in, with its value."""
        for family in HISTOGRAMS:
            series = self.histos[family.stored]
            for key, value in family.observe(run):
                yield series[key], value

    def replay(self, runs: Iterable[RunRecord], floor: Aggregates) -> None:
        """Runs counted before new bucket bounds, observed again in the new buckets (never in a counter):
        each one moves out of ``floor`` (the old bounds' observations), and only if it is still there."""
        old = dict(floor.histograms())
        mine = {id(h): key for key, h in self.histograms()}
        for run in runs:
            for hist, value in self._observations(run):
                if old[mine[id(hist)]].take(value):
                    index = bisect.bisect_left(hist.bounds, value)
                    hist.counts[index] += 1

    def fold(self, floor: Aggregates) -> None:
        """``floor``'s observations (made with the old bounds) into ``_count``, ``_sum`` and ``+Inf``."""
        old = dict(floor.histograms())
        for key, hist in self.histograms():
            hist.fold(old[key])

    def bounds_changed(self) -> bool:
        """A histogram held with other bounds than the configured ones (a stored one, before ``rebucket``)."""
        return any(h.bounds != self.buckets[f.bucket] for f in HISTOGRAMS for h in self.histos[f.stored].values())

    def rebucket(self) -> Aggregates:
        """Every histogram whose bounds are not the configured ones starts anew on them; what it held is
        returned as the floor to replay from (``replay``) and to fold (``fold``). Counters are untouched."""
        floor = Aggregates(self.buckets, self.label_limit)
        for family in HISTOGRAMS:
            bounds, held = self.buckets[family.bucket], self.histos[family.stored]
            for key, hist in held.items():
                if hist.bounds != bounds:
                    floor.histos[family.stored][key], held[key] = hist, Histogram(bounds)
        return floor

    def _run_indexes(self, index_ids: Iterable[str]) -> set[str]:
        """The ``index_id`` values one run counts under: each bound index once, bounded, else ``_none``."""
        distinct = sorted(set(index_ids))
        if not distinct:
            return {NO_INDEX}
        labels = {self.indexes(i) for i in distinct[:MAX_RUN_INDEXES]}
        return labels | {OTHER_LABEL} if len(distinct) > MAX_RUN_INDEXES else labels

    def add_events(self, counts: dict[str, int]) -> None:
        self.counters["events"].update(counts)

    def copy(self) -> Aggregates:
        return copy.deepcopy(self)

    def seeded(self) -> Aggregates:
        """An empty ``Aggregates`` to count one session into apart (in a thread, while the loop counts others),
        then ``merge`` back: the same bounds, and the label values admitted so far. Made on the loop."""
        delta = Aggregates(self.buckets, self.label_limit)
        for family in HISTOGRAMS:
            delta.histos[family.stored] = {k: Histogram(h.bounds) for k, h in self.histos[family.stored].items()}
        delta.tools, delta.indexes = self.tools.seeded(), self.indexes.seeded()
        return delta

    def merge(self, delta: Aggregates) -> None:
        """Add ``delta`` (made by ``seeded``) in, as if its session had been counted here: counters and
        histograms add (sums saturating), its exemplars are the latest, and the label values it admitted are
        admitted here while there is room, ``_other`` once the room went to others meanwhile."""
        for family in COUNTERS:
            mine, labels = self.counters[family.stored], self.labels(family)
            for key, value in delta.counters[family.stored].items():
                if labels is not None:
                    key = (labels.absorb(key[0]), *key[1:]) if isinstance(key, tuple) else labels.absorb(key)
                mine[key] = min(MAX_MEASURE, mine[key] + value) if family.saturating else mine[key] + value
        self.tools.absorb_dropped(delta.tools)
        self.indexes.absorb_dropped(delta.indexes)
        self.history_resets += delta.history_resets
        for name, marks in delta.marks.items():
            for key, mark in marks.items():
                self.marks[name][key] = latest(self.marks[name].get(key), mark) or mark
        theirs = dict(delta.histograms())
        for where, hist in self.histograms():
            other = theirs[where]
            assert other.bounds == hist.bounds, "seeded from these"
            hist.counts = [a + b for a, b in zip(hist.counts, other.counts, strict=True)]
            hist.total = min(MAX_MEASURE, hist.total + other.total)
            hist.marks = [latest(a, b) for a, b in zip(hist.marks, other.marks, strict=True)]

    def raise_to(self, floor: Aggregates) -> None:
        """Make every counter at least ``floor``'s (after a re-derivation: counters never go back)."""
        for family in COUNTERS:
            mine, theirs = self.counters[family.stored], floor.counters[family.stored]
            for key, value in theirs.items():
                mine[key] = max(mine[key], value)
        self.history_resets = max(self.history_resets, floor.history_resets)
        old_histograms = dict(floor.histograms())
        for where, hist in self.histograms():
            old = old_histograms.get(where)
            if old is None or old.count <= hist.count:
                continue
            if hist.bounds == old.bounds:
                hist.counts, hist.total = list(old.counts), max(hist.total, old.total)
            else:  # other bounds: the finite buckets are what was re-derived; _count, _sum and +Inf hold
                hist.counts[-1] += old.count - hist.count
                hist.total = max(hist.total, old.total)
        for labels, old_labels in ((self.tools, floor.tools), (self.indexes, floor.indexes)):
            labels.admitted |= old_labels.admitted
            labels.dropped = max(labels.dropped, old_labels.dropped)

    def histograms(self) -> Iterator[tuple[tuple[str, str | None], Histogram]]:
        """Every histogram of every histogram family, keyed by (stored name, label value or None)."""
        for family in HISTOGRAMS:
            for key, hist in self.histos[family.stored].items():
                yield (family.stored, key), hist

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.stored: [[list(k) if isinstance(k, tuple) else k, v] for k, v in self.counters[f.stored].items()] for f in COUNTERS
        }
        out["history_resets"] = self.history_resets
        for family in HISTOGRAMS:
            stored = {
                k: {"bounds": list(h.bounds), "counts": h.counts, "total": h.total, "marks": [_mark_out(m) for m in h.marks]}
                for k, h in self.histos[family.stored].items()
            }
            out[family.stored] = stored.get(None, stored)
        out["tools"] = [sorted(self.tools.admitted), self.tools.dropped]
        out["indexes"] = [sorted(self.indexes.admitted), self.indexes.dropped]
        out["run_marks"] = {str(k): _mark_out(m) for k, m in self.run_marks.items()}
        return out

    @classmethod
    def from_dict(cls, data: object, buckets: Buckets, label_limit: int, *, same_bounds: bool = True) -> Aggregates:
        """Stored aggregates, every value checked (``StoredValueError`` when one is impossible).

        A field missing from an older file takes its default (a family added since starts at 0);
        a field this release does not know raises ``UnknownField``: a newer release wrote it.
        With ``same_bounds``, a histogram's stored bounds must be the configured ones."""
        if not isinstance(data, dict):
            raise StoredValueError("aggregates are not a mapping")
        unknown = set(data) - STORED_FIELDS
        if unknown:
            raise UnknownField(f"aggregates field {sorted(unknown)[0]!r}")
        agg = cls(buckets, label_limit)
        for counter in COUNTERS:
            target = agg.counters[counter.stored]
            for item in _items(data.get(counter.stored, []), counter.stored):
                target[_counter_key(item, counter.stored)] = count(item[1], counter.stored)
        agg.history_resets = count(data.get("history_resets", 0), "history_resets")
        for family in HISTOGRAMS:
            stored = data.get(family.stored)
            if stored is None:
                continue  # none in an older file (a family added since): starts empty
            if family.series and not isinstance(stored, dict):
                raise StoredValueError(f"{family.stored} is not a mapping")
            series = agg.histos[family.stored]
            for key in family.series_keys():
                one = stored if key is None else stored.get(key)
                if one is None:
                    continue
                loaded = _histogram(one, f"{family.stored}.{key}" if key else family.stored)
                if same_bounds and loaded.bounds != series[key].bounds:
                    raise StoredValueError(f"{family.stored}: stored bounds differ from the configured ones")
                series[key] = loaded
        for labels, key in ((agg.tools, "tools"), (agg.indexes, "indexes")):
            stored = data.get(key, [[], 0])
            if not (
                isinstance(stored, list)
                and len(stored) == 2
                and isinstance(stored[0], list)
                and all(isinstance(x, str) for x in stored[0])
            ):
                raise StoredValueError(f"{key}: not the admitted label values and a dropped count")
            dropped = stored[1]
            if isinstance(dropped, list):  # before 0.2.0 the dropped values themselves were kept
                dropped = len(dropped)
            labels.admitted, labels.dropped = set(stored[0]), count(dropped, key)
        marks = data.get("run_marks", {})
        if not isinstance(marks, dict):
            raise StoredValueError("run_marks is not a mapping")
        agg.marks["runs"] = {k: m for k, m in ((k, _mark_in(v)) for k, v in marks.items() if k in ("success", "error")) if m}
        return agg


class StoredValueError(ValueError):
    """A stored value that no release writes: negative, not finite, over 2**53, of the wrong type."""


class UnknownField(ValueError):
    """A stored field this release does not know: a newer release wrote the file."""


MAX_COUNT = MAX_MEASURE


def count(value: object, where: str) -> int:
    """A stored count: an exact integer in [0, 2**53] (a bool is not one)."""
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise StoredValueError(f"{where}: {str(value)[:40]!r} is not a count")
    return value


def finite(value: object, where: str) -> float:
    """A stored sum or time: a finite number in [0, 2**53]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= MAX_COUNT:
        raise StoredValueError(f"{where}: {str(value)[:40]!r} is not a finite non-negative number")
    return float(value)


def _items(value: object, where: str) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(i, list) and len(i) == 2 for i in value):
        raise StoredValueError(f"{where}: not a list of [key, value] pairs")
    return value


def _counter_key(item: list[Any], where: str) -> str | tuple[str, ...]:
    key = item[0]
    if isinstance(key, str):
        return key
    if isinstance(key, list) and key and all(isinstance(k, str) for k in key):
        return tuple(key)
    raise StoredValueError(f"{where}: key {str(key)[:40]!r} is not a label value")


def _histogram(stored: object, where: str) -> Histogram:
    if not isinstance(stored, dict) or not {"bounds", "counts", "total"} <= set(stored):
        raise StoredValueError(f"{where}: not a histogram")
    bounds = stored["bounds"]
    if not isinstance(bounds, list) or not bounds:
        raise StoredValueError(f"{where}: no bounds")
    values = [float(b) if type(b) in (int, float) and math.isfinite(b) else math.nan for b in bounds]
    if any(math.isnan(v) for v in values) or any(b <= a for a, b in itertools.pairwise(values)):
        raise StoredValueError(f"{where}: bounds are not finite and increasing")
    counts = stored["counts"]
    if not isinstance(counts, list) or len(counts) != len(values) + 1:
        raise StoredValueError(f"{where}: {len(values) + 1} counts expected")
    h = Histogram(values)
    h.counts = [count(c, where) for c in counts]
    h.total = finite(stored["total"], where)
    marks = [_mark_in(m) for m in stored.get("marks", ())]  # none in a 0.1.0 file: absent until the next run
    if len(marks) == len(h.counts):
        h.marks = marks
    return h


def _mark_out(mark: Mark | None) -> list[Any] | None:
    return None if mark is None else [mark.session_id, mark.value, mark.timestamp]


def _mark_in(data: object) -> Mark | None:
    """A stored exemplar; one that is not a (session ID, finite value, finite time) is dropped, not fatal."""
    if not (
        isinstance(data, list)
        and len(data) == 3
        and isinstance(data[0], str)
        and all(type(v) in (int, float) and math.isfinite(v) for v in data[1:])
    ):
        return None
    return Mark.of(data[0], float(data[1]), float(data[2]))


STORED_FIELDS = frozenset(
    {*(f.stored for f in COUNTERS), *(f.stored for f in HISTOGRAMS), "history_resets", "tools", "indexes", "run_marks"}
)
"""The keys of the stored aggregates: a counter family missing from an older file starts at 0 (the index
families, added in 0.3.0, count the runs from the upgrade on; the run totals keep theirs)."""
