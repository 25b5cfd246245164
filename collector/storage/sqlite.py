"""SQLite state store (``--state-path``): exact counters across restarts.

One file, WAL, written in one transaction at the end of each cycle: the
changed and removed sessions, the aggregates and the meta rows. It carries a
schema version and a derivation version:

- a file of a newer version is refused; an older layout is read and written anew;
- a corrupt or unreadable file is moved aside as ``*.corrupt-<timestamp>``;
- another derivation version re-derives every session, then raises the counters
  to the stored ones, so none goes backwards;
- each histogram family keeps its own bounds in the file, its fingerprint: a family
  whose bucket setting changed is re-bucketed alone (its runs replayed, ``_count``,
  ``_sum`` and ``+Inf`` kept), and a family added since the file was written starts
  empty, re-deriving none of the others. New error rules and label limits apply from
  then on. The ``fingerprint`` row (buckets, rules, label limit) only records them;
- a failed write raises ``StateError``; the next save rewrites everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import structlog

from collector.aggregates import Aggregates, Buckets, StoredValueError, UnknownField
from collector.derive import DERIVATION_VERSION
from collector.errors import ConfigError, StateError
from collector.paths import state_path_problem
from collector.state import CollectorState, SessionState, SessionTable, key_ids
from collector.storage.records import META, Meta, decode_meta, decode_session, encode_meta, encode_session

SCHEMA_VERSION = 2
"""1: positional session rows (0.1.0 on); 2: named rows and the ``prior`` table. Every version up to this
one is read; a file of a later one is refused and left in place."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retired (position INTEGER PRIMARY KEY, session_id TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prior (session_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS retired_session ON retired (session_id);
CREATE TABLE IF NOT EXISTS replay (session_id TEXT PRIMARY KEY);
"""
RETIRED_ROW = "SELECT state FROM retired WHERE session_id = ? ORDER BY position DESC LIMIT 1"
DAMAGED_RETIRED = """SELECT 1 FROM retired WHERE NOT json_valid(state) OR session_id IS NOT (CASE json_type(state)
    WHEN 'object' THEN json_extract(state, '$.session_id') WHEN 'array' THEN json_extract(state, '$[0]') END) LIMIT 1"""
"""Retired rows are read when their session comes back, not at load (a million rows would take a minute):
the load only has SQLite check that each is a JSON row of the session its key names."""


def fingerprint(buckets: Buckets, rules: list[tuple[str, str]], label_limit: int) -> str:
    """What the configuration makes of a run: buckets, rules, label limit (unchanged since 0.1.0)."""
    text = json.dumps([dict(buckets), rules, label_limit], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


UNOPENED = ("unable to open", "database is locked", "readonly", "disk I/O error")
"""SQLite's words for a file it could not use now, which says nothing of what the file holds."""


class NewerStateFile(ConfigError):
    """The file was written by a newer release: it is refused (exit 2) and left where it is."""


class ForeignStateFile(ConfigError):
    """The file keeps another project's state: it is refused and left where it is."""


class SqliteStore:
    def __init__(
        self,
        path: Path,
        buckets: Buckets,
        rules: list[tuple[str, str]],
        label_limit: int,
        clock: Callable[[], float] = time.time,
        project_id: str = "",
    ) -> None:
        problem = state_path_problem(path)
        if problem:
            raise ConfigError(f"state_path (--state-path, COLLECTOR_STATE_PATH): {problem}")
        self.path, self.buckets, self.label_limit, self.clock = path, buckets, label_limit, clock
        self.fingerprint = fingerprint(buckets, rules, label_limit)
        self.log = structlog.get_logger("collector.state")
        self.db: sqlite3.Connection | None = None
        self.full_rewrite = True
        self.meta: Meta | None = None
        """The meta values last read (``load``) or written (``save``)."""
        self.project_id = project_id
        """The project whose state the file keeps: given (a project's own file), or named by the file."""
        self.counting_since = clock()
        """When the file's counts began: read from it, else now (a new file, or one moved aside)."""

    def refuse_newer(self) -> None:
        """Before anything writes to it: a file of a newer release raises ``NewerStateFile``, untouched."""
        if not self.path.is_file():
            return
        try:
            with closing(sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True)) as db:
                exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"  # pragma: no mutate
                if not db.execute(exists).fetchone():
                    return
                rows = dict(
                    db.execute(
                        "SELECT key, value FROM meta WHERE key IN "  # pragma: no mutate
                        "('schema_version', 'derivation_version')"
                    ).fetchall()
                )
        except sqlite3.Error:
            return  # unreadable: load() moves it aside
        if "schema_version" not in rows:
            return  # not a state file yet, or a damaged one: load() tells
        try:
            self._refuse_versions(*versions(rows))
        except ValueError:
            return  # damaged: load() moves it aside

    def _refuse_versions(self, schema: int, derivation: int) -> None:
        if schema > SCHEMA_VERSION or derivation > DERIVATION_VERSION:
            raise NewerStateFile(
                f"state_path (--state-path, COLLECTOR_STATE_PATH): {self.path} was written by a newer release "
                f"(schema {schema}, derivation {derivation}; this release reads up to schema {SCHEMA_VERSION}, "
                f"derivation {DERIVATION_VERSION}); it is left in place"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # pragma: no mutate
        db.execute("PRAGMA synchronous=FULL")  # pragma: no mutate
        db.executescript(SCHEMA)
        return db

    def _move_aside(self, reason: str) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.is_file() and not source.is_symlink():  # only regular files are ever moved
                os.replace(source, Path(str(aside) + suffix))
        self.log.error(
            "state file unreadable; moved aside, resyncing from the API", path=str(self.path), moved_to=str(aside), reason=reason
        )

    def load(self) -> CollectorState | None:
        """The stored state; None for a new file. A corrupt file is moved aside, and whatever totals it
        still holds become the floor of the resync; a newer release's file raises ``NewerStateFile``, and one
        that cannot be opened now (``UNOPENED``: file handles, locks, permissions) raises ``StateError`` and is
        left as it is: it is not damaged. Nothing reads the file before (the collector loads it in a thread: a
        locked file waits SQLite's busy timeout there, never on the event loop)."""
        self.refuse_newer()  # before anything writes to it
        try:
            return self._load()
        except (UnknownField, NewerStateFile, ForeignStateFile) as exc:
            if self.db is not None:
                self.db.close()
                self.db = None
            if isinstance(exc, (NewerStateFile, ForeignStateFile)):
                raise
            raise NewerStateFile(
                f"state_path (--state-path, COLLECTOR_STATE_PATH): {self.path} holds a "
                f"{exc} that this release does not know: a newer release wrote it; it is left "
                "in place (restore a backup, or start without it)"
            ) from None
        except sqlite3.OperationalError as exc:
            if not any(words in str(exc) for words in UNOPENED):
                return self._damaged(exc)
            if self.db is not None:
                self.db.close()
                self.db = None
            raise StateError(f"cannot open state file {self.path}: {exc}; left as it is") from None
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError, RecursionError) as exc:
            return self._damaged(exc)

    def _damaged(self, exc: Exception) -> CollectorState | None:
        """A file that failed to load: moved aside, what totals it still holds the floor of the resync."""
        floor = self._salvage()
        try:
            self._move_aside(f"{type(exc).__name__}: {str(exc)[:200]}")
        except OSError as move_error:  # left in place: saves retry on it; the floor still holds
            self.log.error(
                "state file unreadable and cannot be moved; resyncing from the API in its place",
                path=str(self.path),
                reason=str(move_error),
            )
            self.db = None
        else:
            self.db = self._connect()
        self.full_rewrite = True
        if floor is None:
            return None
        self.log.warning("totals read from the corrupt file kept as the floor of the resync", runs=sum(floor.runs.values()))
        return CollectorState(Aggregates(self.buckets, self.label_limit), floor=floor)

    def _salvage(self) -> Aggregates | None:
        """The aggregates of a file that failed to load, if they at least are sound."""
        try:
            query = "SELECT value FROM meta WHERE key = 'aggregates'"  # pragma: no mutate
            row = self.db.execute(query).fetchone() if self.db else None
            return self._aggregates(META.value({"aggregates": row[0]}, "aggregates")) if row else None
        except (sqlite3.Error, ValueError, KeyError, TypeError, RecursionError):
            return None

    def _aggregates(self, data: object) -> Aggregates:
        """Stored aggregates, read with the bounds they were written with."""
        return Aggregates.from_dict(data, self.buckets, self.label_limit, same_bounds=False)

    def _load(self) -> CollectorState | None:
        db = self.db = self._connect()
        rows = dict(db.execute("SELECT key, value FROM meta").fetchall())  # pragma: no mutate
        if not rows:
            return None
        schema, derivation = versions(rows)  # first: a newer release's file is refused, whatever else it holds
        self._refuse_versions(schema, derivation)
        if schema < 1:
            raise StoredValueError(f"schema version {schema}")
        meta = self.meta = decode_meta(rows)
        if meta.project_id and self.project_id and meta.project_id != self.project_id:
            raise ForeignStateFile(
                f"state_path (--state-path, COLLECTOR_STATE_PATH): {self.path} holds project "
                f"{meta.project_id[:80]}'s state, not {self.project_id[:80]}'s; it is left in place"
            )
        self.project_id = self.project_id or meta.project_id
        self.counting_since = meta.counting_since or self.counting_since
        same = derivation == DERIVATION_VERSION  # new rules or label limits apply from now on: no re-derivation
        aggregates = self._aggregates(meta.aggregates)
        floor = None if meta.floor is None else self._aggregates(meta.floor)
        histogram_floor = None if meta.histogram_floor is None else self._aggregates(meta.histogram_floor)

        def states(query: str, *, tracked: bool = False) -> SessionTable:
            out = SessionTable(tracked=tracked)  # packed row by row: never a million dataclasses at once
            for sid, text in db.execute(query):
                out[sid] = self._decoded(sid, text)
            return out

        sessions = states("SELECT session_id, state FROM sessions", tracked=True)  # pragma: no mutate
        prior = states("SELECT session_id, state FROM prior")  # pragma: no mutate
        retired_any = db.execute("SELECT 1 FROM retired LIMIT 1").fetchone() is not None  # pragma: no mutate
        if sum(aggregates.runs.values()) and not (sessions or retired_any or prior):
            raise StoredValueError("aggregates without any session: the sessions were lost")
        if not same:
            self.log.warning("derivation changed; re-deriving every session, counters kept")
            self.full_rewrite = True
            if floor is not None:  # changed again before the last re-derivation synced: keep the larger
                aggregates.raise_to(floor)
            # where counting stood, for the sessions not re-derived by the sync (an earlier prior wins)
            where = states("SELECT session_id, state FROM retired ORDER BY position")  # pragma: no mutate
            for table in (sessions, prior):
                for sid, row in table.rows():
                    where.set_row(sid, row)
            return CollectorState(
                Aggregates(self.buckets, self.label_limit),
                floor=aggregates,
                prior=where,
                archive=self.retired_session,
            )
        if db.execute(DAMAGED_RETIRED).fetchone() is not None:  # checked by SQLite: a million rows in seconds
            raise StoredValueError("a retired row that is not the session its key names")
        replay = {sid for (sid,) in db.execute("SELECT session_id FROM replay")}  # pragma: no mutate
        if aggregates.bounds_changed():
            self.log.warning(
                "bucket bounds changed; each session's runs are replayed into the new buckets, "
                "_count, _sum and +Inf keep every run counted"
            )
            rebucketed = aggregates.rebucket()
            if histogram_floor is not None:  # changed again before the last replay ended: still to place
                rebucketed.fold(histogram_floor)
            histogram_floor, replay = rebucketed, set(sessions)
            self.full_rewrite = True
        else:
            self.full_rewrite = schema < SCHEMA_VERSION  # an older layout: written anew, by name, once
        self.log.info("state loaded", path=str(self.path), sessions=len(sessions), schema=schema)
        return CollectorState(
            aggregates,
            sessions,
            synced=meta.synced,
            floor=floor,
            prior=prior,
            histogram_floor=histogram_floor,
            replay=replay & set(sessions),
            archive=self.retired_session,
        )

    @staticmethod
    def _decoded(sid: str, text: str) -> SessionState:
        state = decode_session(text)
        if state.session_id != sid:
            raise StoredValueError("a row whose key is not the session it holds")
        return state

    def retired_session(self, session_id: str) -> SessionState | None:
        """A retired session's saved state (None when it never left, or was never saved). A row that no
        longer reads is logged and taken as absent: the session is then counted as new."""
        if self.db is None:
            return None
        row = self.db.execute(RETIRED_ROW, (session_id,)).fetchone()
        if row is None:
            return None
        try:
            return self._decoded(session_id, row[0])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            self.log.error("retired session unreadable in the state file", error=str(exc)[:200])
            return None

    def save(self, state: CollectorState) -> None:
        """Write the cycle's changes in one transaction. A value that a restart would refuse is not written
        (``StoredValueError``): the write fails as a whole, and the file keeps its last good state."""
        try:
            if self.db is None:
                self.db = self._connect()
            self._save(state)
        except (sqlite3.Error, OSError, StoredValueError) as exc:
            self.full_rewrite = True
            raise StateError(f"cannot write state to {self.path}: {exc}") from None

    def _save(self, state: CollectorState) -> None:
        db = self.db
        assert db is not None, "save() connects first"
        db.execute("BEGIN IMMEDIATE")  # pragma: no mutate
        try:
            rows: Iterable[SessionState]
            if self.full_rewrite:
                db.execute("DELETE FROM sessions")  # pragma: no mutate
                rows = state.sessions.values()
            else:
                gone = [(s,) for s in key_ids(state.removed)]
                db.executemany("DELETE FROM sessions WHERE session_id = ?", gone)  # pragma: no mutate
                rows = [state.sessions[s] for s in key_ids(state.changed) if s in state.sessions]
            db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?)",  # pragma: no mutate
                ((s.session_id, _row(s.session_id, s)) for s in rows),  # a row at a time: never a million at once
            )
            if self.full_rewrite or state.prior_changed:
                db.execute("DELETE FROM prior")  # pragma: no mutate
                db.executemany(
                    "INSERT INTO prior VALUES (?, ?)",  # pragma: no mutate
                    [(sid, _row(sid, r)) for sid, r in state.prior.items()],
                )
            # retired sessions live here, never all in memory: each is written once when it leaves
            db.executemany("DELETE FROM retired WHERE session_id = ?", [(s,) for s in state.retired])  # pragma: no mutate
            db.executemany(
                "INSERT INTO retired (session_id, state) VALUES (?, ?)",  # pragma: no mutate
                [(sid, _row(sid, r)) for sid, r in state.retired.items()],
            )
            db.execute("DELETE FROM replay")  # pragma: no mutate
            db.executemany("INSERT INTO replay VALUES (?)", [(s,) for s in state.replay])  # pragma: no mutate
            meta = Meta(
                schema_version=SCHEMA_VERSION,
                synced=state.synced,
                aggregates=state.aggregates.to_dict(),
                derivation_version=DERIVATION_VERSION,
                fingerprint=self.fingerprint,
                saved_at=self.clock(),
                floor=None if state.floor is None else state.floor.to_dict(),
                histogram_floor=None if state.histogram_floor is None else state.histogram_floor.to_dict(),
                counting_since=self.counting_since,
                project_id=self.project_id,
            )
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", encode_meta(meta).items())  # pragma: no mutate
            db.execute("COMMIT")  # pragma: no mutate
            self.meta = meta
            state.retired.clear()  # saved: read back from here when one comes back
            state.archive = self.retired_session
            state.prior_changed = False
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may have ended it already; keep the real error
                try:
                    db.execute("ROLLBACK")  # pragma: no mutate
                except sqlite3.Error:
                    pass
            raise
        self.full_rewrite = False

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def versions(rows: dict[str, str]) -> tuple[int, int]:
    """The schema and derivation versions of the meta rows, read alone before the rest."""
    return META.value(rows, "schema_version"), META.value(rows, "derivation_version")


def _row(sid: str, state: SessionState) -> str:
    """A session's row; a value a restart would refuse names its session, and nothing is written."""
    try:
        return encode_session(state)
    except StoredValueError as exc:
        raise StoredValueError(f"session {sid!r} not written: {exc}") from None
