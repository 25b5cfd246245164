"""Soak: about 2 minutes, 1 s polls, live traffic and random faults; then exact totals, bounded memory."""

import random
import time
from collections import Counter, defaultdict

import httpx
import pytest

from tests.helpers import assert_samples_match, family, parse, remote_truth, value
from tests.stack import Processes, free_port, wait_until

pytestmark = pytest.mark.tier("process", "soak")

KEY = "llx-soak"
DURATION = 110.0
WAIT = 300.0
"""A generous bound on any wait for a condition, and on any one request (a loaded 2-core machine): past
``DURATION``, the soak goes on until it has met its faults and its failed cycles, at most this long."""
FAULTS_MET, CYCLES_HIT = 20, 5
"""What a soak must have gone through: faults the collector met, cycles that were partial or failed."""
MEMORY_GROWTH_BOUND = 40 * 1024 * 1024
FAULTS: list[dict[str, str | int | float]] = [
    {"kind": "status", "status": 429, "retry_after": 1},
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 502},
    {"kind": "status", "status": 500},
    {"kind": "reset"},
    {"kind": "cut"},
    {"kind": "bad_json"},
    {"kind": "html"},
    {"kind": "content_type"},
    {"kind": "slow", "delay": 1.5},
    {"kind": "unknown_event"},
]


def test_soak(tmp_path):
    rng = random.Random(2026)
    procs = Processes(tmp_path)
    sim_port, port = free_port(), free_port()
    sim, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    try:
        procs.collector(
            "simulator", "simulate", "--port", str(sim_port), "--sessions", "60", "--rate", "10", env={"LLAMA_CLOUD_API_KEY": KEY}
        )
        wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
        procs.collector(
            "collector",
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "1",
            env={"LLAMA_CLOUD_API_KEY": KEY, "LLAMA_CLOUD_BASE_URL": sim, "COLLECTOR_READ_TIMEOUT": "1"},
        )
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, WAIT, "collector ready")
        start_rss = value(parse(httpx.get(url + "/metrics", timeout=WAIT).text), "process_resident_memory_bytes")
        assert start_rss is not None, "no process_resident_memory_bytes (not Linux?)"
        started = time.monotonic()

        def hit(samples) -> float:
            return sum(value(samples, "llamacloud_collector_polls_total", result=r) or 0 for r in ("partial", "failure"))

        while True:  # the soak's course, then on until it met its faults and failed cycles (bounded)
            met = sum(httpx.get(sim + "/_sim/stats", timeout=WAIT).json()["faults_injected"].values())
            scraped = httpx.get(url + "/metrics", timeout=WAIT)
            assert scraped.status_code == 200
            elapsed = time.monotonic() - started
            if elapsed >= DURATION and met >= FAULTS_MET and hit(parse(scraped.text)) >= CYCLES_HIT:
                break
            assert elapsed < DURATION + WAIT, f"after {elapsed:.0f} s: {met} faults met, {hit(parse(scraped.text))} cycles hit"
            if rng.random() < 0.5:
                fault = rng.choice(FAULTS)
                httpx.get(sim + "/_sim/fault", params={**fault, "endpoint": rng.choice(["list", "retrieve"])})
            time.sleep(1.0)  # the soak's pace: a scrape and perhaps a fault a second
        httpx.get(sim + "/_sim/traffic", params={"pause": "1"}, timeout=WAIT).raise_for_status()
        runs, events = remote_truth(sim)  # the final state: no traffic from here on
        injected = httpx.get(sim + "/_sim/stats", timeout=WAIT).json()["faults_injected"]

        def exact():
            assert_samples_match(parse(httpx.get(url + "/metrics", timeout=WAIT).text), runs, events)
            return True

        try:
            wait_until(exact, WAIT, "totals to equal the truth", interval=1.0)
        except AssertionError:
            got = family(parse(httpx.get(url + "/metrics", timeout=WAIT).text), "llamacloud_chat_session_runs_total")
            per_session: defaultdict[str, float] = defaultdict(float)
            for labels, v in got.items():
                per_session[dict(labels)["session_id"]] += v
            truth = Counter(r.session_id for r in runs)
            print({sid: (n, per_session.get(sid)) for sid, n in truth.items() if per_session.get(sid) != n})
            print(procs.log("collector")[-3000:])
            exact()
        samples = parse(httpx.get(url + "/metrics", timeout=WAIT).text)
        end_rss = value(samples, "process_resident_memory_bytes")
        assert end_rss is not None
        cycles = {r: value(samples, "llamacloud_collector_polls_total", result=r) for r in ("success", "partial", "failure")}
        counted = sum(v for k, v in samples.items() if k[0] == "llamacloud_chat_runs_total")
        print(
            f"\nsoak: {DURATION:.0f} s, cycles {cycles}, faults injected {sum(injected.values())} {injected}, "
            f"runs counted {counted:.0f} = truth {len(runs)}, RSS start {start_rss / 2**20:.1f} MiB "
            f"end {end_rss / 2**20:.1f} MiB (bound: +{MEMORY_GROWTH_BOUND / 2**20:.0f} MiB)"
        )
        assert counted == len(runs)
        assert sum(injected.values()) >= FAULTS_MET
        assert (cycles["partial"] or 0) + (cycles["failure"] or 0) >= CYCLES_HIT
        assert end_rss - start_rss <= MEMORY_GROWTH_BOUND
    finally:
        procs.stop_all()
