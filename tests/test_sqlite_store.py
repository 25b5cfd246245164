"""The SQLite state store on its own: what it writes, what it reads back, and what it does with a bad file."""

from __future__ import annotations

import io
import json
import sqlite3
from contextlib import closing
from dataclasses import replace

import pytest
import structlog

from collector import logs
from collector.aggregates import Aggregates, Buckets, Mark
from collector.derive import RunRecord
from collector.errors import ConfigError, StateError
from collector.state import CollectorState, LastRun, SessionState
from collector.storage.records import decode_session, encode_session
from collector.storage.sqlite import SCHEMA_VERSION, SqliteStore, fingerprint

pytestmark = pytest.mark.tier("unit")

BUCKETS = Buckets({"duration": (1.0, 10.0), "tokens": (10.0, 100.0), "turns": (1.0, 4.0), "tool_calls": (0.0, 2.0)})
RULES = [("timeout", "time"), ("internal", "internal")]
NOW = 1_790_000_000.0
STAMP = "20260921T141320"  # NOW in UTC


def store(path, buckets=BUCKETS, rules=RULES, limit=50) -> SqliteStore:
    return SqliteStore(path, buckets, rules, limit, clock=lambda: NOW)


def session(sid: str, cursor: int = 2, **kw) -> SessionState:
    return SessionState(
        sid,
        "2026-01-01T00:00:00+00:00",
        1.0,
        f"title {sid}",
        "query",
        ("i1",),
        LastRun(1500.0, 10, 20, 2, False),
        cursor,
        cursor + 1,
        "sig",
        2,
        1,
        30,
        40,
        None,
        None,
        **kw,
    )


def state_with(*sessions: SessionState, synced: bool = True) -> CollectorState:
    aggregates = Aggregates(BUCKETS, 50)
    aggregates.add_runs([RunRecord(False, None, 2.0, 5, 6, 1, (), ())], "s1", NOW)
    state = CollectorState(aggregates, synced=synced)
    for s in sessions:
        state.put(s)
    return state


def resume(s: SqliteStore) -> CollectorState:
    """What ``s.load()`` resumes from a file that holds a state (``None`` only for a new or a set-aside file)."""
    state = s.load()
    assert state is not None
    return state


def saved(db) -> SqliteStore:
    """A file holding sessions a and b, and its store, closed."""
    s = store(db)
    s.load()
    s.save(state_with(session("a"), session("b")))
    s.close()
    return s


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    structlog.reset_defaults()


def retired_rows(db) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return [r[0] for r in conn.execute("SELECT session_id FROM retired ORDER BY position")]


def test_a_saved_state_loads_back_whole(tmp_path):
    db = tmp_path / "state.db"
    first = store(db)
    assert first.load() is None  # a new file: nothing to resume
    saved = state_with(session("s1"), session("s2", cursor=4), synced=True)
    saved.drop("s2")
    first.save(saved)
    first.close()
    assert first.db is None
    loaded = resume(store(db))
    assert loaded.sessions == {"s1": session("s1")} and loaded.synced is True and loaded.floor is None
    assert loaded.retired == {} and retired_rows(db) == ["s2"]  # on disk, read when it comes back
    back = loaded.known("s2")
    assert back is not None and back.cursor == 4 and back.title is None and back.job is None
    assert loaded.aggregates.to_dict() == saved.aggregates.to_dict()
    assert loaded.aggregates.run_marks["success"] == Mark("s1", 1.0, NOW)
    assert loaded.aggregates.label_limit == 50 and loaded.aggregates.tools.limit == 50


def test_later_saves_write_only_what_changed_and_keep_the_retired_order(tmp_path):
    db = tmp_path / "state.db"
    s = store(db)
    s.load()
    state = state_with(session("a"), session("b"), session("c"))
    s.save(state)
    work = state.begin()
    work.put(session("a", cursor=8))
    work.drop("c")
    work.drop("b")
    s.save(work)
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT session_id, state FROM sessions"))
        retired = [r[0] for r in conn.execute("SELECT session_id FROM retired ORDER BY position")]
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert set(rows) == {"a"} and decode_session(rows["a"]).cursor == 8
    assert retired == ["c", "b"]  # in the order they left
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["synced"] == "1" and meta["floor"] == ""
    assert meta["saved_at"] == str(NOW) and meta["fingerprint"] == fingerprint(BUCKETS, RULES, 50)
    loaded = resume(store(db))
    assert set(loaded.sessions) == {"a"} and loaded.known("b") == replace(session("b"), title=None, job=None)


def test_an_unsynced_state_and_its_floor_survive_a_restart(tmp_path):
    """A re-derivation interrupted by a restart must still raise the counters to the floor once synced."""
    db = tmp_path / "state.db"
    s = store(db)
    s.load()
    floor = Aggregates(BUCKETS, 50)
    floor.runs["success"] = 9
    state = state_with(session("a"), synced=False)
    state.floor = floor
    s.save(state)
    loaded = resume(store(db))
    assert loaded.synced is False and loaded.floor is not None and loaded.floor.runs["success"] == 9
    assert loaded.floor.buckets == BUCKETS and loaded.floor.label_limit == 50
    loaded.mark_synced()
    assert loaded.aggregates.runs["success"] == 9 and loaded.floor is None


def test_changed_buckets_replay_each_session_into_the_new_buckets_with_the_counters_kept(tmp_path, captured):
    db = tmp_path / "state.db"
    s = store(db)
    s.load()
    s.save(state_with(session("a")))
    other = Buckets({"duration": (2.0,), "tokens": (10.0,), "turns": (1.0,), "tool_calls": (0.0,)})
    loaded = resume(store(db, buckets=other, limit=7))
    assert set(loaded.sessions) == {"a"} and loaded.synced is True and loaded.replay == {"a"}
    assert loaded.floor is None and loaded.aggregates.runs["success"] == 1  # the counters as they were
    assert loaded.aggregates.buckets == other and loaded.aggregates.label_limit == 7
    assert loaded.aggregates.duration.bounds == (2.0,) and loaded.aggregates.duration.count == 0
    assert loaded.histogram_floor is not None and loaded.histogram_floor.duration.count == 1
    assert loaded.exposed().duration.count == 1
    assert any(e["event"].startswith("bucket bounds changed; each session's runs are replayed") for e in captured())
    for changed in (dict(rules=RULES[:1]), dict(limit=51)):  # rules and the label limit apply from now on
        again = resume(store(db, **changed))
        assert again.floor is None and again.histogram_floor is None and again.replay == set()


def test_a_newer_schema_version_is_refused_and_left_in_place(tmp_path):
    from collector.storage.sqlite import NewerStateFile

    db = tmp_path / "state.db"
    saved(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = db.read_bytes()
    with pytest.raises(
        NewerStateFile,
        match=r"written by a newer release \(schema 99, derivation 1; this release "
        r"reads up to schema 2, derivation 1\); it is left in place",
    ):
        store(db).load()
    assert db.read_bytes() == before and not list(tmp_path.glob("*corrupt*"))  # never wiped, never moved


def captured_events(captured, event: str) -> list[dict]:
    return [e for e in captured() if e["event"] == event]


def test_loading_logs_where_and_how_many(tmp_path, captured):
    db = tmp_path / "state.db"
    s = saved(db)
    s.save(state_with(session("c")))  # a closed store reconnects to write
    loaded = resume(store(db))
    assert set(loaded.sessions) == {"a", "b", "c"}
    (line,) = captured_events(captured, "state loaded")
    assert line["path"] == str(db) and line["sessions"] == 3 and line["level"] == "info"


def test_a_replay_interrupted_by_a_restart_goes_on_where_it_was(tmp_path):
    db = tmp_path / "state.db"
    s = store(db)
    s.load()
    s.save(state_with(session("a"), session("b")))
    other = Buckets({"duration": (2.0,), "tokens": (10.0,), "turns": (1.0,), "tool_calls": (0.0,)})
    again = store(db, buckets=other)
    state = resume(again)
    state.replayed("a")
    again.save(state)
    again.close()
    resumed = resume(store(db, buckets=other))
    assert resumed.replay == {"b"} and resumed.histogram_floor is not None
    resumed.end_replay()
    assert resumed.aggregates.duration.count == 1 and resumed.histogram_floor is None  # in +Inf: none replayed


def test_a_corrupt_file_and_its_journals_are_moved_aside(tmp_path, captured):
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    (tmp_path / "state.db-wal").write_bytes(b"wal")
    (tmp_path / "state.db-shm").write_bytes(b"shm")
    s = store(db)
    assert s.load() is None
    aside = tmp_path / f"state.db.corrupt-{STAMP}"
    assert aside.read_bytes().startswith(b"this is not")
    assert (tmp_path / f"state.db.corrupt-{STAMP}-wal").read_bytes() == b"wal"
    assert (tmp_path / f"state.db.corrupt-{STAMP}-shm").is_file()  # SQLite rewrites the shared-memory index
    (line,) = [e for e in captured() if e["event"] == "state file unreadable; moved aside, resyncing from the API"]
    assert line["path"] == str(db) and line["moved_to"] == str(aside) and "DatabaseError" in line["reason"]
    s.save(state_with(session("a")))  # the new file works
    assert set(resume(store(db)).sessions) == {"a"}


def test_only_regular_files_are_moved_aside(tmp_path):
    db = tmp_path / "state.db"
    db.write_bytes(b"garbage")
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    (tmp_path / "state.db-wal").symlink_to(target)
    (tmp_path / "state.db-shm").mkdir()
    store(db)._move_aside("test")
    assert not db.exists() and (tmp_path / f"state.db.corrupt-{STAMP}").read_bytes() == b"garbage"
    assert (tmp_path / "state.db-wal").is_symlink() and target.read_bytes() == b"keep me"
    assert (tmp_path / "state.db-shm").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elsewhere",
        "state.db-shm",
        "state.db-wal",
        f"state.db.corrupt-{STAMP}",
    ]


def test_a_file_that_cannot_be_moved_aside_runs_without_state(tmp_path, captured):
    db = tmp_path / "state.db"
    db.write_bytes(b"garbage" * 100)
    (tmp_path / f"state.db.corrupt-{STAMP}").mkdir()  # the name it would move to is taken by a directory
    s = store(db)
    assert s.load() is None and s.db is None
    event = "state file unreadable and cannot be moved; resyncing from the API in its place"
    (line,) = [e for e in captured() if e["event"] == event]
    assert line["path"] == str(db) and "Is a directory" in line["reason"]
    assert db.read_bytes() == b"garbage" * 100  # left where it was, untouched
    with pytest.raises(StateError):  # and every save fails on it, counted, until an operator moves it
        s.save(state_with(session("a")))


def test_a_damaged_file_that_cannot_be_moved_aside_keeps_its_totals_as_the_floor(tmp_path):
    db = tmp_path / "state.db"
    saved(db)
    with sqlite3.connect(db) as conn:  # readable SQLite, impossible content: moved aside, floor salvaged
        conn.execute("DELETE FROM sessions")
    (tmp_path / f"state.db.corrupt-{STAMP}").mkdir()
    loaded = store(db).load()
    assert loaded is not None and loaded.floor is not None
    assert loaded.floor.runs == state_with(session("a")).aggregates.runs


def saved_then_failed(db, change):
    """A store with sessions a and b saved, then a cycle's ``change`` whose save fails (read-only)."""
    s = store(db)
    s.load()
    state = state_with(session("a"), session("b"))
    s.save(state)
    assert s.db is not None
    s.db.execute("PRAGMA query_only = ON")
    work = state.begin()
    change(work)
    with pytest.raises(StateError, match="cannot write state"):
        s.save(work)
    assert s.full_rewrite is True and not s.db.in_transaction
    s.db.execute("PRAGMA query_only = OFF")
    return s, work


def test_a_failed_write_is_a_state_error_and_the_next_save_rewrites_everything(tmp_path):
    db = tmp_path / "state.db"
    s, work = saved_then_failed(db, lambda w: w.put(session("a", cursor=9)))
    later = work.begin()  # a new cycle's copy: its own change set does not list "b"
    s.save(later)
    assert s.full_rewrite is False
    loaded = resume(store(db))
    assert set(loaded.sessions) == {"a", "b"} and loaded.sessions["a"].cursor == 9


def test_a_bad_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"state_path \(--state-path, COLLECTOR_STATE_PATH\): .*is a directory"):
        store(tmp_path)


def test_encoded_sessions_are_compact_named_and_strict(tmp_path):
    text = encode_session(session("s"))
    assert ", " not in text and ": " not in text  # compact JSON: 10,000 rows are rewritten often
    row = json.loads(text)
    assert isinstance(row, dict) and row["session_id"] == "s"
    with pytest.raises(ValueError):
        decode_session(json.dumps(list(row.values())[:-1]))  # a positional row of another length is refused
    del row["job"], row["high_water"]  # an older release's row: missing fields take their defaults
    assert decode_session(json.dumps(row)).job is None


def test_the_fingerprint_does_not_depend_on_key_order():
    a = fingerprint(Buckets({"duration": (1.0,), "tokens": (2.0,), "turns": (3.0,), "tool_calls": (4.0,)}), [("x", "y")], 5)
    assert a == fingerprint(
        Buckets({"duration": (1.0,), "tokens": (2.0,), "turns": (3.0,), "tool_calls": (4.0,)}), [("x", "y")], 5
    )
    assert a != fingerprint(
        Buckets({"duration": (1.0,), "tokens": (2.0,), "turns": (3.0,), "tool_calls": (4.0,)}), [("x", "y")], 6
    )
    assert len(a) == 16


def test_a_failed_write_is_followed_by_a_rewrite_of_the_retired_rows_too(tmp_path):
    db = tmp_path / "state.db"
    s, work = saved_then_failed(db, lambda w: w.drop("b"))  # retired in a cycle whose save fails
    work.commit()
    s.save(work.begin())  # the next cycle changes nothing of the retired: they are still to be written
    loaded = resume(store(db))
    assert set(loaded.sessions) == {"a"} and retired_rows(db) == ["b"]


def test_two_changes_of_buckets_before_the_replay_ended_keep_every_observation(tmp_path):
    db = tmp_path / "state.db"
    first = store(db)
    first.load()
    ten = Aggregates(BUCKETS, 50)
    ten.add_runs([RunRecord(False, None, 2.0, 5, 6, 1, (), ())] * 10)
    saved = CollectorState(ten, synced=True)
    saved.put(session("a"))
    first.save(saved)
    first.close()
    other = Buckets({"duration": (5.0,), "tokens": (50.0,), "turns": (2.0,), "tool_calls": (1.0,)})
    second = store(db, buckets=other)
    partial = resume(second)
    assert partial.histogram_floor is not None and partial.histogram_floor.duration.count == 10 and partial.synced
    partial.aggregates.replay([RunRecord(False, None, 2.0, 5, 6, 1, (), ())], partial.histogram_floor)
    partial.aggregates.add_runs([RunRecord(False, None, 2.0, 5, 6, 1, (), ())])  # a new run meanwhile
    second.save(partial)
    second.close()
    third = store(db, buckets=Buckets({"duration": (7.0,), "tokens": (70.0,), "turns": (3.0,), "tool_calls": (1.0,)}))
    again = resume(third)  # the buckets changed again before the replay ended
    assert again.exposed().duration.count == 11 and again.aggregates.runs["success"] == 11
    again.end_replay()
    assert again.aggregates.duration.count == 11 and again.aggregates.duration.total == 22.0
