"""Pure derivation: a session's events in, finished run records out. No I/O.

A run is ``user_input`` … ``stop``; each ``stop`` is one finished run. The
cursor is the index just past the last ``stop`` already counted, so a re-poll
derives only what is new. Events after the last ``stop`` belong to a run still
in progress: they are reported, not counted.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from collector.llamacloud.models import (
    PlainEvent,
    StopEvent,
    ToolCallEvent,
    ToolResultEvent,
    event_label,
    known,
    refused,
)

DERIVATION_VERSION = 1
"""What a stored count means. Bump it whenever ``derive``, ``update_session`` or ``stop_signature`` changes
what a stored cursor, signature or count stands for: a file of an older version is then re-derived from
the full histories, with its stored totals as the floor, exactly as a change of buckets is. A change that
leaves every stored value meaning the same (a new field with a default, a fix that only counts new events
differently) needs no bump. A file of a newer version is refused."""

OTHER_ERROR = "_OTHER"
ERROR_TEXT_LIMIT = 500
CLASSIFIED_PREFIX = 4096
"""Only the start of an error text is matched: a megabyte of text costs no more than this."""

DEFAULT_ERROR_RULES: tuple[tuple[str, str], ...] = (
    ("timeout", r"time[d ]?\s?out|timeout|deadline exceeded"),
    ("rate_limit", r"rate.?limit|too many requests|\b429\b|quota"),
    ("context_length", r"context.?(length|window)|maximum context|too many tokens|token limit"),
    ("auth", r"unauthori[sz]ed|forbidden|\b40[13]\b|api key|authenticat|permission denied"),
    ("not_found", r"not found|\b404\b|does not exist|no such"),
    ("tool_error", r"\btool\b"),
    ("internal", r"internal|\b5\d\d\b|server error|unexpected"),
)


class ErrorClassifier:
    """Maps an error text to an ``error_type`` by the first matching rule."""

    def __init__(self, rules: Sequence[tuple[str, str]] = DEFAULT_ERROR_RULES) -> None:
        self.rules = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in rules)

    def classify(self, error: str | None) -> str:
        if error:
            error = error[:CLASSIFIED_PREFIX]
            for name, pattern in self.rules:
                if pattern.search(error):
                    return name
        return OTHER_ERROR


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    has_result: bool


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One finished run, as read from its ``stop`` event and the events before it."""

    failed: bool
    error_type: str | None
    duration_seconds: float | None
    input_tokens: int | None
    output_tokens: int | None
    turns: int | None
    tool_calls: tuple[ToolCall, ...]
    skipped_index_ids: tuple[str, ...]
    refused: tuple[str, ...] = ()
    """Usage fields the API sent with an impossible value (now unknown), for ``invalid_values_total``."""
    error: str | None = None
    """The start of ``stop.error`` (``ERROR_TEXT_LIMIT`` characters), for the failed-run log line."""


@dataclass(frozen=True, slots=True)
class Derivation:
    runs: tuple[RunRecord, ...]
    cursor: int
    """Index just past the last ``stop``: where the next derivation starts."""
    events_seen: int
    event_counts: dict[str, int]
    """Events past the previous ``events_seen``, by ``type`` label."""
    in_progress_start: int | None
    """Index of the ``user_input`` that opened an unfinished run, if any."""
    stop_signature: str | None
    """Fingerprint of the stop at ``cursor - 1``, to detect a rewritten history."""


def stop_signature(event: StopEvent) -> str:
    u = event.usage
    text = repr(
        (
            event.is_error,
            event.error,
            u.duration_ms,
            u.total_input_tokens,
            u.total_output_tokens,
            u.turns,
            event.skipped_index_ids,
        )
    )
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def history_intact(events: Sequence[object], cursor: int, events_seen: int, signature: str | None) -> bool:
    """False when the history shrank or the last counted stop is not the same any more."""
    if len(events) < max(cursor, events_seen):
        return False
    if cursor == 0:
        return True
    last = events[cursor - 1]
    return isinstance(last, StopEvent) and stop_signature(last) == signature


def _run_record(run_events: Sequence[object], stop: StopEvent, classifier: ErrorClassifier) -> RunRecord:
    calls: list[ToolCallEvent] = []
    results: set[str] = set()
    for event in run_events:
        if isinstance(event, ToolCallEvent):
            calls.append(event)
        elif isinstance(event, ToolResultEvent):
            results.add(event.call_id)
    usage = stop.usage
    failed = stop.failed
    duration_ms, input_tokens, output_tokens, turns = (
        known(usage.duration_ms),
        known(usage.total_input_tokens),
        known(usage.total_output_tokens),
        known(usage.turns),
    )
    return RunRecord(
        failed=failed,
        error_type=classifier.classify(stop.error) if failed else None,
        duration_seconds=None if duration_ms is None else duration_ms / 1000.0,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        turns=turns,
        tool_calls=tuple(ToolCall(c.name, c.call_id in results) for c in calls),
        skipped_index_ids=tuple(stop.skipped_index_ids),
        refused=refused(usage),
        error=stop.error[:ERROR_TEXT_LIMIT] if failed and stop.error else None,
    )


def finished_prefix(events: Sequence[object]) -> int:
    """Index just past the last ``stop``: the length of the history's finished runs."""
    for index in range(len(events) - 1, -1, -1):
        if type(events[index]) is StopEvent:
            return index + 1
    return 0


def derive(
    events: Sequence[object],
    cursor: int,
    events_seen: int,
    classifier: ErrorClassifier,
    sink: Callable[[RunRecord], None] | None = None,
) -> Derivation:
    """Derive the runs finished in ``events[cursor:]``.

    ``events_seen`` is how many events were already counted by type; the
    caller has checked ``history_intact`` (or passes zeros to start over).
    With a ``sink``, each run goes to it as it is derived and none is kept
    (a million runs held at once would be 120 MB).
    """
    runs: list[RunRecord] = []
    emit = runs.append if sink is None else sink
    start = cursor
    for index in range(cursor, len(events)):
        event = events[index]
        if type(event) is StopEvent:
            emit(_run_record(events[start:index], event, classifier))
            start = index + 1
    last = events[start - 1] if start > 0 else None
    signature = stop_signature(last) if isinstance(last, StopEvent) else None
    in_progress_start = next(
        (i for i, event in enumerate(events[start:], start) if isinstance(event, PlainEvent) and event.type == "user_input"),
        None,
    )
    counts = Counter(map(event_label, events[events_seen:]))
    return Derivation(tuple(runs), start, len(events), dict(counts), in_progress_start, signature)
