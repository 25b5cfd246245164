"""``--semconv`` (issue 29, DESIGN §5): the same snapshot under the OpenTelemetry GenAI semantic conventions' names,
as Prometheus' default OTLP translation writes them. One snapshot, two names: every GenAI value equals the value
under our name, and nothing is counted twice."""

from __future__ import annotations

import pytest

from collector.families import CHAT, GEN_AI_CONSTANTS
from tests.helpers import Samples, assert_matches_truth, run_async, running, scrape

pytestmark = pytest.mark.tier("unit")

CONSTANTS = frozenset(GEN_AI_CONSTANTS)
HISTOGRAMS = {
    "llamacloud_chat_run_duration_seconds": ("gen_ai_invoke_agent_duration_seconds", {}),
    "llamacloud_chat_run_tokens": ("gen_ai_client_token_usage", {"token_type": "gen_ai_token_type"}),
    "llamacloud_chat_run_turns": ("gen_ai_invoke_agent_inference_calls", {}),
    "llamacloud_chat_run_tool_calls": ("gen_ai_invoke_agent_tool_calls", {}),
}
"""DESIGN §5's names, typed out here rather than read from the code under test."""


def names(samples: Samples, prefix: str) -> set[str]:
    return {name for name, _ in samples if name.startswith(prefix)}


def renamed(samples: Samples) -> Samples:
    """The GenAI histograms under our names and labels, their constant labels checked and left out."""
    out: Samples = {}
    for ours, (theirs, labels) in HISTOGRAMS.items():
        back = {v: k for k, v in labels.items()}
        for (name, pairs), value in samples.items():
            if name.startswith(theirs + "_"):
                assert pairs >= CONSTANTS, (name, pairs)
                kept = frozenset((back.get(k, k), v) for k, v in pairs - CONSTANTS)
                out[(ours + name[len(theirs) :], kept)] = value
    return out


def invocations(samples: Samples, name: str, by: str | None = None) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """The GenAI run counts: successful runs (no ``error_type``) and failed ones by type, keyed by ``by``."""
    ok: dict[tuple, float] = {}
    failed: dict[tuple, float] = {}
    for (n, pairs), value in samples.items():
        if n == name:
            assert pairs >= CONSTANTS
            labels = dict(pairs)
            where = (labels[by],) if by else ()
            if "error_type" in labels:
                failed[(*where, labels["error_type"])] = failed.get((*where, labels["error_type"]), 0) + value
            else:
                ok[where] = ok.get(where, 0) + value
    return ok, failed


def test_both_name_sets_show_equal_values_from_one_snapshot():
    async def scenario():
        async with running(sessions=25, runs=4, seed=11, semconv="both") as (sim, collector):
            await collector.run_slot()
            samples = await scrape(collector.port)
            assert_matches_truth(samples, sim)
            ours = {k: v for k, v in samples.items() if k[0].startswith(tuple(HISTOGRAMS))}
            assert ours and renamed(samples) == ours, "each GenAI histogram is ours, renamed"
            ok, failed = invocations(samples, "gen_ai_invoke_agent_invocations_total")
            runs = {dict(p)["outcome"]: v for (n, p), v in samples.items() if n == "llamacloud_chat_runs_total"}
            errors = {(dict(p)["error_type"],): v for (n, p), v in samples.items() if n == "llamacloud_chat_run_errors_total"}
            assert ok == {(): runs["success"]} and dict(failed) == errors and sum(failed.values()) == runs["error"]
            assert set(errors) >= {("timeout",), ("_OTHER",)}, "error types known in advance at 0, under both names"
            ok, failed = invocations(samples, "gen_ai_invoke_agent_data_source_invocations_total", "gen_ai_data_source_id")
            index_runs = {
                tuple(dict(p)[k] for k in ("index_id", "outcome")): v
                for (n, p), v in samples.items()
                if n == "llamacloud_chat_index_runs_total"
            }
            index_errors = {
                tuple(dict(p)[k] for k in ("index_id", "error_type")): v
                for (n, p), v in samples.items()
                if n == "llamacloud_chat_index_run_errors_total"
            }
            assert dict(ok) == {(i,): v for (i, o), v in index_runs.items() if o == "success"}
            assert dict(failed) == index_errors

    run_async(scenario())


def test_gen_ai_alone_shows_each_count_once_under_one_name():
    async def scenario():
        async with running(sessions=10, runs=3, seed=2, semconv="gen_ai") as (_sim, collector):
            await collector.run_slot()
            samples = await scrape(collector.port)
            shown = names(samples, "llamacloud_chat_")
            for ours in (*HISTOGRAMS, "llamacloud_chat_runs_total", "llamacloud_chat_run_errors_total"):
                assert not {n for n in shown if n.startswith(ours)}, f"{ours}: counted under its GenAI name"
            assert "llamacloud_chat_index_runs_total" not in shown and "llamacloud_chat_index_run_errors_total" not in shown
            # what the conventions have no name for stays under ours, and nothing else is lost
            assert {"llamacloud_chat_tool_calls_total", "llamacloud_chat_events_total", "llamacloud_chat_session_info"} <= shown
            covered = {name for f in CHAT if f.gen_ai is not None for name in (f.name, *f.gen_ai.covers)}
            kept = {f.exposed for f in CHAT if f.name not in covered and f.type != "gauge"}
            assert kept <= shown, kept - shown
            assert names(samples, "gen_ai_") >= {"gen_ai_invoke_agent_invocations_total", "gen_ai_client_token_usage_bucket"}

    run_async(scenario())


def test_the_default_is_our_names_alone():
    async def scenario():
        async with running(sessions=5, runs=2, seed=3) as (_sim, collector):
            await collector.run_slot()
            assert not names(await scrape(collector.port), "gen_ai_")

    run_async(scenario())
