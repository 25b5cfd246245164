"""State across restarts (SQLite), corrupt and old files, failed writes, changed buckets, resets."""

import io
import json
import sqlite3

import pytest

from collector import logs
from collector.simulator.api import Fault
from collector.simulator.world import World, populate
from collector.state import LastRun, SessionState
from collector.storage.records import decode_session, encode_session
from collector.storage.sqlite import SCHEMA_VERSION, SqliteStore
from tests.helpers import assert_matches_truth, collecting, run_async, scrape, simulating, value

pytestmark = pytest.mark.tier("unit")


def chat_values(samples):
    return {k: v for k, v in samples.items() if k[0].startswith("llamacloud_chat_") and "oldest" not in k[0]}


def project(sessions=20, runs=3, seed=13):
    return simulating(world=populate(World(seed=seed), sessions, runs))


def test_session_state_round_trips():
    state = SessionState(
        "s",
        "2026-01-01T00:00:00+00:00",
        1.0,
        "t",
        "query",
        ("a", "b"),
        LastRun(duration_ms=5.0, turns=2, is_error=True),
        10,
        12,
        "abc",
        3,
        1,
        100,
        20,
        11,
        5.0,
        (8, 9, "def"),
    )
    assert decode_session(encode_session(state)) == state


def test_a_session_row_written_by_0_1_0_still_loads():
    old = (
        '["s","2026-01-01T00:00:00+00:00",1.0,"t","query",["a"],{"duration_ms":5.0,"total_input_tokens":null,'
        '"total_output_tokens":null,"turns":null,"is_error":true,"error":"boom"},1,2,"abc",1,0,0,0,null,null,null]'
    )
    state = decode_session(old)
    assert state.job == LastRun(duration_ms=5.0, is_error=True) and state.cursor == 1


def test_restart_with_state_keeps_counters_and_fetches_only_changed(tmp_path):
    async def scenario():
        db = tmp_path / "state.db"
        async with project() as sim:
            async with collecting(sim, cycle=True, state_path=str(db)) as first:
                before = chat_values(await scrape(first.port))
            changed = list(sim.world.sessions.values())[:4]
            for session in changed:
                sim.world.add_run(session)
            sim.world.delete(list(sim.world.sessions)[-1])
            calls = dict(sim.api.calls)
            async with collecting(sim, state_path=str(db)) as second:
                loaded = await scrape(second.port)
                assert chat_values(loaded) == before, "the state load is the first sync: same values at once"
                await second.poller.cycle()
                await second.poller.cycle()  # the deleted session missing from two passes: retired
                assert sim.api.calls["retrieve"] - calls["retrieve"] == 4
                samples = await scrape(second.port)
                assert_matches_truth(samples, sim)
                assert value(samples, "llamacloud_collector_sessions_watched") == 19
        with sqlite3.connect(db) as conn:  # the deleted session is kept as retired, should it come back
            assert conn.execute("SELECT count(*) FROM retired").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 19

    run_async(scenario())


def test_corrupt_file_is_moved_aside_and_resynced(tmp_path):
    async def scenario():
        db = tmp_path / "state.db"
        db.write_bytes(b"this is not a database" * 100)
        async with project() as sim:
            async with collecting(sim, cycle=True, state_path=str(db)) as collector:
                assert_matches_truth(await scrape(collector.port), sim)
                aside = list(tmp_path.glob("state.db.corrupt-*"))
                assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
            async with collecting(sim, cycle=True, state_path=str(db)):  # the new file is good: no second move
                assert len(list(tmp_path.glob("state.db.corrupt-*"))) == 1

    run_async(scenario())


def test_a_newer_release_file_exits_2_and_is_left_in_place(tmp_path):
    from collector.storage.sqlite import NewerStateFile

    async def scenario():
        db = tmp_path / "state.db"
        async with project() as sim:
            async with collecting(sim, cycle=True, state_path=str(db)):
                pass
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
            before = db.read_bytes()
            with pytest.raises(NewerStateFile):
                async with collecting(sim, cycle=True, state_path=str(db)):
                    pass
            assert db.read_bytes() == before and not list(tmp_path.glob("*corrupt*"))

    run_async(scenario())


def test_failed_writes_are_counted_and_retried(tmp_path):
    async def scenario():
        db = tmp_path / "state.db"
        async with project() as sim:
            async with collecting(sim, cycle=True, state_path=str(db)) as collector:
                store = collector.poller.store
                assert isinstance(store, SqliteStore) and store.db is not None
                store.db.execute("PRAGMA query_only = ON")  # a read-only volume: SQLite refuses every write
                sim.world.add_run(next(iter(sim.world.sessions.values())))
                report = await collector.poller.cycle()
                samples = await scrape(collector.port)
                assert value(samples, "llamacloud_collector_state_write_failures_total") == 1
                assert report.result == "success"
                assert_matches_truth(samples, sim)  # still serving the new numbers
                store.db.execute("PRAGMA query_only = OFF")
                pages = store.db.execute("PRAGMA page_count").fetchone()[0]
                store.db.execute(f"PRAGMA max_page_count = {pages}")  # disk full: the file cannot grow
                for _ in range(40):
                    sim.world.new_session(runs=3)
                stream = io.StringIO()
                logs.configure("info", "json", stream=stream)
                await collector.poller.cycle()
                assert value(await scrape(collector.port), "llamacloud_collector_state_write_failures_total") == 2
                (line,) = [
                    e
                    for e in map(json.loads, stream.getvalue().splitlines())
                    if e["event"] == "state not saved; will retry next cycle"
                ]
                assert "full" in line["error"] and "rollback" not in line["error"], line  # the real cause
                store.db.execute("PRAGMA max_page_count = 1073741823")
                await collector.poller.cycle()  # recovers with a full rewrite
            async with collecting(sim, state_path=str(db)) as restarted:
                assert_matches_truth(await scrape(restarted.port), sim)

    run_async(scenario())


def test_changed_buckets_and_rules_keep_every_count_exact(tmp_path):
    """New bucket bounds replay the runs into the new buckets while _count, _sum and +Inf keep every run,
    even a deleted session's; a new error rule applies to the runs counted from then on (DESIGN §4)."""

    async def scenario():
        db = tmp_path / "state.db"
        async with project() as sim:
            async with collecting(sim, cycle=True, state_path=str(db)) as first:
                before = await scrape(first.port)
            gone = next(iter(sim.world.sessions))
            sim.world.delete(gone)
            rules = [{"type": "everything", "pattern": "."}]
            async with collecting(sim, state_path=str(db), buckets={"turns": [1, 10, 100]}, error_rules=rules) as second:

                def unbucketed(samples):  # a new rule's error type shows at 0 at once (known in advance)
                    return {
                        k: v
                        for k, v in chat_values(samples).items()
                        if not k[0].endswith("_bucket") and not (k[0].endswith("_total") and v == 0)
                    }

                loaded = await scrape(second.port)
                assert unbucketed(loaded) == unbucketed(before), "exposed at once, as they were"
                calls = sim.api.calls["retrieve"]
                await second.poller.cycle()
                assert sim.api.calls["retrieve"] - calls == 19  # every listed session replayed
                session = next(s for s in sim.world.sessions.values() if s.pending is None)
                sim.world.add_run(session, fail=True)
                await second.poller.cycle()
                after = await scrape(second.port)
            for key, old in before.items():
                if (
                    key[0].startswith("llamacloud_chat_")
                    and "session" not in key[0]
                    and key[0].endswith(("_total", "_count", "_sum"))
                ):
                    assert after.get(key, 0) >= old, key
            runs = len(sim.world.runs)
            assert value(after, "llamacloud_chat_runs_total", outcome="error") == sum(r.failed for r in sim.world.runs)
            assert value(after, "llamacloud_chat_run_turns_count") == runs  # the deleted session's too
            assert value(after, "llamacloud_chat_run_turns_bucket", le="+Inf") == runs
            within_ten = value(after, "llamacloud_chat_run_turns_bucket", le="10.0")
            assert within_ten is not None and 0 < within_ten <= runs
            assert value(after, "llamacloud_chat_run_errors_total", error_type="everything") == 1  # the new run
            errors = sum(v for k, v in after.items() if k[0] == "llamacloud_chat_run_errors_total")
            assert errors == value(after, "llamacloud_chat_runs_total", outcome="error")

    run_async(scenario())


def test_shrunk_history_counts_a_reset_and_nothing_twice():
    async def scenario():
        async with project(sessions=5, runs=4) as sim, collecting(sim, cycle=True) as collector:
            session = next(s for s in sim.world.sessions.values() if s.pending is None)
            sim.world.add_run(session)
            sim.faults.add(Fault("shrink", "retrieve"))
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert value(samples, "llamacloud_collector_history_resets_total") == 1
            runs_after_shrink = sum(v for k, v in samples.items() if k[0] == "llamacloud_chat_runs_total")
            assert runs_after_shrink == len(sim.world.runs) - 1  # the shrunk read showed no new stop
            sim.world.add_run(session)  # the full history returns, one run longer
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            assert value(samples, "llamacloud_collector_history_resets_total") == 1

    run_async(scenario())
