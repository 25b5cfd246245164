"""Benchmark at scale: the real collector process against a simulator of 100,000 or 1,000,000 sessions (issue 32).

    python bench/scale.py --sessions 100000                  # about 10 minutes on 2 cores
    python bench/scale.py --sessions 1000000 --interval 120  # the simulator alone: about 3 minutes, 1.1 GB
    python bench/scale.py --sessions 100000 --state-path /tmp/scale.db --json /tmp/scale.json

The simulator runs in its own process, lazy (``simulate --lazy``: the sessions' histories are generated from seeds
when asked for, their truth kept as sums), with ``--rate 0`` and ``--seed 1``. The collector is the installed command
as an operator runs it: ``python -m collector run --base-url <simulator> --listen <free port> --interval <s>``, the
key in ``LLAMA_CLOUD_API_KEY``, no state file unless ``--state-path`` is given. The figures, read from outside:

- the simulator's start (seconds until it answers) and its RSS;
- seconds from the collector's start to ``/readyz`` 200, and the CPU of that first sync (the process's utime +
  stime from ``/proc/<pid>/stat``, from the moment ``/healthz`` first answers to the moment ``/readyz`` does);
- exactness: the collector's ``llamacloud_chat_runs_total`` (by ``outcome``, summed over the labels) and the other
  run totals of ``/metrics`` against the simulator's ``/_sim/totals``, at ready and after each measured cycle;
- the CPU of an idle cycle: between two ends of a cycle (``llamacloud_collector_polls_total`` moving), the whole
  interval's CPU (the cycle, the idle time, and the scrapes this script made to watch the counter; those are
  measured on their own and taken off in the "net" figure);
- the RSS at rest (``VmRSS`` after the idle cycles) and the peak (``VmHWM``);
- with ``--changed-fraction`` (default 0.1): that fraction of the sessions gets a new run (``/_sim/touch``), just
  after a cycle ended; the CPU and the seconds until the collector's totals equal the truth again.

One table, then the same figures as one line of JSON. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.adversarial import Samples, parse_samples  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLLS = "llamacloud_collector_polls_total"
SCRAPES_FOR_COST = 10
"""Scrapes of ``/metrics`` made back to back, at rest, to learn what one costs the collector."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (not of its children), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5), counted after the name


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    """``VmRSS`` (or ``VmHWM``: the peak) of the process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def wait_for(check: Callable[[], bool], seconds: float, what: str, proc: subprocess.Popen[bytes], step: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with status {proc.returncode} (its log says why)")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(step)
    raise SystemExit(f"{what}: not within {seconds:g} s")


def status(url: str) -> int:
    return httpx.get(url, timeout=10).status_code


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the collector's settings (one set here would change what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "LLAMA_CLOUD_"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def start_simulator(args: argparse.Namespace, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    argv = [sys.executable, "-m", "collector", "simulate", "--port", str(port), "--sessions", str(args.sessions)]
    argv += ["--runs", str(args.runs), "--rate", "0", "--seed", "1", "--latency-ms", str(args.latency_ms), "--lazy"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=clean_env(LLAMA_CLOUD_API_KEY="simulator"))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: status(url + "/_sim/stats") == 200, args.timeout, "the simulator", proc)
    return proc, url, time.monotonic() - started


def start_collector(args: argparse.Namespace, sim: str, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    argv = [sys.executable, "-m", "collector", "run", "--base-url", sim, "--listen", f"127.0.0.1:{port}"]
    argv += ["--interval", f"{args.interval:g}", "--log-level", "warning"]
    if args.state_path:
        argv += ["--state-path", args.state_path]
    if args.page_size:
        argv += ["--page-size", str(args.page_size)]
    if args.max_concurrency:
        argv += ["--max-concurrency", str(args.max_concurrency)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=clean_env(LLAMA_CLOUD_API_KEY="simulator"))
    return proc, f"http://127.0.0.1:{port}", time.monotonic()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Watch:
    """The collector's ``/metrics``, scraped to see its counters; counts its own scrapes (they cost it CPU)."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.proc = url, proc
        self.http = httpx.Client(timeout=120)
        self.scrapes = 0

    def samples(self) -> Samples:
        self.scrapes += 1
        response = self.http.get(self.url + "/metrics")
        response.raise_for_status()
        return parse_samples(response.text)

    def cycles(self, samples: Samples | None = None) -> int:
        return int(total(samples if samples is not None else self.samples(), POLLS))

    def next_cycle_end(self, after: int, interval: float, timeout: float) -> tuple[int, float, Samples]:
        """Wait for the cycle counter to pass ``after``: its value, the collector's CPU then, and the samples.
        Sleeps most of an interval first, then looks every half second (few scrapes)."""
        deadline = time.monotonic() + timeout
        time.sleep(0.8 * interval)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the collector exited with status {self.proc.returncode}")
            samples = self.samples()
            if (count := self.cycles(samples)) > after:
                return count, cpu_seconds(self.proc.pid), samples
            time.sleep(0.5)
        raise SystemExit(f"no cycle ended within {timeout:g} s")

    def scrape_cost(self) -> float:
        """CPU seconds one scrape costs the collector, at rest."""
        before = cpu_seconds(self.proc.pid)
        for _ in range(SCRAPES_FOR_COST):
            self.samples()
        return (cpu_seconds(self.proc.pid) - before) / SCRAPES_FOR_COST


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a family's samples over every label not named."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def counted(samples: Samples) -> dict[str, float]:
    """The collector's run totals, named as ``/_sim/totals`` names them."""
    p = "llamacloud_chat_"
    return {
        "runs": total(samples, p + "runs_total"),
        "errors": total(samples, p + "runs_total", outcome="error"),
        "input_tokens": total(samples, p + "tokens_total", token_type="input"),
        "output_tokens": total(samples, p + "tokens_total", token_type="output"),
        "duration_count": total(samples, p + "run_duration_seconds_count"),
        "duration_seconds_sum": total(samples, p + "run_duration_seconds_sum"),
        "tool_calls": total(samples, p + "tool_calls_total"),
        "index_runs": total(samples, p + "index_runs_total"),
    }


def differences(samples: Samples, truth: dict[str, Any]) -> list[str]:
    """Where the collector's totals differ from the truth (empty: exact; a float sum to a millionth)."""
    got = counted(samples)
    want = {**{k: float(truth[k]) for k in got}, "runs": float(truth["runs"] + truth["bare_runs"])}
    return [f"{k}: want {want[k]:,.0f}, got {got[k]:,.0f}" for k in got if abs(got[k] - want[k]) > 1e-6 * max(1.0, abs(want[k]))]


def sim_totals(sim: str) -> dict[str, Any]:
    totals: dict[str, Any] = httpx.get(sim + "/_sim/totals", timeout=600).json()
    return totals


def measure(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"sessions": args.sessions, "runs": args.runs, "interval": args.interval, "cpus": os.cpu_count()}
    out["latency_ms"], out["state_path"] = args.latency_ms, args.state_path
    with open(logs / "simulator.log", "wb") as sim_log, open(logs / "collector.log", "wb") as collector_log:
        sim_proc, sim, out["sim_start_seconds"] = start_simulator(args, sim_log)
        try:
            out["sim_rss_mb"] = memory_mb(sim_proc.pid)
            say(f"simulator up in {out['sim_start_seconds']:.1f} s, {out['sim_rss_mb']:.0f} MB")
            truth = sim_totals(sim)
            proc, url, started = start_collector(args, sim, collector_log)
            try:
                measure_collector(args, out, proc, url, started, sim, truth)
            finally:
                stop(proc)
            out["sim_rss_end_mb"] = memory_mb(sim_proc.pid)
        finally:
            stop(sim_proc)
    return out


def measure_collector(
    args: argparse.Namespace,
    out: dict[str, Any],
    proc: subprocess.Popen[bytes],
    url: str,
    started: float,
    sim: str,
    truth: dict[str, Any],
) -> None:
    wait_for(lambda: status(url + "/healthz") == 200, 120, "the collector's /healthz", proc, step=0.05)
    cpu_listening = cpu_seconds(proc.pid)
    out["listening_seconds"], out["startup_cpu_seconds"] = time.monotonic() - started, cpu_listening
    out["rss_listening_mb"] = memory_mb(proc.pid)
    wait_for(lambda: status(url + "/readyz") == 200, args.timeout, "the collector's /readyz", proc, step=0.25)
    out["ready_seconds"] = time.monotonic() - started
    cpu_ready = cpu_seconds(proc.pid)
    out["initial_cpu_seconds"] = cpu_ready - cpu_listening
    out["rss_ready_mb"] = memory_mb(proc.pid)
    say(f"ready in {out['ready_seconds']:.1f} s, initial sync CPU {out['initial_cpu_seconds']:.1f} s")
    watch = Watch(url, proc)
    samples = watch.samples()
    out["exact_at_ready"] = differences(samples, truth)
    out["cycles_at_ready"] = count = watch.cycles(samples)
    timeout = max(600.0, 20 * args.interval)
    # the first cycle end after ready starts the measured intervals (ready may come in the middle of a cycle)
    count, cpu, samples = watch.next_cycle_end(count, args.interval, timeout)
    idle: list[dict[str, float]] = []
    for _ in range(args.idle_cycles):
        scrapes, wall = watch.scrapes, time.monotonic()
        count_after, cpu_after, samples = watch.next_cycle_end(count, args.interval, timeout)
        idle.append(
            {
                "cpu_seconds": cpu_after - cpu,
                "cycles": count_after - count,
                "seconds": time.monotonic() - wall,
                "scrapes": watch.scrapes - scrapes,
                "poll_duration_seconds": total(samples, "llamacloud_collector_poll_duration_seconds"),
            }
        )
        count, cpu = count_after, cpu_after
        say(f"idle interval: CPU {idle[-1]['cpu_seconds'] * 1000:.0f} ms")
    out["idle"] = idle
    out["exact_after_idle"] = differences(samples, truth)
    out["rss_rest_mb"] = memory_mb(proc.pid)
    out["scrape_cpu_seconds"] = watch.scrape_cost()
    per = out["scrape_cpu_seconds"]
    out["idle_cpu_seconds"] = statistics.median(i["cpu_seconds"] for i in idle)
    out["idle_cpu_net_seconds"] = statistics.median(i["cpu_seconds"] - i["scrapes"] * per for i in idle)
    out["poll_results"] = {dict(ls).get("result", "?"): v for (n, ls), v in samples.items() if n == POLLS}
    if args.changed_fraction > 0:
        measure_changed(args, out, watch, count, timeout, sim)
    out["rss_end_mb"], out["peak_rss_mb"] = memory_mb(proc.pid), memory_mb(proc.pid, "VmHWM")


def measure_changed(args: argparse.Namespace, out: dict[str, Any], watch: Watch, count: int, timeout: float, sim: str) -> None:
    """Touch a fraction of the sessions just after a cycle ended; the cycles, CPU and seconds until exact."""
    count, cpu, _ = watch.next_cycle_end(count, args.interval, timeout)
    touched = time.monotonic()
    answer = httpx.get(sim + "/_sim/touch", params={"fraction": args.changed_fraction}, timeout=3600).json()
    out["changed_touch_seconds"] = time.monotonic() - touched
    truth = sim_totals(sim)
    first, cycles, diffs = count, 0, ["not yet"]
    while diffs and cycles < 10:
        count, cpu_now, samples = watch.next_cycle_end(count, args.interval, timeout)
        cycles = count - first
        diffs = differences(samples, truth)
    out["changed"] = {
        "sessions": answer["changed"],
        "cpu_seconds": cpu_now - cpu,
        "cycles": cycles,
        "seconds_to_exact": time.monotonic() - touched,
        "poll_duration_seconds": total(samples, "llamacloud_collector_poll_duration_seconds"),
        "exact": diffs,
    }
    out["rss_changed_mb"] = memory_mb(watch.proc.pid)
    say(f"{answer['changed']:,} sessions changed: CPU {cpu_now - cpu:.1f} s over {cycles} cycle(s)")


def say(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


def exact(diffs: list[str]) -> str:
    return "yes" if not diffs else "NO: " + "; ".join(diffs)


def report(out: dict[str, Any]) -> None:
    n = out["sessions"]
    idle = out["idle"]
    rows = [
        ("simulator: start (lazy), RSS", f"{out['sim_start_seconds']:.1f} s, {out['sim_rss_mb']:.0f} MB"),
        ("collector: seconds to /readyz 200", f"{out['ready_seconds']:.1f} s (listening after {out['listening_seconds']:.1f} s)"),
        (
            "initial sync: CPU",
            f"{out['initial_cpu_seconds']:.1f} s ({out['initial_cpu_seconds'] / n * 1000:.3f} ms a session; "
            f"start-up {out['startup_cpu_seconds']:.1f} s)",
        ),
        ("exact at ready (runs_total and totals)", exact(out["exact_at_ready"])),
        (
            f"idle interval ({out['interval']:g} s): CPU",
            f"{out['idle_cpu_seconds'] * 1000:.0f} ms ({out['idle_cpu_net_seconds'] * 1000:.0f} ms without the "
            f"{statistics.median(i['scrapes'] for i in idle):.0f} scrapes of this script; each "
            + ", ".join(f"{i['cpu_seconds'] * 1000:.0f}" for i in idle)
            + " ms)",
        ),
        ("idle cycle: poll duration", f"{idle[-1]['poll_duration_seconds']:.2f} s"),
        ("one /metrics scrape: CPU", f"{out['scrape_cpu_seconds'] * 1000:.1f} ms"),
        ("exact after the idle cycles", exact(out["exact_after_idle"])),
        (
            "RSS at rest",
            f"{out['rss_rest_mb']:.0f} MB ({(out['rss_rest_mb'] - out['rss_listening_mb']) / (n / 1000):.2f} MB per "
            f"1,000 sessions over the {out['rss_listening_mb']:.0f} MB at start; {out['rss_ready_mb']:.0f} MB at ready)",
        ),
    ]
    changed = out.get("changed")
    if changed:
        rows += [
            (
                f"{changed['sessions']:,} sessions changed: CPU",
                f"{changed['cpu_seconds']:.1f} s over {changed['cycles']} cycle(s), exact after "
                f"{changed['seconds_to_exact']:.1f} s (touch took {out['changed_touch_seconds']:.1f} s)",
            ),
            ("exact after the change", exact(changed["exact"])),
            ("RSS after the change", f"{out['rss_changed_mb']:.0f} MB"),
        ]
    rows += [
        ("peak RSS (VmHWM)", f"{out['peak_rss_mb']:.0f} MB"),
        ("poll results", ", ".join(f"{k} {v:g}" for k, v in sorted(out["poll_results"].items()))),
        ("simulator RSS at the end", f"{out['sim_rss_end_mb']:.0f} MB"),
    ]
    print(
        f"\nllamacloud-collector at scale: {n:,} sessions x {out['runs']} runs, {out['cpus']} CPUs, the collector and "
        f"the lazy simulator in their own processes, --interval {out['interval']:g}, {out['latency_ms']:g} ms added to "
        f"each API answer, state {'at ' + out['state_path'] if out['state_path'] else 'none'}\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | collector |")
    print(f"|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5, help="runs per session at start")
    parser.add_argument("--interval", type=float, default=60.0, help="the collector's --interval (seconds)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every API answer")
    parser.add_argument("--state-path", help="the collector's --state-path (default: none)")
    parser.add_argument("--page-size", type=int, help="the collector's --page-size (default: its own)")
    parser.add_argument("--max-concurrency", type=int, help="the collector's --max-concurrency (default: its own)")
    parser.add_argument("--idle-cycles", type=int, default=2, help="idle intervals measured (default 2)")
    parser.add_argument(
        "--changed-fraction", type=float, default=0.1, help="sessions given a new run after the idle cycles (0: skip)"
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds to wait for a start or the first sync")
    parser.add_argument("--logs", help="directory for the two processes' logs (default: a temporary one, kept)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    logs = Path(args.logs or tempfile.mkdtemp(prefix="scale-"))
    logs.mkdir(parents=True, exist_ok=True)
    say(f"logs in {logs}")
    out = measure(args, logs)
    report(out)
    line = json.dumps(out)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
