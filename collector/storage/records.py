"""The rows of the state file: a session's (``SessionState``, in ``sessions``, ``prior`` and ``retired``) and the
meta values, each read and written by the codec of its declared fields (``collector/storage/rules.py``).

A session row is a JSON object of ``SessionState`` fields; a field missing from an older release's row takes
its default, and one this release does not know raises ``UnknownField`` (a newer release wrote the file).
Rows of schema 1 (release 0.1.0 and every release until named rows) are positional lists of
``LEGACY_FIELDS``. Nothing here trusts the file: an impossible value raises ``StoredValueError``, and nothing is
written that would be refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from collector.aggregates import StoredValueError
from collector.state import SessionState
from collector.storage.rules import (
    FLAG_TEXT,
    JSON_TEXT,
    MEASURE_TEXT,
    OPTIONAL_JSON_TEXT,
    TEXT,
    VERSION_TEXT,
    Codec,
    stored,
)

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

SESSION = Codec(SessionState, "session")


def encode_session(s: SessionState) -> str:
    """A session's row: compact JSON (10,000 rows are rewritten often), every field by name."""
    return json.dumps(SESSION.encode(s), separators=(",", ":"), sort_keys=True)


def decode_session(text: str) -> SessionState:
    row = json.loads(text)
    if isinstance(row, list):
        if len(row) != len(LEGACY_FIELDS):
            raise StoredValueError(f"session row of {len(row)} values, not {len(LEGACY_FIELDS)}")
        row = dict(zip(LEGACY_FIELDS, row, strict=True))
    if not isinstance(row, dict):
        raise StoredValueError("session row: not a mapping")
    return SESSION.decode(row)


@dataclass(frozen=True)
class Meta:
    """The ``meta`` table: one row per field, its value a text. The aggregates are JSON documents that
    ``Aggregates.from_dict`` reads (and checks) and ``Aggregates.to_dict`` writes."""

    schema_version: int = field(metadata=stored(VERSION_TEXT))
    synced: bool = field(metadata=stored(FLAG_TEXT))
    aggregates: Any = field(metadata=stored(JSON_TEXT))
    derivation_version: int = field(default=1, metadata=stored(VERSION_TEXT))
    """Absent before 0.2.0: version 1."""
    fingerprint: str = field(default="", metadata=stored(TEXT))
    """What the configuration makes of a run, when it was saved (``sqlite.fingerprint``)."""
    saved_at: float = field(default=0.0, metadata=stored(MEASURE_TEXT))
    floor: Any = field(default=None, metadata=stored(OPTIONAL_JSON_TEXT))
    histogram_floor: Any = field(default=None, metadata=stored(OPTIONAL_JSON_TEXT))
    """Absent before 0.2.0: none."""
    counting_since: float = field(default=0.0, metadata=stored(MEASURE_TEXT))
    """When the file's counts began (an OTLP series' start). Absent before 0.2.0: 0, and the first load sets it."""
    project_id: str = field(default="", metadata=stored(TEXT))
    """The project whose state this is. Absent (or empty) in a file of an earlier release: the one project it
    watched, the configured one or the key's default (``collector.projects``)."""


META = Codec(Meta, "meta")


def encode_meta(meta: Meta) -> dict[str, str]:
    return META.encode(meta)


def decode_meta(rows: dict[str, str]) -> Meta:
    return META.decode(rows)
