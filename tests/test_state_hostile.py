"""A hostile or damaged state file (issue "State files as a trust boundary"): each case is one mutation of a
real file, crafted here. Every one is refused or moved aside; no impossible value reaches the counters,
nothing is counted twice, and what the file still holds of its totals becomes the floor."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collector.aggregates import Buckets
from collector.derive import ErrorClassifier
from collector.metrics import SelfMetrics, SnapshotCollector
from collector.poller import SHORT_PASSES_AGREE, Poller
from collector.settings import Settings
from collector.state import MemoryStore, one_project
from collector.storage.sqlite import NewerStateFile, SqliteStore
from collector.wiring import arguments, wire
from tests.fakes import BUCKETS, FakeApi, poll_config, run_events
from tests.helpers import parse, run_async

pytestmark = pytest.mark.tier("unit")

RULES: list[tuple[str, str]] = []
T0 = "2026-01-01T00:00:00+00:00"


def project() -> FakeApi:
    api = FakeApi()
    for i in range(4):
        api.put(f"s{i}", T0, run_events() * 3 + run_events(failed=True))  # 4 runs each: 16 in all
    return api


def poller_on(api: FakeApi, path: Path | None) -> Poller:
    store = SqliteStore(path, BUCKETS, RULES, 50) if path else MemoryStore()
    return Poller(
        api, store, poll_config(interval=60.0, buckets=BUCKETS), ErrorClassifier(RULES), SelfMetrics(CollectorRegistry())
    )


def written(tmp_path: Path) -> tuple[FakeApi, Path]:
    """A real file: 16 runs counted, then one session deleted upstream (its 4 runs live only in the file)."""
    api, db = project(), tmp_path / "state.db"
    p = poller_on(api, db)
    run_async(p.cycle())
    p.store.close()
    return api, db


def exposed(p: Poller) -> dict:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: one_project(p.snapshot), **arguments(wire(Settings()).exposition)))
    samples = parse(generate_latest(registry).decode())  # a scrape that fails would raise here
    assert all(v >= 0 and v == v and v != float("inf") for v in samples.values())
    return samples


def runs(p: Poller) -> float:
    s = exposed(p)
    return sum(v for (name, _), v in s.items() if name == "llamacloud_chat_runs_total")


def edit(db: Path, sql: str, *args) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql, args)


def edit_json(db: Path, table: str, key_col: str, key: str, change) -> None:
    col = "value" if table == "meta" else "state"
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute(f"SELECT {col} FROM {table} WHERE {key_col} = ?", (key,)).fetchone()
        data = json.loads(text)
        change(data)
        conn.execute(f"UPDATE {table} SET {col} = ? WHERE {key_col} = ?", (json.dumps(data), key))


def dump(db: Path) -> str:
    """The file's content as SQL: its bytes change when SQLite folds the WAL back in on a close."""
    with closing(sqlite3.connect(db)) as conn:
        return "\n".join(conn.iterdump())


def reopen(api: FakeApi, db: Path, tmp_path: Path) -> Poller:
    p = poller_on(api, db)
    for _ in range(3):
        run_async(p.cycle())
    return p


def aside(tmp_path: Path) -> list[Path]:
    return [f for f in tmp_path.iterdir() if ".corrupt-" in f.name and not f.name.endswith(("-wal", "-shm"))]


def session_set(field, value):
    return lambda row: row.__setitem__(field, value)


@pytest.mark.parametrize(
    "field,value",
    [
        ("runs_success", -7),
        ("runs_success", float("nan")),
        ("tokens_input", float("inf")),
        ("runs_error", 1e308),
        ("cursor", "8"),
        ("updated_ts", "yesterday"),
        ("job", {"turns": "x"}),
        ("index_ids", "idx"),
        ("high_water", [1, 2]),
    ],
)
def test_an_impossible_session_value_moves_the_file_aside_and_counts_stay_exact(tmp_path, field, value):
    api, db = written(tmp_path)
    edit_json(db, "sessions", "session_id", "s1", session_set(field, value))
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16  # the floor from the file's totals, nothing twice


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.__setitem__("runs", [["success", 1e308], ["error", 4]]),
        lambda a: a.__setitem__("runs", [["success", 13.5], ["error", 4]]),
        lambda a: a.__setitem__("runs", [["success", True], ["error", 4]]),
        lambda a: a["duration"].__setitem__("total", 1e308),
        lambda a: a["duration"].__setitem__("bounds", ["nan", 10.0]),
        lambda a: a["duration"].__setitem__("bounds", ["1", 10.0]),
        lambda a: a["duration"].__setitem__("counts", [1, 2]),
        lambda a: a["turns"].__setitem__("counts", [1, "2", 0]),
    ],
    ids=["huge", "fraction", "boolean", "huge-sum", "nan-bound", "string-bound", "short-counts", "string-count"],
)
def test_impossible_aggregates_move_the_file_aside_and_never_reach_a_scrape(tmp_path, change):
    api, db = written(tmp_path)
    edit_json(db, "meta", "key", "aggregates", change)
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16  # rebuilt from the API; every scrape renders


def test_aggregates_without_their_sessions_are_corrupt_not_counted_again(tmp_path):
    api, db = written(tmp_path)
    edit(db, "DROP TABLE sessions")
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16  # not 32: the totals are the floor of the resync


def test_emptied_session_rows_are_corrupt_not_counted_again(tmp_path):
    api, db = written(tmp_path)
    edit(db, "DELETE FROM sessions")
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16


def test_a_row_whose_key_is_another_session_is_corrupt(tmp_path):
    api, db = written(tmp_path)
    edit(db, "UPDATE sessions SET session_id = 'sX' WHERE session_id = 's1'")
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16  # not 20


def test_a_deleted_sessions_runs_survive_a_corrupt_row_through_the_floor(tmp_path):
    api, db = written(tmp_path)
    del api.sessions["s3"]  # its 4 runs now live only in the file
    edit_json(db, "sessions", "session_id", "s1", session_set("cursor", -1))
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16  # the floor keeps them: no counter goes back


def test_an_unknown_field_means_a_newer_release_wrote_the_file(tmp_path):
    _api, db = written(tmp_path)
    edit_json(db, "sessions", "session_id", "s1", session_set("born_at", 1.0))
    before = db.read_bytes()
    store = SqliteStore(db, BUCKETS, RULES, 50)
    with pytest.raises(NewerStateFile) as refused:
        store.load()
    assert str(refused.value) == (
        f"state_path (--state-path, COLLECTOR_STATE_PATH): {db} holds a session field "
        "'born_at' that this release does not know: a newer release wrote it; it is left "
        "in place (restore a backup, or start without it)"
    )
    assert store.db is None, "the file is let go at once"
    assert db.read_bytes() == before and aside(tmp_path) == []


def test_a_file_of_this_derivation_loads_as_it_is_whatever_its_number(tmp_path, monkeypatch):
    """The stored derivation version is read back, not assumed to be 1."""
    monkeypatch.setattr("collector.storage.sqlite.DERIVATION_VERSION", 2)
    _api, db = written(tmp_path)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'derivation_version'").fetchone() == ("2",)
    state = SqliteStore(db, BUCKETS, RULES, 50).load()
    assert state is not None and state.synced and state.floor is None and len(state.sessions) == 4


def test_a_loaded_file_is_saved_by_its_changes_and_says_what_it_loaded(tmp_path):
    import structlog

    _api, db = written(tmp_path)
    store = SqliteStore(db, BUCKETS, RULES, 50)
    with structlog.testing.capture_logs() as captured:
        state = store.load()
    (line,) = [e for e in captured if e["event"] == "state loaded"]
    assert (line["path"], line["sessions"], line["schema"]) == (str(db), 4, 2)
    assert state is not None and store.db is not None
    work = state.begin()
    work.put(replace(work.sessions["s1"], title="renamed"))
    work.commit()
    before = store.db.total_changes
    store.save(work)
    (meta,) = store.db.execute("SELECT count(*) FROM meta").fetchone()
    assert store.db.total_changes - before == 1 + meta  # the one session row and the meta: no full rewrite
    store.close()


def test_the_totals_of_a_damaged_file_written_with_other_buckets_are_still_its_floor(tmp_path):
    """The floor is read with the bounds the file was written with; the resync keeps the label limit."""
    api, db = project(), tmp_path / "state.db"
    other = Buckets({"duration": BUCKETS.duration, "tokens": BUCKETS.tokens, "turns": BUCKETS.turns, "tool_calls": (0.0, 5.0)})
    first = Poller(
        api,
        SqliteStore(db, other, RULES, 50),
        poll_config(interval=60.0, buckets=other),
        ErrorClassifier(RULES),
        SelfMetrics(CollectorRegistry()),
    )
    run_async(first.cycle())
    first.store.close()
    edit(db, "DELETE FROM sessions")  # aggregates without sessions: moved aside, totals salvaged
    state = SqliteStore(db, BUCKETS, RULES, 7).load()
    assert state is not None and state.floor is not None and sum(state.floor.runs.values()) == 16
    assert state.floor.label_limit == 7 and state.aggregates.label_limit == 7 and len(aside(tmp_path)) == 1


def test_a_newer_derivation_version_is_refused(tmp_path):
    api, db = written(tmp_path)
    edit(db, "INSERT OR REPLACE INTO meta VALUES ('derivation_version', '99')")
    with pytest.raises(NewerStateFile, match="derivation 99"):
        poller_on(api, db)
    assert aside(tmp_path) == []


def test_an_older_derivation_version_re_derives_with_the_totals_as_floor(tmp_path, monkeypatch):
    api, db = written(tmp_path)
    monkeypatch.setattr("collector.storage.sqlite.DERIVATION_VERSION", 2)
    p = poller_on(api, db)
    assert p.state.floor is not None and sum(p.state.floor.runs.values()) == 16 and not p.state.synced
    run_async(p.cycle())
    assert runs(p) == 16 and p.state.synced and aside(tmp_path) == []


def test_retired_sessions_stay_on_disk_and_are_read_when_one_comes_back(tmp_path):
    api, db = written(tmp_path)
    row = json.dumps({"session_id": "r", "last_updated_at": T0, "cursor": 2, "events_seen": 2})
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO retired VALUES (?, ?, ?)", [(i, f"r{i}", row.replace('"r"', f'"r{i}"')) for i in range(50)])
    p = poller_on(api, db)
    assert p.state.retired == {}  # none held in memory
    known = p.state.known("r7")
    assert known is not None and known.cursor == 2  # none forgotten


@pytest.mark.parametrize("row", ['{"session_id": "r", "cursor"', '{"session_id": "other"}', '["other"]'])
def test_a_retired_row_that_is_not_its_session_moves_the_file_aside_at_load(tmp_path, row):
    api, db = written(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO retired VALUES (?, ?, ?)", (0, "r", row))
    p = reopen(api, db, tmp_path)
    assert len(aside(tmp_path)) == 1 and runs(p) == 16


def test_a_retired_row_with_an_impossible_value_is_logged_when_its_session_comes_back(tmp_path):
    import structlog

    api, db = written(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO retired VALUES (?, ?, ?)", (0, "r", '{"session_id": "r", "cursor": -1}'))
    p = poller_on(api, db)
    with structlog.testing.capture_logs() as captured:
        assert p.state.known("r") is None and p.state.known("s1") is not None
    (line,) = [e for e in captured if e["event"] == "retired session unreadable in the state file"]
    assert "not a string" in line["error"] and aside(tmp_path) == []


@pytest.mark.parametrize("newer", ["schema", "field"])
@pytest.mark.tier("process")
def test_the_collector_exits_2_on_a_newer_release_file_and_leaves_it_untouched(tmp_path, newer):
    """A newer schema is refused before the collector starts: one line. An unknown field is found while the
    file loads, after the listener is up; the shutdown that follows must not write the empty state over it."""
    import os
    import subprocess
    import sys

    _, db = written(tmp_path)
    if newer == "schema":
        edit(db, "UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        said = "written by a newer release (schema 7"
    else:
        edit_json(db, "sessions", "session_id", "s1", session_set("born_at", 1.0))
        said = "session field 'born_at' that this release does not know"
    before = dump(db)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--state-path",
            str(db),
            "--listen",
            "127.0.0.1:0",
            "--base-url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LLAMA_CLOUD_API_KEY": "k"},
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert said in lines[-1] and str(db) in lines[-1] and lines[-1].startswith("llamacloud-collector: error: ")
    assert len(lines) == 1 if newer == "schema" else all(line.startswith("{") for line in lines[:-1]), lines
    assert "Traceback" not in result.stderr + result.stdout
    assert dump(db) == before and aside(tmp_path) == []


def test_a_refused_load_is_never_followed_by_a_write(tmp_path):
    api, db = written(tmp_path)
    edit_json(db, "sessions", "session_id", "s1", session_set("born_at", 1.0))
    before = dump(db)
    store = SqliteStore(db, BUCKETS, RULES, 50)
    p = Poller(
        api,
        store,
        poll_config(interval=60.0, buckets=BUCKETS),
        ErrorClassifier(RULES),
        SelfMetrics(CollectorRegistry()),
        load=False,
    )
    with pytest.raises(NewerStateFile):
        p.load_state()
    p.persist()  # what a shutdown does
    store.close()
    assert dump(db) == before


def test_a_file_with_many_sessions_no_longer_listed_leaves_in_slices_forgetting_none(tmp_path):
    import asyncio

    api, db = written(tmp_path)
    row = '{"session_id":"%s","last_updated_at":"2020-01-01T00:00:00+00:00","cursor":2,"events_seen":2}'
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO sessions VALUES (?, ?)", ((f"gone-{i}", row % f"gone-{i}") for i in range(60_000)))

    async def scenario():
        p = poller_on(api, db)
        for _ in range(SHORT_PASSES_AGREE - 1):  # under half listed: nothing retired on one listing's word
            report = await p.cycle()
            assert report.result == "partial" and report.removed == 0 and len(p.state.sessions) == 60_004
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        report = await p.cycle()  # the third pass in a row agrees: a real mass deletion
        task.cancel()
        return p, report, ticks

    p, report, ticks = run_async(scenario())
    assert report.removed == 60_000 and len(p.state.sessions) == 4 and runs(p) == 16
    assert p.state.retired == {}  # not held
    known = p.state.known("gone-0")
    assert known is not None and known.cursor == 2  # saved
    assert ticks >= 3  # the endpoints ran between the slices and during the save
    p.store.close()
    again = poller_on(api, db)
    assert len(again.state.sessions) == 4
    known = again.state.known("gone-59999")
    assert known is not None and known.cursor == 2


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("DELETE FROM sessions", "StoredValueError: aggregates without any session: the sessions were lost"),
        (
            "UPDATE sessions SET session_id = 'sX' WHERE session_id = 's1'",
            "StoredValueError: a row whose key is not the session it holds",
        ),
        ("UPDATE meta SET value = '0' WHERE key = 'schema_version'", "StoredValueError: schema version 0"),
        (
            f"UPDATE meta SET value = '{'9' * 250}x' WHERE key = 'schema_version'",  # the message cut to 200
            "ValueError: " + ("invalid literal for int() with base 10: '" + "9" * 250 + "x'")[:200],
        ),
    ],
)
def test_the_line_of_a_file_moved_aside_says_what_was_wrong_in_it(tmp_path, damage, reason):
    import structlog

    _api, db = written(tmp_path)
    edit(db, damage)
    with structlog.testing.capture_logs() as captured:
        store = SqliteStore(db, BUCKETS, RULES, 50)
        store.load()
        store.close()
    line = next(e for e in captured if e["event"] == "state file unreadable; moved aside, resyncing from the API")
    assert line["reason"] == reason and line["log_level"] == "error" and line["path"] == str(db)
    assert line["moved_to"] == str(aside(tmp_path)[0])
    kept = next(e for e in captured if e["event"] == "totals read from the corrupt file kept as the floor of the resync")
    assert kept["runs"] == 16


def test_what_a_re_derivation_left_to_do_is_saved_and_read_back(tmp_path, monkeypatch):
    """The cursors of sessions a re-derivation has not reached yet (``prior``) survive a restart."""
    _api, db = written(tmp_path)
    changed = BUCKETS
    monkeypatch.setattr("collector.storage.sqlite.DERIVATION_VERSION", 2)  # what counts changed: re-derived
    store = SqliteStore(db, changed, RULES, 50)
    state = store.load()
    assert state is not None and set(state.prior) == {"s0", "s1", "s2", "s3"} and state.floor is not None
    store.save(state)
    store.close()
    again = SqliteStore(db, changed, RULES, 50)
    loaded = again.load()
    again.close()
    assert loaded is not None and loaded.prior == state.prior and loaded.sessions == {}
    assert loaded.floor is not None


@pytest.mark.parametrize(("schema", "derivation"), [("99", "1"), ("2", "99"), ("3", None)])
def test_a_newer_release_file_is_refused_before_anything_writes_to_it(tmp_path, schema, derivation):
    """The versions are read on a read-only connection first: the file of a newer release keeps its bytes
    and its journal mode (opening it for writing would have turned it to WAL)."""
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (schema,))
        if derivation is not None:
            conn.execute("INSERT INTO meta VALUES ('derivation_version', ?)", (derivation,))
    conn.close()
    before = db.read_bytes()
    with pytest.raises(NewerStateFile) as refused:
        SqliteStore(db, BUCKETS, RULES, 50).load()
    version = f"schema {schema}, derivation {derivation or 1}; this release reads up to schema 2, derivation 1"
    assert str(refused.value) == (
        f"state_path (--state-path, COLLECTOR_STATE_PATH): {db} was written by a newer release ({version}); it is left in place"
    )
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
