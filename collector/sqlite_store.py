"""SQLite state store (``--state-path``): exact counters across restarts.

One file, WAL, written in one transaction at the end of each cycle: the
changed and removed sessions, the aggregates and the meta rows. It carries a
schema version, and a fingerprint of the buckets, rules and label limit:

- a file of another schema version is rebuilt from the API, never misread;
- a corrupt or unreadable file is moved aside as ``*.corrupt-<timestamp>``;
- a changed fingerprint re-derives every session, then raises the counters
  to the stored ones, so none goes backwards;
- a failed write raises ``StateError``; the next save rewrites everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import asdict, fields
from pathlib import Path

import structlog

from collector.aggregates import Aggregates, Buckets
from collector.errors import ConfigError, StateError
from collector.settings import state_path_problem
from collector.state import CollectorState, LastRun, SessionState

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retired (position INTEGER PRIMARY KEY, session_id TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prior (session_id TEXT PRIMARY KEY, state TEXT NOT NULL);
"""
SESSION_FIELDS = [f.name for f in fields(SessionState)]
LAST_RUN_FIELDS = frozenset(f.name for f in fields(LastRun))


def fingerprint(buckets: Buckets, rules: list[tuple[str, str]], label_limit: int) -> str:
    text = json.dumps([asdict(buckets), rules, label_limit], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_session(s: SessionState) -> str:
    values = [getattr(s, name) for name in SESSION_FIELDS]
    values[SESSION_FIELDS.index("job")] = asdict(s.job) if s.job else None
    return json.dumps(values, separators=(",", ":"))


def decode_session(text: str) -> SessionState:
    data = dict(zip(SESSION_FIELDS, json.loads(text), strict=True))
    data["index_ids"] = tuple(data["index_ids"])
    data["job"] = LastRun(**{k: v for k, v in data["job"].items() if k in LAST_RUN_FIELDS}) if data["job"] else None
    data["high_water"] = tuple(data["high_water"]) if data["high_water"] else None
    return SessionState(**data)


class SqliteStore:
    def __init__(self, path: Path, buckets: Buckets, rules: list[tuple[str, str]], label_limit: int,
                 clock=time.time) -> None:
        problem = state_path_problem(path)
        if problem:
            raise ConfigError(f"state_path (--state-path, COLLECTOR_STATE_PATH): {problem}")
        self.path, self.buckets, self.label_limit, self.clock = path, buckets, label_limit, clock
        self.fingerprint = fingerprint(buckets, rules, label_limit)
        self.log = structlog.get_logger("collector.state")
        self.db: sqlite3.Connection | None = None
        self.full_rewrite = True

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
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
        self.log.error("state file unreadable; moved aside, resyncing from the API",
                       path=str(self.path), moved_to=str(aside), reason=reason)

    def load(self) -> CollectorState | None:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as exc:
            try:
                self._move_aside(f"{type(exc).__name__}: {exc}")
            except OSError as move_error:
                self.log.error("state file unreadable and cannot be moved; running without it",
                               path=str(self.path), reason=str(move_error))
                self.db = None
                return None
            self.db = self._connect()
            return None

    def _load(self) -> CollectorState | None:
        self.db = self._connect()
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            return None
        if int(meta["schema_version"]) != SCHEMA_VERSION:
            self.log.warning("state file has another schema version; rebuilding from the API",
                             found=meta["schema_version"], expected=SCHEMA_VERSION)
            self.db.executescript("DELETE FROM meta; DELETE FROM sessions; DELETE FROM retired; DELETE FROM prior;")
            return None
        aggregates = Aggregates.from_dict(json.loads(meta["aggregates"]), self.buckets, self.label_limit)
        floor = Aggregates.from_dict(json.loads(meta["floor"]), self.buckets, self.label_limit) \
            if meta.get("floor") else None

        def states(query: str) -> dict[str, SessionState]:
            return {sid: decode_session(text) for sid, text in self.db.execute(query)}
        sessions = states("SELECT session_id, state FROM sessions")
        retired = states("SELECT session_id, state FROM retired ORDER BY position")
        prior = states("SELECT session_id, state FROM prior")
        if meta["fingerprint"] != self.fingerprint:
            self.log.warning("buckets or rules changed; re-deriving every session, counters kept")
            self.full_rewrite = True
            if floor is not None:  # changed again before the last re-derivation synced: keep the larger
                aggregates.raise_to(floor)
            # where counting stood, for the sessions not re-derived by the sync (an earlier prior wins)
            return CollectorState(Aggregates(self.buckets, self.label_limit), floor=aggregates,
                                  prior={**retired, **sessions, **prior})
        self.full_rewrite = False
        self.log.info("state loaded", path=str(self.path), sessions=len(sessions))
        return CollectorState(aggregates, sessions, synced=meta["synced"] == "1", floor=floor, retired=retired,
                              prior=prior)

    def save(self, state: CollectorState) -> None:
        try:
            if self.db is None:
                self.db = self._connect()
            self._save(state)
        except (sqlite3.Error, OSError) as exc:
            self.full_rewrite = True
            raise StateError(f"cannot write state to {self.path}: {exc}") from None

    def _save(self, state: CollectorState) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self.full_rewrite:
                db.execute("DELETE FROM sessions")
                rows = state.sessions.values()
            else:
                db.executemany("DELETE FROM sessions WHERE session_id = ?", [(s,) for s in state.removed])
                rows = [state.sessions[s] for s in state.changed if s in state.sessions]
            db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)",
                           [(s.session_id, encode_session(s)) for s in rows])
            if self.full_rewrite or state.retired_changed:
                db.execute("DELETE FROM prior")
                db.executemany("INSERT INTO prior VALUES (?, ?)",
                               [(sid, encode_session(r)) for sid, r in state.prior.items()])
                db.execute("DELETE FROM retired")
                db.executemany("INSERT INTO retired VALUES (?, ?, ?)",
                               [(i, sid, encode_session(r)) for i, (sid, r) in enumerate(state.retired.items())])
            meta = {"schema_version": str(SCHEMA_VERSION), "fingerprint": self.fingerprint,
                    "synced": "1" if state.synced else "0", "saved_at": str(self.clock()),
                    "aggregates": json.dumps(state.aggregates.to_dict()),
                    "floor": json.dumps(state.floor.to_dict()) if state.floor else ""}
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may have ended it already; keep the real error
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        self.full_rewrite = False

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
