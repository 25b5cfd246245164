"""What the state file holds of a session, by name, every value checked on the way in.

A row is a JSON object of ``SessionState`` fields; a field missing from an older release's row takes its
default, and one this release does not know raises ``UnknownField`` (a newer release wrote the file).
Rows of schema 1 (release 0.1.0 and every release until named rows) are positional lists of
``LEGACY_FIELDS``. Nothing here trusts the file: an impossible value raises ``StoredValueError``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from collector.aggregates import StoredValueError, UnknownField, count, finite
from collector.state import LastRun, SessionState

LEGACY_FIELDS = (
    "session_id",
    "last_updated_at",
    "updated_ts",
    "title",
    "shared_access",
    "index_ids",
    "job",
    "cursor",
    "events_seen",
    "stop_signature",
    "runs_success",
    "runs_error",
    "tokens_input",
    "tokens_output",
    "in_progress_start",
    "in_progress_since",
    "high_water",
)
"""The positional row of schema 1. Frozen: new fields go by name, never here."""
SESSION_FIELDS = frozenset(f.name for f in fields(SessionState))
LAST_RUN_FIELDS = frozenset(f.name for f in fields(LastRun))
LEGACY_JOB_FIELDS = frozenset({"error", "export_config_ids"})
"""Keys 0.1.0 stored with ``job_metadata`` that the last-run gauges never read."""
COUNTS = ("cursor", "events_seen", "runs_success", "runs_error", "tokens_input", "tokens_output")
MAX_TEXT = 1 << 16


def encode_session(s: SessionState) -> str:
    row = {f: getattr(s, f) for f in SESSION_FIELDS}
    row["job"] = asdict(s.job) if s.job else None
    return json.dumps(row, separators=(",", ":"), sort_keys=True)


def _text(value: object, where: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise StoredValueError(f"session {where}: not a string")
    return value


def _number(value: object, where: str) -> float | None:
    return None if value is None else finite(value, f"session {where}")


def _job(value: object) -> LastRun | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StoredValueError("session job: not a mapping")
    unknown = set(value) - LAST_RUN_FIELDS - LEGACY_JOB_FIELDS
    if unknown:
        raise UnknownField(f"session job field {sorted(unknown)[0]!r}")
    is_error = value.get("is_error")
    if is_error is not None and type(is_error) is not bool:
        raise StoredValueError("session job.is_error: not a boolean")
    return LastRun(**{k: _number(value.get(k), f"job.{k}") for k in LAST_RUN_FIELDS - {"is_error"}}, is_error=is_error)


def _high_water(value: object) -> tuple[int, int, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3:
        raise StoredValueError("session high_water: not [cursor, events_seen, signature]")
    return count(value[0], "session high_water"), count(value[1], "session high_water"), _text(value[2], "high_water")


def decode_session(text: str) -> SessionState:
    row = json.loads(text)
    if isinstance(row, list):
        if len(row) != len(LEGACY_FIELDS):
            raise StoredValueError(f"session row of {len(row)} values, not {len(LEGACY_FIELDS)}")
        row = dict(zip(LEGACY_FIELDS, row, strict=True))
    if not isinstance(row, dict):
        raise StoredValueError("session row: not a mapping")
    unknown = set(row) - SESSION_FIELDS
    if unknown:
        raise UnknownField(f"session field {sorted(unknown)[0]!r}")
    index_ids = row.get("index_ids", [])
    if not isinstance(index_ids, list) or not all(isinstance(i, str) for i in index_ids):
        raise StoredValueError("session index_ids: not a list of strings")
    start = row.get("in_progress_start")
    return SessionState(
        session_id=_text(row.get("session_id"), "session_id", optional=False) or "",
        last_updated_at=_text(row.get("last_updated_at"), "last_updated_at", optional=False) or "",
        updated_ts=_number(row.get("updated_ts"), "updated_ts"),
        title=_text(row.get("title"), "title"),
        shared_access=_text(row.get("shared_access"), "shared_access"),
        index_ids=tuple(index_ids),
        job=_job(row.get("job")),
        stop_signature=_text(row.get("stop_signature"), "stop_signature"),
        in_progress_start=None if start is None else count(start, "session in_progress_start"),
        in_progress_since=_number(row.get("in_progress_since"), "in_progress_since"),
        high_water=_high_water(row.get("high_water")),
        **{k: count(row.get(k, 0), f"session {k}") for k in COUNTS},
    )
