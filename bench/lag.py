"""Count lag (issue 30): how late new runs are counted at each size, distance and request budget; and what
sharding costs the listing. Run through ``bench/run.py``:

    python bench/run.py --lag-matrix            # 10,000 and 100,000 sessions x 0 and 100 ms x no budget and
                                                # --max-requests-per-second 20, --interval 60 (about 30 minutes)
    python bench/run.py --lag-matrix --quick    # a smoke run: 2,000 sessions, --interval 10, 20 s of traffic
    python bench/run.py --lag-matrix --sizes 100000 --latencies-ms 100 --budgets 20   # one case
    python bench/run.py --shard-cost 3 --sessions 100000   # one collector, then 3 shards: one listing pass each

**The lag matrix.** Per size, the simulator starts once (``--runs`` runs a session, no live traffic) and a
collector syncs it at 0 ms with no budget into a state file (``--state-path``), then stops: a first sync of
100,000 sessions 100 ms away, or at 20 requests a second, would take hours, and it is not what is measured.
Then, for each distance and budget, the simulator's distance is set live (``/_sim/latency``), a collector
starts from a copy of that state file with that budget, scheduled as ``run`` schedules it (``--interval``,
default 60 as ``run``'s, its jitter, its cycle deadline), in this process; the state it saves when it stops
(everything counted) is the next case's, so no case catches up on another's runs. It settles one cycle; then
steady traffic for
``--lag-seconds``: every second, ``--lag-rate`` new runs a second in sessions picked at random over the whole
project (``/_sim/touch``, which bumps their ``last_updated_at``). After the traffic, the collector runs on
until it has counted every run the simulator made (at most a few passes and intervals), and its totals are
compared with the simulator's (``/_sim/totals``): exact, yes or no.

Printed per case: p50/p90/p99 of ``llamacloud_collector_count_lag_seconds`` (its increase from the traffic's
start) as Prometheus' ``histogram_quantile`` interpolates them from the buckets (what a user sees), and of the
exact lags the collector observed (recorded beside the histogram); the listing passes completed and their
durations; the cycles and how many were cut by their deadline; the requests a second the simulator saw
arrive (``/_sim/arrivals``: list and retrieve, and the busiest one-second window); the seconds spent
waiting for the budget (``llamacloud_collector_api_budget_wait_seconds_total``) and per request; the bench
process's CPU.

**The sharded listing cost.** The simulator at 0 ms; a collector with ``total_shards=1`` does its first sync
(one full pass, every session fetched) and one idle pass, then each of ``N`` shards does the same, one at a
time (each as if on its own pod; all in this process). Printed: list and retrieve requests per pass for
each, in total, and against the one collector; the passes' wall and CPU; whether the shards' totals add up
to the simulator's.

Not a test: nothing asserts a time. Every wait is bounded; the simulator is stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics import MetricWrapperBase

from bench.run import start_simulator
from collector import logs
from collector.app import CollectorService
from collector.poller import CycleReport
from collector.settings import load_settings

TOUCH_STEP = 1.0
"""Seconds between two touches of the traffic."""
SETTLE_TIMEOUT = 900.0
"""Seconds the first cycle of a case may take (it is cut by its deadline well before)."""


def say(text: str) -> None:
    """Progress, on stderr: the tables go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- what a user sees: histogram_quantile over the buckets --------------------------------------------------


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` (promql/quantile.go ``bucketQuantile``) over cumulative
    ``(le, count)`` pairs ending with ``+Inf``: linear within the bucket the rank falls in, 0 as the lower
    bound of the first, the highest finite bound when the rank falls in ``+Inf``; NaN with no observation."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][1] == 0:
        return math.nan
    rank = q * ordered[-1][1]
    b = next(i for i, (_, count) in enumerate(ordered) if count >= rank)
    if b == len(ordered) - 1:
        return ordered[-2][0] if len(ordered) > 1 else math.nan
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, below = (0.0, 0.0) if b == 0 else ordered[b - 1]
    end, count = ordered[b]
    return start + (end - start) * (rank - below) / (count - below)


def exact_quantile(q: float, values: Sequence[float]) -> float:
    """The nearest-rank quantile of ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def samples(metric: MetricWrapperBase) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in metric.collect() for s in family.samples]


def lag_buckets(collector: CollectorService) -> list[tuple[float, float]]:
    return [
        (float(labels["le"]), value)
        for name, labels, value in samples(collector.self_metrics.count_lag)
        if name.endswith("_bucket")
    ]


def requests_by_operation(collector: CollectorService) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, labels, value in samples(collector.self_metrics.api_requests):
        if name.endswith("_total"):
            out[labels["operation"]] = out.get(labels["operation"], 0.0) + value
    return out


def budget_waited(collector: CollectorService) -> float:
    return sum(v for name, _, v in samples(collector.self_metrics.budget_waits) if name.endswith("_total"))


# -- exactness: the collector's snapshot against the simulator's truth ---------------------------------------


def differences(collector: CollectorService, truth: dict[str, Any]) -> list[str]:
    """Where the collector's exposed totals differ from ``/_sim/totals`` (empty: exact)."""
    a = collector.poller.snapshot.aggregates
    got = {
        "runs": sum(a.runs.values()),
        "errors": a.runs["error"],
        "input_tokens": a.tokens_total["input"],
        "output_tokens": a.tokens_total["output"],
        "duration_count": a.duration.count,
        "duration_seconds_sum": a.duration.total,
        "tool_calls": sum(a.tool_calls.values()),
        "index_runs": sum(a.index_runs.values()),
    }
    want = {**{k: truth[k] for k in got}, "runs": truth["runs"] + truth["bare_runs"]}
    return [f"{k}: want {want[k]:,}, got {got[k]:,}" for k in got if abs(got[k] - want[k]) > 1e-6 * max(1.0, abs(want[k]))]


def committed_runs(collector: CollectorService) -> int:
    return int(sum(collector.poller.snapshot.aggregates.runs.values()))


# -- the collector in this process, instrumented --------------------------------------------------------------


def make_collector(sim: str, args: Any, **flags: Any) -> CollectorService:
    settings = load_settings(
        {
            "base_url": sim,
            "listen": "127.0.0.1:0",
            "log_level": "warning",
            "page_size": args.page_size,
            "max_concurrency": args.max_concurrency,
            **flags,
        },
        {},
    )
    return CollectorService(settings, "simulator")


@dataclass
class CycleRecord:
    started: float
    ended: float
    result: str
    pass_complete: bool
    pass_seconds: float | None
    fetched: int
    cut: bool


class Recorder:
    """Wraps the poller's cycle and the count-lag observer of one collector: every cycle, every exact lag."""

    def __init__(self, collector: CollectorService) -> None:
        self.cycles: list[CycleRecord] = []
        self.lags: list[tuple[float, float]] = []
        """``(monotonic time of the commit, lag)`` of every observation, as the histogram got it."""
        poller, metrics = collector.poller, collector.self_metrics
        cycle, counted_late = poller.cycle, metrics.counted_late

        async def recorded_cycle(budget: float | None = None) -> CycleReport:
            started = time.monotonic()
            report = await cycle(budget)
            self.cycles.append(
                CycleRecord(
                    started,
                    time.monotonic(),
                    report.result,
                    report.pass_complete,
                    poller.last_pass_duration if report.pass_complete else None,
                    report.fetched,
                    any("deadline" in e or "paused past" in e for e in report.errors),
                )
            )
            return report

        def recorded_lags(lags: Iterable[float]) -> None:
            lags = list(lags)
            now = time.monotonic()
            self.lags.extend((now, max(0.0, lag)) for lag in lags)
            counted_late(lags)

        poller.cycle = recorded_cycle  # type: ignore[method-assign]  # instrumented, as the scheduler calls it
        metrics.counted_late = recorded_lags  # type: ignore[method-assign]


async def wait_for(check: Any, seconds: float, step: float = 0.25) -> bool:
    """True once ``check()`` is; False after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
    return True


# -- the lag matrix ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    sessions: int
    latency_ms: float
    budget: float | None
    interval: float

    @property
    def name(self) -> str:
        budget = f"{self.budget:g}/s" if self.budget else "none"
        return f"{self.sessions:,} sessions, {self.latency_ms:g} ms, budget {budget}, interval {self.interval:g} s"


async def sync_state(sim: str, path: Path, args: Any) -> dict[str, Any]:
    """A first sync at 0 ms with no budget into ``path``; the collector then stops (and saves)."""
    collector = make_collector(sim, args, interval=3600.0, state_path=str(path))
    await collector.start(schedule=False)
    cpu, wall, cycles = time.process_time(), time.perf_counter(), 0
    while not collector.poller.state.synced or collector.poller.listing is not None:
        await collector.run_cycle()
        cycles += 1
    out = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "cycles": cycles}
    await collector.stop()
    return out


def copy_state(source: Path, target: Path) -> None:
    """The state file and its SQLite companions; a companion ``source`` has not is removed (a stale WAL would be
    replayed into the copy)."""
    for suffix in ("", "-wal", "-shm"):
        src, dst = Path(f"{source}{suffix}"), Path(f"{target}{suffix}")
        if src.exists():
            shutil.copyfile(src, dst)
        else:
            dst.unlink(missing_ok=True)


async def traffic(http: httpx.AsyncClient, sim: str, sessions: int, rate: float, seconds: float) -> int:
    """Every ``TOUCH_STEP`` seconds, new runs in random sessions at ``rate`` a second; the runs added."""
    touched, owed, step, start = 0, 0.0, 0, time.monotonic()
    while time.monotonic() < start + seconds:
        owed += rate * TOUCH_STEP
        n = int(owed)
        owed -= n
        if n:  # /_sim/touch picks int(sessions x fraction) sessions: n of them, whatever the float rounding
            answer = await http.get(sim + "/_sim/touch", params={"fraction": (n + 0.5) / sessions})
            touched += answer.json()["changed"]
        step += 1
        await asyncio.sleep(max(0.0, start + step * TOUCH_STEP - time.monotonic()))
    return touched


def arrival_figures(arrivals: list[list[Any]], start: float, end: float) -> dict[str, Any]:
    """Requests a second the simulator saw between ``start`` and ``end`` (monotonic, one clock for both
    processes): by endpoint, and the busiest one-second window."""
    seen = sorted((t, endpoint) for t, endpoint, _ in arrivals if start <= t <= end)
    times = [t for t, _ in seen]
    peak, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    span = max(1e-9, end - start)
    by = {e: sum(1 for _, x in seen if x == e) for e in ("list", "retrieve", "summary")}
    return {
        "requests": len(seen),
        "per_second": len(seen) / span,
        "list_per_second": by["list"] / span,
        "retrieve_per_second": by["retrieve"] / span,
        "peak_1s": peak,
        "window_seconds": span,
        "truncated": bool(arrivals) and arrivals[0][0] > start,  # the simulator keeps its last 100,000 requests
    }


async def run_case(sim: str, state: Path, case: Case, args: Any) -> dict[str, Any]:
    """One case, from a copy of ``state`` (a collector's, stopped after it had counted everything); the case's
    own state file is ``state`` again once it stops, for the next case: no case catches up on another's runs."""
    say(f"case: {case.name}")
    async with httpx.AsyncClient(timeout=120) as http:
        await http.get(sim + "/_sim/latency", params={"seconds": case.latency_ms / 1000})
        copy = state.with_name(state.name + ".case")
        copy_state(state, copy)
        flags: dict[str, Any] = {"interval": case.interval, "state_path": str(copy)}
        if case.budget:
            flags["max_requests_per_second"] = case.budget
        collector = make_collector(sim, args, **flags)
        record = Recorder(collector)
        await collector.start(schedule=True)
        try:
            settled = await wait_for(lambda: len(record.cycles) >= 1, SETTLE_TIMEOUT)
            say(f"  settled ({'one cycle' if settled else 'NOT settled'}); traffic for {args.lag_seconds:g} s")
            requests_before, waited_before = requests_by_operation(collector), budget_waited(collector)
            buckets_before = dict(lag_buckets(collector))
            cycles_before = len(record.cycles)
            t0, cpu0 = time.monotonic(), time.process_time()
            touched = await traffic(http, sim, case.sessions, args.lag_rate, args.lag_seconds)
            t1 = time.monotonic()
            truth_runs = (await http.get(sim + "/_sim/stats")).json()["runs"]
            longest = max([c.pass_seconds or 0.0 for c in record.cycles] + [case.interval])
            drain_limit = 4 * case.interval + 4 * longest
            say(f"  {touched} runs added; waiting for all to be counted (at most {drain_limit:.0f} s)")
            drained = await wait_for(lambda: committed_runs(collector) >= truth_runs, drain_limit, 0.1)
            t2, cpu = time.monotonic(), time.process_time() - cpu0
            truth = (await http.get(sim + "/_sim/totals")).json()
            diffs = differences(collector, truth)
            arrivals = (await http.get(sim + "/_sim/arrivals")).json()["arrivals"]
        finally:
            await collector.stop()
    copy_state(copy, state)
    requests = {k: v - requests_before.get(k, 0.0) for k, v in requests_by_operation(collector).items()}
    waited = budget_waited(collector) - waited_before
    buckets = [(le, count - buckets_before.get(le, 0.0)) for le, count in lag_buckets(collector)]  # increase()
    lags = [lag for at, lag in record.lags if at >= t0]
    cycles = record.cycles[cycles_before:]
    passes = [c.pass_seconds for c in cycles if c.pass_seconds is not None]
    all_requests = sum(requests.values())
    out: dict[str, Any] = {
        "case": asdict(case),
        "touched": touched,
        "traffic_seconds": t1 - t0,
        "drain_seconds": t2 - t1,
        "drained": drained,
        "exact": drained and not diffs,
        "differences": diffs,
        "lag_histogram": {f"{le:g}": count for le, count in buckets},
        "observations": int(buckets[-1][1]) if buckets else 0,
        "histogram_quantiles": {f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in (0.5, 0.9, 0.99)},
        "exact_quantiles": {f"p{round(q * 100)}": exact_quantile(q, lags) for q in (0.5, 0.9, 0.99)},
        "exact_max": max(lags, default=math.nan),
        "passes": passes,
        "cycles": len(cycles),
        "cycles_cut": sum(c.cut for c in cycles),
        "cycle_seconds": [round(c.ended - c.started, 2) for c in cycles],
        "arrivals": arrival_figures(arrivals, t0, t2),
        "collector_requests": requests,
        "budget_wait_seconds": waited,
        "budget_wait_per_request": waited / all_requests if all_requests else 0.0,
        "cpu_seconds": cpu,
        "wall_seconds": t2 - t0,
    }
    q, e = out["histogram_quantiles"], out["exact_quantiles"]
    say(
        f"  lag p50/p90/p99 {q['p50']:.1f}/{q['p90']:.1f}/{q['p99']:.1f} s (exact {e['p50']:.1f}/{e['p90']:.1f}/"
        f"{e['p99']:.1f}), {out['observations']} observations, passes {[round(p, 1) for p in passes]}, exact "
        f"{'yes' if out['exact'] else 'NO ' + '; '.join(diffs)}"
    )
    return out


async def lag_matrix(args: Any) -> dict[str, Any]:
    started = time.monotonic()
    out: dict[str, Any] = {"sizes": [], "cases": []}
    budgets = [b or None for b in args.budgets]
    with tempfile.TemporaryDirectory(prefix="lag-bench-") as tmp:
        folder = Path(tmp)
        for sessions in args.sizes:
            say(f"{sessions:,} sessions: starting the simulator")
            up = time.monotonic()
            sim_proc, sim = start_simulator(sessions, args.runs)
            try:
                state = folder / f"state-{sessions}.db"
                size: dict[str, Any] = {"sessions": sessions, "simulator_start_seconds": time.monotonic() - up}
                size["sync"] = await sync_state(sim, state, args)
                say(f"  synced at 0 ms in {size['sync']['wall']:.1f} s")
                out["sizes"].append(size)
                for latency in args.latencies_ms:
                    for budget in budgets:
                        case = Case(sessions, latency, budget, args.interval)
                        out["cases"].append(await run_case(sim, state, case, args))
            finally:
                sim_proc.terminate()
                sim_proc.wait()
    out["wall_seconds"] = time.monotonic() - started
    out["settings"] = {
        "runs_per_session": args.runs,
        "lag_seconds": args.lag_seconds,
        "lag_rate": args.lag_rate,
        "interval": args.interval,
        "page_size": args.page_size,
        "max_concurrency": args.max_concurrency,
        "cpus": os.cpu_count(),
    }
    return out


def _f(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def lag_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"count lag: {s['runs_per_session']} runs a session, {s['lag_rate']:g} new runs/s in random sessions for "
        f"{s['lag_seconds']:g} s, --interval {s['interval']:g} (cycle deadline 90%), page size {s['page_size']}, "
        f"--max-concurrency {s['max_concurrency']}, {s['cpus']} CPUs; whole run {result['wall_seconds'] / 60:.1f} min",
        "",
        "| sessions | distance | budget | lag p50 / p90 / p99 (histogram_quantile) | exact p50 / p90 / p99 (max) "
        "| observations | listing passes | cycles (cut) | req/s: all (list + retrieve), peak 1 s | budget wait "
        "| CPU | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        case, q, e, a = c["case"], c["histogram_quantiles"], c["exact_quantiles"], c["arrivals"]
        passes = c["passes"]
        pass_text = (
            (f"{len(passes)}: {min(passes):.1f}–{max(passes):.1f} s" if len(passes) > 1 else f"1: {passes[0]:.1f} s")
            if passes
            else "none completed"
        )
        budget = f"{case['budget']:g}/s" if case["budget"] else "none"
        wait = f"{c['budget_wait_seconds']:.0f} s ({c['budget_wait_per_request'] * 1000:.0f} ms/req)" if case["budget"] else "–"
        exact = "yes" if c["exact"] else ("no: " + "; ".join(c["differences"]) if c["drained"] else "no: not drained")
        lines.append(
            f"| {case['sessions']:,} | {case['latency_ms']:g} ms | {budget} "
            f"| {_f(q['p50'])} / {_f(q['p90'])} / {_f(q['p99'])} s "
            f"| {_f(e['p50'])} / {_f(e['p90'])} / {_f(e['p99'])} s ({_f(c['exact_max'])}) "
            f"| {c['observations']} | {pass_text} | {c['cycles']} ({c['cycles_cut']}) "
            f"| {a['per_second']:.1f} ({a['list_per_second']:.1f} + {a['retrieve_per_second']:.1f}), {a['peak_1s']}"
            f"{' (arrivals truncated: low)' if a['truncated'] else ''} "
            f"| {wait} | {c['cpu_seconds']:.1f} s | {exact} |"
        )
    lines += ["", "| sessions | simulator start | first sync at 0 ms, no budget (wall, CPU) |", "|---|---|---|"]
    for size in result["sizes"]:
        sync = size["sync"]
        lines.append(
            f"| {size['sessions']:,} | {size['simulator_start_seconds']:.0f} s | {sync['wall']:.1f} s, {sync['cpu']:.1f} s |"
        )
    lines += [
        "",
        "Lag: from a session's last_updated_at to the commit that counted its new runs; histogram_quantile as "
        "Prometheus computes it from llamacloud_collector_count_lag_seconds' buckets (1 2 5 10 20 30 60 120 300 600 "
        "1200 1800 3600), exact from the observations themselves. Requests: what the simulator saw arrive "
        "(/_sim/arrivals) from the traffic's start to the last run counted. CPU: this process (the collector), "
        "over the same window.",
    ]
    return "\n".join(lines)


# -- the sharded listing cost ---------------------------------------------------------------------------------


async def one_pass(collector: CollectorService, sim: str) -> dict[str, Any]:
    """Cycles until a listing pass completes: its wall, CPU, cycles, and the requests the simulator saw."""
    async with httpx.AsyncClient(timeout=120) as http:
        before = (await http.get(sim + "/_sim/stats")).json()["calls"]
        cpu, wall, cycles = time.process_time(), time.perf_counter(), 0
        while True:
            report = await collector.run_cycle()
            cycles += 1
            if report.pass_complete:
                break
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = (await http.get(sim + "/_sim/stats")).json()["calls"]
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in ("list", "retrieve", "summary")}
    return {"wall": wall, "cpu": cpu, "cycles": cycles, "calls": calls}


async def shard_cost(args: Any) -> dict[str, Any]:
    started = time.monotonic()
    sessions, shards = args.sessions, args.shard_cost
    say(f"shard cost: {sessions:,} sessions, 1 collector then {shards} shards, at 0 ms")
    sim_proc, sim = start_simulator(sessions, args.runs)
    out: dict[str, Any] = {"sessions": sessions, "page_size": args.page_size, "layouts": []}
    try:
        truth = httpx.get(sim + "/_sim/totals", timeout=120).json()
        for total in (1, shards):
            layout: dict[str, Any] = {"total_shards": total, "shards": []}
            runs = watched = 0
            for shard in range(total):
                collector = make_collector(sim, args, interval=3600.0, shard=shard, total_shards=total)
                await collector.start(schedule=False)
                try:
                    first = await one_pass(collector, sim)
                    idle = await one_pass(collector, sim)
                    runs += committed_runs(collector)
                    watched += len(collector.poller.state.sessions)
                finally:
                    await collector.stop()
                layout["shards"].append({"shard": shard, "first_sync": first, "idle_pass": idle})
                say(
                    f"  shard {shard} of {total}: first sync {first['wall']:.1f} s, {first['calls']['list']} list + "
                    f"{first['calls']['retrieve']} retrieve; idle pass {idle['wall']:.2f} s, {idle['calls']['list']} list"
                )
            layout["exact"] = runs == truth["runs"] + truth["bare_runs"] and watched == truth["sessions"]
            layout["runs"], layout["watched"] = runs, watched
            out["layouts"].append(layout)
    finally:
        sim_proc.terminate()
        sim_proc.wait()
    out["wall_seconds"] = time.monotonic() - started
    return out


def shard_table(result: dict[str, Any]) -> str:
    lines = [
        f"sharded listing cost: {result['sessions']:,} sessions at 0 ms, page size {result['page_size']}; each shard "
        f"alone in turn (as on its own pod); whole run {result['wall_seconds'] / 60:.1f} min",
        "",
        "| layout | shard | first sync: list + retrieve requests | first sync wall, CPU | idle pass: list requests "
        "| idle pass wall, CPU |",
        "|---|---|---|---|---|---|",
    ]
    base = result["layouts"][0]
    base_list = sum(s["idle_pass"]["calls"]["list"] for s in base["shards"])
    for layout in result["layouts"]:
        name = f"{layout['total_shards']} shard{'s' if layout['total_shards'] > 1 else ''}"
        for s in layout["shards"]:
            f, i = s["first_sync"], s["idle_pass"]
            lines.append(
                f"| {name} | {s['shard']} | {f['calls']['list']:,} + {f['calls']['retrieve']:,} | {f['wall']:.1f} s, "
                f"{f['cpu']:.1f} s | {i['calls']['list']:,} | {i['wall']:.2f} s, {i['cpu']:.2f} s |"
            )
        shards = layout["shards"]
        total_list = sum(s["idle_pass"]["calls"]["list"] for s in shards)
        lines.append(
            f"| {name} | **all** | {sum(s['first_sync']['calls']['list'] for s in shards):,} + "
            f"{sum(s['first_sync']['calls']['retrieve'] for s in shards):,} "
            f"| {sum(s['first_sync']['wall'] for s in shards):.1f} s, {sum(s['first_sync']['cpu'] for s in shards):.1f} s "
            f"| {total_list:,} ({total_list / max(1, base_list):.1f}x one collector) "
            f"| {sum(s['idle_pass']['wall'] for s in shards):.2f} s, {sum(s['idle_pass']['cpu'] for s in shards):.2f} s |"
        )
        lines.append(
            f"| {name} | exact | runs {layout['runs']:,}, sessions {layout['watched']:,}: "
            f"{'yes' if layout['exact'] else 'NO'} | | | |"
        )
    return "\n".join(lines)


# -- entry (from bench/run.py) --------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` as strict JSON: NaN and infinities (a quantile of nothing) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def main(args: Any) -> None:
    log = Path(tempfile.gettempdir()) / f"lag-bench-{time.strftime('%Y%m%dT%H%M%S')}.log"
    say(f"the collectors' warnings (failed runs, cut cycles) go to {log}")
    result: dict[str, Any] = {}
    with log.open("a") as stream:
        logs.configure("warning", "console", stream=stream)
        if args.lag_matrix:
            result["lag"] = asyncio.run(lag_matrix(args))
            print("\n" + lag_table(result["lag"]) + "\n", flush=True)
        if args.shard_cost:
            result["shard_cost"] = asyncio.run(shard_cost(args))
            print("\n" + shard_table(result["shard_cost"]) + "\n", flush=True)
    print(json.dumps(plain(result), allow_nan=False))
    if args.json:
        Path(args.json).write_text(json.dumps(plain(result), indent=2, allow_nan=False))
