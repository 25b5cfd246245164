"""The eight situations of issue 26, each over loopback: the real simulator process, the real collector CLI.

    python bench/adversarial.py                  # full size: 10,500 sessions for 1 and 7 (a few minutes)
    python bench/adversarial.py --small          # 300 sessions for 1 and 7 (about three minutes in all)
    python bench/adversarial.py --only 1,4,5     # some of them
    python bench/adversarial.py --collector-tree /tmp/head   # the collector of another tree (e.g. a
                                                 # `git archive HEAD` export); the simulator stays this one's

For each situation it starts `python -m collector simulate` and `python -m collector run --base-url
http://127.0.0.1:PORT --interval 1` (with `LLAMA_CLOUD_API_KEY`), drives the upstream through the
simulator's `/_sim` controls, waits on conditions (cycles counted by `polls_total`, `/readyz`, the
simulator's truth) and prints the figures: expected runs (the simulator's truth), `runs_total` before and
after, tokens, `/readyz`, `polls_total` by result, `listing_anomalies_total` by kind, then PASS or FAIL.

At `--small` size, situations 1 and 7 stay under the caps they are about (10,000 retired cursors, 10,000
pages): they show the mechanics, not the cap. Not a test: it asserts nothing on time, every wait is bounded
in count and time, all traffic goes to 127.0.0.1, and every process it starts is stopped at the end. Exit
status 1 when a situation failed. The processes' logs stay in the folder it prints.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
KEY = "adversarial-bench-key"
INTERVAL = 1.0
P = "llamacloud_collector_"
C = "llamacloud_chat_"
README_RULES = """error_rules:            # the README's example
  - {type: timeout, pattern: 'time[d ]?\\s?out|timeout|deadline exceeded'}
  - {type: quota, pattern: 'quota|billing'}
"""
README_BUCKETS = "buckets:\n  duration: [0.5, 1, 2, 5, 10, 30, 60]\n"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition, by name and label set (``bench/scale.py`` reads ``/metrics`` so too)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check: Callable[[], object], timeout: float, step: float = 0.25) -> bool:
    """True once ``check`` is true; False after ``timeout`` seconds (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def _env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without the collector's own settings or any proxy: loopback only."""
    drop = ("LLAMA_CLOUD_", "COLLECTOR_", "OTEL_")
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k.lower() not in proxies}
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra}


HTTP = httpx.Client(trust_env=False, timeout=60)


# -- the two processes -----------------------------------------------------------------------------------


class Sim:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.url = proc, f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: object) -> dict:
        response = HTTP.get(self.url + path, params={k: str(v) for k, v in params.items()})
        response.raise_for_status()
        return response.json()

    def totals(self) -> dict:
        return self.get("/_sim/totals")

    def stats(self) -> dict:
        return self.get("/_sim/stats")

    def fault(self, kind: str, endpoint: str, times: int = 1) -> None:
        self.get("/_sim/fault", kind=kind, endpoint=endpoint, times=times)

    def injected(self, kind: str) -> int:
        return self.stats()["faults_injected"].get(kind, 0)


class Col:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def scrape(self) -> Samples:
        response = HTTP.get(self.url + "/metrics")
        response.raise_for_status()
        return parse_samples(response.text)

    def ready(self) -> bool:
        try:
            return HTTP.get(self.url + "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def cycles(self) -> int:
        return int(sum(polls(self.scrape()).values()))

    def runs(self) -> int | None:
        return runs(self.scrape())


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name and label in dict(labels)}


def runs(samples: Samples) -> int | None:
    found = by_label(samples, C + "runs_total", "outcome")
    return int(sum(found.values())) if found else None


def tokens(samples: Samples, kind: str = "input") -> int | None:
    found = by_label(samples, C + "tokens_total", "token_type")
    return int(found[kind]) if kind in found else None


def polls(samples: Samples) -> dict[str, float]:
    return by_label(samples, P + "polls_total", "result")


def anomalies(samples: Samples) -> dict[str, float] | None:
    """``listing_anomalies_total`` by kind, or None when the collector has no such family."""
    if not any(n == P + "listing_anomalies_total" for n, _ in samples):
        return None
    return by_label(samples, P + "listing_anomalies_total", "kind")


def gauge(samples: Samples, name: str) -> float | None:
    return samples.get((name, frozenset()))


def session_ids(samples: Samples) -> set[str]:
    return {dict(labels)["session_id"] for (n, labels), _ in samples.items() if n == C + "session_info"}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    if isinstance(value, (int, float)):
        return f"{int(value):,}"
    return str(value)


class Stack:
    """The processes of one situation, all stopped by ``close`` whatever happened."""

    def __init__(self, folder: Path, collector_tree: Path, name: str) -> None:
        self.folder, self.tree, self.name = folder, collector_tree, name
        self.procs: list[subprocess.Popen] = []
        self.count = 0

    def _start(self, label: str, argv: list[str], cwd: Path) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        log = self.folder / f"{self.name}-{self.count}-{label}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=_env({"LLAMA_CLOUD_API_KEY": KEY, "PYTHONPATH": str(cwd)}),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc, log

    def sim(self, sessions: int, runs: int = 1, seed: int = 26, latency_ms: float = 0.0) -> Sim:
        port = free_port()
        proc, log = self._start(
            "simulator",
            [
                "simulate",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--sessions",
                str(sessions),
                "--runs",
                str(runs),
                "--seed",
                str(seed),
                "--rate",
                "0",
                "--latency-ms",
                str(latency_ms),
            ],
            ROOT,
        )
        sim = Sim(proc, port)
        if not wait(lambda: proc.poll() is None and sim.stats(), 120):
            raise RuntimeError(f"simulator did not start (log: {log})")
        return sim

    def collector(self, sim: Sim, *flags: str, label: str = "collector") -> Col:
        port = free_port()
        proc, log = self._start(
            label,
            [
                "run",
                "--base-url",
                sim.url,
                "--listen",
                f"127.0.0.1:{port}",
                "--interval",
                str(INTERVAL),
                "--log-level",
                "info",
                "--log-format",
                "json",
                *flags,
            ],
            self.tree,
        )
        col = Col(proc, port, log)
        if not wait(lambda: proc.poll() is None and HTTP.get(col.url + "/healthz"), 60):
            tail = log.read_text()[-600:] if log.exists() else ""
            raise RuntimeError(f"collector did not start (exit {proc.poll()}): {tail}")
        return col

    def stop(self, proc: subprocess.Popen | Sim | Col) -> int | None:
        proc = proc.proc if isinstance(proc, (Sim, Col)) else proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):  # the collectors before the simulator they poll
            self.stop(proc)


# -- results -----------------------------------------------------------------------------------------------


@dataclass
class Result:
    key: str
    title: str
    passed: bool
    lines: list[str] = field(default_factory=list)


def report(result: Result) -> Result:
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{result.key:>3}. {result.title}: {verdict}")
    for line in result.lines:
        print(f"       {line}")
    sys.stdout.flush()
    return result


def common(col: Col, samples: Samples, before: Samples | None = None) -> str:
    """``/readyz``, polls by result (since ``before`` when given), anomalies by kind, ``up``."""
    p = polls(samples)
    shown = delta(p, polls(before)) if before is not None else {k: int(v) for k, v in p.items() if v}
    anom = anomalies(samples)
    anom_text = "family absent" if anom is None else ({k: int(v) for k, v in anom.items() if v} or "none")
    return (
        f"readyz {'ready' if col.ready() else 'NOT ready'}; up {fmt(gauge(samples, P + 'up'))}; "
        f"polls{' since' if before is not None else ''} {shown or '{}'}; listing_anomalies {anom_text}"
    )


def synced(col: Col, sim: Sim, timeout: float) -> bool:
    return wait(lambda: col.ready() and col.runs() == sim.totals()["runs"], timeout)


def more_cycles(col: Col, n: int, timeout: float, until: Callable[[], bool] | None = None) -> bool:
    """Wait for ``n`` more poll cycles (or ``until`` first); False on timeout."""
    start = col.cycles()
    return wait(lambda: (until is not None and until()) or col.cycles() >= start + n, timeout)


# -- the situations ----------------------------------------------------------------------------------------


def situation_1(stack: Stack, n: int) -> list[Result]:
    """One empty (truncated, looping) listing must not retire sessions, nor recount any history."""
    sim = stack.sim(n)
    col = stack.collector(sim)
    sync_timeout = 60 + n / 50
    ok = synced(col, sim, sync_timeout)
    variants = [
        ("1a", "one empty listing (200, items [], next_page_token null)", "empty", "list_first"),
        ("1b", "one truncated listing (page 1, then next_page_token null)", "truncate", "list_first"),
        ("1c", "one looping listing (a page's next token = the one it was asked with)", "loop", "list_next"),
    ]
    if not ok:
        s = col.scrape()
        return [
            Result(
                k,
                t,
                False,
                [
                    f"{n:,} sessions: first sync not reached in {sync_timeout:.0f} s: runs "
                    f"expected {sim.totals()['runs']:,}, got {fmt(runs(s))}; {common(col, s)}"
                ],
            )
            for k, t, _, _ in variants
        ]
    out = []
    for key, title, kind, endpoint in variants:
        before, truth_before = col.scrape(), sim.totals()
        injected = sim.injected(kind)
        sim.fault(kind, endpoint)

        def more_injected(kind: str = kind, injected: int = injected) -> bool:
            return sim.injected(kind) > injected

        hit = wait(more_injected, 30)
        watched_min = gauge(before, P + "sessions_watched") or 0.0
        start = col.cycles()
        deadline = time.monotonic() + 90
        while col.cycles() < start + 6 and time.monotonic() < deadline:  # watch the gauge while it settles
            watched_min = min(watched_min, gauge(col.scrape(), P + "sessions_watched") or 0.0)
            time.sleep(0.2)
        after, truth = col.scrape(), sim.totals()
        got_runs = (runs(before), runs(after))
        got_tokens = (tokens(before), tokens(after))
        fetch = by_label(after, P + "session_fetches_total", "reason")
        fetch_before = by_label(before, P + "session_fetches_total", "reason")
        new = int(fetch.get("new", 0) - fetch_before.get("new", 0))
        watched = gauge(before, P + "sessions_watched")
        exact = (
            got_runs[1] is not None
            and got_runs[1] - (got_runs[0] or 0) == truth["runs"] - truth_before["runs"]
            and got_runs[1] == truth["runs"]
            and got_tokens[1] == truth["input_tokens"]
        )
        kept = watched is not None and watched_min >= watched
        passed = hit and exact and new == 0 and kept
        out.append(
            report(
                Result(
                    key,
                    title,
                    passed,
                    [
                        f"{n:,} sessions: runs expected {truth['runs']:,}, got {fmt(got_runs[0])} -> {fmt(got_runs[1])}; "
                        f"tokens{{input}} expected {truth['input_tokens']:,}, got {fmt(got_tokens[0])} -> {fmt(got_tokens[1])}",
                        f"histories refetched as new: {new:,} (expected 0); sessions_watched min {fmt(watched_min)} of "
                        f"{fmt(watched)} (expected none retired); fault served: {'yes' if hit else 'NO'}",
                        common(col, after, before),
                    ],
                )
            )
        )
    return out


def situation_2(stack: Stack) -> list[Result]:
    out = []
    # 2a: a pass that spans cycles, then the API forgets every cursor it issued
    sim = stack.sim(300, latency_ms=100)  # 30 pages of 10 at 100 ms: a pass spans about 3 cycles
    col = stack.collector(sim, "--page-size", "10")
    title = "a resumed page token refused with 400 (the API forgot its cursors)"
    if not synced(col, sim, 90):
        s = col.scrape()
        out.append(
            report(
                Result(
                    "2a",
                    title,
                    False,
                    [f"first sync not reached: runs expected {sim.totals()['runs']:,}, got {fmt(runs(s))}; {common(col, s)}"],
                )
            )
        )
    else:
        before, provoked, tries = col.scrape(), False, 0
        while not provoked and tries < 4:  # the pass must be mid-way when the cursors are forgotten
            tries += 1
            refused = sim.stats()["listing"]["refused"]
            sim.get("/_sim/listing", forget_cursors=1)
            sim.get("/_sim/touch", first=5)  # new runs on page 1
            more_cycles(col, 3, 30)
            provoked = sim.stats()["listing"]["refused"] > refused
        start = col.cycles()
        counted = (
            wait(lambda: col.runs() == sim.totals()["runs"] or col.cycles() >= start + 12, 60)
            and col.runs() == sim.totals()["runs"]
        )
        after, truth = col.scrape(), sim.totals()
        up = gauge(after, P + "up")
        out.append(
            report(
                Result(
                    "2a",
                    title,
                    bool(counted and up == 1 and provoked),
                    [
                        f"300 sessions, pages of 10, 100 ms each: tokens refused by the API {sim.stats()['listing']['refused']} "
                        f"(provoked after {tries} tries: {'yes' if provoked else 'NO'})",
                        f"runs expected {truth['runs']:,}, got {fmt(runs(before))} -> {fmt(runs(after))} "
                        f"(within 12 more cycles: {'yes' if counted else 'no'})",
                        common(col, after, before),
                    ],
                )
            )
        )
    stack.close()

    # 2b: page 3 always carries a next_page_token of 5,000 characters
    sim = stack.sim(300)
    sim.get("/_sim/listing", long_token_page=3, long_token_length=5000)
    col = stack.collector(sim, "--page-size", "20")
    order = sim.get("/_sim/sessions")["sessions"]
    reach2, reach3 = sum(s["runs"] for s in order[:40]), sum(s["runs"] for s in order[:60])
    ready = wait(col.ready, 45)
    s1 = col.scrape()
    sim.get("/_sim/touch", first=5)  # new runs on page 1: still counted?
    more_cycles(col, 6, 30)
    order = sim.get("/_sim/sessions")["sessions"]
    reach2b, reach3b = sum(s["runs"] for s in order[:40]), sum(s["runs"] for s in order[:60])
    after = col.scrape()
    got = runs(after)
    inv = by_label(after, P + "invalid_payloads_total", "operation").get("list", 0)
    out.append(
        report(
            Result(
                "2b",
                "page 3's next_page_token is 5,000 characters (over the 4,096 bound)",
                ready and got in (reach2b, reach3b),
                [
                    f"300 sessions, pages of 20: readyz within 45 s: {'yes' if ready else 'NO'}; invalid list payloads "
                    f"{fmt(inv)}",
                    f"runs reachable (pages 1-2, or 1-3 with page 3's items) {reach2:,} or {reach3:,}, got {fmt(runs(s1))}; "
                    f"after 5 new runs on page 1: expected {reach2b:,} or {reach3b:,}, got {fmt(got)} "
                    f"(all {sim.totals()['runs']:,} upstream)",
                    common(col, after),
                ],
            )
        )
    )
    return out


def situation_3(stack: Stack) -> list[Result]:
    sim = stack.sim(20)
    col = stack.collector(sim)
    if not synced(col, sim, 60):
        s = col.scrape()
        return [
            report(
                Result(
                    "3",
                    "a last_updated_at that moves backwards",
                    False,
                    [f"first sync not reached: runs got {fmt(runs(s))}; {common(col, s)}"],
                )
            )
        ]
    sim.get("/_sim/clock", offset=3600)
    sim.get("/_sim/touch", fraction=1)  # 20 runs stamped an hour ahead
    ahead = synced(col, sim, 20)
    before, at_fix = col.scrape(), sim.totals()["runs"]
    sim.get("/_sim/clock", offset=0)  # the clock is corrected: new runs are stamped earlier than before
    sim.get("/_sim/touch", fraction=1)
    more_cycles(col, 3, 20)
    sim.get("/_sim/touch", fraction=1)
    start = col.cycles()
    wait(lambda: col.runs() == sim.totals()["runs"] or col.cycles() >= start + 10, 40)
    after, truth = col.scrape(), sim.totals()
    stale = col.log.read_text().count("stale read")
    return [
        report(
            Result(
                "3",
                "a last_updated_at an hour ahead, then corrected back",
                runs(after) == truth["runs"],
                [
                    f"20 sessions: runs stamped ahead counted: {'yes' if ahead else 'NO'} ({fmt(runs(before))} of {at_fix:,}); "
                    f"after the correction and 40 new runs: expected {truth['runs']:,}, got {fmt(runs(after))}",
                    f"'stale read' log lines: {stale}; {common(col, after, before)}",
                ],
            )
        )
    ]


def situation_4(stack: Stack, folder: Path) -> list[Result]:
    out = []
    cases = [
        ("4a", "zero_time", "a last_updated_at of Go's zero time (0001-01-01T00:00:00Z)"),
        ("4b", "long_title", "a generated_title of 70,000 characters (over 64 KiB)"),
        ("4c", "big_tokens", "two runs of 2**53 input tokens each"),
    ]
    for key, what, title in cases:
        state = folder / f"state-{what}.db"
        sim = stack.sim(10)
        extreme = sim.get("/_sim/extreme", what=what)
        col = stack.collector(sim, "--state-path", str(state), label="collector-a")
        first = synced(col, sim, 30)
        a = col.scrape()
        code_a = stack.stop(col)
        sim.get("/_sim/touch", first=3)  # runs that finish during the restart (not on the extreme session)
        col = stack.collector(sim, "--state-path", str(state), label="collector-b")
        second = synced(col, sim, 30)
        b, truth = col.scrape(), sim.totals()
        corrupt = sorted(p.name for p in folder.iterdir() if p.name.startswith(state.name) and "corrupt" in p.name)
        ra, rb = runs(a), runs(b)
        passed = second and rb == truth["runs"] and (ra is None or (rb is not None and rb >= ra)) and not corrupt
        direction = "-" if ra is None or rb is None else "never backwards" if rb >= ra else "WENT BACKWARDS"
        out.append(
            report(
                Result(
                    key,
                    title + ", across a restart with --state-path",
                    passed,
                    [
                        f"10 sessions + the extreme one ({extreme['bytes']:,} bytes): first run synced "
                        f"{'yes' if first else 'NO'}, runs {fmt(ra)}, tokens{{input}} {fmt(tokens(a))}; stopped (exit {code_a}); "
                        f"3 runs added meanwhile",
                        f"after the restart: runs expected {truth['runs']:,}, got {fmt(rb)} ({direction}); "
                        f"tokens{{input}} {fmt(tokens(b))} (upstream sum {truth['input_tokens']:,}); "
                        f"files moved aside: {corrupt or 'none'}",
                        common(col, b),
                    ],
                )
            )
        )
        stack.close()
    return out


def situation_5(stack: Stack, folder: Path) -> list[Result]:
    out = []
    # 5a: new bucket bounds after half the sessions left the listing
    state = folder / "state-buckets.db"
    sim = stack.sim(20)
    col = stack.collector(sim, "--state-path", str(state), label="collector-a")
    synced(col, sim, 30)
    sim.get("/_sim/delete", count=10)
    left = wait(lambda: gauge(col.scrape(), P + "sessions_watched") == 10, 30)
    a = col.scrape()
    stack.stop(col)
    sim.get("/_sim/touch", first=2)
    config = folder / "buckets.yaml"
    config.write_text(README_BUCKETS)
    col = stack.collector(sim, "--state-path", str(state), "--config", str(config), label="collector-b")
    synced(col, sim, 30)
    more_cycles(col, 2, 10)
    b, truth = col.scrape(), sim.totals()
    name = C + "run_duration_seconds"
    count_a, count_b = gauge(a, name + "_count"), gauge(b, name + "_count")
    sum_a, sum_b = gauge(a, name + "_sum"), gauge(b, name + "_sum")
    inf_b = b.get((name + "_bucket", frozenset({"le": "+Inf"}.items())))
    passed = (
        runs(b) == truth["runs"]
        and count_b == truth["duration_count"]
        and inf_b == count_b
        and sum_b is not None
        and abs(sum_b - truth["duration_seconds_sum"]) <= 1e-6 * truth["duration_seconds_sum"]
    )
    out.append(
        report(
            Result(
                "5a",
                "new bucket bounds (README's) after 10 of 20 sessions left the listing",
                passed,
                [
                    f"sessions retired before the restart: {'yes' if left else 'NO'}; runs expected {truth['runs']:,}, got "
                    f"{fmt(runs(a))} -> {fmt(runs(b))}",
                    f"duration _count expected {truth['duration_count']:,}, got {fmt(count_a)} -> {fmt(count_b)} "
                    f"(+Inf {fmt(inf_b)}); "
                    f"_sum expected {truth['duration_seconds_sum']:,.3f}, got {fmt(sum_a)} -> {fmt(sum_b)}",
                    common(col, b),
                ],
            )
        )
    )
    stack.close()

    # 5b: the README's error rules replace the default ones
    state = folder / "state-rules.db"
    sim = stack.sim(20)
    col = stack.collector(sim, "--state-path", str(state), label="collector-a")
    synced(col, sim, 30)
    sim.get("/_sim/touch", fraction=1, fail=1)
    synced(col, sim, 30)
    a = col.scrape()
    stack.stop(col)
    sim.get("/_sim/touch", first=3, fail=1)
    config = folder / "rules.yaml"
    config.write_text(README_RULES)
    col = stack.collector(sim, "--state-path", str(state), "--config", str(config), label="collector-b")
    synced(col, sim, 30)
    more_cycles(col, 2, 10)
    b, truth = col.scrape(), sim.totals()
    errs_a, errs_b = by_label(a, C + "run_errors_total", "error_type"), by_label(b, C + "run_errors_total", "error_type")
    failed_a, failed_b = (by_label(s, C + "runs_total", "outcome").get("error") for s in (a, b))
    passed = failed_b == truth["errors"] and sum(errs_b.values()) == truth["errors"] and runs(b) == truth["runs"]
    out.append(
        report(
            Result(
                "5b",
                "error rules changed (the README's example) across a restart",
                passed,
                [
                    f"failed runs expected {truth['errors']:,}, runs_total{{error}} {fmt(failed_a)} -> {fmt(failed_b)}; "
                    f"sum of run_errors_total over error_type {fmt(sum(errs_a.values()))} -> "
                    f"{fmt(sum(errs_b.values()))}",
                    f"by type after: { {k: int(v) for k, v in sorted(errs_b.items())} }",
                    common(col, b),
                ],
            )
        )
    )
    stack.close()

    # 5c: --label-value-limit lowered
    state = folder / "state-labels.db"
    sim = stack.sim(20, runs=2)
    col = stack.collector(sim, "--state-path", str(state), label="collector-a")
    synced(col, sim, 30)
    a = col.scrape()
    stack.stop(col)
    sim.get("/_sim/touch", first=3)
    col = stack.collector(sim, "--state-path", str(state), "--label-value-limit", "2", label="collector-b")
    synced(col, sim, 30)
    more_cycles(col, 2, 10)
    b, truth = col.scrape(), sim.totals()

    def tool_sum(s: Samples) -> int:
        return int(sum(v for (n, _), v in s.items() if n == C + "tool_calls_total"))

    def index_sum(s: Samples) -> int:
        return int(sum(v for (n, _), v in s.items() if n == C + "index_runs_total"))

    passed = tool_sum(b) == truth["tool_calls"] and runs(b) == truth["runs"] and tool_sum(b) >= tool_sum(a)
    out.append(
        report(
            Result(
                "5c",
                "--label-value-limit 50 -> 2 across a restart",
                passed,
                [
                    f"runs expected {truth['runs']:,}, got {fmt(runs(a))} -> {fmt(runs(b))}; tool calls (sum over tool, "
                    f"outcome) expected {truth['tool_calls']:,}, got {tool_sum(a):,} -> {tool_sum(b):,}",
                    f"index runs (sum over index_id; '_other' may merge two indexes of one run) upstream "
                    f"{truth['index_runs']:,}, got {index_sum(a):,} -> {index_sum(b):,}",
                    common(col, b),
                ],
            )
        )
    )
    stack.close()
    return out


def situation_6(stack: Stack) -> list[Result]:
    sim = stack.sim(5)
    empty = sim.get("/_sim/decoy", runs=5, decoy_runs=0, pad=1_100_000)
    fifty = sim.get("/_sim/decoy", runs=5, decoy_runs=50, pad=1_100_000)
    col = stack.collector(sim)
    ready = wait(col.ready, 30)
    wait(lambda: col.runs() == sim.totals()["runs"], 15)
    after, truth = col.scrape(), sim.totals()
    per_session: dict[str, float] = {}
    for (n, labels), v in after.items():
        if n == C + "session_runs_total":
            sid = dict(labels)["session_id"]
            per_session[sid] = per_session.get(sid, 0) + v
    got_a, got_b = per_session.get(empty["session_id"]), per_session.get(fifty["session_id"])
    passed = ready and runs(after) == truth["runs"] and got_a == 5 and got_b == 5
    return [
        report(
            Result(
                "6",
                "bodies over 1 MiB with an unknown top-level 'debug' holding its own 'events'",
                passed,
                [
                    f"5 plain sessions + 2 of 5 runs each ({empty['bytes']:,} and {fifty['bytes']:,} bytes; decoy events: "
                    f"[] and 50 runs): runs expected {truth['runs']:,}, got {fmt(runs(after))}",
                    f"the decoy sessions: expected 5 and 5 runs, got {fmt(got_a)} and {fmt(got_b)}",
                    common(col, after),
                ],
            )
        )
    ]


def situation_7(stack: Stack, n: int) -> list[Result]:
    sim = stack.sim(n)
    sim.get("/_sim/listing", page_cap=1)
    col = stack.collector(sim)  # asks --page-size 100, gets 1 a page
    started = time.monotonic()
    # bounded by the listing's own work: ready, or pages enough for three whole passes, or the time
    done = wait(
        lambda: (col.ready() and col.runs() == sim.totals()["runs"]) or sim.stats()["calls"].get("list", 0) >= 3 * n,
        120 + n / 25,
        step=0.5,
    )
    elapsed = time.monotonic() - started
    after, truth, stats = col.scrape(), sim.totals(), sim.stats()
    ready = col.ready()
    passed = bool(done and ready and runs(after) == truth["runs"])
    return [
        report(
            Result(
                "7",
                f"a listing of {n:,} pages (the API sends 1 item a page whatever page_size asks)",
                passed,
                [
                    f"{n:,} sessions: readyz {'ready' if ready else 'NOT ready'} after {elapsed:.0f} s and "
                    f"{stats['calls'].get('list', 0):,} list requests; runs expected {truth['runs']:,}, got {fmt(runs(after))}",
                    common(col, after),
                ],
            )
        )
    ]


def situation_8(stack: Stack, seconds: float) -> list[Result]:
    sim = stack.sim(400, latency_ms=20)
    sim.get("/_sim/listing", order="newest")
    col = stack.collector(sim, "--page-size", "20")
    if not synced(col, sim, 60):
        s = col.scrape()
        return [
            report(
                Result(
                    "8",
                    "busy sessions in a newest-first listing",
                    False,
                    [f"first sync not reached: runs got {fmt(runs(s))}; {common(col, s)}"],
                )
            )
        ]
    before = col.scrape()
    known = session_ids(before)
    watched = gauge(before, P + "sessions_watched")
    lost: set[str] = set()
    watched_min = watched or 0.0
    touches, scrapes = 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and touches < seconds * 20:
        sim.get("/_sim/touch", fraction=0.01)  # 4 sessions move to the front of the listing
        touches += 1
        if touches % 3 == 0:
            s = col.scrape()
            scrapes += 1
            lost |= known - session_ids(s)
            watched_min = min(watched_min, gauge(s, P + "sessions_watched") or 0.0)
        time.sleep(0.1)
    start = col.cycles()
    wait(lambda: col.runs() == sim.totals()["runs"] or col.cycles() >= start + 15, 40)
    after, truth = col.scrape(), sim.totals()
    fetch = delta(by_label(after, P + "session_fetches_total", "reason"), by_label(before, P + "session_fetches_total", "reason"))
    passed = not lost and runs(after) == truth["runs"] and watched_min >= (watched or 0)
    return [
        report(
            Result(
                "8",
                "busy sessions in a newest-first listing (pages of 20, 20 ms a page)",
                passed,
                [
                    f"400 sessions, {touches} touches of 4 sessions over {seconds:.0f} s, {scrapes} scrapes: sessions whose "
                    f"series went away {len(lost)} of {len(known)} (expected 0); sessions_watched min {fmt(watched_min)} of "
                    f"{fmt(watched)}",
                    f"runs expected {truth['runs']:,}, got {fmt(runs(before))} -> {fmt(runs(after))}; fetches since {fetch}",
                    common(col, after, before),
                ],
            )
        )
    ]


# -- main --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="300 sessions for situations 1 and 7 (not 10,500)")
    parser.add_argument("--sessions", type=int, help="sessions for situations 1 and 7 (overrides --small)")
    parser.add_argument("--only", help="comma-separated situation numbers, e.g. 1,4,5")
    parser.add_argument("--busy-seconds", type=float, default=15.0, help="situation 8: how long sessions are touched")
    parser.add_argument(
        "--collector-tree", type=Path, default=ROOT, help="run the collector CLI from this source tree (default: this one)"
    )
    parser.add_argument(
        "--logs", type=Path, help="folder for the processes' logs and state files (default: a new temporary folder, kept)"
    )
    args = parser.parse_args()
    n = args.sessions or (300 if args.small else 10_500)
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 9))
    folder = args.logs or Path(tempfile.mkdtemp(prefix="adversarial-"))
    folder.mkdir(parents=True, exist_ok=True)
    tree = args.collector_tree.resolve()
    print(
        f"issue 26, eight situations over loopback: collector from {tree}, simulator from {ROOT}; "
        f"{n:,} sessions for 1 and 7; --interval {INTERVAL:g}; logs in {folder}\n"
    )
    sys.stdout.flush()
    situations: dict[int, Callable[[Stack], list[Result]]] = {
        1: lambda s: situation_1(s, n),
        2: situation_2,
        3: situation_3,
        4: lambda s: situation_4(s, folder),
        5: lambda s: situation_5(s, folder),
        6: situation_6,
        7: lambda s: situation_7(s, n),
        8: lambda s: situation_8(s, args.busy_seconds),
    }
    results: list[Result] = []
    started = time.monotonic()
    for number in sorted(only):
        stack = Stack(folder, tree, f"s{number}")
        t0 = time.monotonic()
        try:
            results += situations[number](stack)
        except Exception as exc:  # noqa: BLE001 - one situation's trouble is reported, the others still run
            results.append(report(Result(str(number), "did not run to the end", False, [f"{type(exc).__name__}: {exc}"])))
        finally:
            stack.close()
        print(f"       ({time.monotonic() - t0:.0f} s)")
    print(
        f"\nsummary ({time.monotonic() - started:.0f} s): "
        + ", ".join(f"{r.key} {'PASS' if r.passed else 'FAIL'}" for r in results)
    )
    print(f"situations: {sum(r.passed for r in results)} PASS, {sum(not r.passed for r in results)} FAIL")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        HTTP.close()
