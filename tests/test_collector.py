"""The whole collector against the simulator over loopback HTTP: every number equals the truth."""

import httpx
import pytest

from collector.simulator.world import World, populate
from tests.helpers import assert_matches_truth, collecting, family, run_async, running, scrape, simulating, value

pytestmark = pytest.mark.tier("unit")


def test_every_family_equals_ground_truth_and_idle_cycles_fetch_nothing():
    async def scenario():
        async with running() as (sim, collector):
            before = await scrape(collector.port)
            assert not any(name.startswith("llamacloud_chat_") for name, _ in before), "hidden until synced"
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            assert value(samples, "llamacloud_collector_sessions_watched") == 30
            assert value(samples, "llamacloud_chat_runs_in_progress") == 1  # populate leaves one unfinished
            calls = dict(sim.api.calls)
            await collector.poller.cycle()
            idle = {k: sim.api.calls[k] - calls.get(k, 0) for k in sim.api.calls}
            assert idle == {"list": 1, "retrieve": 0, "projects": 0}  # the default project is named once
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_new_runs_are_counted_exactly_once():
    async def scenario():
        async with running() as (sim, collector):
            await collector.poller.cycle()
            world = sim.world
            for session in list(world.sessions.values())[:5]:
                world.add_run(session)
            world.new_session(runs=2)
            for _ in range(3):
                await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            assert value(samples, "llamacloud_collector_session_fetches_total", reason="changed") == 5
            assert value(samples, "llamacloud_collector_session_fetches_total", reason="new") == 31

    run_async(scenario())


def test_unfinished_run_counts_only_when_its_stop_arrives():
    async def scenario():
        clock = [1000.0]
        async with running(sessions=3, runs=1, seed=3) as (sim, collector):
            collector.poller.clock = lambda: clock[0]
            session = next(s for s in sim.world.sessions.values() if s.pending is None)
            sim.world.start_run(session)
            await collector.poller.cycle()
            runs_before = len(sim.world.runs)
            samples = await scrape(collector.port)
            assert sum(family(samples, "llamacloud_chat_runs_total").values()) == runs_before
            assert value(samples, "llamacloud_chat_runs_in_progress") == 2
            clock[0] += 50
            other = next(s for s in sim.world.sessions.values() if s.pending is None)
            sim.world.add_run(other)  # an unrelated change: the unfinished runs are seen again
            await collector.poller.cycle()
            assert collector.poller.snapshot.oldest_in_progress_since == 1000.0  # first seen, not re-seen
            sim.world.finish_pending(session)
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            assert value(samples, "llamacloud_chat_runs_in_progress") == 1

    run_async(scenario())


def test_session_that_disappears_keeps_its_contribution():
    async def scenario():
        async with running(sessions=10, runs=3) as (sim, collector):
            await collector.poller.cycle()
            gone = next(iter(sim.world.sessions))
            sim.world.delete(gone)
            await collector.poller.cycle()  # one pass without it: unconfirmed, still watched
            assert value(await scrape(collector.port), "llamacloud_collector_sessions_watched") == 10
            await collector.poller.cycle()  # two in a row: gone
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)  # the truth still holds the deleted session's runs
            assert value(samples, "llamacloud_collector_sessions_watched") == 9
            assert value(samples, "llamacloud_chat_session_info", session_id=gone, shared_access="query", index_ids="") is None
            assert not any(dict(k).get("session_id") == gone for k in family(samples, "llamacloud_chat_session_runs_total"))

    run_async(scenario())


def test_per_session_series_match_each_session():
    async def scenario():
        async with running(sessions=8, runs=3, session_series_limit=5) as (sim, collector):
            await collector.poller.cycle()
            samples = await scrape(collector.port)
            runs = family(samples, "llamacloud_chat_session_runs_total")
            shown = {dict(k)["session_id"] for k in runs}
            newest = sorted(sim.world.sessions.values(), key=lambda s: s.last_updated_at)[-5:]
            assert shown == {s.session_id for s in newest}
            assert value(samples, "llamacloud_collector_series_dropped", family="sessions") == 3
            for s in newest:
                truth = [r for r in sim.world.runs if r.session_id == s.session_id]  # each with its tokens
                assert value(samples, "llamacloud_chat_session_runs_total", session_id=s.session_id, outcome="error") == sum(
                    r.failed for r in truth
                )
                assert value(samples, "llamacloud_chat_session_tokens_total", session_id=s.session_id, token_type="input") == sum(
                    r.input_tokens or 0 for r in truth
                )
                job = s.job_metadata
                assert job is not None
                assert value(samples, "llamacloud_chat_session_last_run_error", session_id=s.session_id) == float(job["is_error"])
                assert value(samples, "llamacloud_chat_session_last_run_turns", session_id=s.session_id) == job["turns"]
                info = value(
                    samples,
                    "llamacloud_chat_session_info",
                    session_id=s.session_id,
                    shared_access=s.shared_access,
                    index_ids=",".join(s.index_ids or []),
                )
                assert info == 1.0
            assert not any("title" in dict(k) for k in family(samples, "llamacloud_chat_session_info"))

    run_async(scenario())


def test_titles_only_with_expose_titles_and_truncated():
    async def scenario():
        async with running(sessions=2, runs=1, expose_titles=True) as (sim, collector):
            next(iter(sim.world.sessions.values())).title = "x" * 100
            await collector.poller.cycle()
            titles = {dict(k)["title"] for k in family(await scrape(collector.port), "llamacloud_chat_session_info")}
            assert "x" * 64 in titles and all(len(t) <= 64 for t in titles)

    run_async(scenario())


def test_restart_without_state_rederives_identical_values():
    async def scenario():
        values = []
        async with simulating(world=populate(World(seed=11), 20, 4)) as sim:
            for _ in range(2):
                async with collecting(sim, cycle=True) as collector:
                    samples = await scrape(collector.port)
                values.append({k: v for k, v in samples.items() if k[0].startswith("llamacloud_chat_") and "oldest" not in k[0]})
        assert values[0] == values[1] and values[0]

    run_async(scenario())


def test_explicit_session_ids_use_summary_and_index_filter_limits_discovery():
    async def scenario():
        async with simulating(sessions=12, runs=2, seed=5) as sim:
            ids = list(sim.world.sessions)[:3]
            async with collecting(sim, cycle=True, session_ids=[*ids, "does-not-exist"]) as collector:
                assert set(collector.poller.state.sessions) == set(ids)
                assert sim.api.calls["summary"] == 4 and sim.api.calls["list"] == 0
            index = next(s.index_ids[0] for s in sim.world.sessions.values() if s.index_ids)
            async with collecting(sim, cycle=True, index_ids=[index]) as collector:
                want = {s.session_id for s in sim.world.sessions.values() if index in (s.index_ids or [])}
                assert set(collector.poller.state.sessions) == want and want

    run_async(scenario())


def test_endpoints_readiness_gzip_openmetrics_and_methods():
    async def scenario():
        async with running(sessions=3, runs=1) as (_sim, collector), httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{collector.port}"
            assert (await http.get(base + "/readyz")).status_code == 503
            assert (await http.get(base + "/healthz")).status_code == 200
            await collector.poller.cycle()
            assert (await http.get(base + "/readyz")).status_code == 200
            om = await http.get(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
            assert om.headers["content-type"].startswith("application/openmetrics-text")
            assert om.text.rstrip().endswith("# EOF")
            gz = await http.get(base + "/metrics", headers={"Accept-Encoding": "gzip"})
            assert gz.headers["content-encoding"] == "gzip" and "llamacloud_chat_runs_total" in gz.text
            assert (await http.head(base + "/metrics")).status_code == 200
            assert (await http.post(base + "/metrics", content=b"x")).status_code == 405
            page = await http.get(base + "/")
            assert "/metrics" in page.text and "success" in page.text
            assert (await http.get(base + "/nope")).status_code == 404

    run_async(scenario())


def test_api_down_sets_up_to_zero_and_keeps_serving():
    async def scenario():
        async with running(sessions=3, runs=1, interval=1.0) as (sim, collector):  # retries end by 0.9 s
            await collector.poller.cycle()
            await sim.stop()
            report = await collector.poller.cycle()
            samples = await scrape(collector.port)
            assert report.result == "failure"
            assert value(samples, "llamacloud_collector_up") == 0
            assert value(samples, "llamacloud_collector_polls_total", result="failure") == 1
            assert_matches_truth(samples, sim)  # the counted runs are still served

    run_async(scenario())


def test_timestamp_format_differences_do_not_defeat_change_detection():
    async def scenario():
        async with running(sessions=5, runs=2) as (sim, collector):
            original = sim.api._answer

            def retrieve_in_z_format(endpoint, parts, request):
                response = original(endpoint, parts, request)
                if endpoint == "retrieve":  # same instant, another spelling than the listing
                    response.body = response.body.replace(b'+00:00"', b'Z"')
                return response

            sim.api._answer = retrieve_in_z_format  # type: ignore[method-assign]  # a fault for this instance only
            await collector.poller.cycle()
            fetched = sim.api.calls["retrieve"]
            await collector.poller.cycle()
            assert sim.api.calls["retrieve"] == fetched  # the idle cycle fetched nothing
            assert_matches_truth(await scrape(collector.port), sim)

    run_async(scenario())


def test_a_session_missing_from_one_listing_is_not_counted_twice():
    async def scenario():
        async with running(sessions=6, runs=3) as (sim, collector):
            await collector.poller.cycle()
            hidden = next(s for s in sim.world.sessions.values() if s.pending is None)
            original = sim.api._answer

            def listing_without(endpoint, parts, request):  # a listing that skips one session
                response = original(endpoint, parts, request)
                if endpoint == "list":
                    response.body = response.body.replace(hidden.session_id.encode(), b"x" * 8)
                    response.body = response.body.replace(b'"session_id": "xxxxxxxx", ', b'"session_id": 7, ')
                return response

            sim.api._answer = listing_without  # type: ignore[method-assign]  # a fault for this instance only
            report = await collector.poller.cycle()
            assert report.invalid == 1
            report = await collector.poller.cycle()  # missing from two passes in a row: retired
            samples = await scrape(collector.port)
            assert report.invalid == 1 and value(samples, "llamacloud_collector_sessions_watched") == 5
            assert value(samples, "llamacloud_collector_invalid_payloads_total", operation="list") == 2
            sim.api._answer = original  # type: ignore[method-assign]  # the fault undone
            await collector.poller.cycle()  # back, unchanged: restored without a fetch
            sim.world.add_run(hidden)
            await collector.poller.cycle()  # back and changed: resumes from its cursor
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            assert value(samples, "llamacloud_collector_sessions_watched") == 6

    run_async(scenario())
