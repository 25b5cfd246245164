"""Test helpers: run a collector against the simulator, scrape it, and compute the truth."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from collector.app import CollectorService
from collector.derive import RunRecord, ToolCall
from collector.families import HISTOGRAMS
from collector.settings import load_settings
from collector.simulator.service import SimulatorService
from collector.simulator.world import RunTruth, World

Samples = dict[tuple[str, frozenset], float]

DESIGN_BUCKETS = {
    "duration": (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6, 600, 1200),
    "tokens": (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
    "turns": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
    "tool_calls": (0, 1, 2, 4, 8, 16, 32, 64, 128),
}
"""The default buckets as DESIGN §5 writes them, typed out here rather than imported from the code under test
(``tests/test_families.py`` holds the table's defaults to them)."""


def record(run: RunTruth) -> RunRecord:
    """A simulated run as the collector must derive it from its events: what each histogram family's
    observation of it must be. A new field of ``RunRecord`` without a default fails here until it is given."""
    return RunRecord(
        failed=run.failed,
        error_type=run.error_type,
        duration_seconds=None if run.duration_ms is None else run.duration_ms / 1000,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        turns=run.turns,
        tool_calls=tuple(ToolCall(name, ok) for name, ok in run.tool_calls),
        skipped_index_ids=run.skipped_index_ids,
    )


def parse(text: str, *, projects: bool = False) -> Samples:
    """The samples of an exposition, by name and labels. Without ``projects``, ``project_id`` is left out of the
    labels (one project's collector: the tests that watch one project compare values, not the label), and a
    sample of the same name and other labels twice (two projects) fails."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels if projects else {k: v for k, v in sample.labels.items() if k != "project_id"}
            key = (sample.name, frozenset(labels.items()))
            assert projects or key not in out, f"{key}: twice (several projects? parse with projects=True)"
            out[key] = sample.value
    return out


async def scrape(port: int, *, projects: bool = False, **headers: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", headers=headers)
        response.raise_for_status()
        return parse(response.text, projects=projects)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def family(samples: Samples, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@contextlib.asynccontextmanager
async def simulating(
    sim: SimulatorService | None = None, *, world: World | None = None, sessions: int = 30, runs: int = 4, seed: int = 7
) -> AsyncIterator[SimulatorService]:
    """A simulator, started and stopped again: ``world`` if given, else ``sessions`` of ``runs`` each."""
    if sim is None:
        sim = (
            SimulatorService(world=world, rate=0)
            if world is not None
            else SimulatorService(sessions=sessions, runs=runs, seed=seed, rate=0)
        )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def collecting(sim: SimulatorService, *, cycle: bool = False, **flags) -> AsyncIterator[CollectorService]:
    """A collector of ``sim``, started unscheduled (the test runs its cycles; ``cycle`` runs the first) and
    stopped again whatever the test does. Several may run in turn against one simulator (a restart)."""
    collector = collector_for(sim, **flags)
    try:
        await collector.start(schedule=False)
        if cycle:
            await collector.poller.cycle()
        yield collector
    finally:
        await collector.stop()


@contextlib.asynccontextmanager
async def running(
    sim: SimulatorService | None = None,
    *,
    world: World | None = None,
    sessions: int = 30,
    runs: int = 4,
    seed: int = 7,
    cycle: bool = False,
    **flags,
) -> AsyncIterator[tuple[SimulatorService, CollectorService]]:
    """The simulator-plus-collector pair of most in-process tests (``simulating`` and ``collecting``)."""
    async with (
        simulating(sim, world=world, sessions=sessions, runs=runs, seed=seed) as sim,
        collecting(sim, cycle=cycle, **flags) as collector,
    ):
        yield sim, collector


def collector_for(sim: SimulatorService, key: str = "simulator", **flags) -> CollectorService:
    settings = load_settings({"base_url": sim.base_url, "listen": "127.0.0.1:0", "interval": 30.0, **flags}, {})
    return CollectorService(settings, key)


def _hist(values: Iterable[float], bounds: tuple[float, ...], name: str, **labels: str) -> Samples:
    values = list(values)
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    out: Samples = {}
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        le = floatToGoString(bound)  # DESIGN §5: as prometheus_client writes it
        out[(name + "_bucket", frozenset({**labels, "le": le}.items()))] = running
    out[(name + "_count", frozenset(labels.items()))] = len(values)
    out[(name + "_sum", frozenset(labels.items()))] = sum(values)
    return out


def expected(runs: list[RunTruth], events: Counter) -> Samples:
    """The chat families as they must be, computed from the simulator's record of each run."""
    p = "llamacloud_chat_"
    out: Samples = {}
    for outcome, failed in (("success", False), ("error", True)):
        out[(p + "runs_total", frozenset({"outcome": outcome}.items()))] = sum(r.failed == failed for r in runs)
    for error_type, n in Counter(r.error_type for r in runs if r.failed).items():
        out[(p + "run_errors_total", frozenset({"error_type": error_type}.items()))] = n
    records = [record(r) for r in runs]
    for family in HISTOGRAMS:
        observed: dict[str | None, list[float]] = {key: [] for key in family.series_keys()}
        for rec in records:
            for key, value in family.observe(rec):
                observed[key].append(value)
        for key, values in observed.items():
            labels = {} if key is None else {family.labels[0]: key}
            out.update(_hist(values, family.buckets, family.name, **labels))
    for kind, attr in (("input", "input_tokens"), ("output", "output_tokens")):
        values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        out[(p + "tokens_total", frozenset({"token_type": kind}.items()))] = sum(values)
    calls = Counter((name, "result" if ok else "no_result") for r in runs for name, ok in r.tool_calls)
    for (tool, outcome), n in calls.items():
        out[(p + "tool_calls_total", frozenset({"tool": tool, "outcome": outcome}.items()))] = n
    for index_id, n in Counter(i for r in runs for i in r.skipped_index_ids).items():
        out[(p + "skipped_index_queries_total", frozenset({"index_id": index_id}.items()))] = n
    # DESIGN §5, typed out: a run counts under each index of its session, under _none when it has none
    for (index_id, outcome), n in Counter(
        (i, "error" if r.failed else "success") for r in runs for i in (r.index_ids or ("_none",))
    ).items():
        out[(p + "index_runs_total", frozenset({"index_id": index_id, "outcome": outcome}.items()))] = n
    for (index_id, error_type), n in Counter(
        (i, r.error_type) for r in runs if r.failed for i in (r.index_ids or ("_none",))
    ).items():
        out[(p + "index_run_errors_total", frozenset({"index_id": index_id, "error_type": error_type}.items()))] = n
    for kind, n in events.items():
        out[(p + "events_total", frozenset({"event_type": kind}.items()))] = n
    return out


def chat_samples(samples: Samples) -> Samples:
    """The aggregated chat families, without per-session and gauge series."""
    skip = ("llamacloud_chat_session_", "llamacloud_chat_runs_in_progress", "llamacloud_chat_oldest_run")
    return {k: v for k, v in samples.items() if k[0].startswith("llamacloud_chat_") and not k[0].startswith(skip)}


def assert_matches_truth(samples: Samples, sim: SimulatorService) -> None:
    assert_samples_match(samples, sim.world.runs, sim.world.events)


def remote_truth(base_url: str) -> tuple[list[RunTruth], Counter]:
    """The ground truth of a simulator running in another process."""
    body = httpx.get(base_url + "/_sim/truth", timeout=30).json()
    runs = [
        RunTruth(
            **{
                **r,
                "tool_calls": tuple(map(tuple, r["tool_calls"])),
                "skipped_index_ids": tuple(r["skipped_index_ids"]),
                "index_ids": tuple(r.get("index_ids", ())),
            }
        )
        for r in body["runs"]
    ]
    return runs, Counter(body["events"])


def assert_samples_match(samples: Samples, runs: list[RunTruth], events: Counter) -> None:
    want = expected(runs, events)
    got = chat_samples(samples)
    missing = {k: (v, got.get(k)) for k, v in want.items() if abs(got.get(k, -1) - v) > 1e-6 * max(1, abs(v))}
    extra = {k: v for k, v in got.items() if k not in want and v != 0}
    shown = dict(sorted(missing.items(), key=lambda kv: kv[0][0])[:8])
    assert not missing and not extra, f"{len(missing)} series differ from truth (want, got): {shown}; unexpected: {extra}"


def run_async(coro):
    return asyncio.run(coro)
