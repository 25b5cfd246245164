"""Collector state: per-session cursors and counters, the aggregates, and snapshots.

The poller works on a copy (``CollectorState.begin``) and commits it whole at
the end of a cycle, so an abandoned cycle leaves nothing half-counted. After a
commit the state is frozen into an immutable ``Snapshot`` for the scrapes.
A ``StateStore`` persists the committed state; ``MemoryStore`` keeps nothing.
"""

from __future__ import annotations

import heapq
import marshal
import re
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping, Set
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from math import copysign
from typing import Any, NamedTuple, Protocol

from collector.aggregates import MAX_LABEL_LENGTH, Aggregates
from collector.derive import ErrorClassifier, RunRecord, derive, finished_prefix, history_intact
from collector.llamacloud.models import MAX_MEASURE, JobMetadata, Session, known, refused
from collector.storage.rules import (
    COUNT,
    FLAG,
    MEASURE,
    SESSION_ID,
    TEXT,
    TEXTS,
    declaration,
    fixed,
    optional,
    record,
    stored,
)


def parse_timestamp(value: str) -> float | None:
    """Seconds since 1970 of an ISO timestamp; None when it is not one, or before 1970 (Go's zero time):
    the state file holds no time it would refuse to read back (DESIGN §4)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        seconds = parsed.timestamp()
    except (OverflowError, ValueError):
        return None
    return seconds if 0 <= seconds <= MAX_MEASURE else None


MAX_TITLE = 1024
"""A title is cut to this before it is kept (the per-session series show 64 characters of it)."""


def saturating(total: int, more: int) -> int:
    """A stored sum: it stops at 2**53 instead of passing what the state file reads back as a count."""
    return min(MAX_MEASURE, total + more)


@dataclass(frozen=True, slots=True)
class LastRun:
    """What the per-session gauges show of ``job_metadata``, checked; a tenth of a pydantic model's memory."""

    duration_ms: float | None = field(default=None, metadata=stored(optional(MEASURE)))
    total_input_tokens: float | None = field(default=None, metadata=stored(optional(MEASURE)))
    total_output_tokens: float | None = field(default=None, metadata=stored(optional(MEASURE)))
    turns: float | None = field(default=None, metadata=stored(optional(MEASURE)))
    is_error: bool | None = field(default=None, metadata=stored(optional(FLAG)))

    @classmethod
    def of(cls, job: JobMetadata) -> LastRun:
        """The job's measures as the floats they are declared (a whole one within 2**53, as the API's
        are, exactly), an ``INVALID`` one as unknown: as the state file reads them back, and as
        ``pack_row`` folds them into its text of numbers (an ``int`` kept its tuple, 16 bytes more)."""
        measures = (known(job.duration_ms), known(job.total_input_tokens), known(job.total_output_tokens), known(job.turns))
        duration, tokens_in, tokens_out, turns = (None if v is None else float(v) for v in measures)
        return cls(duration, tokens_in, tokens_out, turns, job.is_error)


@dataclass(frozen=True, slots=True)
class SessionState:
    """Where counting stands in one session: a row of the state file. Each field declares how it is stored
    (``collector/storage/rules.py``); the codec, its checks, the retired row and the round-trip test follow."""

    session_id: str = field(metadata=stored(SESSION_ID))
    last_updated_at: str = field(metadata=stored(TEXT))
    updated_ts: float | None = field(default=None, metadata=stored(optional(MEASURE)))
    title: str | None = field(default=None, metadata=stored(optional(TEXT), kept_retired=False))
    shared_access: str | None = field(default=None, metadata=stored(optional(TEXT)))
    index_ids: tuple[str, ...] = field(default=(), metadata=stored(TEXTS))
    job: LastRun | None = field(
        default=None,
        # 0.1.0 stored two more keys of job_metadata that the last-run gauges never read
        metadata=stored(optional(record(LastRun, ignored=("error", "export_config_ids"))), kept_retired=False),
    )
    cursor: int = field(default=0, metadata=stored(COUNT))
    events_seen: int = field(default=0, metadata=stored(COUNT))
    stop_signature: str | None = field(default=None, metadata=stored(optional(TEXT)))
    runs_success: int = field(default=0, metadata=stored(COUNT))
    runs_error: int = field(default=0, metadata=stored(COUNT))
    tokens_input: int = field(default=0, metadata=stored(COUNT))
    tokens_output: int = field(default=0, metadata=stored(COUNT))
    in_progress_start: int | None = field(default=None, metadata=stored(optional(COUNT)))
    in_progress_since: float | None = field(default=None, metadata=stored(optional(MEASURE)))
    high_water: tuple[int, int, str | None] | None = field(
        default=None, metadata=stored(optional(fixed(COUNT, COUNT, optional(TEXT), shape="[cursor, events_seen, signature]")))
    )
    """(cursor, events_seen, stop_signature) from before a reset, in case the longer history returns."""


_NAMES = tuple(f.name for f in fields(SessionState))
_HEAD_NAMES = ("session_id", "last_updated_at", "updated_ts")
assert _NAMES[:3] == _HEAD_NAMES, "a packed row reads these three first: keep them first"
_BODY_NAMES = _NAMES[len(_HEAD_NAMES) :]
_JOB_AT = _BODY_NAMES.index("job")
_SHARED_AT = _BODY_NAMES.index("shared_access")
_SIGNATURE_AT = _BODY_NAMES.index("stop_signature")
_JOB_NAMES = tuple(f.name for f in fields(LastRun))
_INDEXES_AT = _BODY_NAMES.index("index_ids")
_NUMBERS = ("cursor", "events_seen", "runs_success", "runs_error", "tokens_input", "tokens_output")
"""The counts written as one text (``pack_row``, ``_unnumbered``), at the place of the first: one number's marshal takes 5 bytes
and its digits and a space take 2 to 6."""
_NUMBERS_AT = tuple(_BODY_NAMES.index(name) for name in _NUMBERS)
assert list(_NUMBERS_AT) == sorted(_NUMBERS_AT) and _NUMBERS_AT[0] > _JOB_AT, "the text stands at the first count"
_FOLDED = True
"""``job`` in a packed body when its measures follow the counts in their text."""
_JOB_TEXT = {None: "-", True: "T", False: "F"}
_FLAGS = (bool, type(None))
_JOB_VALUE = {text: value for value, text in _JOB_TEXT.items()}
_HEAD = struct.Struct("<dB")
"""A row's head: ``updated_ts`` (NaN: none), and the length of ``last_updated_at`` (its text follows), or one of
the marks below."""
_INLINE = 251
"""A head's length byte below this is the stamp's, its text following; the marks above it say where it is."""
_TS_MARKS = {"+00:00": 251, "Z": 252}
"""Marks that say the stamp is ``updated_ts`` written the API's way (``_ts_stamp``), so nothing of it is kept:
``update_session`` reads one from the other, so for the API's answers the two agree. ``pack_row`` keeps the
text another way when writing it back would not give it exactly."""
_TS_ENDS = {mark: end for end, mark in _TS_MARKS.items()}
_LONG_STAMP = 253
"""A head's mark that says the stamp is the body's last value instead (a text of ``_INLINE`` bytes or more)."""
_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})(\+00:00|Z)")
"""A stamp as the API writes it (UTC, to the microsecond): kept as its digits (``_DIGITS``), 12 bytes where its
text takes 27 or 32; the mark says which end it had (``_ISO_MARKS``)."""
_DIGITS = struct.Struct("<IQ")
"""The date's 8 digits and the time's 12, as two numbers."""
_ISO_MARKS = {"+00:00": 254, "Z": 255}
_ISO_ENDS = {mark: end for end, mark in _ISO_MARKS.items()}
_NAN = float("nan")
_SHARED = ("query", "read_only")
"""``shared_access`` as it is kept (``SHARED_ACCESS``): its place here as a ``bool``, one byte of marshal where
the text took eleven (and a number five)."""
_HEX = re.compile(r"[0-9a-f]{16}")
_EIGHT = struct.Struct("<d")
"""A ``stop_signature``'s 8 bytes as a ``float``: 9 bytes of marshal where ``bytes`` take 13 (a NaN's bytes are
kept as bytes: only a number is sure to come back bit for bit)."""
_EPOCH = datetime(1970, 1, 1)
_YEAR_10000 = (datetime(9999, 12, 31, 23, 59, 59) - _EPOCH).total_seconds()


def pack_row(state: SessionState) -> bytes:
    """A session's state as one ``bytes`` (its ID is the table's key): about 110 bytes where the dataclass, its
    strings, floats and ints take about 800. Every field but the head is one ``marshal``-ed tuple, so a new
    field of ``SessionState`` is packed without a word here (and one marshal cannot hold fails loudly); some
    are packed smaller, each read back as it was: ``shared_access`` as its place in ``_SHARED`` (a bool), a
    ``stop_signature`` of 16 hex digits as its 8 bytes (``_EIGHT``), ``index_ids`` as their number for the
    process (``_INDEX_SETS``), the counts and the last run's measures as one text of numbers (``_NUMBERS``),
    and a ``last_updated_at`` as the API writes it as nothing when ``updated_ts`` writes it back exactly
    (``_TS_MARKS``), else as its digits (``_ISO``)."""
    body = [getattr(state, name) for name in _BODY_NAMES]
    job = body[_JOB_AT]
    indexes = _index_number(body[_INDEXES_AT])
    if indexes is not None:
        body[_INDEXES_AT] = indexes
    if body[_SHARED_AT] in _SHARED:
        body[_SHARED_AT] = _SHARED.index(body[_SHARED_AT]) == 1
    signature = body[_SIGNATURE_AT]
    if signature is not None and _HEX.fullmatch(signature):
        eight = bytes.fromhex(signature)
        (number,) = _EIGHT.unpack(eight)
        body[_SIGNATURE_AT] = number if number == number else eight
    measures = () if job is None else tuple(getattr(job, name) for name in _JOB_NAMES)
    if job is not None:
        body[_JOB_AT] = measures
    counts = [body[at] for at in _NUMBERS_AT]  # last: the places above are the fields' own
    if all(type(n) is int for n in counts):
        words = list(map(str, counts))
        if measures and all(type(v) is float for v in measures[:-1] if v is not None) and type(measures[-1]) in _FLAGS:
            # the last run's measures too (floats, and a flag), each as the text ``float`` reads back
            words += [_JOB_TEXT[v] if v is None or type(v) is bool else _word(v) for v in measures]
            body[_JOB_AT] = _FOLDED
        for at in reversed(_NUMBERS_AT[1:]):
            del body[at]
        body[_NUMBERS_AT[0]] = " ".join(words)
    ts = _NAN if state.updated_ts is None else state.updated_ts
    iso = _ISO.fullmatch(state.last_updated_at)
    if iso is not None and _ts_stamp(ts, iso[8]) == state.last_updated_at:
        return _HEAD.pack(ts, _TS_MARKS[iso[8]]) + marshal.dumps(tuple(body))
    if iso is not None:
        *digits, end = iso.groups()
        when = _DIGITS.pack(int("".join(digits[:3])), int("".join(digits[3:])))
        return _HEAD.pack(ts, _ISO_MARKS[end]) + when + marshal.dumps(tuple(body))
    stamp = state.last_updated_at.encode("utf-8", "surrogatepass")
    if len(stamp) < _INLINE:
        return _HEAD.pack(ts, len(stamp)) + stamp + marshal.dumps(tuple(body))
    return _HEAD.pack(ts, _LONG_STAMP) + marshal.dumps((*body, state.last_updated_at))


def _index_number(index_ids: tuple[str, ...]) -> int | None:
    """``index_ids``' number for the process (``_INDEX_SETS``), given at its first sight; None past the bounds."""
    number = _INDEX_SETS.get(index_ids)
    if number is None and len(_INDEX_SETS) < INDEX_SETS_KEPT:
        with _INDEX_LOCK:  # the parse thread packs too: one number for one tuple, ever
            number = _INDEX_SETS.get(index_ids)
            chars = sum(map(len, index_ids))
            if number is None and _INDEX_CHARS[0] + chars <= INDEX_CHARS_KEPT:
                _INDEX_CHARS[0] += chars
                _INDEX_LIST.append(index_ids)
                number = _INDEX_SETS[index_ids] = len(_INDEX_LIST) - 1
    return number


def _ts_stamp(ts: float, end: str) -> str | None:
    """``updated_ts`` as the API writes a stamp (to the microsecond, UTC, ending in ``end``); None: none such."""
    if not 0 <= ts < _YEAR_10000:  # NaN too
        return None
    return (_EPOCH + timedelta(microseconds=round(ts * 1_000_000))).isoformat(timespec="microseconds") + end


def _word(value: float) -> str:
    """A measure of ``LastRun`` as the text ``float`` reads back exactly: a whole one as its digits (tokens, turns
    and milliseconds are whole), any other as its ``repr`` (-0.0 keeps its sign)."""
    if value.is_integer() and -_SMALL < value < _SMALL and (value or copysign(1.0, value) > 0):
        return str(int(value))
    return repr(value)


def _unnumbered(body: list[Any]) -> None:
    """``pack_row``'s counts (and the last run's measures) read back from their text into their places."""
    words = body[_NUMBERS_AT[0]].split(" ")
    if body[_JOB_AT] is _FOLDED:
        *measures, error = words[len(_NUMBERS) :]
        body[_JOB_AT] = LastRun(*[None if w == "-" else float(w) for w in measures], _JOB_VALUE[error])  # type: ignore[arg-type,call-arg]
    body[_NUMBERS_AT[0]] = int(words[0])
    for at, word in zip(_NUMBERS_AT[1:], words[1 : len(_NUMBERS)], strict=True):
        body.insert(at, int(word))


_SMALL = 2**53
INDEX_SETS_KEPT = 4096
"""The sessions' index-ID tuples kept once for the whole process, each written in a row as its number: a
project's sessions share a few indexes (an index ID is a UUID, 36 bytes). Past this many, or past
``INDEX_CHARS_KEPT`` characters of IDs in all, a row holds its own (an upstream that binds every session to
indexes of its own moves no memory out of the rows for good)."""
INDEX_CHARS_KEPT = 1 << 18
_INDEX_CHARS = [0]
_INDEX_SETS: dict[tuple[str, ...], int] = {}
_INDEX_LIST: list[tuple[str, ...]] = []
_INDEX_LOCK = threading.Lock()


def unpack_row(session_id: str, row: bytes) -> SessionState:
    """``pack_row``'s state back, named ``session_id``."""
    ts, mark = _HEAD.unpack_from(row)
    if mark == _LONG_STAMP:
        *body, stamp = marshal.loads(memoryview(row)[_HEAD.size :])
    else:
        stamp = _row_stamp(row)
        skip = mark if mark < _INLINE else _DIGITS.size if mark in _ISO_ENDS else 0
        body = list(marshal.loads(memoryview(row)[_HEAD.size + skip :]))
    if type(body[_NUMBERS_AT[0]]) is str:
        _unnumbered(body)
    job = body[_JOB_AT]
    if type(job) is tuple:
        body[_JOB_AT] = LastRun(*job)
    if type(body[_INDEXES_AT]) is int:
        body[_INDEXES_AT] = _INDEX_LIST[body[_INDEXES_AT]]
    if type(body[_SHARED_AT]) is bool:
        body[_SHARED_AT] = _SHARED[body[_SHARED_AT]]
    signature = body[_SIGNATURE_AT]
    if type(signature) is float:
        body[_SIGNATURE_AT] = _EIGHT.pack(signature).hex()
    elif type(signature) is bytes:
        body[_SIGNATURE_AT] = signature.hex()
    return SessionState(session_id, stamp, None if ts != ts else ts, *body)


def _row_stamp(row: bytes) -> str:
    length = row[_HEAD.size - 1]
    if length < _INLINE:
        return row[_HEAD.size : _HEAD.size + length].decode("utf-8", "surrogatepass")
    if length in _TS_ENDS:
        return _ts_stamp(_HEAD.unpack_from(row)[0], _TS_ENDS[length])  # type: ignore[return-value]  # packed so
    if length > _LONG_STAMP:
        day, clock = _DIGITS.unpack_from(row, _HEAD.size)
        d, t = f"{day:08d}", f"{clock:012d}"
        return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:6]}.{t[6:]}{_ISO_ENDS[length]}"
    return str(marshal.loads(memoryview(row)[_HEAD.size :])[-1])


Key = int | bytes
"""A session's key in a ``SessionTable`` (``table_key``)."""


def table_key(session_id: str) -> Key:
    """A session's key in a ``SessionTable``: an API's ID (a UUID, lower case, as the API writes it) as its 128-bit
    number, 48 bytes where its text takes 88 and its UTF-8 bytes 80; any other ID as its UTF-8 bytes (a lone
    surrogate passed through, so every ``str`` has its own). A number and bytes are never equal: no two IDs share
    a key, and ``key_id`` gives each back as it was."""
    if len(session_id) == _UUID_TEXT and _UUID.fullmatch(session_id):
        return int(session_id.replace("-", ""), 16)
    return session_id.encode(_UTF8, _SURROGATES)


def table_keys(session_ids: Iterable[str]) -> Iterator[Key]:
    """``table_key`` of each."""
    return map(table_key, session_ids)


def key_id(key: Key) -> str:
    """``table_key`` undone."""
    if type(key) is int:
        h = f"{key:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return key.decode(_UTF8, _SURROGATES)  # type: ignore[union-attr]  # bytes


def key_ids(keys: Iterable[Key]) -> Iterator[str]:
    """``key_id`` of each."""
    return map(key_id, keys)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_TEXT = 36
_UTF8, _SURROGATES = "utf-8", "surrogatepass"
_VERSIONS = count(1)


def row_stamps(rows: Iterable[bytes | None]) -> list[str | None]:
    """The ``last_updated_at`` each row was counted at (None for None), read from its head: a million a cycle."""
    size = _HEAD.size
    out: list[str | None] = []
    for row in rows:
        if row is None:
            out.append(None)
        elif row[size - 1] < _INLINE:
            out.append(row[size : size + row[size - 1]].decode(_UTF8, _SURROGATES))
        else:
            out.append(_row_stamp(row))
    return out


class SessionTable(MutableMapping[str, SessionState]):
    """Sessions by ID, each held packed (``pack_row``) under its ``table_key``: about 250 bytes a session with the
    dict's own share, where dataclasses, their strings, floats and ints took about 800. Reading one builds its
    ``SessionState`` anew; what a cycle asks of every listed session (its ``last_updated_at``) and of every
    watched one (its order for the per-session series) is read from the row's head without building it.

    A ``tracked`` table (the watched sessions) also keeps which sessions changed since ``Shown`` last looked
    (``touched``) and the start of each run in progress (``in_progress``): the snapshot never scans them all."""

    __slots__ = ("_canon", "_rows", "in_progress", "touched", "version")

    def __init__(self, items: Mapping[str, SessionState] | Iterable[tuple[str, SessionState]] = (), *, tracked: bool = False):
        self._rows: dict[Key, bytes] = {}
        self.version = next(_VERSIONS)
        """A number no other table, and no earlier state of this one, had: it moves on at every row set or
        removed, so what was read of a table at one version holds while it stays the same."""
        self.touched: set[Key] | None = set() if tracked else None
        self.in_progress: dict[Key, float] = {}
        self._canon: dict[Key, Key] | None = None
        """While a listing pass runs (``canonical``): each key to the one object of it the pass and the table
        use."""
        self.update(items)

    def __getitem__(self, session_id: str) -> SessionState:
        return unpack_row(session_id, self._rows[table_key(session_id)])

    def get(self, session_id: str, default: SessionState | None = None) -> SessionState | None:  # type: ignore[override]
        row = self._rows.get(table_key(session_id))
        return default if row is None else unpack_row(session_id, row)

    def __setitem__(self, session_id: str, state: SessionState) -> None:
        if state.session_id != session_id:
            raise ValueError(f"session {session_id[:80]!r} set to the state of {state.session_id[:80]!r}")
        self._set(session_id, pack_row(state), state.in_progress_since)

    def __delitem__(self, session_id: str) -> None:
        if self.pop_row(session_id) is None:
            raise KeyError(session_id)

    def __contains__(self, session_id: object) -> bool:
        return isinstance(session_id, str) and table_key(session_id) in self._rows

    def __iter__(self) -> Iterator[str]:
        return map(key_id, self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"SessionTable({dict(self.items())!r})"

    def copy(self) -> SessionTable:
        """An untracked copy (the rows are immutable: shared, not copied)."""
        table = SessionTable()
        table._rows = self._rows.copy()
        return table

    def clear(self) -> None:
        for session_id in list(self):
            self.pop_row(session_id)

    def rows(self) -> Iterator[tuple[str, bytes]]:
        """Every session's ID and packed row, in the table's order."""
        for key, row in self._rows.items():
            yield key_id(key), row

    def row(self, session_id: str) -> bytes | None:
        """A session's packed row, as the journal keeps it."""
        return self._rows.get(table_key(session_id))

    def set_row(self, session_id: str, row: bytes) -> None:
        """Set ``session_id`` (last, as a dict puts a new key) to a packed row."""
        self._set(session_id, row, None if self.touched is None else unpack_row(session_id, row).in_progress_since)

    def key(self, session_id: str) -> Key:
        """``session_id``'s ``table_key``: while a pass runs (``canonical``), the pass's one object of it, which
        the table keeps. What a cycle notes of the sessions it changed (``touched``, ``in_progress``, the
        journal, ``CollectorState.changed``) is these keys: the ID's own ``str`` from the answer, 88 bytes, was
        held by each until the cycle ended and left as much free behind it (issue 32)."""
        key = table_key(session_id)
        return key if self._canon is None else self._canon.setdefault(key, key)

    def _set(self, session_id: str, row: bytes, since: float | None) -> Key:
        key = self.key(session_id)
        self._rows[key] = row
        self.version = next(_VERSIONS)
        if self.touched is not None:
            self.touched.add(key)
            if since is None:
                self.in_progress.pop(key, None)
            else:
                self.in_progress[key] = since
        return key

    def pop_row(self, session_id: str) -> bytes | None:
        key = self.key(session_id)
        row = self._rows.pop(key, None)
        if row is not None:
            self.version = next(_VERSIONS)
        if row is not None and self.touched is not None:
            self.touched.add(key)
            self.in_progress.pop(key, None)
        return row

    def canonical(self, session_ids: Iterable[str]) -> tuple[Key, ...]:
        """The ``table_key`` of each, as one object per key for the whole pass: the table's own for a session it
        holds, and for one it does not, the first made (which the table keeps if the session is set). A pass
        holds every key it listed (``ListingLoop.seen``) and its ``PageMemo`` pins them: made anew at each page,
        they were 80 bytes a session more, or as much again left free behind each pass (issue 32).

        The map behind it is built at the pass's first call, from the table's keys, in C, and dropped by
        ``end_pass``."""
        keys = list(table_keys(session_ids))
        canon = self._canon
        if canon is None:
            canon = self._canon = dict(zip(self._rows, self._rows, strict=True))
        return tuple(map(canon.setdefault, keys, keys))

    def end_pass(self) -> None:
        """A listing pass ended (or begins): ``canonical``'s map is dropped (a pass's worth of pointers)."""
        self._canon = None

    def stamp(self, session_id: str) -> str | None:
        """The ``last_updated_at`` a session was counted at (None: not in the table), its row left packed."""
        row = self._rows.get(table_key(session_id))
        return None if row is None else _row_stamp(row)

    def stamps(self, session_ids: Iterable[str]) -> list[str | None]:
        """``stamp`` of each of ``session_ids``, in one call."""
        return row_stamps(self.rows_at(table_keys(session_ids)))

    def rows_at(self, keys: Iterable[Key]) -> list[bytes | None]:
        """The packed rows of these keys (``table_key``; None: not in the table), a listing page's at once."""
        return list(map(self._rows.get, keys))

    @property
    def row_at(self) -> Callable[[Key], bytes | None]:
        """A row by its key (``table_key``; None: not in the table), as a function that ``map`` calls in C."""
        return self._rows.get

    def not_in(self, keys: Set[Hashable]) -> list[str]:
        """The sessions of the table whose keys (``table_key``) are not among ``keys``, in the table's order: a
        complete pass of a million sessions that misses none is found so in C, with no Python loop."""
        if self._rows.keys() <= keys:  # the usual answer, found in C without a set or a list built
            return []
        return [key_id(key) for key in self._rows if key not in keys]

    def order_key(self, session_id: str) -> tuple[float, str] | None:
        """Where a session stands in the per-session series' order (``shown_key``); None: not in the table."""
        row = self._rows.get(table_key(session_id))
        if row is None:
            return None
        ts = _HEAD.unpack_from(row)[0]
        return (ts if ts == ts and ts else 0.0, session_id)

    def order_keys(self) -> Iterator[tuple[float, str]]:
        """``order_key`` of every session: a scan of the heads, no state built."""
        head = _HEAD.unpack_from
        for key, row in self._rows.items():
            ts = head(row)[0]
            yield (ts if ts == ts and ts else 0.0, key_id(key))

    def take_touched(self) -> set[Key]:
        """The keys of the sessions set or removed since the last call (a tracked table's), forgotten here."""
        touched = self.touched or set()
        if self.touched is not None:
            self.touched = set()
        return touched


def shown_key(state: SessionState) -> tuple[float, str]:
    """The per-session series' order: the most recently updated first (ties by ID)."""
    return (state.updated_ts or 0.0, state.session_id)


class Shown:
    """The sessions with per-session series (the ``limit`` most recently updated), kept from snapshot to
    snapshot: each snapshot reads only the sessions changed since the last one (``SessionTable.touched``).
    Every watched session that is neither shown nor changed is ordered after the shown ones, so the new
    shown ones are among the old and the changed. Only when a shown one left or moved back in the order
    (a clock put back) can another take its place unseen: then every head is read again, once."""

    def __init__(self) -> None:
        self.table: SessionTable | None = None
        self.limit = -1
        self.top: dict[str, SessionState] = {}
        self.scans = 0
        """Full reads of the heads (a test's and a benchmark's measure)."""

    def update(self, table: SessionTable, limit: int) -> tuple[SessionState, ...]:
        touched = table.take_touched()
        keys: list[tuple[float, str]] | None = None
        if table is self.table and limit == self.limit:
            kept = dict(self.top)
            moved: list[tuple[float, str]] = []
            for session_id in key_ids(touched):
                before = kept.pop(session_id, None)
                key = table.order_key(session_id)
                if before is not None and (key is None or key < shown_key(before)):
                    break  # a shown one left or moved back: another may take its place unseen
                if key is not None:
                    moved.append(key)
            else:
                keys = [shown_key(s) for s in kept.values()] + moved
        if keys is None:  # streamed: a full read holds ``limit`` keys at a time, never every session's
            self.scans += 1
            self.table, self.limit, kept = table, limit, {}
        best = heapq.nlargest(limit, table.order_keys() if keys is None else keys)
        self.top = {sid: kept.get(sid) or table[sid] for _, sid in best}
        return tuple(self.top.values())


class Update(NamedTuple):
    """What counting one read of a session gave: its new state, and the runs it counted (for the run log)."""

    state: SessionState
    runs: tuple[RunRecord, ...]
    left_out: int = 0
    """Runs counted but not in ``runs`` (streamed: only those the run log wants are kept, a few)."""


STREAM_CHUNK = 4096
"""Runs derived before they are counted, when a history is streamed into its own ``Aggregates``."""


class _Tally:
    """The runs of one streamed history: counted into ``aggregates`` a chunk at a time, summed for the
    session's state, and kept only while ``keep`` wants them, ``limit`` at most."""

    def __init__(
        self,
        aggregates: Aggregates,
        session_id: str,
        now: float,
        index_ids: tuple[str, ...],
        keep: Callable[[RunRecord], bool],
        limit: int,
    ) -> None:
        self.aggregates, self.session_id, self.now, self.index_ids = aggregates, session_id, now, index_ids
        self.keep, self.limit = keep, limit
        self.chunk: list[RunRecord] = []
        self.kept: list[RunRecord] = []
        self.left_out = 0
        self.sums = RunSums()

    def __call__(self, run: RunRecord) -> None:
        self.sums.add(run)
        if self.keep(run):
            if len(self.kept) < self.limit:
                self.kept.append(run)
            else:
                self.left_out += 1
        self.chunk.append(run)
        if len(self.chunk) >= STREAM_CHUNK:
            self.flush()

    def flush(self) -> None:
        self.aggregates.add_runs(self.chunk, self.session_id, self.now, self.index_ids)
        self.chunk = []


@dataclass
class RunSums:
    """What a session's state keeps of its runs."""

    success: int = 0
    error: int = 0
    tokens_input: int = 0
    tokens_output: int = 0

    def add(self, run: RunRecord) -> None:
        if run.failed:
            self.error += 1
        else:
            self.success += 1
        self.tokens_input = saturating(self.tokens_input, run.input_tokens or 0)
        self.tokens_output = saturating(self.tokens_output, run.output_tokens or 0)

    @classmethod
    def of(cls, runs: Iterable[RunRecord]) -> RunSums:
        sums = cls()
        for run in runs:
            sums.add(run)
        return sums


def update_session(
    prev: SessionState | None,
    session: Session,
    aggregates: Aggregates,
    classifier: ErrorClassifier,
    now: float,
    listed_at: str | None = None,
    replay_into: Aggregates | None = None,
    *,
    stream: tuple[Callable[[RunRecord], bool], int] | None = None,
) -> Update:
    """Count what is new in ``session`` into ``aggregates``; return the session's new state and its runs.

    A history that shrank, or whose last counted ``stop`` changed, is a reset:
    it is counted in ``history_resets`` and what it shows now is taken as
    already counted, so no counter goes backwards and nothing is counted twice.
    The old position is kept as a high-water mark: if the longer history comes
    back (a transient short read), counting resumes from where it was.
    ``listed_at`` is the ``last_updated_at`` the listing showed: the key change
    detection compares next cycle, whatever format or later value retrieve gave.
    With ``replay_into`` (the old bounds' observations, after new buckets), the runs
    counted before are observed again into the histograms' new buckets, never into
    a counter, each taking its place from that floor.

    With ``stream`` (``keep``, ``limit``), ``aggregates`` must be the session's own
    (``Aggregates.seeded``, merged by the caller): runs are counted into it as they are
    derived, never all held at once, and ``runs`` holds at most ``limit`` of those ``keep``
    wants. No replay then.
    """
    events = session.events
    base = prev or SessionState(session.session_id, session.last_updated_at)
    cursor, seen, high_water = base.cursor, base.events_seen, base.high_water
    reset = False
    if high_water is not None and history_intact(events, *high_water):
        cursor, seen, high_water = high_water[0], high_water[1], None
    elif prev is not None and not history_intact(events, cursor, seen, prev.stop_signature):
        reset = True
        if high_water is None or cursor >= high_water[0]:  # keep the furthest position counted so far
            high_water = (cursor, seen, prev.stop_signature)
        cursor = finished_prefix(events)
        seen = len(events)
    # While a mark is held and the history is shorter than it, the read may be a partial view of the
    # history counted before: nothing past the reset position is counted yet. Once the history is as long
    # as the mark and still not the one counted, it diverged for good: counting goes on from the reset.
    waiting = high_water is not None and len(events) < high_water[1]
    if high_water is not None and not waiting:
        high_water = None
    tally = None if stream is None else _Tally(aggregates, base.session_id, now, session.index_ids, *stream)
    assert tally is None or replay_into is None, "a replay reads the shared floor: never streamed"
    result = derive(events[:seen] if waiting else events, cursor, seen, classifier, sink=tally)
    replayed = (
        derive(events[: base.cursor], 0, 0, classifier).runs
        if replay_into is not None and prev is not None and not reset and cursor == base.cursor
        else ()
    )
    updated_ts = parse_timestamp(session.last_updated_at)
    job = session.job_metadata
    last_run = LastRun.of(job) if job is not None else None
    # Everything above only reads; the counting below cannot fail half way.
    aggregates.history_resets += reset
    if replay_into is not None:
        aggregates.replay(replayed, replay_into)
    if updated_ts is None:
        aggregates.invalid_values["last_updated_at"] += 1
    if job is not None:
        aggregates.invalid_values.update(f"job_metadata.{name}" for name in refused(job))
    if tally is None:
        aggregates.add_runs(result.runs, base.session_id, now, session.index_ids)
        sums = RunSums.of(result.runs)
    else:
        tally.flush()
        sums = tally.sums
    aggregates.add_events(result.event_counts)
    since = None
    if result.in_progress_start is not None:
        same_run = base.in_progress_start == result.in_progress_start
        since = base.in_progress_since if same_run and base.in_progress_since else now
    state = replace(
        base,
        last_updated_at=listed_at or session.last_updated_at,
        updated_ts=updated_ts,
        title=None if session.generated_title is None else session.generated_title[:MAX_TITLE],
        shared_access=session.shared_access if session.shared_access in SHARED_ACCESS else None,
        index_ids=bounded_index_ids(session.index_ids),
        job=last_run,
        cursor=result.cursor,
        events_seen=result.events_seen,
        stop_signature=result.stop_signature,
        runs_success=base.runs_success + sums.success,
        runs_error=base.runs_error + sums.error,
        tokens_input=saturating(base.tokens_input, sums.tokens_input),
        tokens_output=saturating(base.tokens_output, sums.tokens_output),
        in_progress_start=result.in_progress_start,
        in_progress_since=since,
        high_water=high_water,
    )
    if tally is None:
        return Update(state, tuple(result.runs))
    return Update(state, tuple(tally.kept), tally.left_out)


MAX_INDEX_IDS = 32
"""Index IDs kept per session (for ``session_info``): a real session is bound to a few."""
SHARED_ACCESS = frozenset({"query", "read_only"})


def bounded_index_ids(index_ids: tuple[str, ...]) -> tuple[str, ...]:
    """The session's index IDs that can be label values, sorted, at most ``MAX_INDEX_IDS``."""
    return tuple(sorted({i for i in index_ids if 0 < len(i) <= MAX_LABEL_LENGTH}))[:MAX_INDEX_IDS]


Archive = Callable[[str], "SessionState | None"]
"""Where retired sessions live once saved (the state file): looked up when one comes back, never all read."""


def _retired_drops() -> dict[str, Any]:
    drops: dict[str, Any] = {}
    for f in fields(SessionState):
        if not declaration(SessionState, f.name).kept_retired:
            if f.default is MISSING:
                raise TypeError(f"SessionState.{f.name}: a field a retired row drops needs a default")
            drops[f.name] = f.default
    return drops


RETIRED_DROPS = _retired_drops()
"""What a retired session's row no longer holds (declared per field, ``kept_retired=False``): its defaults."""

JOURNAL = "collector.journal"
"""The metadata key of how ``begin``/``rollback`` journal a ``CollectorState`` field. A field that declares
nothing is copied: at ``begin`` the committed value is put aside and the cycle works on a copy (its ``copy()``;
a value without one is immutable), which ``rollback`` puts back. So a new field is journaled unless it is
declared otherwise, and ``tests/test_storage_codec.py`` changes each one in a cycle and rolls it back."""
KEYED = {JOURNAL: "keyed"}
"""A table the cycle changes key by key (``_set_in``): each key's committed value is noted on its first change."""
PER_CYCLE = {JOURNAL: "per_cycle"}
"""What one cycle did (for the next save): empty at ``begin``, emptied by ``rollback``."""
TRANSIENT = {JOURNAL: "transient"}
"""Not journaled: never changed by a cycle (the reason is written beside each)."""
JOURNAL_MODES = ("copied", "keyed", "per_cycle", "transient")


def journal_mode(f: Field[Any]) -> str:
    mode = f.metadata.get(JOURNAL, "copied")
    if mode not in JOURNAL_MODES:
        raise TypeError(f"CollectorState.{f.name}: journal mode {mode!r} is not one of {JOURNAL_MODES}")
    return str(mode)


def _copied(value: Any) -> Any:
    copy = getattr(value, "copy", None)
    return value if copy is None else copy()


@dataclass
class CollectorState:
    aggregates: Aggregates
    sessions: SessionTable = field(default_factory=lambda: SessionTable(tracked=True), metadata=KEYED)
    """The watched sessions, packed (``SessionTable``), tracked for the snapshot's ``Shown``."""
    synced: bool = False
    floor: Aggregates | None = None
    """Stored aggregates to raise to once a re-derivation (a new derivation version, a salvaged file) has
    synced."""
    retired: SessionTable = field(default_factory=SessionTable, metadata=KEYED)
    """Sessions no longer listed, in a compact form (``RETIRED_DROPS``): one that comes back resumes from its
    cursor instead of being counted again, however many left meanwhile (DESIGN §4). With a state file these
    are only the ones not saved yet: the store keeps the rest on disk (``archive``)."""
    archive: Archive | None = field(default=None, compare=False, metadata=TRANSIENT)
    """Set by the store at a load and after a save, never by a cycle."""
    prior: SessionTable = field(default_factory=SessionTable)
    """While a re-derivation runs (``floor`` set): where counting stood in each stored session when the
    floor was saved. At the sync, a session not re-derived yet (failing, or not listed) retires with that
    cursor, so when it is read again only its runs after the floor are counted, never its old ones twice."""
    histogram_floor: Aggregates | None = None
    """After new bucket bounds: the observations made under the old bounds that no session has replayed
    into the new buckets yet. Exposed in ``_count``, ``_sum`` and ``+Inf`` (so they never go backwards),
    and folded there for good at the end of the next complete pass (DESIGN §4)."""
    replay: set[str] = field(default_factory=set)
    """Sessions whose counted runs are still to be replayed into the new buckets (fetched once more)."""
    changed: set[Key] = field(default_factory=set, metadata=PER_CYCLE)
    """The keys (``SessionTable.key``) of the watched sessions this cycle set, for the next save."""
    removed: set[Key] = field(default_factory=set, metadata=PER_CYCLE)
    """The keys of the watched sessions this cycle retired."""
    prior_changed: bool = False
    _undo: dict[str, dict[Key, bytes | None]] | None = field(
        default=None, init=False, repr=False, compare=False, metadata=TRANSIENT
    )
    """The journal itself, while a cycle runs: for each keyed table, each touched key's committed row
    (None: it was absent)."""
    _saved: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False, metadata=TRANSIENT)
    """The journal itself: the committed value of each copied field."""

    def __post_init__(self) -> None:
        """Tables given as plain mappings (a test's, a loader's) are packed; the watched one is tracked."""
        if not isinstance(self.sessions, SessionTable) or self.sessions.touched is None:
            self.sessions = SessionTable(self.sessions, tracked=True)
        for name in ("retired", "prior"):
            if not isinstance(getattr(self, name), SessionTable):
                setattr(self, name, SessionTable(getattr(self, name)))

    def begin(self) -> CollectorState:
        """Start a cycle on this state itself. Nothing is copied but the copied fields (the aggregates, small):
        each session a cycle touches is journaled on the way, so ``rollback`` restores the committed state
        exactly, every field not declared transient."""
        self._undo = {name: {} for name in _KEYED}
        self._saved = {}
        for name in _COPIED:
            value = getattr(self, name)
            self._saved[name] = value
            setattr(self, name, _copied(value))
        for name, fresh in _PER_CYCLE:
            setattr(self, name, fresh())
        return self

    def commit(self) -> None:
        self._undo, self._saved = None, None

    def rollback(self) -> None:
        """Undo everything since ``begin``: an abandoned cycle leaves nothing half-counted."""
        for name, undo in (self._undo or {}).items():
            table = getattr(self, name)
            for sid, before in zip(key_ids(undo), undo.values(), strict=True):
                table.pop_row(sid)
                if before is not None:
                    table.set_row(sid, before)
        for name, value in (self._saved or {}).items():
            setattr(self, name, value)
        for name, fresh in _PER_CYCLE:
            setattr(self, name, fresh())
        self.commit()

    def _set_in(self, name: str, sid: str, state: SessionState | None) -> Key:
        """Set ``sid`` in the keyed table ``name`` (None: remove it), journaled while a cycle runs; its key."""
        return _journaled(getattr(self, name), None if self._undo is None else self._undo[name], sid, state)

    def _set(self, sid: str, state: SessionState | None) -> Key:
        return self._set_in("sessions", sid, state)

    def _set_retired(self, sid: str, state: SessionState | None) -> None:
        """Retire (or, with None, un-retire) a session: the most recently retired come last."""
        self._set_in("retired", sid, None if state is None else replace(state, **RETIRED_DROPS))

    def known(self, session_id: str) -> SessionState | None:
        """Where counting stands for a session: watched, retired, or retired and saved (never forgotten)."""
        found = self.sessions.get(session_id) or self.retired.get(session_id)
        if found is None and self.archive is not None:
            found = self.archive(session_id)
        return found

    def put(self, session: SessionState) -> None:
        key = self._set(session.session_id, session)
        self.changed.add(key)
        self.removed.discard(key)
        if session.session_id in self.retired:
            self._set_retired(session.session_id, None)

    def drop(self, session_id: str) -> bool:
        return self.drop_many([session_id]) == 1

    def drop_many(self, session_ids: list[str]) -> int:
        """Retire the watched sessions among ``session_ids``: their series go, their cursors stay."""
        dropped = 0
        for sid in session_ids:
            state = self.sessions.get(sid)
            if state is None:
                continue
            key = self._set(sid, None)
            self.changed.discard(key)
            self.removed.add(key)
            self._set_retired(sid, state)
            dropped += 1
        return dropped

    def replayed(self, session_id: str) -> None:
        self.replay.discard(session_id)

    def end_replay(self) -> None:
        """A complete pass after new bucket bounds: what no session replayed stays in ``_count``, ``_sum``
        and ``+Inf`` for good."""
        if self.histogram_floor is not None:
            self.aggregates.fold(self.histogram_floor)
            self.histogram_floor = None
        self.replay = set()

    def exposed(self) -> Aggregates:
        """The aggregates as scrapes see them: with the old bounds' observations not replayed yet."""
        if self.histogram_floor is None:
            return self.aggregates
        folded = self.aggregates.copy()
        folded.fold(self.histogram_floor)
        return folded

    def mark_synced(self) -> None:
        if not self.synced and self.floor is not None:
            self.aggregates.raise_to(self.floor)
            self.floor = None
            for sid, state in self.prior.items():
                current = self.sessions.get(sid)
                if current is None:
                    self._set_retired(sid, state)
                    continue
                counted = state.high_water or (state.cursor, state.events_seen, state.stop_signature)
                if current.cursor < counted[0] and current.high_water is None:
                    # re-derived from a shorter read than was counted: the floor holds the rest
                    self.changed.add(self._set(sid, replace(current, high_water=counted)))
            self.prior = SessionTable()
            self.prior_changed = True
        self.synced = True


_KEYED = tuple(f.name for f in fields(CollectorState) if journal_mode(f) == "keyed")
_COPIED = tuple(f.name for f in fields(CollectorState) if journal_mode(f) == "copied")


def _fresh(f: Field[Any]) -> Callable[[], Any]:
    if f.default_factory is MISSING:
        raise TypeError(f"CollectorState.{f.name}: a per-cycle field starts from its default_factory")
    return f.default_factory


_PER_CYCLE = tuple((f.name, _fresh(f)) for f in fields(CollectorState) if journal_mode(f) == "per_cycle")


def _journaled(table: SessionTable, undo: dict[Key, bytes | None] | None, sid: str, state: SessionState | None) -> Key:
    """Set ``sid`` in ``table`` (None: remove it, else put it last), first noting in ``undo`` (when a cycle
    journals) the row it held under its key, so that a rollback restores it; the key."""
    key = table.key(sid)
    if undo is not None and key not in undo:
        undo[key] = table.row_at(key)
    table.pop_row(sid)
    if state is not None:
        table[sid] = state
    return key


@dataclass(frozen=True)
class PollStatus:
    up: bool = False
    result: str | None = None
    finished_at: float | None = None
    duration: float | None = None
    last_success: float | None = None
    message: str = ""
    sessions_failing: int = 0
    listing_pass_duration: float | None = None
    """Wall time of the last complete listing pass, which may span cycles."""


@dataclass(frozen=True)
class Snapshot:
    ready: bool
    aggregates: Aggregates
    sessions: tuple[SessionState, ...]
    """The sessions with per-session series: most recently updated first, up to the limit."""
    sessions_watched: int
    sessions_over_limit: int
    runs_in_progress: int
    oldest_in_progress_since: float | None
    poll: PollStatus


def take_snapshot(state: CollectorState, poll: PollStatus, series_limit: int, shown: Shown | None = None) -> Snapshot:
    """The committed state as scrapes see it. With ``shown`` (the poller's, kept from cycle to cycle) only the
    sessions changed since its last snapshot are read; without, every head is (and nothing is taken from the
    table's ``touched``, which belongs to the one ``Shown`` that reads it)."""
    table = state.sessions
    if shown is not None:
        sessions = shown.update(table, series_limit)
    else:
        sessions = tuple(table[sid] for _, sid in heapq.nlargest(series_limit, table.order_keys()))
    since = table.in_progress.values()
    return Snapshot(
        ready=state.synced,
        aggregates=state.exposed(),  # committed state is never mutated; each cycle works on a copy
        sessions=sessions,
        sessions_watched=len(table),
        sessions_over_limit=max(0, len(table) - series_limit),
        runs_in_progress=len(since),
        oldest_in_progress_since=min(since) if since else None,
        poll=poll,
    )


class StateStore(Protocol):
    """Where committed state lives between restarts."""

    project_id: str
    """The project whose state it keeps (``""``: not named yet); a file names it from its next save."""
    counting_since: float
    """When the counts it keeps began (Unix seconds): an OTLP series' start time, the same across restarts."""

    def load(self) -> CollectorState | None: ...

    def save(self, state: CollectorState) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """No persistence: a restart re-derives every counter from the full histories."""

    project_id = ""

    def __init__(self) -> None:
        self.counting_since = time.time()  # memory only: the counts begin with the process

    def load(self) -> CollectorState | None:
        return None

    def save(self, state: CollectorState) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class ProjectSnapshot:
    """One watched project's latest snapshot, with what names it."""

    project_id: str
    """``""`` while the key's default project is not named yet by the projects listing: its series then carry
    no ``project_id`` (an empty label is none to Prometheus), and it has counted nothing yet."""
    name: str
    snapshot: Snapshot


@dataclass(frozen=True)
class FleetSnapshot:
    """Every watched project's snapshot, as one scrape, the readiness probe and the status page read them."""

    projects: tuple[ProjectSnapshot, ...]
    ready: bool
    """Each project's first sync is done or it failed on its own, and one of them is synced (``projects.Fleet``)."""


def one_project(snapshot: Snapshot, project_id: str = "") -> FleetSnapshot:
    """``snapshot`` as the only project's: a poller on its own (tests, benchmarks)."""
    return FleetSnapshot((ProjectSnapshot(project_id, project_id, snapshot),), snapshot.ready)
