"""Benchmark: the collector against the simulator, and the official-SDK peer, on this machine.

    python bench/run.py                      # 10,000 sessions x 5 runs (about 3 minutes)
    python bench/run.py --sessions 2000      # quicker
    python bench/run.py --sessions 100000 --latency-ms 100 --max-concurrency 32   # a big project, far away
    python bench/run.py --lag-matrix         # count-lag percentiles: 10,000 and 100,000 sessions, 0 and 100 ms,
                                             # with and without --max-requests-per-second 20 (about 30 minutes)
    python bench/run.py --lag-matrix --quick # the same, small and short: a smoke run (about 2 minutes)
    python bench/run.py --shard-cost 3 --sessions 100000   # the listing's cost: one collector against 3 shards

With ``--latency-ms`` every API answer is delayed, as a real API 50-300 ms away is; the
figures then include the listing pass (every page, one after another) and the freshness:
the time from a new failed run on the last page to the counter moving, with the scheduler
at ``--interval``. The SDK peer is then run on ``--peer-limit`` sessions and its figures are
per session, scaled to the whole project.

The collector runs in this process (its CPU is this process's CPU); the simulator and the
peer run in their own processes. Prints a table of figures and ratios. Not a test: nothing
here asserts a time.

``--lag-matrix`` and ``--shard-cost`` run ``bench/lag.py`` instead (its docstring says how): a table of
``llamacloud_collector_count_lag_seconds`` percentiles per size, distance and request budget, and of the
listing requests a pass costs one collector and N shards; then the same figures as one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peer import peak_rss_mb  # noqa: E402
from collector.app import CollectorService  # noqa: E402
from collector.cadence import Cadence  # noqa: E402
from collector.settings import load_settings  # noqa: E402
from tests.stack import free_port, wait_until  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def start_simulator(sessions: int, runs: int, latency_ms: float = 0.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "simulate",
            "--port",
            str(port),
            "--sessions",
            str(sessions),
            "--runs",
            str(runs),
            "--rate",
            "0",
            "--seed",
            "1",
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "LLAMA_CLOUD_API_KEY": "simulator"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/_sim/stats").status_code == 200, 300, "simulator", interval=1)
    return proc, url


def sim_stats(url: str) -> dict:
    return httpx.get(url + "/_sim/stats", timeout=60).json()


async def measure_cycle(collector: CollectorService, sim: str) -> dict:
    before = sim_stats(sim)
    cpu, wall = time.process_time(), time.perf_counter()
    report = await collector.run_cycle()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = sim_stats(sim)
    calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in ("list", "retrieve", "summary")}
    return {
        "cpu": cpu,
        "wall": wall,
        "calls": calls,
        "bytes": after["bytes_sent"] - before["bytes_sent"],
        "result": report.result,
        "fetched": report.fetched,
        "runs_added": report.runs_added,
    }


def measure_metrics(port: int, rounds: int = 30) -> dict:
    with httpx.Client() as http:
        times, size, gz = [], 0, 0
        for _ in range(rounds):
            started = time.perf_counter()
            body = http.get(f"http://127.0.0.1:{port}/metrics").content
            times.append(time.perf_counter() - started)
            size = len(body)
        gz = len(gzip.compress(body, 5))
    return {
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": sorted(times)[int(rounds * 0.95) - 1] * 1000,
        "bytes": size,
        "gzip_bytes": gz,
    }


async def freshness(collector: CollectorService, sim: str, interval: float) -> dict:
    """Cycles as the scheduler runs them, every ``interval``: how long a new failed run on the last page
    takes to reach the counter, added just after a pass went by it (the slow case)."""
    poller = collector.poller
    poller.cadence = Cadence(interval)
    while poller.listing is not None:  # finish any pass under way
        await collector.run_cycle()
    errors = poller.snapshot.aggregates.runs["error"]
    await asyncio.to_thread(httpx.get, sim + "/_sim/touch", params={"last": "1", "fail": "1"}, timeout=60)
    added, cycles = time.perf_counter(), 0
    while poller.snapshot.aggregates.runs["error"] == errors:
        started = time.perf_counter()
        await collector.run_cycle()
        cycles += 1
        if poller.snapshot.aggregates.runs["error"] == errors:
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return {
        "seconds": time.perf_counter() - added,
        "cycles": cycles,
        "interval": interval,
        "pass_seconds": poller.last_pass_duration,
    }


async def collector_phase(sim: str, sessions: int, args) -> dict:
    settings = load_settings(
        {
            "base_url": sim,
            "listen": "127.0.0.1:0",
            "interval": 3600.0,
            "log_level": "warning",
            "page_size": args.page_size,
            "max_concurrency": args.max_concurrency,
        },
        {},
    )
    gc.collect()
    before = rss_mb()
    collector = CollectorService(settings, "simulator")
    await collector.start(schedule=False)
    out: dict[str, Any] = {"initial": await measure_cycle(collector, sim)}
    out["first_idle"] = await measure_cycle(collector, sim)  # every page parsed; the quiet ones kept (PageMemo)
    out["idle"] = await measure_cycle(collector, sim)  # an idle cycle from then on: the pages known, unparsed
    gc.collect()
    out["rss_rest_mb"], out["rss_before_mb"] = rss_mb(), before
    httpx.get(sim + "/_sim/touch", params={"fraction": 0.1}, timeout=60)
    out["changed_10pct"] = await measure_cycle(collector, sim)
    out["metrics"] = await asyncio.to_thread(measure_metrics, collector.port)
    out["freshness"] = await freshness(collector, sim, args.interval)
    out["peak_rss_mb"] = peak_rss_mb()
    await collector.stop()
    return out


def run_json(args: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _numbers(kind: type) -> Callable[[str], list]:
    """An argparse type: comma-separated numbers of ``kind``."""
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-events", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every API answer")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument(
        "--interval", type=float, help="the scheduler's interval, for freshness and the lag matrix (default 60; 10 with --quick)"
    )
    parser.add_argument(
        "--peer-limit",
        type=int,
        help="sessions the SDK peer reads (default: all, or 2,000 "
        "with --latency-ms); its figures are scaled to the whole project",
    )
    parser.add_argument("--skip-big", action="store_true", help="skip the one-big-session measure")
    parser.add_argument("--json", help="also write the figures to this file")
    lag = parser.add_argument_group("count lag and sharding (bench/lag.py)")
    lag.add_argument("--lag-matrix", action="store_true", help="count-lag percentiles for every size x distance x budget")
    lag.add_argument("--sizes", type=_numbers(int), help="sessions, comma-separated (default 10000,100000; 2000 with --quick)")
    lag.add_argument("--latencies-ms", type=_numbers(float), default=[0.0, 100.0], help="distances (default 0,100)")
    lag.add_argument(
        "--budgets", type=_numbers(float), default=[0.0, 20.0], help="--max-requests-per-second values, 0 for none (default 0,20)"
    )
    lag.add_argument("--lag-seconds", type=float, help="seconds of traffic per case (default 120; 20 with --quick)")
    lag.add_argument("--lag-rate", type=float, default=2.0, help="new runs a second, in random sessions (default 2)")
    lag.add_argument("--quick", action="store_true", help="a smoke run of the matrix: small, short, --interval 10")
    lag.add_argument(
        "--shard-cost", type=int, metavar="N", help="listing requests per pass: one collector, then N shards (--sessions)"
    )
    args = parser.parse_args()
    if args.interval is None:
        args.interval = 10.0 if args.quick else 60.0
    if args.lag_matrix or args.shard_cost:
        from bench import lag as lag_bench

        args.sizes = args.sizes or ([2000] if args.quick else [10_000, 100_000])
        args.lag_seconds = args.lag_seconds or (20.0 if args.quick else 120.0)
        lag_bench.main(args)
        return
    limit = args.peer_limit or (min(args.sessions, 2000) if args.latency_ms else None)

    sim_proc, sim = start_simulator(args.sessions, args.runs, args.latency_ms)
    try:
        ours = asyncio.run(collector_phase(sim, args.sessions, args))
        before = sim_stats(sim)
        peer = run_json(["bench/peer.py", "--base-url", sim, *(["--limit", str(limit)] if limit else [])])
        after = sim_stats(sim)
        peer["calls"] = sum(after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"])
        scale = args.sessions / max(1, peer["sessions"])
        for key in ("cpu_seconds", "wall_seconds", "calls"):
            peer[key] *= scale
    finally:
        sim_proc.terminate()
        sim_proc.wait()
    big = None
    if not args.skip_big:
        big_proc, big_sim = start_simulator(1, 1)  # the big session with one small one for warm-up
        try:
            big = run_json(["bench/big_session.py", "--base-url", big_sim, "--events", str(args.big_events)])
        finally:
            big_proc.terminate()
            big_proc.wait()
    report(args, ours, peer, big)
    if args.json:
        Path(args.json).write_text(json.dumps({"ours": ours, "peer": peer, "big": big}, indent=2))


def report(args, ours: dict, peer: dict, big: dict | None) -> None:
    n = args.sessions
    init, idle, changed, metrics = ours["initial"], ours["idle"], ours["changed_10pct"], ours["metrics"]
    calls = lambda c: sum(c.values())  # noqa: E731
    rows = [
        (
            "initial sync: wall",
            f"{init['wall']:.2f} s",
            f"{peer['wall_seconds']:.2f} s",
            f"{peer['wall_seconds'] / init['wall']:.1f}x",
        ),
        (
            "initial sync: CPU",
            f"{init['cpu']:.2f} s",
            f"{peer['cpu_seconds']:.2f} s",
            f"{peer['cpu_seconds'] / init['cpu']:.1f}x",
        ),
        (
            "initial sync: CPU per session",
            f"{init['cpu'] / n * 1000:.3f} ms",
            f"{peer['cpu_seconds'] / n * 1000:.3f} ms",
            f"{peer['cpu_seconds'] / init['cpu']:.1f}x",
        ),
        ("initial sync: API calls", f"{calls(init['calls'])} ({init['calls']['list']} list)", f"{peer['calls']}", ""),
        (
            "idle cycle: CPU",
            f"{idle['cpu'] * 1000:.0f} ms",
            f"{peer['cpu_seconds'] * 1000:.0f} ms",
            f"{peer['cpu_seconds'] / idle['cpu']:.0f}x",
        ),
        (
            "first idle cycle after the sync: CPU",
            f"{ours['first_idle']['cpu'] * 1000:.0f} ms",
            f"{peer['cpu_seconds'] * 1000:.0f} ms",
            f"{peer['cpu_seconds'] / ours['first_idle']['cpu']:.0f}x",
        ),
        (
            "idle cycle: API calls",
            f"{idle['calls']['list']} list, {idle['calls']['retrieve']} retrieve",
            f"{peer['calls']}",
            f"{peer['calls'] / max(1, calls(idle['calls'])):.0f}x",
        ),
        ("idle cycle: bytes received", f"{idle['bytes'] / 2**20:.1f} MiB", "", ""),
        (
            "10% changed: CPU",
            f"{changed['cpu']:.2f} s",
            f"{peer['cpu_seconds']:.2f} s",
            f"{peer['cpu_seconds'] / changed['cpu']:.1f}x",
        ),
        (
            "10% changed: API calls",
            f"{changed['calls']['list']} list, {changed['calls']['retrieve']} retrieve",
            f"{peer['calls']}",
            "",
        ),
        ("/metrics latency (median, p95)", f"{metrics['median_ms']:.1f} ms, {metrics['p95_ms']:.1f} ms", "", ""),
        ("/metrics size (gzip)", f"{metrics['bytes'] / 1024:.0f} KiB ({metrics['gzip_bytes'] / 1024:.0f} KiB)", "", ""),
        (
            "peak RSS",
            f"{ours['peak_rss_mb']:.0f} MB",
            f"{peer['peak_rss_mb']:.0f} MB",
            f"{peer['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x",
        ),
        (
            "RSS at rest per 1,000 sessions",
            f"{(ours['rss_rest_mb'] - ours['rss_before_mb']) / (n / 1000):.2f} MB ({ours['rss_rest_mb']:.0f} MB in all)",
            "",
            "",
        ),
        ("listing pass (idle cycle wall)", f"{idle['wall']:.2f} s ({idle['calls']['list']} pages)", "", ""),
        (
            f"freshness at --interval {ours['freshness']['interval']:g}",
            f"{ours['freshness']['seconds']:.1f} s ({ours['freshness']['cycles']} cycles; pass "
            f"{ours['freshness']['pass_seconds'] or 0:.1f} s)",
            f"{peer['wall_seconds']:.0f} s (one peer cycle)",
            "",
        ),
    ]
    if big is not None:
        rows.append(
            (
                f"one session of {big['events']:,} events",
                f"{big['bytes'] / 2**20:.1f} MiB payload, peak "
                f"RSS growth {big['peak_rss_mb'] - big['rss_before_mb']:.0f} MB = "
                f"{(big['peak_rss_mb'] - big['rss_before_mb']) * 2**20 / big['bytes']:.1f}x payload, "
                f"CPU {big['cpu_seconds']:.2f} s",
                "",
                "",
            )
        )
    print(
        f"\nllamacloud-collector benchmark: {n:,} sessions x {args.runs} runs, {os.cpu_count()} CPUs, "
        f"simulator in another process, {args.latency_ms:g} ms added to each API answer, page size "
        f"{args.page_size}, concurrency {args.max_concurrency}"
        + (f"; SDK peer on {peer['sessions']:,} sessions, scaled" if peer["sessions"] < n else "")
        + "\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | collector | SDK peer (one cycle) | peer / collector |")
    print(f"|{'-' * (width + 2)}|---|---|---|")
    for name, a, b, ratio in rows:
        print(f"| {name:<{width}} | {a} | {b} | {ratio} |")


if __name__ == "__main__":
    main()
